package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// newEngineFunc builds an engine under test that delivers to h. The engine
// is closed by the suite.
type newEngineFunc func(t *testing.T, h Handler) Engine

// delivery is one Handler call, with the payload copied.
type delivery struct {
	room string
	msg  Message
}

// collector is a Handler that records deliveries for the test to wait on.
type collector struct {
	mu   sync.Mutex
	got  []delivery
	wake chan struct{}
}

func newCollector() *collector { return &collector{wake: make(chan struct{}, 1)} }

func (c *collector) handle(room string, m Message) {
	m.Payload = append([]byte(nil), m.Payload...)
	c.mu.Lock()
	c.got = append(c.got, delivery{room, m})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// waitFor waits until n deliveries for room have arrived and returns them.
func (c *collector) waitFor(t *testing.T, room string, n int) []Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		var ms []Message
		for _, d := range c.got {
			if d.room == room {
				ms = append(ms, d.msg)
			}
		}
		c.mu.Unlock()
		if len(ms) >= n {
			return ms
		}
		select {
		case <-c.wake:
		case <-deadline:
			t.Fatalf("room %q: got %d deliveries, want %d", room, len(ms), n)
		}
	}
}

// settle publishes a marker to room and waits for it: deliveries are in
// order per room, so every delivery of what was published before, late
// duplicates included, has arrived by then. It returns the deliveries
// before the marker.
func (c *collector) settle(t *testing.T, e Engine, room string) []Message {
	t.Helper()
	marker := fmt.Sprintf("\x00marker-%d", time.Now().UnixNano())
	mustPublish(t, e, room, Message{Sender: 1 << 62, Payload: []byte(marker)})
	deadline := time.After(10 * time.Second)
	for {
		c.mu.Lock()
		var ms []Message
		done := false
		for _, d := range c.got {
			if d.room != room {
				continue
			}
			if string(d.msg.Payload) == marker {
				done = true
				break
			}
			if !bytes.HasPrefix(d.msg.Payload, []byte("\x00marker-")) { // earlier settles' markers
				ms = append(ms, d.msg)
			}
		}
		c.mu.Unlock()
		if done {
			return ms
		}
		select {
		case <-c.wake:
		case <-deadline:
			t.Fatalf("room %q: the marker was not delivered (%d deliveries before it)", room, len(ms))
		}
	}
}

// testEngine runs the conformance suite every Engine must pass.
func testEngine(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	start := func(t *testing.T) (Engine, *collector) {
		c := newCollector()
		e := newEngine(t, c.handle)
		t.Cleanup(func() { _ = e.Close(context.Background()) })
		return e, c
	}

	t.Run("DeliversToSubscribedRoom", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "lobby")
		id, err := PublishWait(ctx, e, "lobby", Message{Sender: 42, Payload: []byte(`{"a":1}`)})
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		got := c.waitFor(t, "lobby", 1)[0]
		if got.ID != id || got.Sender != 42 || string(got.Payload) != `{"a":1}` {
			t.Fatalf("delivered %+v (payload %q), want ID %v sender 42 payload {\"a\":1}", got, got.Payload, id)
		}
		if id.IsZero() {
			t.Fatalf("Publish returned the zero ID")
		}
		if err := e.Health(); err != nil {
			t.Fatalf("Health of a running engine: %v", err)
		}
		if s := e.Stats(); s.Accepted != 1 || s.Delivered != 1 || s.Refused != 0 || s.Unconfirmed != 0 {
			t.Fatalf("Stats after one publish and delivery: %+v; want 1 accepted, 1 delivered, nothing else", s)
		}
	})

	t.Run("StatsCountRefusals", func(t *testing.T) {
		e, _ := start(t)
		mustPublish(t, e, "gone", Message{Sender: 1, Payload: []byte("x")})
		if err := e.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := PublishWait(ctx, e, "gone", Message{Sender: 1, Payload: []byte("y")}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Close = %v, want ErrClosed", err)
		}
		if s := e.Stats(); s.Accepted != 1 || s.Refused != 1 {
			t.Fatalf("Stats: %+v; want 1 accepted and 1 refused", s)
		}
	})

	t.Run("OrderAndIncreasingIDs", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "order")
		const n = 500
		ids := make([]ID, n)
		for i := range n {
			id, err := PublishWait(ctx, e, "order", Message{Sender: 1, Payload: fmt.Appendf(nil, "%d", i)})
			if err != nil {
				t.Fatalf("Publish %d: %v", i, err)
			}
			ids[i] = id
		}
		got := c.settle(t, e, "order")
		if len(got) != n {
			t.Fatalf("got %d deliveries, want %d", len(got), n)
		}
		for i, m := range got {
			if string(m.Payload) != fmt.Sprint(i) || m.ID != ids[i] {
				t.Fatalf("delivery %d = %q id %v, want %d id %v", i, m.Payload, m.ID, i, ids[i])
			}
			if i > 0 && !got[i-1].ID.Less(m.ID) {
				t.Fatalf("IDs not increasing: %v then %v", got[i-1].ID, m.ID)
			}
		}
	})

	t.Run("RoomIsolation", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "a")
		mustSubscribe(t, e, "b")
		for i := range 10 {
			mustPublish(t, e, "a", Message{Sender: 1, Payload: fmt.Appendf(nil, "a%d", i)})
			mustPublish(t, e, "b", Message{Sender: 2, Payload: fmt.Appendf(nil, "b%d", i)})
		}
		for _, room := range []string{"a", "b"} {
			got := c.settle(t, e, room)
			if len(got) != 10 {
				t.Fatalf("room %s: got %d deliveries, want 10", room, len(got))
			}
			for i, m := range got {
				if want := fmt.Sprintf("%s%d", room, i); string(m.Payload) != want {
					t.Fatalf("room %s delivery %d = %q, want %q", room, i, m.Payload, want)
				}
			}
		}
	})

	t.Run("NotSubscribedIsNotDeliveredLater", func(t *testing.T) {
		e, c := start(t)
		mustPublish(t, e, "late", Message{Sender: 1, Payload: []byte("before-subscribe")})
		mustSubscribe(t, e, "late")
		mustPublish(t, e, "late", Message{Sender: 1, Payload: []byte("first")})
		if err := e.Unsubscribe("late"); err != nil {
			t.Fatalf("Unsubscribe: %v", err)
		}
		mustPublish(t, e, "late", Message{Sender: 1, Payload: []byte("while-unsubscribed")})
		mustSubscribe(t, e, "late")
		mustPublish(t, e, "late", Message{Sender: 1, Payload: []byte("second")})
		got := c.settle(t, e, "late")
		if len(got) != 2 || string(got[0].Payload) != "first" || string(got[1].Payload) != "second" {
			var ps []string
			for _, m := range got {
				ps = append(ps, string(m.Payload))
			}
			t.Fatalf("deliveries %q, want [first second]", ps)
		}
	})

	t.Run("SubscribeIsIdempotent", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "twice")
		mustSubscribe(t, e, "twice")
		mustPublish(t, e, "twice", Message{Sender: 1, Payload: []byte("x")})
		mustPublish(t, e, "twice", Message{Sender: 1, Payload: []byte("y")})
		if got := c.settle(t, e, "twice"); len(got) != 2 || string(got[0].Payload) != "x" || string(got[1].Payload) != "y" {
			t.Fatalf("got %d deliveries, want exactly x then y", len(got))
		}
		if err := e.Unsubscribe("never-subscribed"); err != nil {
			t.Fatalf("Unsubscribe of an unknown room: %v", err)
		}
	})

	t.Run("ConcurrentPublishersLoseNothing", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "burst")
		const senders, each = 10, 100
		var wg sync.WaitGroup
		errs := make(chan error, senders)
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					if _, err := PublishWait(ctx, e, "burst", Message{Sender: uint64(s), Payload: fmt.Appendf(nil, "%d", i)}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("Publish: %v", err)
		}
		got := c.settle(t, e, "burst")
		if len(got) != senders*each {
			t.Fatalf("got %d deliveries, want %d", len(got), senders*each)
		}
		next := make([]int, senders)
		for i, m := range got {
			if want := fmt.Sprint(next[m.Sender]); string(m.Payload) != want {
				t.Fatalf("sender %d: got %q, want %s (order per sender broken)", m.Sender, m.Payload, want)
			}
			next[m.Sender]++
			if i > 0 && !got[i-1].ID.Less(m.ID) {
				t.Fatalf("IDs not increasing: %v then %v", got[i-1].ID, m.ID)
			}
		}
	})

	t.Run("CallerMayReusePayload", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "reuse")
		buf := []byte("one")
		mustPublish(t, e, "reuse", Message{Sender: 1, Payload: buf})
		copy(buf, "two")
		mustPublish(t, e, "reuse", Message{Sender: 1, Payload: buf})
		got := c.settle(t, e, "reuse")
		if len(got) != 2 || string(got[0].Payload) != "one" || string(got[1].Payload) != "two" {
			t.Fatalf("got %q, %q; want one, two", got[0].Payload, got[1].Payload)
		}
	})

	t.Run("AckOncePerPublish", func(t *testing.T) {
		e, c := start(t)
		mustSubscribe(t, e, "acks")
		const n = 300
		var mu sync.Mutex
		acks := make(map[int]int, n)
		var ids []ID
		done := make(chan struct{})
		for i := range n {
			e.Publish("acks", Message{Sender: 3, Payload: fmt.Appendf(nil, "%d", i)}, func(ref any, id ID, err error) {
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					t.Errorf("message %d: %v", ref, err)
				}
				acks[ref.(int)]++
				ids = append(ids, id)
				if len(ids) == n {
					close(done)
				}
			}, i)
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("not every Publish was acknowledged")
		}
		got := c.settle(t, e, "acks")
		mu.Lock()
		defer mu.Unlock()
		for i := range n {
			if acks[i] != 1 {
				t.Fatalf("message %d acknowledged %d times", i, acks[i])
			}
		}
		// One publisher, one goroutine: acknowledged and stored in order.
		for i := range ids {
			if i > 0 && !ids[i-1].Less(ids[i]) {
				t.Fatalf("acks out of order: %v then %v", ids[i-1], ids[i])
			}
			if got[i].ID != ids[i] || string(got[i].Payload) != fmt.Sprint(i) {
				t.Fatalf("delivery %d = %q %v, acknowledged %v", i, got[i].Payload, got[i].ID, ids[i])
			}
		}
	})

	t.Run("AloneIsStored", func(t *testing.T) {
		// Alone is a hint: the message is accepted with a fresh ID either
		// way, and later messages still arrive in order.
		e, c := start(t)
		mustSubscribe(t, e, "alone")
		a, err := PublishWait(ctx, e, "alone", Message{Sender: 1, Payload: []byte("a"), Alone: true})
		if err != nil {
			t.Fatal(err)
		}
		b, err := PublishWait(ctx, e, "alone", Message{Sender: 1, Payload: []byte("b")})
		if err != nil || !a.Less(b) {
			t.Fatalf("IDs %v then %v (%v): not increasing", a, b, err)
		}
		for _, m := range c.settle(t, e, "alone") {
			if m.Alone {
				t.Fatalf("a Handler saw Alone set: %+v", m)
			}
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		e, _ := start(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := PublishWait(cctx, e, "x", Message{Sender: 1, Payload: []byte("x")}); !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish with a canceled context: %v, want context.Canceled", err)
		}
	})

	t.Run("Closed", func(t *testing.T) {
		e, _ := start(t)
		mustSubscribe(t, e, "room")
		if err := e.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := PublishWait(ctx, e, "room", Message{Sender: 1, Payload: []byte("x")}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Publish after Close: %v, want ErrClosed", err)
		}
		if err := e.Subscribe("room"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
		}
		if err := e.Health(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Health after Close: %v, want ErrClosed", err)
		}
	})
}

func mustSubscribe(t *testing.T, e Engine, room string) {
	t.Helper()
	if err := e.Subscribe(room); err != nil {
		t.Fatalf("Subscribe(%q): %v", room, err)
	}
}

func mustPublish(t *testing.T, e Engine, room string, m Message) {
	t.Helper()
	if _, err := PublishWait(context.Background(), e, room, m); err != nil {
		t.Fatalf("Publish(%q): %v", room, err)
	}
}

func TestMemoryEngine(t *testing.T) {
	testEngine(t, func(t *testing.T, h Handler) Engine { return NewMemory(h) })
}

func TestIDString(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ID
		err  bool
	}{
		{"0-0", ID{}, false},
		{"1700000000000-3", ID{1700000000000, 3}, false},
		{"15", ID{15, 0}, false},
		{"18446744073709551615-18446744073709551615", ID{^uint64(0), ^uint64(0)}, false},
		{"", ID{}, true},
		{"1-", ID{}, true},
		{"a-1", ID{}, true},
		{"-1", ID{}, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseID(tc.in)
			if (err != nil) != tc.err || got != tc.want {
				t.Fatalf("ParseID(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
			if !tc.err && tc.in != "15" && got.String() != tc.in {
				t.Fatalf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func BenchmarkMemoryPublish(b *testing.B) {
	e := NewMemory(func(string, Message) {})
	defer e.Close(context.Background())
	if err := e.Subscribe("room"); err != nil {
		b.Fatal(err)
	}
	m := Message{Sender: 1, Payload: []byte(`{"username":"u","message":"hello"}`)}
	var failed error
	ack := func(_ any, _ ID, err error) {
		if err != nil {
			failed = err
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		e.Publish("room", m, ack, nil)
	}
	if failed != nil {
		b.Fatal(failed)
	}
}
