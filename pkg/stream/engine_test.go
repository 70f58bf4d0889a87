package stream

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// newEngineFunc builds an engine under test that delivers to h, with the
// settings of o. The engine is closed by the suite.
type newEngineFunc func(t *testing.T, h Handler, o engineOpts) Engine

// engineOpts are the settings some conformance tests need; zero fields
// mean the engine's test defaults.
type engineOpts struct {
	maxLen       int64         // REDIS_MAXLEN, the Memory ring's size
	dedupeWindow time.Duration // REDIS_DEDUPE_WINDOW
}

// redis returns c with o's settings.
func (o engineOpts) redis(c RedisConfig) RedisConfig {
	c.MaxLen = cmp.Or(o.maxLen, c.MaxLen)
	c.DedupeWindow = cmp.Or(o.dedupeWindow, c.DedupeWindow)
	return c
}

// memory returns the MemoryConfig of o.
func (o engineOpts) memory() MemoryConfig {
	return MemoryConfig{MaxLen: o.maxLen, DedupeWindow: o.dedupeWindow}
}

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

// logOnFailure logs every delivery of room at the end of a failed test:
// what arrived, in order, with IDs and loss notices.
func (c *collector) logOnFailure(t *testing.T, room string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, d := range c.got {
			if d.room == room {
				t.Logf("delivery %d: %v lost=%v after=%v payload=%q", i, d.msg.ID, d.msg.Lost, d.msg.LostAfter, d.msg.Payload)
			}
		}
	})
}

// waitFor waits until n deliveries for room have arrived and returns them.
func (c *collector) waitFor(t *testing.T, room string, n int) []Message {
	t.Helper()
	deadline := time.After(testutil.Timeout)
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
	deadline := time.After(testutil.Timeout)
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

// testEngine runs the conformance suite every Engine must pass: each
// subtest is a function of its own, named after what it specifies.
func testEngine(t *testing.T, newEngine newEngineFunc) {
	for _, tc := range []struct {
		name string
		test func(*testing.T, newEngineFunc)
	}{
		{"DeliversToSubscribedRoom", testDeliversToSubscribedRoom},
		{"StatsCountRefusals", testStatsCountRefusals},
		{"OrderAndIncreasingIDs", testOrderAndIncreasingIDs},
		{"RoomIsolation", testRoomIsolation},
		{"NotSubscribedIsNotDeliveredLater", testNotSubscribedIsNotDeliveredLater},
		{"SubscribeIsIdempotent", testSubscribeIsIdempotent},
		{"ConcurrentPublishersLoseNothing", testConcurrentPublishersLoseNothing},
		{"CallerMayReusePayload", testCallerMayReusePayload},
		{"AckOncePerPublish", testAckOncePerPublish},
		{"AloneIsStored", testAloneIsStored},
		{"CanceledContext", testCanceledContext},
		{"History", testHistory},
		{"HistoryBetweenEntries", testHistoryBetweenEntries},
		{"Last", testLast},
		{"HistoryOutlivesSubscribers", testHistoryOutlivesSubscribers},
		{"HistoryTruncated", testHistoryTruncated},
		{"CIDDedupe", testCIDDedupe},
		{"CIDWindowExpires", testCIDWindowExpires},
		{"CIDKeepsOrder", testCIDKeepsOrder},
		{"MembersOfThisNode", testMembersOfThisNode},
		{"Closed", testClosed},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.test(t, newEngine) })
	}
}

// startEngine starts the engine under test with the settings of o and a
// collector as its Handler; the engine is closed when the test ends.
func startEngine(t *testing.T, newEngine newEngineFunc, o engineOpts) (Engine, *collector) {
	c := newCollector()
	e := newEngine(t, c.handle, o)
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	return e, c
}

// testDeliversToSubscribedRoom: a message published to a subscribed room is
// delivered once with its ID, sender and payload, and counted.
func testDeliversToSubscribedRoom(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, c := startEngine(t, newEngine, engineOpts{})
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
}

// testStatsCountRefusals: a Publish after Close is refused with ErrClosed
// and counted as refused.
func testStatsCountRefusals(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
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
}

// testOrderAndIncreasingIDs: one publisher's messages are delivered in the
// order published, with the IDs acknowledged, strictly increasing.
func testOrderAndIncreasingIDs(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, c := startEngine(t, newEngine, engineOpts{})
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
}

// testRoomIsolation: each room gets its own messages only, in order.
func testRoomIsolation(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
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
}

// testNotSubscribedIsNotDeliveredLater: messages published while a room is
// not subscribed are never delivered, before or after a Subscribe.
func testNotSubscribedIsNotDeliveredLater(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
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
	checkPayloads(t, "delivered", got, "first", "second")
}

// testSubscribeIsIdempotent: subscribing twice delivers once; unsubscribing
// an unknown room is no error.
func testSubscribeIsIdempotent(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
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
}

// publishFromSenders publishes each messages ("0", "1", …) from each of
// senders goroutines to room, sender s through engineOf(s), and fails the
// test if any is not accepted.
func publishFromSenders(t *testing.T, senders, each int, room string, engineOf func(s int) Engine) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := range senders {
		e := engineOf(s)
		wg.Go(func() {
			for i := range each {
				if _, err := PublishWait(context.Background(), e, room, Message{Sender: uint64(s), Payload: strconv.AppendInt(nil, int64(i), 10)}); err != nil {
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
}

// testConcurrentPublishersLoseNothing: concurrent publishers lose nothing and
// keep their own order.
func testConcurrentPublishersLoseNothing(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
	mustSubscribe(t, e, "burst")
	const senders, each = 10, 100
	publishFromSenders(t, senders, each, "burst", func(int) Engine { return e })
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
}

// testCallerMayReusePayload: the caller may reuse a payload's buffer once
// Publish returns: the engine keeps its own copy.
func testCallerMayReusePayload(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
	mustSubscribe(t, e, "reuse")
	buf := []byte("one")
	mustPublish(t, e, "reuse", Message{Sender: 1, Payload: buf})
	copy(buf, "two")
	mustPublish(t, e, "reuse", Message{Sender: 1, Payload: buf})
	got := c.settle(t, e, "reuse")
	checkPayloads(t, "delivered", got, "one", "two")
}

// testAckOncePerPublish: every Publish is acknowledged exactly once, and
// one goroutine's messages are stored in the order of its calls.
func testAckOncePerPublish(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
	mustSubscribe(t, e, "acks")
	const n = 300
	var mu sync.Mutex
	acks := make(map[int]int, n)
	var ids []ID
	done := make(chan struct{})
	for i := range n {
		e.Publish("acks", Message{Sender: 3, Payload: fmt.Appendf(nil, "%d", i)}, ackOf(func(ref any, id ID, err error) {
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
		}), i)
	}
	select {
	case <-done:
	case <-time.After(testutil.Timeout):
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
}

// testAloneIsStored: Message.Alone is a hint. A message published with
// it is stored like any other: History holds it, in order, with a fresh
// ID, so a member that joins later reads it. Delivered, it comes in
// order and at most once: an engine may skip it only when its Ack says
// nobody joined (false); when the Ack asks for it (true) it is
// delivered. Handlers never see Alone set.
func testAloneIsStored(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, c := startEngine(t, newEngine, engineOpts{})
	const room = "alone"
	mustSubscribe(t, e, room)
	ids := []ID{
		publishAck(t, e, room, Message{Sender: 1, Payload: []byte("a"), Alone: true}, false), // still alone
		publishAck(t, e, room, Message{Sender: 1, Payload: []byte("b"), Alone: true}, true),  // a member joined
		mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("c")}),
	}
	hist, truncated, err := history(ctx, e, room, ID{}, 10)
	if err != nil || truncated {
		t.Fatalf("History: truncated %v, %v", truncated, err)
	}
	checkPayloads(t, "History of a room with messages sent Alone", hist, "a", "b", "c")
	checkEntries(t, hist, ids, 0, 3)
	got := c.settle(t, e, room)
	from := 1 // "a" may be skipped: its Ack said nobody else is here
	if len(got) == 3 {
		from = 0
	}
	// "b" was asked for by its Ack; nothing comes twice, all in order.
	checkPayloads(t, "delivered", got, []string{"a", "b", "c"}[from:]...)
	checkEntries(t, got, ids, from, 3)
	for _, m := range append(hist, got...) {
		if m.Alone {
			t.Fatalf("a reader saw Alone set: %+v", m)
		}
	}
}

// publishAck publishes m with an Ack that answers deliver, waits for the
// outcome and returns the entry's ID.
func publishAck(t *testing.T, e Engine, room string, m Message, deliver bool) ID {
	t.Helper()
	id, err := PublishWait(context.Background(), ackAnswers{e, deliver}, room, m)
	if err != nil {
		t.Fatalf("Publish %q to %q: %v", m.Payload, room, err)
	}
	return id
}

// ackAnswers is an Engine whose Publish answers its Acks with deliver,
// whatever the caller's Ack answers.
type ackAnswers struct {
	Engine
	deliver bool
}

// Publish is the engine's, with the Ack's answer replaced.
func (a ackAnswers) Publish(room string, m Message, ack Ack, ref any) {
	a.Engine.Publish(room, m, func(ref any, id ID, err error) bool {
		ack(ref, id, err)
		return a.deliver
	}, ref)
}

// checkPayloads fails the test unless ms hold exactly the payloads want,
// in order; what names the messages in the failure.
func checkPayloads(t *testing.T, what string, ms []Message, want ...string) {
	t.Helper()
	ps := make([]string, 0, len(ms))
	for _, m := range ms {
		ps = append(ps, string(m.Payload))
	}
	if !slices.Equal(ps, want) {
		t.Fatalf("%s %q, want %q", what, ps, want)
	}
}

// testCanceledContext: PublishWait with a canceled context fails with
// context.Canceled.
func testCanceledContext(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := PublishWait(cctx, e, "x", Message{Sender: 1, Payload: []byte("x")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a canceled context: %v, want context.Canceled", err)
	}
}

// testHistory: History returns the entries after an ID, oldest first, as
// many as asked, with End the newest entry.
func testHistory(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	const room = "hist"
	// One buffer for every payload, rewritten once Publish returns:
	// the engine must keep copies.
	buf := make([]byte, 0, 16)
	var ids []ID
	for i := range 10 {
		buf = fmt.Appendf(buf[:0], "h%d", i)
		ids = append(ids, publishAll(t, e, room, []Message{{Sender: uint64(100 + i), Payload: buf}})...)
	}
	copy(buf, "garbage")
	for _, tc := range []struct {
		name      string
		after     ID
		n         int
		from, to  int // the entries expected: ids[from:to]
		truncated bool
	}{
		{"FromZero", ID{}, 100, 0, 10, false},
		{"FromZeroLimited", ID{}, 3, 0, 3, false},
		{"AfterAnID", ids[3], 100, 4, 10, false},
		{"AfterAnIDLimited", ids[3], 2, 4, 6, false},
		{"AfterTheLast", ids[9], 100, 10, 10, false},
		{"AfterAFutureID", ID{Ms: ids[9].Ms + 1000}, 100, 10, 10, false},
		{"NoneAsked", ids[3], 0, 0, 0, false},
		{"AllAsked", ids[3], math.MaxInt, 4, 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, truncated, err := history(ctx, e, room, tc.after, tc.n)
			if err != nil {
				t.Fatalf("History: %v", err)
			}
			if truncated != tc.truncated {
				t.Fatalf("truncated = %v, want %v", truncated, tc.truncated)
			}
			checkEntries(t, got, ids, tc.from, tc.to)
		})
	}
	t.Run("UnknownRoom", func(t *testing.T) {
		got, truncated, err := history(ctx, e, "never-written", ID{}, 10)
		if err != nil || truncated || len(got) != 0 {
			t.Fatalf("History of an unknown room from zero = %d entries, truncated %v, %v; want nothing", len(got), truncated, err)
		}
		// A recent ID (here of another room): nothing of the room can
		// have expired since, so nothing is missing (issue 18, item 5).
		got, truncated, err = history(ctx, e, "never-written", ids[0], 10)
		if err != nil || truncated || len(got) != 0 {
			t.Fatalf("History of an unknown room after %v = %d entries, truncated %v, %v; want nothing, not truncated", ids[0], len(got), truncated, err)
		}
	})
	t.Run("End", func(t *testing.T) {
		for _, after := range []ID{{}, ids[3], ids[9], {Ms: ids[9].Ms + 1000}} {
			p, err := e.History(ctx, room, after, 2)
			if err != nil || p.End != ids[9] {
				t.Fatalf("History after %v: End %v (%v), want the newest entry %v", after, p.End, err, ids[9])
			}
		}
		if p, err := e.History(ctx, "never-written", ids[2], 2); err != nil || !p.End.IsZero() {
			t.Fatalf("History of an unknown room: End %v (%v), want zero", p.End, err)
		}
	})
}

// testHistoryBetweenEntries: History after an ID within the held entries.
//
// Issue 18, item 5: an ID that is no entry of the room but lies within
// the held ones (between two entries, or the bare <ms> form) is not
// truncated: trimming only removes the oldest entries.
func testHistoryBetweenEntries(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	const room = "between"
	ids := publishAll(t, e, room, hMessages(3))
	testutil.Eventually(t, "the clock to pass the first entries", func() bool {
		return uint64(time.Now().UnixMilli()) > ids[2].Ms+1
	})
	ids = append(ids, publishAll(t, e, room, hRange(3, 6))...)
	between := ID{Ms: ids[2].Ms, Seq: ids[2].Seq + 1}
	bare := ID{Ms: ids[2].Ms + 1}
	for _, after := range []ID{between, bare} {
		got, truncated, err := history(ctx, e, room, after, 10)
		if err != nil || truncated {
			t.Fatalf("History after %v (no entry, within the held ones): truncated %v (%v), want false", after, truncated, err)
		}
		from := 3
		for from < len(ids) && !after.Less(ids[from]) {
			from++
		}
		checkEntries(t, got, ids, from, len(ids))
	}
}

// testLast: Last returns the newest n entries, oldest first.
func testLast(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	const room = "last"
	var msgs []Message
	for i := range 10 {
		msgs = append(msgs, Message{Sender: uint64(100 + i), Payload: fmt.Appendf(nil, "h%d", i)})
	}
	ids := publishAll(t, e, room, msgs)
	for _, tc := range []struct {
		name     string
		n        int
		from, to int
	}{
		{"FewerThanHeld", 3, 7, 10},
		{"MoreThanHeld", 100, 0, 10},
		{"None", 0, 0, 0},
		{"AllAsked", math.MaxInt, 0, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.Last(ctx, room, tc.n)
			if err != nil {
				t.Fatalf("Last: %v", err)
			}
			checkEntries(t, got, ids, tc.from, tc.to)
		})
	}
	if got, err := e.Last(ctx, "never-written", 5); err != nil || len(got) != 0 {
		t.Fatalf("Last of an unknown room = %d entries, %v; want none", len(got), err)
	}
}

// testHistoryOutlivesSubscribers: a room's history stays once everyone
// unsubscribed.
func testHistoryOutlivesSubscribers(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, c := startEngine(t, newEngine, engineOpts{})
	const room = "kept"
	mustSubscribe(t, e, room)
	ids := publishAll(t, e, room, []Message{{Sender: 1, Payload: []byte("h0")}, {Sender: 1, Payload: []byte("h1")}})
	c.waitFor(t, room, 2)
	if err := e.Unsubscribe(room); err != nil {
		t.Fatal(err)
	}
	ids = append(ids, publishAll(t, e, room, []Message{{Sender: 1, Payload: []byte("h2")}})...)
	got, truncated, err := history(ctx, e, room, ID{}, 10)
	if err != nil || truncated {
		t.Fatalf("History after everyone left: truncated %v, %v", truncated, err)
	}
	checkEntries(t, got, ids, 0, 3)
}

// testHistoryTruncated: History after a trimmed entry says truncated and
// starts at the oldest entry held.
func testHistoryTruncated(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	// MAXLEN 10: the Memory ring keeps exactly 10, Redis (MAXLEN ~)
	// at least 10, trimming whole nodes of entries.
	e, _ := startEngine(t, newEngine, engineOpts{maxLen: 10})
	const room = "trim"
	const total = 300
	var msgs []Message
	for i := range total {
		msgs = append(msgs, Message{Sender: uint64(100 + i), Payload: fmt.Appendf(nil, "h%d", i)})
	}
	ids := publishAll(t, e, room, msgs)
	held, truncated, err := history(ctx, e, room, ID{}, 2*total)
	if err != nil || truncated {
		t.Fatalf("History from zero: truncated %v, %v; want the entries held", truncated, err)
	}
	if len(held) < 10 || len(held) >= total {
		t.Fatalf("the room holds %d entries; want at least MAXLEN (10) and fewer than the %d published", len(held), total)
	}
	k := total - len(held) // ids[k] is the oldest held
	checkEntries(t, held, ids, k, total)

	for _, tc := range []struct {
		name  string
		after ID
		from  int
	}{
		{"AfterTheFirst", ids[0], k},
		{"AfterTheNextToLastTrimmed", ids[k-2], k}, // ids[k-1] was trimmed
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, truncated, err := history(ctx, e, room, tc.after, 2*total)
			if err != nil || !truncated {
				t.Fatalf("History after a trimmed entry: truncated %v, %v; want truncated", truncated, err)
			}
			checkEntries(t, got, ids, tc.from, total)
		})
	}
	got, truncated, err := history(ctx, e, room, ids[k], 5)
	if err != nil || truncated {
		t.Fatalf("History after the oldest entry held: truncated %v, %v; want not truncated", truncated, err)
	}
	checkEntries(t, got, ids, k+1, k+6)
	last, err := e.Last(ctx, room, 5)
	if err != nil {
		t.Fatal(err)
	}
	checkEntries(t, last, ids, total-5, total)
}

// testCIDDedupe: a resend with the same CID in the same room appends
// nothing and is acknowledged with the first ID.
func testCIDDedupe(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, c := startEngine(t, newEngine, engineOpts{})
	const room = "cid"
	mustSubscribe(t, e, room)
	first, err := PublishWait(ctx, e, room, Message{Sender: 1, Payload: []byte("first"), CID: "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := PublishWait(ctx, e, room, Message{Sender: 1, Payload: []byte("resent"), CID: "c-1"})
	if err != nil || again != first {
		t.Fatalf("resend of CID c-1 acked %v (%v), want the first ID %v", again, err, first)
	}
	// IDs are per room: another room's entry may have the same one.
	other := mustPublishID(t, e, "cid-elsewhere", Message{Sender: 1, Payload: []byte("x"), CID: "c-1"})
	if hist, _, err := history(ctx, e, "cid-elsewhere", ID{}, 10); err != nil || len(hist) != 1 || hist[0].ID != other {
		t.Fatalf("CID c-1 in another room: History %d entries (%v), want an entry of its own, %v", len(hist), err, other)
	}
	plain := mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("plain")})
	second := mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("second"), CID: "c-2"})
	ids := []ID{first, plain, second}

	hist, _, err := history(ctx, e, room, ID{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	got := c.settle(t, e, room)
	for what, ms := range map[string][]Message{"History": hist, "delivered": got} {
		checkPayloads(t, what, ms, "first", "plain", "second")
		for i, m := range ms {
			if m.ID != ids[i] || m.CID != "" {
				t.Fatalf("%s entry %d: ID %v CID %q, want ID %v and no CID", what, i, m.ID, m.CID, ids[i])
			}
		}
	}
	if s := e.Stats(); s.Duplicates != 1 || s.Accepted != 6 {
		t.Fatalf("Stats: %d duplicates, %d accepted; want 1 and 6 (the marker included)", s.Duplicates, s.Accepted)
	}
}

// testCIDWindowExpires: a CID is forgotten once its dedupe window passed.
func testCIDWindowExpires(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{dedupeWindow: 500 * time.Millisecond})
	const room = "window"
	first := mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("a"), CID: "w"})
	var later ID
	testutil.Eventually(t, "the CID to be forgotten once its window passed", func() bool {
		later = mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("a"), CID: "w"})
		return later != first
	})
	got, _, err := history(ctx, e, room, ID{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	checkEntries(t, got, []ID{first, later}, 0, 2)
}

// testCIDKeepsOrder: messages with and without CID from one sender keep
// their order.
//
// One sender, one goroutine, messages with and without CID mixed:
// stored and delivered in the order sent.
func testCIDKeepsOrder(t *testing.T, newEngine newEngineFunc) {
	e, c := startEngine(t, newEngine, engineOpts{})
	const room = "mixed"
	mustSubscribe(t, e, room)
	var msgs []Message
	for i := range 200 {
		m := Message{Sender: 1, Payload: fmt.Appendf(nil, "%d", i)}
		if i%3 != 1 {
			m.CID = fmt.Sprintf("mixed-%d", i)
		}
		msgs = append(msgs, m)
	}
	ids := publishAll(t, e, room, msgs)
	got := c.settle(t, e, room)
	checkEntries(t, got, ids, 0, len(ids))
	for i, m := range got {
		if string(m.Payload) != fmt.Sprint(i) {
			t.Fatalf("delivery %d = %q, want %d", i, m.Payload, i)
		}
	}
}

// testMembersOfThisNode: SetMembers counts are read back by Members.
func testMembersOfThisNode(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	e.SetMembers("here", 3)
	e.SetMembers("gone", 2)
	e.SetMembers("gone", 0)
	for room, want := range map[string]int{"here": 3, "gone": 0, "never": 0} {
		if n, err := e.Members(ctx, room); err != nil || n != want {
			t.Fatalf("Members(%q) = %d, %v; want %d", room, n, err, want)
		}
	}
}

// testClosed: after Close every method fails with ErrClosed.
func testClosed(t *testing.T, newEngine newEngineFunc) {
	ctx := context.Background()
	e, _ := startEngine(t, newEngine, engineOpts{})
	mustSubscribe(t, e, "room")
	if err := e.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, err := history(ctx, e, "room", ID{}, 10); !errors.Is(err, ErrClosed) {
		t.Fatalf("History after Close: %v, want ErrClosed", err)
	}
	if _, err := e.Last(ctx, "room", 10); !errors.Is(err, ErrClosed) {
		t.Fatalf("Last after Close: %v, want ErrClosed", err)
	}
	e.SetMembers("room", 1) // does nothing, does not panic
	if _, err := e.Members(ctx, "room"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Members after Close: %v, want ErrClosed", err)
	}
	if _, err := PublishWait(ctx, e, "room", Message{Sender: 1, Payload: []byte("x")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := e.Subscribe("room"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
	}
	if err := e.Health(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Health after Close: %v, want ErrClosed", err)
	}
}

func mustSubscribe(t *testing.T, e Engine, room string) {
	t.Helper()
	if _, err := e.Subscribe(room); err != nil {
		t.Fatalf("Subscribe(%q): %v", room, err)
	}
}

func mustPublish(t *testing.T, e Engine, room string, m Message) {
	t.Helper()
	mustPublishID(t, e, room, m)
}

func mustPublishID(t testing.TB, e Engine, room string, m Message) ID {
	t.Helper()
	id, err := PublishWait(context.Background(), e, room, m)
	if err != nil {
		t.Fatalf("Publish(%q): %v", room, err)
	}
	return id
}

// publishAll publishes msgs to room from one goroutine without waiting in
// between, as the gateway does, and returns their IDs once every one was
// accepted.
func publishAll(t testing.TB, e Engine, room string, msgs []Message) []ID {
	t.Helper()
	type result struct {
		i   int
		id  ID
		err error
	}
	ch := make(chan result, len(msgs))
	ack := ackOf(func(ref any, id ID, err error) { ch <- result{ref.(int), id, err} })
	for i, m := range msgs {
		e.Publish(room, m, ack, i)
	}
	ids := make([]ID, len(msgs))
	timeout := time.After(testutil.Timeout)
	for range msgs {
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatalf("Publish %d to %q: %v", r.i, room, r.err)
			}
			ids[r.i] = r.id
		case <-timeout:
			t.Fatalf("Publish to %q: not every message was acknowledged", room)
		}
	}
	return ids
}

// checkEntries fails unless got holds the entries ids[from:to], in order.
// Entries published by publishAll in the suite carry their index as the
// sender minus 100 and "h<index>" as the payload when checked here.
func checkEntries(t testing.TB, got []Message, ids []ID, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Fatalf("got %d entries, want %d (%d to %d)", len(got), to-from, from, to)
	}
	for i, m := range got {
		if m.ID != ids[from+i] {
			t.Fatalf("entry %d: ID %v, want %v", i, m.ID, ids[from+i])
		}
		if m.Sender >= 100 {
			if j := int(m.Sender) - 100; j != from+i || string(m.Payload) != fmt.Sprintf("h%d", j) {
				t.Fatalf("entry %d: sender %d payload %q, want entry %d", i, m.Sender, m.Payload, from+i)
			}
		}
	}
}

func TestMemoryEngine(t *testing.T) {
	testEngine(t, func(t *testing.T, h Handler, o engineOpts) Engine {
		e, err := NewMemoryWith(h, o.memory())
		if err != nil {
			t.Fatal(err)
		}
		return e
	})
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
	if _, err := e.Subscribe("room"); err != nil {
		b.Fatal(err)
	}
	m := Message{Sender: 1, Payload: []byte(`{"username":"u","message":"hello"}`)}
	var failed error
	ack := ackOf(func(_ any, _ ID, err error) {
		if err != nil {
			failed = err
		}
	})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		e.Publish("room", m, ack, nil)
	}
	if failed != nil {
		b.Fatal(failed)
	}
}

// history is History for the tests that need only its entries and
// whether it was truncated.
func history(ctx context.Context, e Engine, room string, after ID, n int) ([]Message, bool, error) {
	p, err := e.History(ctx, room, after, n)
	return p.Messages, p.Truncated, err
}

// ackOf makes an Ack of f, one that never asks for a delivery.
func ackOf(f func(ref any, id ID, err error)) Ack {
	return func(ref any, id ID, err error) bool { f(ref, id, err); return false }
}
