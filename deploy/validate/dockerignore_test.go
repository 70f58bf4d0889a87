package validate

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// TestDockerignore: as Docker reads .dockerignore, the build context keeps
// every file the image is built from (go.mod, go.sum, the packages' Go
// files and embedded assets) and leaves out test artefacts, docs, deploy
// files and the repository's history.
func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	excluded := func(path string) bool {
		ex, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatalf(".dockerignore on %s: %v", path, err)
		}
		return ex
	}
	// Kept: every non-test file under the directories the build compiles.
	kept := []string{"go.mod", "go.sum"}
	for _, dir := range []string{"cmd", "pkg", "internal"} {
		err := filepath.WalkDir(filepath.Join("../..", dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			if !d.IsDir() && !strings.HasSuffix(path, "_test.go") {
				rel, _ := filepath.Rel("../..", path)
				kept = append(kept, filepath.ToSlash(rel))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(kept) < 20 {
		t.Fatalf("found only %d source files to keep", len(kept))
	}
	for _, p := range kept {
		if excluded(p) {
			t.Errorf(".dockerignore leaves out %s, which the image build needs", p)
		}
	}
	for _, p := range []string{
		".git/HEAD", "bin/gateway", "node_modules/x/index.js",
		"test/browser/node_modules/playwright-core/index.js", "test/browser/chat.test.mjs",
		"cmd/gateway/gateway_test.go", "pkg/conn/testdata/fuzz/FuzzReadFrame/seed-00-ctl3",
		"cmd/gateway/gateway.test", "cpu.pprof", "docs/operations.md", "deploy/k8s/gateway.yaml",
		"deploy/validate/go.mod", "BENCHMARKS.md",
	} {
		if !excluded(p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
}
