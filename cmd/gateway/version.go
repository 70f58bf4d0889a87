package main

import (
	"cmp"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version and revision are stamped at build time by the Makefile's build
// target and the Dockerfile (build args VERSION and REVISION):
//
//	go build -ldflags "-X main.version=v1.4.0 -X main.revision=$(git rev-parse HEAD)" ./cmd/gateway
//
// Unstamped (go run, go build, go install), buildInfo falls back to what
// the Go toolchain recorded: the module version and the VCS revision.
var version, revision string

// build is what a binary knows about how it was built: -version prints
// it, the start log line carries it and chat_build_info exports it.
type build struct {
	Version  string // stamped -X main.version, else the module version ("(devel)" in a checkout)
	Revision string // stamped -X main.revision, else vcs.revision (+"+modified"); "unknown" without either
	Go       string // the Go release that built it, e.g. go1.26.8
	Time     string // vcs.time when the toolchain recorded it, else ""
}

// buildInfo returns the stamped version and revision, falling back to
// debug.ReadBuildInfo for each one that was not stamped.
func buildInfo() build {
	b := build{Version: version, Revision: revision, Go: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = "+modified"
				}
			case "vcs.time":
				b.Time = s.Value
			}
		}
		if b.Revision == "" && rev != "" {
			b.Revision = rev + modified
		}
		b.Version = cmp.Or(b.Version, info.Main.Version)
	}
	b.Version = cmp.Or(b.Version, "unknown")
	b.Revision = cmp.Or(b.Revision, "unknown")
	return b
}

// versionString is the one-line form -version prints:
// "gateway v1.4.0 (revision 0123456789ab, 2026-12-07T10:00:00Z) go1.26.8".
func versionString() string {
	b := buildInfo()
	rev := b.Revision
	if len(rev) >= 40 {
		// A full commit hash, perhaps with "+modified": 12 digits tell it.
		rev = rev[:12] + rev[40:]
	}
	if b.Time != "" {
		rev += ", " + b.Time
	}
	return fmt.Sprintf("gateway %s (revision %s) %s", b.Version, rev, b.Go)
}
