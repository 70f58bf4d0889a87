package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

// startServer listens on a free port of 127.0.0.1 and runs handle on its
// own goroutine for each connection, until the test ends; it returns the
// ws:// base URL. Connections still open at the end are closed, so a
// handler blocked reading ends.
func startServer(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, l, handle)
}

// serve is startServer on l.
func serve(t *testing.T, l net.Listener, handle func(c net.Conn, br *bufio.Reader)) string {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "ws://" + l.Addr().String()
}

// readUpgrade reads a client's upgrade request from br; nil if the
// client went away first.
func readUpgrade(br *bufio.Reader) *http.Request {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil
	}
	return req
}

// switching returns the 101 answer to req, computed here rather than by
// the code under test.
func switching(req *http.Request) string {
	sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
}

// serverFrame returns an unmasked server frame.
func serverFrame(op ws.OpCode, payload string) []byte {
	return ws.MustCompileFrame(ws.NewFrame(op, true, []byte(payload)))
}

// readClientFrame reads one client frame of at most 125 bytes (a control
// frame) from c, through br, and unmasks it; it waits at most
// testutil.Timeout.
func readClientFrame(c net.Conn, br *bufio.Reader) (ws.Frame, error) {
	_ = c.SetReadDeadline(time.Now().Add(testutil.Timeout))
	h, err := ws.ReadHeader(br)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length > 125 {
		return ws.Frame{}, fmt.Errorf("a client frame of %d bytes, want a control frame", h.Length)
	}
	f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
	if _, err := io.ReadFull(br, f.Payload); err != nil {
		return ws.Frame{}, err
	}
	return ws.UnmaskFrameInPlace(f), nil
}

// pongOf returns the payload of the client's answer to a ping, or what
// came instead.
func pongOf(c net.Conn, br *bufio.Reader) string {
	f, err := readClientFrame(c, br)
	switch {
	case err != nil:
		return "no frame: " + err.Error()
	case f.Header.OpCode != ws.OpPong:
		return "not a pong: opcode " + strconv.Itoa(int(f.Header.OpCode))
	}
	return string(f.Payload)
}

// newTestRunner returns a runner of "-url url -quiet -rate 0" and args, whose
// connections are closed when the test ends.
func newTestRunner(t *testing.T, url string, args ...string) *runner {
	t.Helper()
	cfg, err := parseFlags(append([]string{"-url", url, "-quiet", "-rate", "0"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(cfg, io.Discard)
	t.Cleanup(func() {
		if r.poll != nil {
			r.closeAll()
		}
	})
	return r
}

// connect runs r's connect phase and returns how long it took.
func connect(t *testing.T, r *runner) time.Duration {
	t.Helper()
	start := time.Now()
	if err := r.connectAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// TestDialUpgrades: connections dialled by the loops upgrade with gobwas's
// server, on the path and Host of their room, get their sender role, and
// are then held by a loop (a ping is answered).
func TestDialUpgrades(t *testing.T) {
	var mu sync.Mutex
	var uris, hosts []string
	pongs := make(chan string, 3)
	url := startServer(t, func(c net.Conn, br *bufio.Reader) {
		u := ws.Upgrader{
			OnRequest: func(uri []byte) error { mu.Lock(); uris = append(uris, string(uri)); mu.Unlock(); return nil },
			OnHost:    func(host []byte) error { mu.Lock(); hosts = append(hosts, string(host)); mu.Unlock(); return nil },
		}
		if _, err := u.Upgrade(c); err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		if _, err := c.Write(serverFrame(ws.OpPing, "held?")); err != nil {
			return
		}
		pongs <- pongOf(c, br)
		_, _ = io.Copy(io.Discard, br) // until the client closes
	})
	r := newTestRunner(t, url, "-conns", "3", "-rooms", "2", "-senders", "1", "-rate", "0", "-options", "ids=1")
	connect(t, r)
	if o, f, c := r.live.opened.Load(), r.live.failed.Load(), r.live.connected.Load(); o != 3 || f != 0 || c != 3 {
		t.Fatalf("opened %d failed %d connected %d, want 3 0 3; errors %v", o, f, c, r.live.errs.snapshot())
	}
	for range 3 {
		select {
		case p := <-pongs:
			if p != "held?" {
				t.Errorf("answer to a ping: %q, want a pong with its payload", p)
			}
		case <-time.After(testutil.Timeout):
			t.Fatal("no pong: the connection is not held by a loop")
		}
	}
	for i, want := range []struct{ room, sender int }{{0, 0}, {1, 1}, {0, -1}} {
		c := r.clients[i]
		if c == nil || c.room != want.room || c.sender != want.sender {
			t.Fatalf("client %d: %+v, want room %d sender %d", i, c, want.room, want.sender)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	host := strings.TrimPrefix(url, "ws://")
	want := map[string]bool{"/ws/chat/" + r.prefix + "0/?ids=1": true, "/ws/chat/" + r.prefix + "1/?ids=1": true}
	for i := range uris {
		if !want[uris[i]] || hosts[i] != host {
			t.Errorf("request to %q on host %q, want one of %v on %q", uris[i], hosts[i], want, host)
		}
	}
}

// TestDialAddresses: connections bind the -src addresses round-robin,
// reach IPv6 and named targets, and a -src address of the other family
// than the target's fails under its own kind.
func TestDialAddresses(t *testing.T) {
	var mu sync.Mutex
	from := map[string]int{}
	upgrade := func(c net.Conn, br *bufio.Reader) {
		if _, err := ws.Upgrade(c); err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		mu.Lock()
		from[host]++
		mu.Unlock()
		_, _ = io.Copy(io.Discard, br)
	}
	opened := func(t *testing.T, r *runner, n int64) {
		t.Helper()
		if r.live.opened.Load() != n {
			t.Fatalf("opened %d, errors %v; want %d", r.live.opened.Load(), r.live.errs.snapshot(), n)
		}
	}
	url := startServer(t, upgrade)

	t.Run("-src range", func(t *testing.T) {
		r := newTestRunner(t, url, "-conns", "4", "-rooms", "1", "-src", "127.0.0.2-127.0.0.3")
		connect(t, r)
		opened(t, r, 4)
		mu.Lock()
		defer mu.Unlock()
		if from["127.0.0.2"] != 2 || from["127.0.0.3"] != 2 {
			t.Fatalf("connections from %v, want 2 from each -src address", from)
		}
	})
	t.Run("localhost", func(t *testing.T) {
		r := newTestRunner(t, strings.Replace(url, "127.0.0.1", "localhost", 1), "-conns", "1", "-rooms", "1")
		connect(t, r)
		opened(t, r, 1)
	})
	t.Run("IPv6", func(t *testing.T) {
		l, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback here (%v); the IPv4 paths are tested", err)
		}
		r := newTestRunner(t, serve(t, l, upgrade), "-conns", "2", "-rooms", "1", "-src", "::1")
		connect(t, r)
		opened(t, r, 2)
	})
	t.Run("-src of the other family", func(t *testing.T) {
		r := newTestRunner(t, url, "-conns", "1", "-rooms", "1", "-src", "::1")
		connect(t, r)
		for k, n := range r.live.errs.snapshot() {
			if !strings.HasPrefix(k, "dial_no_address (") || n != 1 {
				t.Fatalf("errors %v, want dial_no_address once", r.live.errs.snapshot())
			}
		}
		if r.live.failed.Load() != 1 {
			t.Fatalf("failed %d, want 1", r.live.failed.Load())
		}
	})
}

// TestDialRequestMatchesGobwas: the request is the one ws.Dialer sends,
// byte for byte but for the key, which is 16 random bytes in base64.
func TestDialRequestMatchesGobwas(t *testing.T) {
	heads := make(chan string, 2)
	url := startServer(t, func(c net.Conn, br *bufio.Reader) {
		var head []byte
		for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			b, err := br.ReadByte()
			if err != nil {
				return
			}
			head = append(head, b)
		}
		heads <- string(head)
	})
	r := newTestRunner(t, url, "-conns", "1", "-rooms", "1", "-options", "ids=1&ack=1", "-dial-timeout", "200ms")
	connect(t, r)
	ours := <-heads
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	go func() { _, _, _, _ = ws.Dial(ctx, url+"/ws/chat/"+r.prefix+"0/?ids=1&ack=1") }()
	theirs := <-heads
	key := func(head string) (string, string) {
		_, after, _ := strings.Cut(head, "Sec-WebSocket-Key: ")
		k, _, _ := strings.Cut(after, "\r\n")
		return strings.Replace(head, k, "KEY", 1), k
	}
	o, k := key(ours)
	g, _ := key(theirs)
	if o != g {
		t.Errorf("request\n%q\nwant (as ws.Dialer)\n%q", o, g)
	}
	if raw, err := base64.StdEncoding.DecodeString(k); err != nil || len(raw) != 16 {
		t.Errorf("key %q: want 16 bytes in base64", k)
	}
}

// TestDialFramesBehind101: frames that come in the same read as the 101
// are accounted for at once, an incomplete one is completed by the loop,
// and a close frame there ends the connection as closed_at_handshake.
func TestDialFramesBehind101(t *testing.T) {
	t.Run("held", func(t *testing.T) {
		pongs := make(chan string, 2)
		url := startServer(t, func(c net.Conn, br *bufio.Reader) {
			req := readUpgrade(br)
			if req == nil {
				return
			}
			split := serverFrame(ws.OpText, `{"ack":"2"}`)
			first := switching(req) + string(serverFrame(ws.OpText, `{"ack":"1"}`)) +
				string(serverFrame(ws.OpText, `{"presence":{}}`)) + string(serverFrame(ws.OpPing, "behind")) + string(split[:3])
			if _, err := c.Write([]byte(first)); err != nil { // one write: one read
				return
			}
			pongs <- pongOf(c, br)
			if _, err := c.Write(append(split[3:], serverFrame(ws.OpPing, "after")...)); err != nil {
				return
			}
			pongs <- pongOf(c, br)
			_, _ = io.Copy(io.Discard, br)
		})
		r := newTestRunner(t, url, "-conns", "1", "-rooms", "1", "-senders", "0")
		connect(t, r)
		for _, want := range []string{"behind", "after"} {
			select {
			case p := <-pongs:
				if p != want {
					t.Fatalf("pong %q, want %q", p, want)
				}
			case <-time.After(testutil.Timeout):
				t.Fatalf("no pong %q", want)
			}
		}
		r.closeAll() // the loops have stopped: the client can be read
		c := r.clients[0]
		if r.live.opened.Load() != 1 || c == nil || c.acks != 2 || c.info != 1 || c.dropped {
			t.Fatalf("opened %d, client %+v; want 1 open with 2 acks and 1 presence", r.live.opened.Load(), c)
		}
	})
	t.Run("closed", func(t *testing.T) {
		url := startServer(t, func(c net.Conn, br *bufio.Reader) {
			req := readUpgrade(br)
			if req == nil {
				return
			}
			closing := serverFrame(ws.OpClose, string(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")))
			if _, err := c.Write(append([]byte(switching(req)), closing...)); err != nil {
				return
			}
			if f, err := readClientFrame(c, br); err != nil || f.Header.OpCode != ws.OpClose {
				t.Errorf("answer to a close frame: %v, %v; want a close frame", f.Header.OpCode, err)
			}
		})
		r := newTestRunner(t, url, "-conns", "1", "-rooms", "1", "-senders", "0")
		connect(t, r)
		errs := r.live.errs.snapshot()
		if r.live.opened.Load() != 1 || r.live.connected.Load() != 0 || errs["closed_at_handshake"] != 1 || errs["close_1001"] != 1 ||
			r.clients[0] == nil || !r.clients[0].dropped {
			t.Fatalf("opened %d connected %d errors %v; want opened, closed at the handshake and dropped",
				r.live.opened.Load(), r.live.connected.Load(), errs)
		}
	})
}

// TestDialSplitResponse: a 101 that comes in several reads (cut inside
// the status line, inside a CRLF and between the last CR and LF), with a
// frame behind it, is put together.
func TestDialSplitResponse(t *testing.T) {
	pong := make(chan string, 1)
	url := startServer(t, func(c net.Conn, br *bufio.Reader) {
		req := readUpgrade(br)
		if req == nil {
			return
		}
		resp := switching(req)
		end := len(resp)
		resp += string(serverFrame(ws.OpPing, "split"))
		for _, cut := range [][2]int{{0, 6}, {6, 33}, {33, 34}, {34, end - 1}, {end - 1, len(resp)}} {
			if _, err := c.Write([]byte(resp[cut[0]:cut[1]])); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond) // separate reads, most likely; the test holds either way
		}
		pong <- pongOf(c, br)
		_, _ = io.Copy(io.Discard, br)
	})
	r := newTestRunner(t, url, "-conns", "1", "-rooms", "1")
	connect(t, r)
	if r.live.opened.Load() != 1 {
		t.Fatalf("opened %d, errors %v; want 1", r.live.opened.Load(), r.live.errs.snapshot())
	}
	select {
	case p := <-pong:
		if p != "split" {
			t.Fatalf("pong %q, want \"split\"", p)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("no pong")
	}
}

// TestDialFailures: each way a dial fails is counted once under its kind,
// within -dial-timeout, and leaves no client.
func TestDialFailures(t *testing.T) {
	answer := func(resp func(req *http.Request) string) func(net.Conn, *bufio.Reader) {
		return func(c net.Conn, br *bufio.Reader) {
			if req := readUpgrade(br); req != nil {
				_, _ = c.Write([]byte(resp(req)))
				_, _ = io.Copy(io.Discard, br) // until the client closes
			}
		}
	}
	server := func(h func(net.Conn, *bufio.Reader)) func(t *testing.T) string {
		return func(t *testing.T) string { return startServer(t, h) }
	}
	tests := []struct {
		name string
		url  func(t *testing.T) string
		kind string // the error kind, or its start for those that end in help text
		slow bool   // fails at -dial-timeout
	}{
		{"status 503", server(answer(func(*http.Request) string {
			return "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
		})), "handshake_503", false},
		{"bad Sec-WebSocket-Accept", server(answer(func(*http.Request) string {
			return "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
		})), "handshake", false},
		{"no Upgrade field", server(answer(func(req *http.Request) string {
			return strings.Replace(switching(req), "Upgrade: websocket\r\n", "", 1)
		})), "handshake", false},
		{"head over 4 KiB", server(answer(func(req *http.Request) string {
			return strings.Replace(switching(req), "\r\n\r\n", "\r\nX-Pad: "+strings.Repeat("p", maxResponseHead)+"\r\n\r\n", 1)
		})), "handshake", false},
		{"closed without an answer", server(func(_ net.Conn, br *bufio.Reader) { readUpgrade(br) }), "handshake", false},
		{"never answers", server(answer(func(*http.Request) string { return "" })), "handshake_timeout", true},
		{"refused", func(t *testing.T) string {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l.Close() // nothing listens there now
			return "ws://" + l.Addr().String()
		}, "dial_refused (", false},
		{"connect never completes", fullBacklog, "dial_timeout", true},
	}
	const timeout = time.Second // fast failures must come before it, even on a loaded CI machine
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRunner(t, tt.url(t), "-conns", "1", "-rooms", "1", "-dial-timeout", timeout.String())
			took := connect(t, r)
			errs := r.live.errs.snapshot()
			var kinds []string
			for k := range errs {
				kinds = append(kinds, k)
			}
			if len(kinds) != 1 || errs[kinds[0]] != 1 || !(kinds[0] == tt.kind || strings.HasSuffix(tt.kind, "(") && strings.HasPrefix(kinds[0], tt.kind)) {
				t.Fatalf("errors %v, want %s once", errs, tt.kind)
			}
			if o, f, c := r.live.opened.Load(), r.live.failed.Load(), r.live.connected.Load(); o != 0 || f != 1 || c != 0 || r.clients[0] != nil {
				t.Fatalf("opened %d failed %d connected %d client %v; want 0 1 0 nil", o, f, c, r.clients[0])
			}
			switch {
			case tt.slow && (took < timeout || took > timeout+4*time.Second):
				t.Errorf("failed after %v, want -dial-timeout %v (and at most 4 s more)", took, timeout)
			case !tt.slow && took >= timeout:
				t.Errorf("failed after %v, want before -dial-timeout %v", took, timeout)
			}
		})
	}
}

// fullBacklog returns the URL of a listener whose accept queue (backlog
// 0) one connection fills, so that the SYN of the next is dropped and its
// connect does not complete.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(sa.(*unix.SockaddrInet4).Port)
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return "ws://" + addr
}

// TestDialConcurrencyAndRate: no more than -dial-concurrency dials are in
// flight (the server sees at most that many requests waiting for their
// answer, and sees that many), and -connect-rate spreads the starts.
func TestDialConcurrencyAndRate(t *testing.T) {
	var waiting, most atomic.Int64
	url := startServer(t, func(c net.Conn, br *bufio.Reader) {
		req := readUpgrade(br)
		if req == nil {
			return
		}
		n := waiting.Add(1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(50 * time.Millisecond) // a slow gateway: the dials pile up
		waiting.Add(-1)
		if _, err := c.Write([]byte(switching(req))); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, br)
	})
	r := newTestRunner(t, url, "-conns", "9", "-rooms", "3", "-dial-concurrency", "3")
	took := connect(t, r)
	if r.live.opened.Load() != 9 || most.Load() != 3 || took < 3*50*time.Millisecond {
		t.Fatalf("opened %d, at most %d waiting, in %v; want 9, 3 (-dial-concurrency) and at least 150 ms; errors %v",
			r.live.opened.Load(), most.Load(), took, r.live.errs.snapshot())
	}

	r = newTestRunner(t, url, "-conns", "6", "-rooms", "3", "-connect-rate", "20", "-dial-concurrency", "100")
	if took := connect(t, r); r.live.opened.Load() != 6 || took < 250*time.Millisecond {
		t.Fatalf("opened %d in %v; want 6, the last started 250 ms in at -connect-rate 20", r.live.opened.Load(), took)
	}
}

// TestConnectTimeoutCutsShort: at -connect-timeout the dials in flight
// fail and those not started count as not_dialed.
func TestConnectTimeoutCutsShort(t *testing.T) {
	url := startServer(t, func(_ net.Conn, br *bufio.Reader) { _, _ = io.Copy(io.Discard, br) })
	r := newTestRunner(t, url, "-conns", "5", "-rooms", "1", "-dial-concurrency", "2", "-connect-timeout", "300ms")
	took := connect(t, r)
	errs := r.live.errs.snapshot()
	if r.live.failed.Load() != 5 || errs["handshake_timeout"] != 2 || errs["not_dialed"] != 3 || took > 300*time.Millisecond+4*time.Second { // well before the 10 s -dial-timeout
		t.Fatalf("failed %d, errors %v, after %v; want 5: 2 handshake_timeout, 3 not_dialed, at -connect-timeout", r.live.failed.Load(), errs, took)
	}
}
