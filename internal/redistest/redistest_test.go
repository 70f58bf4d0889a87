package redistest

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

func TestStartKillRestart(t *testing.T) {
	s := Start(t, "--appendonly", "yes")
	if s.Port() == 6379 {
		t.Fatal("Start used the shared port 6379")
	}
	if got := s.MustDo("SET", "k", "v"); got != "OK" {
		t.Fatalf("SET = %q", got)
	}
	port := s.Port()
	s.Kill()
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("PING answered after Kill")
	}
	s.Restart()
	if s.Port() != port {
		t.Fatalf("Restart moved the server from port %d to %d", port, s.Port())
	}
	if got := s.MustDo("GET", "k"); got != "v" {
		t.Fatalf("GET after Restart = %q, want the data kept by the append-only file", got)
	}
}

func TestPauseResume(t *testing.T) {
	s := Start(t)
	s.Pause()
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("a paused server answered PING")
	}
	s.Resume()
	s.MustDo("PING")
}

// fatalTB records the message of Fatalf and stops the calling goroutine,
// as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestMissingBinaryFailsWithTheInstallCommand(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	f := &fatalTB{TB: t}
	var wg sync.WaitGroup
	wg.Go(func() { Start(f) })
	wg.Wait()
	if !strings.Contains(f.msg, "redis-server not found") || !strings.Contains(f.msg, "apt-get install -y redis-server") {
		t.Fatalf("Start without redis-server failed with %q, want the install command", f.msg)
	}
}

func TestWaitForPolls(t *testing.T) {
	start := time.Now()
	n := 0
	testutil.EventuallyWithin(t, time.Second, "three polls", func() bool { n++; return n == 3 })
	if time.Since(start) > time.Second {
		t.Fatal("WaitFor took too long")
	}
}
