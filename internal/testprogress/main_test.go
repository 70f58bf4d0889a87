package main

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestReport feeds a recorded event stream: passing packages get one line
// each, a failed test's output is printed after the run, and the counts
// close the report.
func TestReport(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"start","Package":"a"}`,
		`{"Action":"run","Package":"a","Test":"TestOK"}`,
		`{"Action":"output","Package":"a","Test":"TestOK","Output":"noise of a passing test\n"}`,
		`{"Action":"pass","Package":"a","Test":"TestOK","Elapsed":0.1}`,
		`{"Action":"pass","Package":"a","Elapsed":1.25}`,
		`{"Action":"start","Package":"b"}`,
		`{"Action":"run","Package":"b","Test":"TestBad"}`,
		`{"Action":"output","Package":"b","Test":"TestBad","Output":"    b_test.go:9: wrong answer\n"}`,
		`{"Action":"fail","Package":"b","Test":"TestBad","Elapsed":0.2}`,
		`{"Action":"fail","Package":"b","Elapsed":0.3}`,
		`go: downloading example.com/x v1.0.0`,
		`{"ImportPath":"c [c.test]","Action":"build-output","Output":"./c.go:2:23: cannot use \"x\" as int value\n"}`,
		`{"ImportPath":"c [c.test]","Action":"build-fail"}`,
		`{"Action":"start","Package":"c"}`,
		`{"Action":"fail","Package":"c","Elapsed":0,"FailedBuild":"c [c.test]"}`,
	}, "\n")
	var out strings.Builder
	r := newReport(&out, time.Now())
	r.read(strings.NewReader(in))
	if !r.summary() {
		t.Error("summary() reported success after a failed test")
	}
	got := out.String()
	for _, want := range []string{"ok  \ta\t1.2s\n", "FAIL\tb\t0.3s\n", "go: downloading example.com/x v1.0.0\n",
		"--- output of b TestBad\n    b_test.go:9: wrong answer\n", "FAIL\tc\t0.0s\n",
		"--- output of build c [c.test] \n./c.go:2:23: cannot use \"x\" as int value\n", "tests: 1 passed, 1 failed\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "noise of a passing test") {
		t.Errorf("report prints a passing test's output:\n%s", got)
	}
}

// TestHeartbeat: while a package runs, a line names it.
func TestHeartbeat(t *testing.T) {
	var out syncBuilder
	r := newReport(&out, time.Now())
	r.handle(event{Action: "start", Package: "slow"})
	done := make(chan struct{})
	defer close(done)
	go r.beat(done, time.Millisecond)
	testutil.Eventually(t, "a heartbeat naming the running package", func() bool {
		return strings.Contains(out.String(), "still running: slow (")
	})
}

// syncBuilder is a strings.Builder safe for one writer and one reader.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
