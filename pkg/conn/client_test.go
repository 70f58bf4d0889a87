package conn

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

// Raw clients for the tests: a TCP connection from a chosen loopback
// address (127.0.0.0/8 is all local on Linux, so each test can act as
// several client addresses), the upgrade request written by hand, and the
// server's answer read as HTTP.

// dialFrom opens a TCP connection to s from the loopback address local
// ("" for any). rcvbuf, when positive, sets SO_RCVBUF before connecting,
// which keeps the kernel from buffering much for a client that reads
// slowly.
func dialFrom(t testing.TB, s *Server, local string, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: testutil.Timeout}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	nc, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(testutil.Timeout))
	return nc
}

// upgradeRequest is a WebSocket upgrade request for path, with extra
// header lines ("Name: value").
func upgradeRequest(path string, headers ...string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", path)
	b.WriteString("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// readResponse reads an HTTP response head and body from br.
func readResponse(t testing.TB, br *bufio.Reader) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, ""
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of a %d: %v", resp.StatusCode, err)
	}
	return resp, string(body)
}

// send writes req on a new connection from local and returns the
// answer; the connection stays open (a 101 leaves an upgraded client).
func send(t testing.TB, s *Server, local string, req []byte) (net.Conn, *bufio.Reader, *http.Response, string) {
	t.Helper()
	nc := dialFrom(t, s, local, 0)
	if _, err := nc.Write(req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	resp, body := readResponse(t, br)
	return nc, br, resp, body
}

// upgrade opens a WebSocket from local (through a raw request) and
// returns the client side; it fails the test unless the answer is 101.
func upgrade(t testing.TB, s *Server, local string) (net.Conn, *bufio.Reader) {
	t.Helper()
	nc, br, resp, body := send(t, s, local, upgradeRequest("/ws/test"))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade from %s: %d %q", local, resp.StatusCode, body)
	}
	return nc, br
}

// wantRefusal checks a 503 with Retry-After and a one-line reason
// containing want.
func wantRefusal(t testing.TB, resp *http.Response, body, want string) {
	t.Helper()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body, want) || strings.Count(body, "\n") != 1 {
		t.Fatalf("answer %d (Retry-After %q) %q; want 503 with Retry-After and one line naming %q",
			resp.StatusCode, resp.Header.Get("Retry-After"), body, want)
	}
}

// get requests path with plain HTTP from local and returns the status and
// body.
func get(t testing.TB, s *Server, local, path string) (int, string) {
	t.Helper()
	nc, _, resp, body := send(t, s, local, []byte("GET "+path+" HTTP/1.1\r\nHost: chat.test\r\nConnection: close\r\n\r\n"))
	nc.Close()
	return resp.StatusCode, body
}

// readFrame reads the next server frame, failing the test on an error.
func readFrame(t testing.TB, nc net.Conn, br *bufio.Reader) ws.Frame {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
	f, err := ws.ReadFrame(br)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

// expectClose reads frames until a close frame, skipping pings, texts and
// pongs, and checks its code and that its reason names want.
func expectClose(t testing.TB, nc net.Conn, br *bufio.Reader, code ws.StatusCode, want string) {
	t.Helper()
	for {
		f := readFrame(t, nc, br)
		if f.Header.OpCode != ws.OpClose {
			continue
		}
		got, reason := ws.ParseCloseFrameData(f.Payload)
		if got != code || !strings.Contains(reason, want) {
			t.Fatalf("close %d %q; want %d naming %q", got, reason, code, want)
		}
		return
	}
}

// ping sends a ping with payload p and waits for its pong, skipping
// other frames; it returns the round-trip time.
func ping(t testing.TB, nc net.Conn, br *bufio.Reader, p string) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := nc.Write(frame(bPing, []byte(p))); err != nil {
		t.Fatal(err)
	}
	for {
		f := readFrame(t, nc, br)
		if f.Header.OpCode == ws.OpPong && string(f.Payload) == p {
			return time.Since(start)
		}
	}
}
