package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

func TestDeliveryAndNoEcho(t *testing.T) {
	g := startGateway(t, nil)
	a, b, c := g.dial(t, "lobby"), g.dial(t, "lobby"), g.dial(t, "lobby")
	a.sendChat("alice", "hello")
	for _, peer := range []*client{b, c} {
		if got, want := peer.recv(), chat("alice", "hello"); got != want {
			t.Fatalf("peer got %s, want %s", got, want)
		}
	}
	// The sender must not get its own message: the next frame it sees is
	// b's reply, which b sent after receiving alice's message.
	b.sendChat("bob", "reply")
	if got, want := a.recv(), chat("bob", "reply"); got != want {
		t.Fatalf("sender's next frame is %s, want %s (no echo of its own message)", got, want)
	}
	if got, want := c.recv(), chat("bob", "reply"); got != want {
		t.Fatalf("c got %s, want %s", got, want)
	}
}

func TestRoomIsolation(t *testing.T) {
	g := startGateway(t, nil)
	a1, a2 := g.dial(t, "room-a"), g.dial(t, "room-a")
	b1, b2 := g.dial(t, "room-b"), g.dial(t, "room-b")
	a1.sendChat("a1", "for room a")
	if got := a2.recv(); got != chat("a1", "for room a") {
		t.Fatalf("a2 got %s", got)
	}
	b2.sendChat("b2", "for room b")
	if got := b1.recv(); got != chat("b2", "for room b") {
		t.Fatalf("b1's first message is %s, want b2's (room a leaked into room b)", got)
	}
}

func TestExtraPathSegmentsJoinTheRoom(t *testing.T) {
	g := startGateway(t, nil)
	a := g.dial(t, "/ws/chat/shared/")
	b := g.dial(t, "/ws/chat/shared/extra/segments")
	c := g.dial(t, "/ws/chat/shared?token=x")
	a.sendChat("a", "hi")
	for _, peer := range []*client{b, c} {
		if got := peer.recv(); got != chat("a", "hi") {
			t.Fatalf("got %s", got)
		}
	}
}

func TestFanOutToFiftyMembers(t *testing.T) {
	g := startGateway(t, nil)
	sender := g.dial(t, "fanout")
	members := make([]*client, 50)
	for i := range members {
		members[i] = g.dial(t, "fanout")
	}
	sender.sendChat("s", "to everyone")
	for i, m := range members {
		if got := m.recv(); got != chat("s", "to everyone") {
			t.Fatalf("member %d got %s", i, got)
		}
	}
}

func TestOrderingOf500Messages(t *testing.T) {
	g := startGateway(t, noRateLimit)
	a, b := g.dial(t, "order"), g.dial(t, "order")
	for i := range 500 {
		a.sendChat("a", fmt.Sprint(i))
	}
	for i := range 500 {
		if _, msg := b.recvChat(); msg != fmt.Sprint(i) {
			t.Fatalf("message %d is %q: order broken", i, msg)
		}
	}
}

// TestBurstLosesNothing: 10 senders × 100 messages into one room; every
// member receives every message of the others, in each sender's order.
// The original lost about 78% of such a burst.
func TestBurstLosesNothing(t *testing.T) {
	g := startGateway(t, noRateLimit)
	const senders, each = 10, 100
	listener := g.dial(t, "burst")
	cs := make([]*client, senders)
	for i := range cs {
		cs[i] = g.dial(t, "burst")
	}
	type result struct {
		who  int
		next map[string]int
		err  error
	}
	results := make(chan result, senders+1)
	readAll := func(who int, c *client, want int) {
		next := map[string]int{}
		for range want {
			f, err := c.next()
			if err != nil {
				results <- result{who, next, err}
				return
			}
			var m struct{ Username, Message string }
			if err := json.Unmarshal(f.payload, &m); err != nil {
				results <- result{who, next, fmt.Errorf("bad frame %q: %v", f.payload, err)}
				return
			}
			if m.Message != fmt.Sprint(next[m.Username]) {
				results <- result{who, next, fmt.Errorf("from %s got %s, want %d", m.Username, m.Message, next[m.Username])}
				return
			}
			next[m.Username]++
		}
		results <- result{who: who, next: next}
	}
	go readAll(-1, listener, senders*each)
	for i, c := range cs {
		go readAll(i, c, (senders-1)*each)
	}
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for j := range each {
				b, _ := json.Marshal(map[string]string{"username": fmt.Sprint("s", i), "message": fmt.Sprint(j)})
				c.writeRaw(rawFrame(0x81, b, false))
			}
		})
	}
	wg.Wait()
	for range senders + 1 {
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("reader %d: %v", r.who, r.err)
			}
			for s, n := range r.next {
				if n != each {
					t.Fatalf("reader %d got %d messages from %s, want %d", r.who, n, s, each)
				}
				if s == fmt.Sprint("s", r.who) {
					t.Fatalf("sender %d received its own messages", r.who)
				}
			}
		case <-time.After(testutil.Timeout):
			t.Fatal("burst not delivered in time")
		}
	}
}

func TestForwardedFormat(t *testing.T) {
	g := startGateway(t, nil)
	a, b := g.dial(t, "format"), g.dial(t, "format")
	for _, tc := range []struct{ name, in, want string }{
		{"strings", `{"username": "ana", "message": "hola"}`, `{"username":"ana","message":"hola"}`},
		{"extra keys dropped", `{"username":"a","message":"m","room":"x","admin":true}`, `{"username":"a","message":"m"}`},
		{"key order normalised", `{"message":"m","username":"a"}`, `{"username":"a","message":"m"}`},
		{"non-string values kept", `{"username": 7, "message": {"x": [1, 2, {"y": null}]}}`, `{"username":7,"message":{"x":[1,2,{"y":null}]}}`},
		{"null and bool", `{"username":null,"message":false}`, `{"username":null,"message":false}`},
		{"escapes kept", `{"username":"\u00e9\"q\"","message":"line\nbreak \\ tab\t"}`, `{"username":"\u00e9\"q\"","message":"line\nbreak \\ tab\t"}`},
		{"unicode", `{"username":"José","message":"¡hola! 👋"}`, `{"username":"José","message":"¡hola! 👋"}`},
		{"spaces inside strings kept", `{"username":"a b","message":{"k": "v w"}}`, `{"username":"a b","message":{"k":"v w"}}`},
		{"last duplicate wins", `{"username":"first","username":"second","message":"m"}`, `{"username":"second","message":"m"}`},
		{"escaped key", `{"user\u006eame":"a","message":"m"}`, `{"username":"a","message":"m"}`},
		{"empty strings", `{"username":"","message":""}`, `{"username":"","message":""}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.t = t
			b.t = t
			a.send(tc.in)
			if got := b.recv(); got != tc.want {
				t.Fatalf("sent %s\n got %s\nwant %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestBadJSONGetsErrorFrameAndKeepsConnection(t *testing.T) {
	g := startGateway(t, nil)
	a, b := g.dial(t, "errors"), g.dial(t, "errors")
	for _, tc := range []struct{ name, in, code, field string }{
		{"not json", `hello`, "invalid_json", ""},
		{"truncated", `{"username":"a","message":`, "invalid_json", ""},
		{"trailing garbage", `{"username":"a","message":"m"} x`, "invalid_json", ""},
		{"single quotes", `{'username':'a','message':'m'}`, "invalid_json", ""},
		{"trailing comma", `{"username":"a","message":"m",}`, "invalid_json", ""},
		{"empty", ``, "invalid_json", ""},
		{"array", `["username","message"]`, "not_object", ""},
		{"string", `"hi"`, "not_object", ""},
		{"number", `42`, "not_object", ""},
		{"missing both", `{}`, "missing_field", "username"},
		{"missing message", `{"username":"a"}`, "missing_field", "message"},
		{"missing username", `{"message":"m"}`, "missing_field", "username"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.t = t
			a.send(tc.in)
			var e struct{ Error, Field, Detail string }
			raw := a.recv()
			if err := json.Unmarshal([]byte(raw), &e); err != nil {
				t.Fatalf("error frame %q is not JSON: %v", raw, err)
			}
			if e.Error != tc.code || e.Field != tc.field || e.Detail == "" {
				t.Fatalf("error frame %s, want error %q field %q and a detail", raw, tc.code, tc.field)
			}
		})
	}
	// The connection still works, and b saw none of the bad messages.
	a.t, b.t = t, t
	a.sendChat("a", "after errors")
	if got := b.recv(); got != chat("a", "after errors") {
		t.Fatalf("b's first message is %s: bad input leaked or connection broke", got)
	}
}

func TestHandshakeErrors(t *testing.T) {
	g := startGateway(t, nil)
	for _, tc := range []struct {
		name, path string
		status     int
		reason     string
	}{
		{"space in room", "/ws/chat/bad%20room/", 400, "room name has ' '"},
		{"unicode room", "/ws/chat/caf%C3%A9/", 400, "room name has"},
		{"room too long", "/ws/chat/" + strings.Repeat("r", 101) + "/", 400, "101 bytes"},
		{"empty room", "/ws/chat//", 400, "room name is empty"},
		{"bad escape", "/ws/chat/a%zz/", 400, "bad %-escape"},
		{"unknown ws path", "/ws/other/room/", 404, "no WebSocket endpoint"},
		{"unknown path", "/elsewhere", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawUpgrade(t, g.addr, tc.path)
			if status != tc.status || !strings.Contains(body, tc.reason) {
				t.Fatalf("response %d %q, want %d with %q", status, body, tc.status, tc.reason)
			}
			if strings.Count(strings.TrimSpace(body), "\n") > 0 {
				t.Fatalf("reason %q is not one line", body)
			}
		})
	}
	t.Run("100-byte room accepted", func(t *testing.T) {
		g.dial(t, strings.Repeat("r", 100))
	})
	t.Run("all allowed characters", func(t *testing.T) {
		g.dial(t, "Az09_-.x")
	})
}

// rawUpgrade sends an upgrade request for path, with the address as Host,
// and returns the status and body of the response.
func rawUpgrade(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	return upgrade(t, addr, path, addr)
}

func TestHTTPEndpoints(t *testing.T) {
	g := startGateway(t, nil)
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ready"},
		{"/stats", 200, `"connections"`},
		{"/nope", 404, ""},
	} {
		if status, body := g.httpGet(t, tc.path); status != tc.status || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s = %d %q, want %d with %q", tc.path, status, body, tc.status, tc.body)
		}
	}
}

// TestChurn connects and disconnects 1 000 clients, some cleanly and some
// by dropping the socket, and checks that the gateway forgets all of them
// and still delivers.
func TestChurn(t *testing.T) {
	g := startGateway(t, nil)
	const total, workers = 1000, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range total / workers {
				c, err := g.tryDial(fmt.Sprintf("churn-%d", i%7))
				if err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))))
				}
				c.conn.Close()
			}
			_ = w
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("churn dial: %v", err)
	}
	waitStats(t, g, func(s statsDoc) bool { return s.Conn.Open == 0 && s.Hub.Rooms == 0 })
	a, b := g.dial(t, "churn-0"), g.dial(t, "churn-0")
	a.sendChat("a", "still works")
	if got := b.recv(); got != chat("a", "still works") {
		t.Fatalf("after churn got %s", got)
	}
	if s := getStats(t, g); s.Conn.Upgraded < total {
		t.Fatalf("stats count %d upgrades, want at least %d", s.Conn.Upgraded, total)
	}
}

type statsDoc struct {
	Conn struct {
		Open, Accepted, Upgraded int64
	} `json:"connections"`
	Hub struct {
		Rooms                                       int
		Published, Delivered, Rejected, Unavailable int64
		Unconfirmed                                 int64
		RatePaused                                  int64 `json:"rate_paused"`
		RateLimited                                 int64 `json:"rate_limited"`
		RateClosed                                  int64 `json:"rate_closed"`
	} `json:"rooms"`
}

func getStats(t testing.TB, g *gateway) statsDoc {
	t.Helper()
	_, body := g.httpGet(t, "/stats")
	var s statsDoc
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("stats %q: %v", body, err)
	}
	return s
}

// waitStats polls /stats until ok holds.
func waitStats(t testing.TB, g *gateway, ok func(statsDoc) bool) {
	t.Helper()
	var s statsDoc
	defer func() {
		if t.Failed() {
			t.Logf("last /stats: %+v", s)
		}
	}()
	testutil.Eventually(t, "the expected /stats", func() bool {
		s = getStats(t, g)
		return ok(s)
	})
}
