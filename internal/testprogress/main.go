// Command testprogress runs a `go test -json` command and prints a short
// progress report instead of go test's output: one line per package as it
// finishes, a line every 15 s naming what still runs (so a long race-
// detector run is never silent), and the full output of every failed test
// and package. It exits with the command's status (1 when a test failed
// even if the command said 0). make test's unit step uses it:
//
//	go run ./internal/testprogress go test -race -count=1 -json ./...
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time       time.Time
	Action     string // start, run, pass, fail, skip, output, build-output, build-fail, ...
	Package    string
	ImportPath string // of build-output and build-fail: the package being built
	Test       string
	Elapsed    float64
	Output     string
}

// heartbeat is how often a line names the packages still running.
const heartbeat = 15 * time.Second

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testprogress go test -json [flags] [packages]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testprogress:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "testprogress: %v (is %s installed?)\n", err, os.Args[1])
		os.Exit(2)
	}
	r := newReport(os.Stdout, time.Now())
	done := make(chan struct{})
	go r.beat(done, heartbeat)
	r.read(out)
	close(done)
	code := 0
	if err := cmd.Wait(); err != nil {
		code = 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = max(ee.ExitCode(), 1)
		}
	}
	if r.summary() && code == 0 {
		code = 1 // a failed test with a zero exit status: never report success
	}
	os.Exit(code)
}

// report follows the events of one run.
type report struct {
	w     io.Writer
	start time.Time

	mu       sync.Mutex
	running  map[string]time.Time // package → when it started
	output   map[string][]string  // "pkg" or "pkg\x00Test" → its output lines
	failed   []string             // keys of output to print: failed tests and packages
	passed   int                  // top-level tests passed
	failures int                  // top-level tests failed
	pkgFail  int                  // packages failed (build failures included)
}

func newReport(w io.Writer, start time.Time) *report {
	return &report{w: w, start: start, running: map[string]time.Time{}, output: map[string][]string{}}
}

// read handles the events until r ends; lines that are not JSON (e.g.
// "go: downloading ...") are printed as they are.
func (r *report) read(in io.Reader) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(r.w, sc.Text())
			continue
		}
		r.handle(e)
	}
}

func (r *report) handle(e event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := e.Package
	switch {
	case e.Test != "":
		key += "\x00" + e.Test
	case e.ImportPath != "":
		key = "build " + e.ImportPath
	}
	switch e.Action {
	case "start":
		r.running[e.Package] = time.Now()
	case "output", "build-output":
		r.output[key] = append(r.output[key], e.Output)
	case "pass", "skip":
		if e.Test == "" {
			delete(r.running, e.Package)
			note := ""
			if e.Action == "skip" {
				note = " [no test files]"
			}
			fmt.Fprintf(r.w, "ok  \t%s\t%.1fs%s\n", e.Package, e.Elapsed, note)
		} else if e.Action == "pass" && !strings.Contains(e.Test, "/") {
			r.passed++
		}
		delete(r.output, key)
	case "build-fail":
		r.failed = append(r.failed, key)
	case "fail":
		if e.Test == "" {
			delete(r.running, e.Package)
			r.pkgFail++
			fmt.Fprintf(r.w, "FAIL\t%s\t%.1fs\n", e.Package, e.Elapsed)
		} else if !strings.Contains(e.Test, "/") {
			r.failures++
		}
		r.failed = append(r.failed, key)
	}
}

// beat prints, every interval until done, which packages still run.
func (r *report) beat(done <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			r.mu.Lock()
			var names []string
			for _, p := range slices.Sorted(maps.Keys(r.running)) {
				names = append(names, fmt.Sprintf("%s (%.0fs)", p, now.Sub(r.running[p]).Seconds()))
			}
			if len(names) > 0 {
				fmt.Fprintf(r.w, "    ... %.0fs, %d tests passed so far; still running: %s\n",
					now.Sub(r.start).Seconds(), r.passed, strings.Join(names, ", "))
			}
			r.mu.Unlock()
		}
	}
}

// summary prints the output of what failed and a closing count; it
// reports whether anything failed.
func (r *report) summary() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, key := range r.failed {
		lines := r.output[key]
		if len(lines) == 0 {
			continue
		}
		pkg, test, _ := strings.Cut(key, "\x00")
		fmt.Fprintf(r.w, "\n--- output of %s %s\n", pkg, test)
		for _, l := range lines {
			fmt.Fprint(r.w, l)
		}
	}
	fmt.Fprintf(r.w, "tests: %d passed, %d failed\n", r.passed, r.failures)
	return r.failures > 0 || r.pkgFail > 0
}
