package room

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// gateEngine is a fake stream.Engine for the join state machine: while
// hold is set, each Subscribe and Unsubscribe call waits at a gate until
// the test opens it, with the error the call returns. Publish delivers at once to
// the Hub when the room is subscribed, as the memory engine does.
type gateEngine struct {
	hub *Hub

	mu         sync.Mutex
	subscribed map[string]bool
	calls      []string        // "sub <room>" and "unsub <room>", in order
	next       uint64          // the last ID handed out (its Ms)
	hold       bool            // new calls wait at a gate
	gates      chan chan error // one per held call, for the test to open
}

func newGateEngine() *gateEngine {
	return &gateEngine{subscribed: map[string]bool{}, gates: make(chan chan error, 16)}
}

func (e *gateEngine) call(what string) error {
	e.mu.Lock()
	e.calls = append(e.calls, what)
	hold := e.hold
	e.mu.Unlock()
	if !hold {
		return nil
	}
	g := make(chan error)
	e.gates <- g
	return <-g
}

// open waits for the next held call and lets it return res.
func (e *gateEngine) open(t *testing.T, res error) {
	t.Helper()
	select {
	case g := <-e.gates:
		g <- res
	case <-time.After(testutil.Timeout):
		t.Fatal("no Subscribe or Unsubscribe call is waiting")
	}
}

func (e *gateEngine) setHold(h bool) {
	e.mu.Lock()
	e.hold = h
	e.mu.Unlock()
}

func (e *gateEngine) callLog() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.calls, ", ")
}

func (e *gateEngine) Subscribe(room string) (stream.ID, error) {
	if err := e.call("sub " + room); err != nil {
		return stream.ID{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subscribed[room] = true
	return stream.ID{}, nil
}

func (e *gateEngine) Unsubscribe(room string) error {
	err := e.call("unsub " + room)
	e.mu.Lock()
	delete(e.subscribed, room)
	e.mu.Unlock()
	return err
}

func (e *gateEngine) Publish(room string, m stream.Message, ack stream.Ack, ref any) {
	e.mu.Lock()
	sub := e.subscribed[room]
	e.next++
	m.ID = stream.ID{Ms: e.next}
	if sub {
		e.hub.Deliver(room, m) // under mu: deliveries in ID order
	}
	e.mu.Unlock()
	ack(ref, m.ID, nil)
}

func (e *gateEngine) History(context.Context, string, stream.ID, int) (stream.Page, error) {
	return stream.Page{}, nil
}
func (e *gateEngine) Last(context.Context, string, int) ([]stream.Message, error) { return nil, nil }
func (e *gateEngine) SetMembers(string, int)                                      {}
func (e *gateEngine) Members(context.Context, string) (int, error)                { return 0, nil }
func (e *gateEngine) Health() error                                               { return nil }
func (e *gateEngine) Stats() stream.Stats                                         { return stream.Stats{} }
func (e *gateEngine) Close(context.Context) error                                 { return nil }

// startHub runs a Hub with engine e behind a real conn.Server on
// loopback and returns the server's address.
func startHub(t *testing.T, cfg Config, e *gateEngine) (*Hub, string) {
	t.Helper()
	logger := testutil.DiscardLogger()
	h, err := NewHub(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	e.hub = h
	h.SetEngine(e)
	return h, serveHub(t, h, conn.Config{TrustedProxies: []string{"none"}}, logger)
}

// serveHub runs h behind a real conn.Server on loopback until the test
// ends and returns its address.
func serveHub(t *testing.T, h *Hub, ccfg conn.Config, logger *slog.Logger) string {
	t.Helper()
	srv, err := conn.NewServer(ccfg, h, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	testutil.Eventually(t, "the server to accept", func() bool {
		probe, err := net.Dial("tcp", srv.Addr().String())
		if err == nil {
			probe.Close()
		}
		return err == nil && srv.Stats().Accepted > 0
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
		defer cancel()
		_ = srv.Shutdown(ctx)
		h.Close()
	})
	return srv.Addr().String()
}

// wsClient is a test client of the Hub.
type wsClient struct {
	c  net.Conn
	br *bufio.Reader
}

// dialResult is the outcome of an upgrade: a client, or the refusal.
type dialResult struct {
	c      *wsClient
	status int
	err    error
}

// dialAsync starts an upgrade to uri and returns its outcome on a
// channel: joins may wait for the engine.
func dialAsync(t *testing.T, addr, uri string) <-chan dialResult {
	t.Helper()
	return dialFrom(t, "", addr, uri)
}

// dialFrom is dialAsync from the local address local (such as
// 127.0.0.2; "" for any).
func dialFrom(t *testing.T, local, addr, uri string) <-chan dialResult {
	t.Helper()
	d := ws.Dialer{}
	if local != "" {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		d.NetDial = nd.DialContext
	}
	res := make(chan dialResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
		defer cancel()
		c, br, _, err := d.Dial(ctx, "ws://"+addr+uri)
		if err != nil {
			var rej ws.StatusError
			status := 0
			if errors.As(err, &rej) {
				status = int(rej)
			}
			res <- dialResult{status: status, err: err}
			return
		}
		if br == nil {
			br = bufio.NewReader(c)
		}
		res <- dialResult{c: &wsClient{c: c, br: br}}
	}()
	return res
}

// joined waits for a dial to succeed.
func joined(t *testing.T, res <-chan dialResult) *wsClient {
	t.Helper()
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("join refused: %v", r.err)
		}
		t.Cleanup(func() { r.c.c.Close() })
		return r.c
	case <-time.After(testutil.Timeout):
		t.Fatal("join did not complete")
	}
	return nil
}

// notYet fails if a dial completed: the join must still be waiting.
func notYet(t *testing.T, res <-chan dialResult) {
	t.Helper()
	select {
	case r := <-res:
		t.Fatalf("join completed (%v) while its room's subscription was held", r.err)
	default:
	}
}

func (c *wsClient) send(t *testing.T, text string) {
	t.Helper()
	if err := wsutil.WriteClientText(c.c, []byte(text)); err != nil {
		t.Fatal(err)
	}
}

// read returns the next data frame: its opcode and payload.
func (c *wsClient) read(t *testing.T) (ws.OpCode, string) {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(testutil.Timeout))
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, p); err != nil {
			t.Fatalf("read: %v", err)
		}
		if h.OpCode != ws.OpPing {
			return h.OpCode, string(p)
		}
	}
}

// recvText returns the next text message.
func (c *wsClient) recvText(t *testing.T) string {
	t.Helper()
	op, p := c.read(t)
	if op != ws.OpText {
		t.Fatalf("got opcode %v %q, want a text message", op, p)
	}
	return p
}

func chatMsg(user, text string) string {
	return fmt.Sprintf(`{"username":%q,"message":%q}`, user, text)
}

// roomsOf returns the number of rooms the Hub knows.
func roomsOf(h *Hub) int { return h.Stats().Rooms }

// TestJoinWaitsForSubscribe: joins to a room new to the node wait, with
// one Subscribe for all of them, and complete together once it returns;
// joins after that are immediate.
func TestJoinWaitsForSubscribe(t *testing.T) {
	e := newGateEngine()
	e.setHold(true)
	h, addr := startHub(t, Config{}, e)
	first, second := dialAsync(t, addr, "/ws/chat/r/"), dialAsync(t, addr, "/ws/chat/r/")
	testutil.Eventually(t, "Subscribe to be called", func() bool { return e.callLog() != "" })
	// The second join must have reached the Hub before the gate opens.
	testutil.Eventually(t, "both joins to wait", func() bool { return pendingOf(h, "r") == 2 })
	notYet(t, first)
	notYet(t, second)
	e.open(t, nil)
	a, b := joined(t, first), joined(t, second)
	e.setHold(false)
	c := joined(t, dialAsync(t, addr, "/ws/chat/r/"))
	if got := e.callLog(); got != "sub r" {
		t.Fatalf("engine calls %q, want one Subscribe", got)
	}
	a.send(t, chatMsg("a", "hi"))
	for _, m := range []*wsClient{b, c} {
		if got := m.recvText(t); got != chatMsg("a", "hi") {
			t.Fatalf("member got %s", got)
		}
	}
	if n := roomsOf(h); n != 1 {
		t.Fatalf("%d rooms, want 1", n)
	}
}

// TestJoinRefusedWhenSubscribeFails: a failed Subscribe refuses every
// waiting join with 503 and a reason, the room is forgotten, and the next
// join subscribes again.
func TestJoinRefusedWhenSubscribeFails(t *testing.T) {
	e := newGateEngine()
	e.setHold(true)
	h, addr := startHub(t, Config{}, e)
	first, second := dialAsync(t, addr, "/ws/chat/f/"), dialAsync(t, addr, "/ws/chat/f/")
	testutil.Eventually(t, "both joins to wait", func() bool { return pendingOf(h, "f") == 2 })
	e.open(t, fmt.Errorf("test: %w", stream.ErrUnavailable))
	for _, res := range []<-chan dialResult{first, second} {
		select {
		case r := <-res:
			if r.status != 503 {
				t.Fatalf("join while Subscribe fails: status %d (%v), want 503", r.status, r.err)
			}
		case <-time.After(testutil.Timeout):
			t.Fatal("join not answered after Subscribe failed")
		}
	}
	testutil.Eventually(t, "the room to be forgotten", func() bool { return roomsOf(h) == 0 })
	e.setHold(false)
	joined(t, dialAsync(t, addr, "/ws/chat/f/"))
	if got := e.callLog(); got != "sub f, sub f" {
		t.Fatalf("engine calls %q, want a second Subscribe for the new join", got)
	}
}

// TestLeaveWhileSubscribing: a client that goes away while its join
// waits is dropped; once Subscribe returns, the empty room is
// unsubscribed and forgotten.
func TestLeaveWhileSubscribing(t *testing.T) {
	e := newGateEngine()
	e.setHold(true)
	h, addr := startHub(t, Config{}, e)
	// A raw upgrade request, so the test holds the socket while the join
	// waits (ws.Dial would block until the answer).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /ws/chat/gone/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	testutil.Eventually(t, "the join to wait", func() bool { return pendingOf(h, "gone") == 1 })
	c.Close()
	testutil.Eventually(t, "the pending join to be dropped", func() bool { return pendingOf(h, "gone") == 0 })
	e.open(t, nil) // Subscribe returns into an empty room
	e.open(t, nil) // which is unsubscribed at once
	testutil.Eventually(t, "the room to be forgotten", func() bool { return roomsOf(h) == 0 })
	if got := e.callLog(); got != "sub gone, unsub gone" {
		t.Fatalf("engine calls %q, want Subscribe then Unsubscribe", got)
	}
}

// TestRejoinWhileUnsubscribing: the last member leaves and, while the
// room's Unsubscribe runs, a new client joins: it waits, the room is
// subscribed again after the Unsubscribe, and the new members get each
// other's messages.
func TestRejoinWhileUnsubscribing(t *testing.T) {
	e := newGateEngine()
	h, addr := startHub(t, Config{}, e)
	old := joined(t, dialAsync(t, addr, "/ws/chat/re/"))
	e.setHold(true)
	old.c.Close()
	testutil.Eventually(t, "Unsubscribe to be called", func() bool { return e.callLog() == "sub re, unsub re" })
	first := dialAsync(t, addr, "/ws/chat/re/")
	testutil.Eventually(t, "the rejoin to wait", func() bool { return pendingOf(h, "re") == 1 })
	notYet(t, first)
	e.open(t, nil) // Unsubscribe returns
	e.open(t, nil) // the room is subscribed again
	a := joined(t, first)
	e.setHold(false)
	b := joined(t, dialAsync(t, addr, "/ws/chat/re/"))
	if got := e.callLog(); got != "sub re, unsub re, sub re" {
		t.Fatalf("engine calls %q, want Subscribe, Unsubscribe, Subscribe", got)
	}
	b.send(t, chatMsg("b", "back"))
	if got := a.recvText(t); got != chatMsg("b", "back") {
		t.Fatalf("after the rejoin got %s", got)
	}
	if n := roomsOf(h); n != 1 {
		t.Fatalf("%d rooms, want 1", n)
	}
}

// pendingOf returns the number of joins waiting in room name.
func pendingOf(h *Hub, name string) int {
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return 0
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.pending)
}

// errorCode decodes an error frame's code.
func errorCode(t *testing.T, frame string) string {
	t.Helper()
	var e struct{ Error, Detail string }
	if err := json.Unmarshal([]byte(frame), &e); err != nil || e.Error == "" || e.Detail == "" {
		t.Fatalf("frame %s is not an error frame with a detail", frame)
	}
	return e.Error
}

// TestSubscribeFailuresLogSparingly: while the engine refuses, every join
// to a new room fails; the log gets one line a second, naming how many
// failures it did not show, not one per join.
func TestSubscribeFailuresLogSparingly(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	h, err := NewHub(Config{}, slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	refused := fmt.Errorf("test: %w", stream.ErrUnavailable)
	for i := range 1000 {
		h.logSubscribeFailed("r"+strconv.Itoa(i), refused)
	}
	mu.Lock()
	lines := strings.Count(buf.String(), "cannot subscribe room")
	mu.Unlock()
	if lines != 1 {
		t.Fatalf("1 000 failures within a second logged %d lines, want 1", lines)
	}
	h.subLog.Lock()
	h.subLog.at = h.subLog.at.Add(-time.Second) // a second later
	h.subLog.Unlock()
	h.logSubscribeFailed("later", refused)
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "not_logged_since_last=999") {
		t.Fatalf("the next line does not count the 999 failures not logged:\n%s", buf.String())
	}
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
