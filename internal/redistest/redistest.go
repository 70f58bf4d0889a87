// Package redistest runs real redis-server processes for tests: a single
// server (Start), a Redis Cluster of masters (StartCluster) and a master,
// replica and sentinel set (StartSentinel).
//
// Every server listens on a free loopback port (never 6379, so the shared
// Redis of the host is left alone), works in its own temporary directory,
// and is killed when the test ends. Readiness is polled with a deadline;
// nothing sleeps. When redis-server is not installed the helpers fail the
// test with the command that installs it: they never skip.
//
//	srv := redistest.Start(t)
//	e, err := stream.NewRedis(stream.RedisConfig{Addrs: []string{srv.Addr()}}, h, logger)
//	...
//	srv.Kill()    // simulate an outage
//	srv.Restart() // same port, same arguments, same data directory
package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// readyTimeout bounds how long a server may take to answer PING.
const readyTimeout = 10 * time.Second

// install is the advice given when a binary is missing.
const install = "install it with `apt-get install -y redis-server` (or run `make test`, which installs it)"

// Server is one redis-server (or sentinel) process started for a test.
// Its methods are safe for concurrent use, but Kill and Restart fail the
// test with t.Fatal and so belong to the test goroutine.
type Server struct {
	t    testing.TB
	port int
	dir  string
	argv []string // arguments after the binary, including --port

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the running process has exited
}

// Start runs `redis-server --port N --save "" --appendonly no` followed by
// args on a free port, waits until it answers PING, and kills it when the
// test ends. Later arguments override earlier ones, so args may turn
// persistence back on (for example "--appendonly", "yes" to survive Kill
// and Restart with the data acknowledged so far).
func Start(t testing.TB, args ...string) *Server {
	t.Helper()
	return start(t, false, func(port int, dir string) []string {
		return append(serverArgs(port, dir), args...)
	})
}

// start finds a free port, runs redis-server with the arguments argv
// builds for it, and waits for PING. With bus set the port's cluster bus
// port (port+10000) must be free too. A port taken by someone else between
// the probe and the start is retried on another port.
func start(t testing.TB, bus bool, argv func(port int, dir string) []string) *Server {
	t.Helper()
	lookPath(t, "redis-server")
	var lastErr error
	for range 5 {
		port, err := freePort(bus)
		if err != nil {
			t.Fatalf("redistest: find a free port: %v", err)
		}
		s := &Server{t: t, port: port, dir: t.TempDir()}
		s.argv = argv(port, s.dir)
		if lastErr = s.run(); lastErr == nil {
			t.Cleanup(s.stop)
			return s
		}
	}
	t.Fatalf("redistest: start redis-server: %v", lastErr)
	return nil
}

// lookPath fails the test when the named binary is not on PATH.
func lookPath(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: %s", name, install)
	}
	return p
}

// freePort asks the kernel for a free loopback port. With bus set it only
// returns ports whose cluster bus port (port+10000) is free as well.
func freePort(bus bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port, nil
		}
		if port+10000 > 65535 {
			l.Close()
			continue
		}
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+10000))
		l.Close()
		if err != nil {
			continue
		}
		l2.Close()
		return port, nil
	}
	return 0, errors.New("no free port pair (port, port+10000) found")
}

// run starts the process and waits until it answers PING. It returns an
// error, with the end of the server's log, when the process exits first or
// the deadline passes.
func (s *Server) run() error {
	logPath := filepath.Join(s.dir, "redis.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("redis-server", s.argv...)
	// If the test binary dies without its cleanups (a -timeout panic), the
	// kernel kills the server too instead of leaving it running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Dir = s.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	deadline := time.Now().Add(readyTimeout)
	for {
		if _, err := s.Do("PING"); err == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited: %s", s.port, tail(logPath))
		default:
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v: %s", s.port, readyTimeout, tail(logPath))
		}
		// Poll, but not in a hot loop: wait for the process to exit or a
		// short tick, whichever comes first.
		select {
		case <-done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// tail returns the last lines of the log file at path.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// Addr returns the server's address, "127.0.0.1:<port>".
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// Port returns the server's port.
func (s *Server) Port() int { return s.port }

// Dir returns the server's working directory (where AOF and RDB files go).
func (s *Server) Dir() string { return s.dir }

// Kill stops the server with SIGKILL, as a crash would, and waits for the
// process to exit. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Pause stops the server with SIGSTOP: its connections stay open but
// nothing answers, as with a hung server or a network black hole. Kill
// and the cleanup work on a paused server.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		s.t.Fatalf("redistest: signal %v to a stopped server", sig)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("redistest: signal %v: %v", sig, err)
	}
}

// stop is the cleanup: Kill without failing the finished test.
func (s *Server) stop() { s.Kill() }

// Restart starts the server again on the same port with the same arguments
// and data directory, after Kill, and waits until it answers PING. It fails
// the test when the server does not come back.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.run(); err != nil {
		s.t.Fatalf("redistest: restart: %v", err)
	}
}

// Do sends one command to the server over a fresh connection, waiting at
// most a second for the answer, and returns
// the reply as text: simple and bulk strings as they are, integers in
// decimal, arrays as their elements joined by newlines (nested arrays are
// flattened), nil as "". A Redis error reply is returned as an error.
func (s *Server) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	return Command(c, bufio.NewReader(c), args...)
}

// Command sends one command on an open connection (w, with r reading
// from it) and returns the reply as Do does. It waits as long as the
// connection's deadline allows. Tests that reach Redis their own way (from
// another network namespace) use it.
func Command(w io.Writer, r *bufio.Reader, args ...string) (string, error) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := w.Write(b.Bytes()); err != nil {
		return "", err
	}
	var out []string
	if err := readReply(r, &out); err != nil {
		return "", err
	}
	return strings.Join(out, "\n"), nil
}

// MustDo is Do that fails the test on error.
func (s *Server) MustDo(args ...string) string {
	s.t.Helper()
	r, err := s.Do(args...)
	if err != nil {
		s.t.Fatalf("redistest: %s on %s: %v", strings.Join(args, " "), s.Addr(), err)
	}
	return r
}

// readReply reads one RESP2 reply and appends its text to out.
func readReply(r *bufio.Reader, out *[]string) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return errors.New("redistest: empty reply line")
	}
	switch line[0] {
	case '+', ':':
		*out = append(*out, line[1:])
	case '-':
		return errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return err
		}
		if n < 0 {
			*out = append(*out, "")
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		*out = append(*out, string(buf[:n]))
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return err
		}
		for range n {
			if err := readReply(r, out); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("redistest: unexpected reply %q", line)
	}
	return nil
}

// serverArgs are the arguments every test redis-server starts with: a
// loopback port, its own directory, nothing saved to disk.
func serverArgs(port int, dir string) []string {
	return []string{
		"--port", strconv.Itoa(port),
		"--bind", "127.0.0.1",
		"--dir", dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--protected-mode", "no",
	}
}
