package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/sethvargo/go-envconfig"

	"github.com/chatgw/gateway/internal/testutil"
)

// noRateLimit is the environment of tests that send bursts far over the
// default rate limit: they test delivery, not limits.
var noRateLimit = map[string]string{"RATE_LIMIT": "1000000", "RATE_BURST": "1000000"}

// withEnv merges environments; later ones win.
func withEnv(envs ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, e := range envs {
		for k, v := range e {
			out[k] = v
		}
	}
	return out
}

// gateway is a gateway started by startGateway.
type gateway struct {
	addr  string
	admin string   // the ADMIN_ADDR listener's address; "" when not set
	code  chan int // exit code of run
	logs  *testLog
	stop  context.CancelFunc
}

// startGateway runs the gateway on 127.0.0.1:0 with env on top of the
// test defaults and stops it at the end of the test.
// unset, as a value in startGateway's env, leaves the variable out of the
// environment (also one startGateway sets by default), so the gateway's
// own default applies.
const unset = "\x00unset"

func startGateway(t testing.TB, env map[string]string) *gateway {
	t.Helper()
	// No drain by default: tests stop gateways often; the drain tests set it.
	vars := map[string]string{"PORT": "0", "LISTEN_HOST": "127.0.0.1", "LOG_LEVEL": "warn", "SHUTDOWN_TIMEOUT": "5s",
		"DRAIN_DELAY": "0s", "DRAIN_WINDOW": "0s"}
	for k, v := range env {
		if v == unset {
			delete(vars, k)
			continue
		}
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &gateway{code: make(chan int, 1), stop: cancel}
	addrc := make(chan [2]net.Addr, 1)
	logs := &testLog{t: t}
	g.logs = logs
	go func() {
		g.code <- run(ctx, nil, envconfig.MapLookuper(vars), io.Discard, logs, func(a, admin net.Addr) { addrc <- [2]net.Addr{a, admin} })
	}()
	select {
	case a := <-addrc:
		g.addr = a[0].String()
		if a[1] != nil {
			g.admin = a[1].String()
		}
	case code := <-g.code:
		t.Fatalf("gateway exited with %d before listening", code)
	case <-time.After(testutil.Timeout):
		t.Fatal("gateway did not start listening")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-g.code:
		case <-time.After(testutil.Timeout):
			t.Error("gateway did not stop after cancel")
		}
		logs.done()
	})
	return g
}

// testLog forwards the gateway's log lines to the test log while the test
// runs, and keeps them for contains.
type testLog struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
	text   strings.Builder
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.t.Logf("gateway: %s", strings.TrimSpace(string(p)))
	}
	if l.text.Len() < 1<<20 {
		l.text.Write(p)
	}
	return len(p), nil
}

// contains reports whether the gateway logged s.
func (l *testLog) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.text.String(), s)
}

func (l *testLog) done() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

func (g *gateway) url(path string) string { return "ws://" + g.addr + path }

// client is a WebSocket test client.
type client struct {
	t       testing.TB
	conn    net.Conn
	br      *bufio.Reader
	timeout time.Duration // read deadline of next; zero means testutil.Timeout
}

// dial connects to room (or to the raw path when room starts with "/").
func (g *gateway) dial(t testing.TB, room string) *client {
	t.Helper()
	c, err := g.tryDial(room)
	if err != nil {
		t.Fatalf("dial %s: %v", room, err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func (g *gateway) tryDial(room string) (*client, error) {
	path := room
	if !strings.HasPrefix(room, "/") {
		path = "/ws/chat/" + room + "/"
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	conn, br, _, err := ws.Dial(ctx, g.url(path))
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return &client{conn: conn, br: br}, nil
}

// send sends a text message.
func (c *client) send(text string) {
	c.t.Helper()
	if err := wsutil.WriteClientText(c.conn, []byte(text)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// sendChat sends {"username": user, "message": msg}.
func (c *client) sendChat(user, msg string) {
	c.t.Helper()
	b, _ := json.Marshal(map[string]string{"username": user, "message": msg})
	c.send(string(b))
}

// frame is one frame received by a client.
type frame struct {
	op      ws.OpCode
	payload []byte
}

// next reads the next frame, answering nothing by itself.
func (c *client) next() (frame, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(cmp.Or(c.timeout, testutil.Timeout)))
	h, err := ws.ReadHeader(c.br)
	if err != nil {
		return frame{}, err
	}
	p := make([]byte, h.Length)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return frame{}, err
	}
	if h.Masked {
		return frame{}, errors.New("server sent a masked frame")
	}
	return frame{h.OpCode, p}, nil
}

// recv returns the next text message, skipping pings (which it answers).
func (c *client) recv() string {
	c.t.Helper()
	for {
		f, err := c.next()
		if err != nil {
			c.t.Fatalf("recv: %v", err)
		}
		switch f.op {
		case ws.OpText:
			return string(f.payload)
		case ws.OpPing:
			_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewPongFrame(f.payload)))
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.payload)
			c.t.Fatalf("recv: got close %d %q, want a text message", code, reason)
		default:
			c.t.Fatalf("recv: got opcode %v, want text", f.op)
		}
	}
}

// recvChat returns the next message decoded as a chat message.
func (c *client) recvChat() (user, msg string) {
	c.t.Helper()
	var m struct{ Username, Message string }
	raw := c.recv()
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		c.t.Fatalf("message %q is not JSON: %v", raw, err)
	}
	return m.Username, m.Message
}

// expectClose reads until a close frame and returns its code and reason;
// text frames before it are skipped when skipText is set.
func (c *client) expectClose(skipText bool) (ws.StatusCode, string) {
	c.t.Helper()
	for {
		f, err := c.next()
		if err != nil {
			c.t.Fatalf("waiting for a close frame: %v", err)
		}
		switch {
		case f.op == ws.OpClose:
			if len(f.payload) == 0 {
				return ws.StatusNoStatusRcvd, ""
			}
			code, reason := ws.ParseCloseFrameData(f.payload)
			return code, reason
		case f.op == ws.OpText && skipText, f.op == ws.OpPing:
		default:
			c.t.Fatalf("waiting for a close frame: got opcode %v %q", f.op, f.payload)
		}
	}
}

// expectEOF checks that the server closes the TCP connection.
func (c *client) expectEOF() {
	c.t.Helper()
	for {
		f, err := c.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
				return
			}
			c.t.Fatalf("want EOF, got %v", err)
		}
		if f.op == ws.OpText || f.op == ws.OpClose {
			c.t.Fatalf("want EOF, got frame %v %q", f.op, f.payload)
		}
	}
}

// writeRaw writes raw bytes: hand-made frames for protocol tests.
func (c *client) writeRaw(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// rawFrame builds a client frame: masked unless unmasked, with the given
// first byte (FIN, RSV and opcode) and payload.
func rawFrame(b0 byte, payload []byte, unmasked bool) []byte {
	out := []byte{b0}
	maskBit := byte(0x80)
	if unmasked {
		maskBit = 0
	}
	switch n := len(payload); {
	case n < 126:
		out = append(out, maskBit|byte(n))
	case n <= 0xffff:
		out = append(out, maskBit|126, byte(n>>8), byte(n))
	default:
		out = append(out, maskBit|127)
		out = binary.BigEndian.AppendUint64(out, uint64(n))
	}
	if unmasked {
		return append(out, payload...)
	}
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	out = append(out, mask[:]...)
	p := append([]byte(nil), payload...)
	ws.Cipher(p, mask, 0)
	return append(out, p...)
}

// httpGet fetches a plain HTTP path from the gateway.
func (g *gateway) httpGet(t testing.TB, path string) (int, string) {
	t.Helper()
	client := http.Client{Timeout: testutil.Timeout}
	resp, err := client.Get("http://" + g.addr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// chat returns the JSON the gateway forwards for user and msg.
func chat(user, msg string) string {
	return fmt.Sprintf(`{"username":%q,"message":%q}`, user, msg)
}
