package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// logEngine is a fake stream.Engine that keeps every room's entries (the
// last maxLen of them), delivers synchronously like the memory engine,
// dedupes CIDs, and lets a test act inside History: afterRead runs once
// History has read its page and before it returns it, so a test can
// publish while a replay runs.
type logEngine struct {
	hub    *Hub
	maxLen int

	dmu sync.Mutex // serialises append and delivery: deliveries in ID order

	mu         sync.Mutex
	entries    map[string][]stream.Message
	trimmed    map[string]stream.ID // newest trimmed entry per room
	subscribed map[string]bool
	cids       map[string]stream.ID
	members    map[string]int
	next       uint64
	// lostBefore holds, per room, an entry ID before which entries
	// were lost (a Redis rollback): History puts a loss notice there
	// when its page holds an entry before it, or at the end when no
	// entry follows (stream.Page).
	lostBefore map[string]stream.ID
	afterRead  func(room string, call int)
	calls      int
	failFrom   int // History calls numbered this or later fail; 0 none
	lastCalls  int
	historyNs  []int // the n of every History call
}

func newLogEngine() *logEngine {
	return &logEngine{entries: map[string][]stream.Message{}, trimmed: map[string]stream.ID{},
		subscribed: map[string]bool{}, cids: map[string]stream.ID{}, members: map[string]int{}}
}

func (e *logEngine) Publish(room string, m stream.Message, ack stream.Ack, ref any) {
	e.dmu.Lock()
	e.mu.Lock()
	if m.CID != "" {
		if id, ok := e.cids[room+"\x00"+m.CID]; ok {
			e.mu.Unlock()
			e.dmu.Unlock()
			ack(ref, id, nil)
			return
		}
	}
	e.next++
	m.ID = stream.ID{Ms: 1000, Seq: e.next}
	if m.CID != "" {
		e.cids[room+"\x00"+m.CID] = m.ID
	}
	m.CID, m.Alone = "", false
	m.Payload = append([]byte(nil), m.Payload...)
	log := append(e.entries[room], m)
	if e.maxLen > 0 && len(log) > e.maxLen {
		e.trimmed[room] = log[len(log)-e.maxLen-1].ID
		log = log[len(log)-e.maxLen:]
	}
	e.entries[room] = log
	sub := e.subscribed[room]
	e.mu.Unlock()
	if sub {
		e.hub.Deliver(room, m)
	}
	e.dmu.Unlock()
	ack(ref, m.ID, nil)
}

// publish publishes a chat message from no connection (sender 0).
func (e *logEngine) publish(room, user, text string) stream.ID {
	var id stream.ID
	e.Publish(room, stream.Message{Payload: []byte(chatMsg(user, text))}, func(_ any, i stream.ID, _ error) bool { id = i; return true }, nil)
	return id
}

func (e *logEngine) History(_ context.Context, room string, after stream.ID, n int) (stream.Page, error) {
	e.mu.Lock()
	e.calls++
	call := e.calls
	e.historyNs = append(e.historyNs, n)
	if e.failFrom > 0 && call >= e.failFrom {
		e.mu.Unlock()
		return stream.Page{}, fmt.Errorf("test: %w", stream.ErrUnavailable)
	}
	var out []stream.Message
	for _, m := range e.entries[room] {
		if after.Less(m.ID) && len(out) < n {
			out = append(out, m)
		}
	}
	if gap, ok := e.lostBefore[room]; ok {
		out = e.markLost(out, gap)
	}
	p := stream.Page{Messages: out, Truncated: !after.IsZero() && after.Less(e.trimmed[room])}
	if log := e.entries[room]; len(log) > 0 {
		p.End = log[len(log)-1].ID
	}
	hook := e.afterRead
	e.mu.Unlock()
	if hook != nil {
		hook(room, call)
	}
	return p, nil
}

// markLost puts a loss notice in page before the entry gap (a zero gap:
// after the last entry) when an entry of the page comes before it.
func (e *logEngine) markLost(page []stream.Message, gap stream.ID) []stream.Message {
	for i, m := range page {
		if i > 0 && !gap.IsZero() && !m.ID.Less(gap) {
			out := append(append([]stream.Message(nil), page[:i]...), stream.Message{Lost: true, LostAfter: page[i-1].ID, ID: m.ID})
			return append(out, page[i:]...)
		}
	}
	if gap.IsZero() && len(page) > 0 {
		return append(page, stream.Message{Lost: true, LostAfter: page[len(page)-1].ID})
	}
	return page
}

func (e *logEngine) Last(_ context.Context, room string, n int) ([]stream.Message, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastCalls++
	log := e.entries[room]
	return append([]stream.Message(nil), log[max(0, len(log)-n):]...), nil
}

func (e *logEngine) SetMembers(room string, n int) {
	e.mu.Lock()
	e.members[room] = n
	e.mu.Unlock()
}

func (e *logEngine) Members(_ context.Context, room string) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.members[room], nil
}

func (e *logEngine) Subscribe(room string) (stream.ID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.subscribed[room] = true
	var last stream.ID
	if log := e.entries[room]; len(log) > 0 {
		last = log[len(log)-1].ID
	}
	return last, nil
}

func (e *logEngine) Unsubscribe(room string) error {
	e.mu.Lock()
	delete(e.subscribed, room)
	e.mu.Unlock()
	return nil
}

func (e *logEngine) Health() error               { return nil }
func (e *logEngine) Stats() stream.Stats         { return stream.Stats{} }
func (e *logEngine) Close(context.Context) error { return nil }

// startLogHub runs a Hub on a logEngine behind a real conn.Server.
func startLogHub(t *testing.T, cfg Config, ccfg conn.Config, e *logEngine) (*Hub, string) {
	t.Helper()
	logger := testutil.DiscardLogger()
	h, err := NewHub(cfg, logger)
	if err != nil {
		t.Fatal(err)
	}
	e.hub = h
	h.SetEngine(e)
	return h, serveHub(t, h, ccfg, logger)
}

// withID is what an ids=1 member receives for chatMsg(user, text).
func withID(user, text string, id stream.ID) string {
	return fmt.Sprintf(`{"username":%q,"message":%q,"id":"%s"}`, user, text, id)
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		want        options
		err         string // part of the 400's reason
	}{
		{name: "none", query: "token=x&y=2"},
		{name: "flags", query: "ids=1&ack=true&presence=1", want: options{flags: optIDs | optAck | optPresence}},
		{name: "off", query: "ids=1&ids=0&ack=false", want: options{}},
		{name: "since", query: "since=1700000000000-3", want: options{flags: optSince, since: stream.ID{Ms: 1700000000000, Seq: 3}}},
		{name: "since bare ms", query: "since=12", want: options{flags: optSince, since: stream.ID{Ms: 12}}},
		{name: "since zero", query: "since=0-0&ids=1", want: options{flags: optSince | optIDs}},
		{name: "escaped", query: "si%6Ece=1%2D2", want: options{flags: optSince, since: stream.ID{Ms: 1, Seq: 2}}},
		{name: "history", query: "history=5", want: options{flags: optHistory, history: 5}},
		{name: "history capped", query: "history=100000", want: options{flags: optHistory, history: 50}},
		{name: "history zero", query: "history=0", want: options{}},
		{name: "since wins over history", query: "history=5&since=3-0", want: options{flags: optSince, since: stream.ID{Ms: 3}}},
		{name: "unknown key with a bad escape ignored", query: "x=%zz&ids=1", want: options{flags: optIDs}},

		{name: "bad since", query: "since=abc", err: "since"},
		{name: "empty since", query: "since=", err: "since"},
		{name: "since with a sign", query: "since=-1", err: "since"},
		{name: "since with three parts", query: "since=1-2-3", err: "since"},
		{name: "since escape", query: "since=%zz", err: "since"},
		{name: "negative history", query: "history=-1", err: "history"},
		{name: "history not a number", query: "history=ten", err: "history"},
		{name: "bad flag", query: "ids=yes", err: "ids"},
		{name: "empty flag", query: "presence", err: "presence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseOptions(tc.query, 50)
			if tc.err != "" {
				var he *conn.HandshakeError
				if !errors.As(err, &he) || he.Status != 400 || !strings.Contains(he.Reason, tc.err) {
					t.Fatalf("parseOptions(%q) = %+v, %v; want a 400 naming %q", tc.query, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseOptions(%q) = %+v, %v; want %+v", tc.query, got, err, tc.want)
			}
		})
	}
}

// TestOptionsRideInTheKey: Route keeps the key of the original protocol
// without options, and the options survive the key with and without a
// token's username.
func TestOptionsRideInTheKey(t *testing.T) {
	h, err := NewHub(Config{HistoryMax: 7}, testutil.DiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{"/ws/chat/r/", "/ws/chat/r/?", "/ws/chat/r/?foo=bar&ids=0"} {
		if key, err := h.Route([]byte(uri)); err != nil || key != "r" {
			t.Fatalf("Route(%q) = %q, %v; want the bare room", uri, key, err)
		}
	}
	key, err := h.Route([]byte("/ws/chat/r/?ids=1&history=9&presence=1"))
	if err != nil {
		t.Fatal(err)
	}
	want := options{flags: optIDs | optHistory | optPresence, history: 7}
	if name, user := splitConnKey(key); name != "r" || user != "" || connKeyOptions(key) != want {
		t.Fatalf("key %q: room %q, user %q, options %+v; want r, none, %+v", key, name, user, connKeyOptions(key), want)
	}
	withUser := withOptions("r"+connKeySep+`"ana"`, want)
	if name, user := splitConnKey(withUser); name != "r" || user != `"ana"` || connKeyOptions(withUser) != want {
		t.Fatalf("key %q: room %q, user %q, options %+v", withUser, name, user, connKeyOptions(withUser))
	}
	if connKeyOptions("r"+connKeySep+`"ana"`) != (options{}) {
		t.Fatal("a key with a username and no options has options")
	}
	_, err = h.Route([]byte("/ws/chat/r/?since=nope"))
	var he *conn.HandshakeError
	if !errors.As(err, &he) || he.Status != 400 {
		t.Fatalf("malformed since: %v, want 400", err)
	}
}

func TestNewFrames(t *testing.T) {
	id := stream.ID{Ms: 1700000000000, Seq: 7}
	for _, tc := range []struct{ name, got, want string }{
		{"id", string(appendWithID(nil, []byte(`{"username":"a","message":"b"}`), id)), `{"username":"a","message":"b","id":"1700000000000-7"}`},
		{"id, empty object", string(appendWithID(nil, []byte(`{}`), id)), `{"id":"1700000000000-7"}`},
		{"id, not an object", string(appendWithID(nil, []byte(`[1]`), id)), `[1]`},
		{"ack", string(appendAck(nil, id, "")), `{"ack":"1700000000000-7"}`},
		{"ack with cid", string(appendAck(nil, id, `"c\"1"`)), `{"ack":"1700000000000-7","cid":"c\"1"}`},
		{"truncated", string(appendTruncated(nil, stream.ID{Ms: 5}, id, true)), `{"truncated":{"since":"5-0","from":"1700000000000-7"}}`},
		{"truncated, nothing held", string(appendTruncated(nil, stream.ID{Ms: 5}, stream.ID{}, false)), `{"truncated":{"since":"5-0"}}`},
		{"presence", string(appendPresence(nil, 42)), `{"presence":{"members":42}}`},
		{"error with cid", string(appendError(nil, errUnconfirmed, `"abc"`)), `{"error":"unconfirmed","cid":"abc","detail":"` + errUnconfirmed.detail + `"}`},
		{"error, field and cid", string(appendError(nil, &errMissingMessage.errorFrame, `"abc"`)), `{"error":"missing_field","field":"message","cid":"abc","detail":"message has no \"message\" key"}`},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, tc.got, tc.want)
		}
		if !json.Valid([]byte(tc.got)) {
			t.Errorf("%s: %s is not JSON", tc.name, tc.got)
		}
	}
}

func TestDecodeChatCID(t *testing.T) {
	for _, tc := range []struct {
		in, cid string
		ok      bool // checkCID
	}{
		{`{"username":"u","message":"m"}`, "", true},
		{`{"username":"u","message":"m","cid":"abc"}`, `"abc"`, true},
		{`{"cid":"a","username":"u","message":"m","cid":"b"}`, `"b"`, true},
		{`{"username":"u","message":"m","c\u0069d":"x"}`, `"x"`, true},
		{`{"username":"u","message":"m","cid":""}`, `""`, false},
		{`{"username":"u","message":"m","cid":7}`, `7`, false},
		{`{"username":"u","message":"m","cid":"` + strings.Repeat("x", MaxCID+1) + `"}`, `"` + strings.Repeat("x", MaxCID+1) + `"`, false},
	} {
		f, err := decodeChat([]byte(tc.in))
		if err != nil || string(f.cid) != tc.cid {
			t.Errorf("decodeChat(%s): cid %q, %v; want %q", tc.in, f.cid, err, tc.cid)
			continue
		}
		if _, ok := checkCID(f.cid); ok != tc.ok {
			t.Errorf("checkCID(%s) ok %v, want %v", f.cid, ok, tc.ok)
		}
	}
	f, err := decodeChat([]byte(`{"username":"u","cid":"c"}`))
	if err != errMissingMessage || string(f.cid) != `"c"` {
		t.Fatalf("missing message: cid %q, %v; want the cid with the error", f.cid, err)
	}
}

// recvUntil reads text frames until one satisfies done, returning them
// all.
func recvUntil(t *testing.T, c *wsClient, done func(string) bool) []string {
	t.Helper()
	var got []string
	for {
		f := c.recvText(t)
		got = append(got, f)
		if done(f) {
			return got
		}
	}
}

// TestSinceReplaysThenGoesLiveWithoutGapOrDuplicate: a since= joiner gets
// the entries after its ID, then live messages, including those published
// while its replay runs (some also returned by History, some not), each
// once and in order; the pages of History are bounded.
func TestSinceReplaysThenGoesLiveWithoutGapOrDuplicate(t *testing.T) {
	e := newLogEngine()
	_, addr := startLogHub(t, Config{}, conn.Config{}, e)
	other := joined(t, dialAsync(t, addr, "/ws/chat/s/")) // keeps the room subscribed
	var ids []stream.ID
	for i := range 250 {
		ids = append(ids, e.publish("s", "old", fmt.Sprint(i)))
	}
	since := ids[9]
	var mu sync.Mutex // ids and live, appended to by the replay's goroutine
	live := 0
	e.mu.Lock()
	e.afterRead = func(room string, call int) {
		mu.Lock()
		defer mu.Unlock()
		// Two after each of the three reads: those after the first two
		// are in the next page too, those after the last only held.
		if call <= 3 {
			for range 2 {
				ids = append(ids, e.publish(room, "live", fmt.Sprint(live)))
				live++
			}
		}
	}
	e.mu.Unlock()
	h := e.hub
	c := joined(t, dialAsync(t, addr, "/ws/chat/s/?ids=1&since="+since.String()))
	testutil.Eventually(t, "the replay to go live", func() bool { return !replaying(h, "s") })
	after := e.publish("s", "after", "x")
	mu.Lock()
	defer mu.Unlock()
	ids = append(ids, after)
	got := recvUntil(t, c, func(f string) bool { return strings.Contains(f, after.String()) })
	var want []string
	li := 0
	for i, id := range ids[10:] {
		switch {
		case i+10 < 250:
			want = append(want, withID("old", fmt.Sprint(i+10), id))
		case id == after:
			want = append(want, withID("after", "x", id))
		default:
			want = append(want, withID("live", fmt.Sprint(li), id))
			li++
		}
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("since join got %d frames:\n%s\nwant %d:\n%s", len(got), strings.Join(got, "\n"), len(want), strings.Join(want, "\n"))
	}
	e.mu.Lock()
	for _, n := range e.historyNs {
		if n != replayPage {
			t.Errorf("History asked for %d entries, want pages of %d", n, replayPage)
		}
	}
	e.mu.Unlock()
	// The member that set nothing got the live ones as before, no IDs.
	if f := other.recvText(t); f != chatMsg("old", "0") {
		t.Fatalf("plain member got %s", f)
	}
}

// TestReplayOverflowReadsOn: live messages that outgrow what a replaying
// member may hold are dropped from the hold and read again from the
// stream: the client still sees everything once, in order.
func TestReplayOverflowReadsOn(t *testing.T) {
	e := newLogEngine()
	// The smallest queue allowed: held messages overflow after a few.
	_, addr := startLogHub(t, Config{}, conn.Config{MaxMessageBytes: 1024, MaxQueueBytes: 2048}, e)
	joined(t, dialAsync(t, addr, "/ws/chat/o/"))
	e.publish("o", "old", "0")
	first := e.publish("o", "old", "1")
	n := 0
	e.mu.Lock()
	e.afterRead = func(room string, call int) {
		if call <= 3 {
			for range 40 { // about 2 KiB: past the hold's 1 KiB
				e.publish(room, "live", fmt.Sprint(n))
				n++
			}
		}
	}
	e.mu.Unlock()
	h := e.hub
	c := joined(t, dialAsync(t, addr, "/ws/chat/o/?since="+first.String()))
	testutil.Eventually(t, "the replay to go live", func() bool { return !replaying(h, "o") })
	e.publish("o", "end", "x")
	got := recvUntil(t, c, func(f string) bool { return f == chatMsg("end", "x") })
	e.mu.Lock()
	calls := e.calls
	e.mu.Unlock()
	if calls < 4 {
		t.Fatalf("%d History calls: the held messages never overflowed", calls)
	}
	if len(got) != 121 {
		t.Fatalf("got %d frames, want 120 live and the last", len(got))
	}
	for i, f := range got[:120] {
		if f != chatMsg("live", fmt.Sprint(i)) {
			t.Fatalf("frame %d is %s, want live %d", i, f, i)
		}
	}
}

// TestSinceTruncated: entries trimmed past since give the truncated frame
// (since, and the oldest held), then what remains; since=0 replays all
// that is held without it.
func TestSinceTruncated(t *testing.T) {
	e := newLogEngine()
	e.maxLen = 5
	_, addr := startLogHub(t, Config{}, conn.Config{}, e)
	joined(t, dialAsync(t, addr, "/ws/chat/t/"))
	var ids []stream.ID
	for i := range 12 {
		ids = append(ids, e.publish("t", "u", fmt.Sprint(i)))
	}
	c := joined(t, dialAsync(t, addr, "/ws/chat/t/?ids=1&since="+ids[2].String()))
	want := fmt.Sprintf(`{"truncated":{"since":"%s","from":"%s"}}`, ids[2], ids[7])
	if f := c.recvText(t); f != want {
		t.Fatalf("first frame %s, want %s", f, want)
	}
	for i := 7; i < 12; i++ {
		if f := c.recvText(t); f != withID("u", fmt.Sprint(i), ids[i]) {
			t.Fatalf("frame for entry %d: %s", i, f)
		}
	}
	all := joined(t, dialAsync(t, addr, "/ws/chat/t/?since=0"))
	for i := 7; i < 12; i++ {
		if f := all.recvText(t); f != chatMsg("u", fmt.Sprint(i)) {
			t.Fatalf("since=0, entry %d: %s", i, f)
		}
	}
}

// TestReplayTellsLossesWithin: a History page with a loss notice between
// two entries (Redis rolled back entries that some node had delivered)
// makes the replay send the truncated frame there, with the entries
// around it; a notice at the end (nothing held after the loss) gives the
// frame without "from". Live delivery then follows as usual.
func TestReplayTellsLossesWithin(t *testing.T) {
	e := newLogEngine()
	_, addr := startLogHub(t, Config{}, conn.Config{}, e)
	var ids []stream.ID
	for i := range 5 {
		ids = append(ids, e.publish("r", "u", fmt.Sprint(i)))
	}
	e.mu.Lock()
	e.lostBefore = map[string]stream.ID{"r": ids[3]}
	e.mu.Unlock()
	c := joined(t, dialAsync(t, addr, "/ws/chat/r/?ids=1&since="+ids[0].String()))
	want := []string{withID("u", "1", ids[1]), withID("u", "2", ids[2]),
		fmt.Sprintf(`{"truncated":{"since":"%s","from":"%s"}}`, ids[2], ids[3]),
		withID("u", "3", ids[3]), withID("u", "4", ids[4])}
	for i, w := range want {
		if f := c.recvText(t); f != w {
			t.Fatalf("frame %d: %s, want %s", i, f, w)
		}
	}
	live := e.publish("r", "u", "live")
	if f := c.recvText(t); f != withID("u", "live", live) {
		t.Fatalf("live frame %s", f)
	}

	e.mu.Lock()
	e.lostBefore = map[string]stream.ID{"r": {}}
	e.mu.Unlock()
	end := joined(t, dialAsync(t, addr, "/ws/chat/r/?ids=1&since="+ids[3].String()))
	for i, w := range []string{withID("u", "4", ids[4]), withID("u", "live", live),
		fmt.Sprintf(`{"truncated":{"since":"%s"}}`, live)} {
		if f := end.recvText(t); f != w {
			t.Fatalf("end: frame %d: %s, want %s", i, f, w)
		}
	}
	next := e.publish("r", "u", "next")
	if f := end.recvText(t); f != withID("u", "next", next) {
		t.Fatalf("end: live frame %s", f)
	}
}

// TestHistoryN: history=N replays the last N (capped by HISTORY_MAX),
// then what follows, then live.
func TestHistoryN(t *testing.T) {
	e := newLogEngine()
	_, addr := startLogHub(t, Config{HistoryMax: 4}, conn.Config{}, e)
	for i, tc := range []struct {
		query string
		from  int
	}{{"history=2", 8}, {"history=50", 6}, {"history=4&since=7", 8}} {
		room := fmt.Sprint("h", i)
		joined(t, dialAsync(t, addr, "/ws/chat/"+room+"/"))
		var ids []stream.ID
		for i := range 10 {
			ids = append(ids, e.publish(room, "u", fmt.Sprint(i)))
		}
		q := strings.Replace(tc.query, "since=7", "since="+ids[7].String(), 1)
		c := joined(t, dialAsync(t, addr, "/ws/chat/"+room+"/?"+q))
		for i := tc.from; i < 10; i++ {
			if f := c.recvText(t); f != chatMsg("u", fmt.Sprint(i)) {
				t.Fatalf("%s: entry %d: got %s", tc.query, i, f)
			}
		}
		e.publish(room, "u", "live")
		if f := c.recvText(t); f != chatMsg("u", "live") {
			t.Fatalf("%s: live message: got %s", tc.query, f)
		}
	}
}

// TestLaggingDeliveryAfterReplayIsSkipped: an entry History returned
// before the engine delivered it (a Redis reader behind) is not sent
// again when its delivery comes after the switch.
func TestLaggingDeliveryAfterReplayIsSkipped(t *testing.T) {
	e := newLogEngine()
	h, addr := startLogHub(t, Config{}, conn.Config{}, e)
	joined(t, dialAsync(t, addr, "/ws/chat/l/"))
	e.publish("l", "u", "0")
	// Stored but not yet delivered.
	e.mu.Lock()
	e.subscribed["l"] = false
	e.mu.Unlock()
	lag := e.publish("l", "u", "lagging")
	e.mu.Lock()
	e.subscribed["l"] = true
	e.mu.Unlock()
	c := joined(t, dialAsync(t, addr, "/ws/chat/l/?since=0"))
	for _, want := range []string{chatMsg("u", "0"), chatMsg("u", "lagging")} {
		if f := c.recvText(t); f != want {
			t.Fatalf("replay: %s, want %s", f, want)
		}
	}
	testutil.Eventually(t, "the replay to go live", func() bool { return !replaying(h, "l") })
	h.Deliver("l", stream.Message{ID: lag, Payload: []byte(chatMsg("u", "lagging"))})
	e.publish("l", "u", "next")
	if f := c.recvText(t); f != chatMsg("u", "next") {
		t.Fatalf("after the switch got %s, want the next message only", f)
	}
}

// replaying reports whether some member of room name still replays.
func replaying(h *Hub, name string) bool {
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for m := range r.members.all() {
		if m.sess != nil && m.sess.replaying {
			return true
		}
	}
	return false
}

// TestReplayRefusedWhenHistoryFails: a replaying join whose first page
// cannot be read gets 503 and leaves the room; a failure later closes
// the connection with 1013.
func TestReplayRefusedWhenHistoryFails(t *testing.T) {
	e := newLogEngine()
	h, addr := startLogHub(t, Config{}, conn.Config{}, e)
	for i := range 150 {
		e.publish("f", "u", fmt.Sprint(i))
	}
	e.mu.Lock()
	e.failFrom = 1
	e.mu.Unlock()
	r := <-dialAsync(t, addr, "/ws/chat/f/?since=0")
	if r.status != 503 {
		t.Fatalf("join with history failing: status %d (%v), want 503", r.status, r.err)
	}
	testutil.Eventually(t, "the room to be forgotten", func() bool { return roomsOf(h) == 0 })
	e.mu.Lock()
	e.failFrom = e.calls + 2 // the first page works, the second fails
	e.mu.Unlock()
	c := joined(t, dialAsync(t, addr, "/ws/chat/f/?since=0"))
	for i := range replayPage {
		if f := c.recvText(t); f != chatMsg("u", fmt.Sprint(i)) {
			t.Fatalf("entry %d: %s", i, f)
		}
	}
	op, p := c.read(t)
	if op != ws.OpClose || len(p) < 2 || int(p[0])<<8|int(p[1]) != 1013 {
		t.Fatalf("after a failed page got opcode %v %q, want close 1013", op, p)
	}
}

// TestAckAndCID: an ack=1 sender gets the ID of each accepted message
// with its cid; a resend of the cid gets the same ID and is not
// delivered twice; members never see the cid; error frames name it.
func TestAckAndCID(t *testing.T) {
	e := newLogEngine()
	// Six messages in a burst, then one per 100 s.
	_, addr := startLogHub(t, Config{RateLimit: 0.01, RateBurst: 6, RateCloseAfter: 1000, RateMode: RateModeDrop}, conn.Config{}, e)
	member := joined(t, dialAsync(t, addr, "/ws/chat/a/"))
	s := joined(t, dialAsync(t, addr, "/ws/chat/a/?ack=1"))
	s.send(t, `{"username":"u","message":"one","cid":"c1"}`)
	var ack struct{ Ack, CID string }
	if err := json.Unmarshal([]byte(s.recvText(t)), &ack); err != nil || ack.CID != "c1" || ack.Ack == "" {
		t.Fatalf("ack %+v, %v", ack, err)
	}
	if f := member.recvText(t); f != chatMsg("u", "one") {
		t.Fatalf("member got %s", f)
	}
	s.send(t, `{"username":"u","message":"one","cid":"c1"}`)
	if f := s.recvText(t); f != fmt.Sprintf(`{"ack":%q,"cid":"c1"}`, ack.Ack) {
		t.Fatalf("resend acked with %s, want the first ID %s", f, ack.Ack)
	}
	s.send(t, `{"username":"u","message":"two"}`)
	if f := s.recvText(t); !strings.HasPrefix(f, `{"ack":"`) || strings.Contains(f, "cid") {
		t.Fatalf("ack without cid: %s", f)
	}
	if f := member.recvText(t); f != chatMsg("u", "two") {
		t.Fatalf("member got %s after the resend; want the next message only", f)
	}
	s.send(t, `{"username":"u","cid":"c2"}`)
	if f := s.recvText(t); f != `{"error":"missing_field","field":"message","cid":"c2","detail":"message has no \"message\" key"}` {
		t.Fatalf("missing field: %s", f)
	}
	s.send(t, `{"username":"u","message":"m","cid":7}`)
	if code := errorCode(t, s.recvText(t)); code != CodeInvalidField {
		t.Fatalf("numeric cid: %s", code)
	}
	// The sixth message is accepted, the rest are over the rate: their
	// rate_limited frames name their cids.
	for i := range 5 {
		s.send(t, fmt.Sprintf(`{"username":"u","message":"m","cid":"r%d"}`, i))
	}
	if f := s.recvText(t); !strings.HasPrefix(f, `{"ack":"`) || !strings.HasSuffix(f, `"cid":"r0"}`) {
		t.Fatalf("sixth message: %s, want its ack", f)
	}
	for i := 1; i < 5; i++ {
		if f := s.recvText(t); !strings.HasPrefix(f, fmt.Sprintf(`{"error":"rate_limited","cid":"r%d","detail":"`, i)) {
			t.Fatalf("message over the rate: %s, want rate_limited naming r%d", f, i)
		}
	}
}

// TestAckErrorsNameTheCID: unavailable and unconfirmed name the cid of
// an ack=1 sender's message; a plain sender gets the frames of before.
func TestAckErrorsNameTheCID(t *testing.T) {
	logger := testutil.DiscardLogger()
	hub, err := NewHub(Config{}, logger)
	if err != nil {
		t.Fatal(err)
	}
	hub.SetEngine(&scriptedEngine{})
	addr := serveHub(t, hub, conn.Config{}, logger)
	a := joined(t, dialAsync(t, addr, "/ws/chat/x/?ack=1"))
	p := joined(t, dialAsync(t, addr, "/ws/chat/x/"))
	a.send(t, `{"username":"u","message":"unconfirmed","cid":"k1"}`)
	a.send(t, `{"username":"u","message":"unavailable","cid":"k2"}`)
	if f := a.recvText(t); f != `{"error":"unconfirmed","cid":"k1","detail":"`+errUnconfirmed.detail+`"}` {
		t.Fatalf("unconfirmed: %s", f)
	}
	if f := a.recvText(t); f != `{"error":"unavailable","cid":"k2","detail":"`+errUnavailable.detail+`"}` {
		t.Fatalf("unavailable: %s", f)
	}
	p.send(t, `{"username":"u","message":"unconfirmed","cid":"k1"}`)
	if f := p.recvText(t); f != string(errorJSON(errUnconfirmed)) {
		t.Fatalf("plain sender: %s", f)
	}
}

// TestPresenceFrames: a presence=1 member gets the count on joining and
// when it changes; plain members get nothing; SetMembers follows joins
// and leaves.
func TestPresenceFrames(t *testing.T) {
	e := newLogEngine()
	_, addr := startLogHub(t, Config{}, conn.Config{}, e)
	plain := joined(t, dialAsync(t, addr, "/ws/chat/p/"))
	w := joined(t, dialAsync(t, addr, "/ws/chat/p/?presence=1"))
	if f := w.recvText(t); f != `{"presence":{"members":2}}` {
		t.Fatalf("presence on join: %s", f)
	}
	third := joined(t, dialAsync(t, addr, "/ws/chat/p/"))
	if f := w.recvText(t); f != `{"presence":{"members":3}}` {
		t.Fatalf("presence after a join: %s", f)
	}
	third.c.Close()
	if f := w.recvText(t); f != `{"presence":{"members":2}}` {
		t.Fatalf("presence after a leave: %s", f)
	}
	// The plain member's next frame is the next chat message.
	w.send(t, chatMsg("w", "hi"))
	if f := plain.recvText(t); f != chatMsg("w", "hi") {
		t.Fatalf("plain member got %s", f)
	}
	w.c.Close()
	testutil.Eventually(t, "the count to drop", func() bool { n, _ := e.Members(context.Background(), "p"); return n == 1 })
}

// TestPlainClientUnchanged: a client without options receives byte for
// byte what it did before, whatever option clients do in its room.
func TestPlainClientUnchanged(t *testing.T) {
	e := newLogEngine()
	_, addr := startLogHub(t, Config{}, conn.Config{}, e)
	plain := joined(t, dialAsync(t, addr, "/ws/chat/b/"))
	e.publish("b", "old", "stored")
	if f := plain.recvText(t); f != `{"username":"old","message":"stored"}` {
		t.Fatalf("plain member got %s", f)
	}
	opt := joined(t, dialAsync(t, addr, "/ws/chat/b/?ids=1&ack=1&presence=1&since=0"))
	opt.send(t, `{"username": "ana", "message": {"t": [1, 2]}, "cid": "z", "x": 1}`)
	if f := plain.recvText(t); f != `{"username":"ana","message":{"t":[1,2]}}` {
		t.Fatalf("plain member got %s", f)
	}
	plain.send(t, `{"username":"u","message":"m","cid":"q"}`)
	plain.send(t, `{"username":"u","cid":"q"}`)
	if f := plain.recvText(t); f != `{"error":"missing_field","field":"message","detail":"message has no \"message\" key"}` {
		t.Fatalf("plain sender's error frame: %s", f)
	}
}

// TestLossNoticeReachesMembersThatFollowIDs (issue 18, item 7): a loss
// notice from the engine (Message.Lost) becomes a truncated frame for the
// members that follow IDs (ids=1, since=), before the next message; plain
// members get nothing, and a member that joined after the loss too.
func TestLossNoticeReachesMembersThatFollowIDs(t *testing.T) {
	e := newLogEngine()
	h, addr := startLogHub(t, Config{}, conn.Config{}, e)
	plain := joined(t, dialAsync(t, addr, "/ws/chat/lossy/"))
	ids := joined(t, dialAsync(t, addr, "/ws/chat/lossy/?ids=1"))
	since := joined(t, dialAsync(t, addr, "/ws/chat/lossy/?since=0"))
	testutil.Eventually(t, "the replay to go live", func() bool { return !replaying(h, "lossy") })
	a := e.publish("lossy", "u", "a")
	for _, c := range []*wsClient{plain, ids, since} {
		c.recvText(t)
	}
	from := stream.ID{Ms: a.Ms + 10}
	h.Deliver("lossy", stream.Message{ID: from, Lost: true, LostAfter: a})
	late := joined(t, dialAsync(t, addr, "/ws/chat/lossy/?ids=1"))
	b := e.publish("lossy", "u", "b")
	notice := fmt.Sprintf(`{"truncated":{"since":"%s","from":"%s"}}`, a, from)
	for _, tc := range []struct {
		name string
		c    *wsClient
		want []string
	}{
		{"ids=1", ids, []string{notice, withID("u", "b", b)}},
		{"since=", since, []string{notice, chatMsg("u", "b")}},
		{"plain", plain, []string{chatMsg("u", "b")}},
		{"joined after the loss", late, []string{withID("u", "b", b)}},
	} {
		for _, want := range tc.want {
			if got := tc.c.recvText(t); got != want {
				t.Fatalf("%s member: got %s, want %s", tc.name, got, want)
			}
		}
	}
}

// TestJoinFloorDropsOlderDeliveries (issue 18, item 1): an entry the node
// saw before a member joined (acknowledged to a local sender) and that the
// engine delivers only after the join, as a Redis reader whose cursor
// lagged does, does not reach the new member; later ones do.
func TestJoinFloorDropsOlderDeliveries(t *testing.T) {
	e := newLogEngine()
	h, addr := startLogHub(t, Config{}, conn.Config{}, e)
	sender := joined(t, dialAsync(t, addr, "/ws/chat/floor/"))
	// Stored and acknowledged, not delivered yet.
	e.mu.Lock()
	e.subscribed["floor"] = false
	e.mu.Unlock()
	sender.send(t, chatMsg("s", "old"))
	testutil.Eventually(t, "the message to be stored", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return len(e.entries["floor"]) == 1
	})
	e.mu.Lock()
	e.subscribed["floor"] = true
	old := e.entries["floor"][0]
	e.mu.Unlock()
	j := joined(t, dialAsync(t, addr, "/ws/chat/floor/"))
	h.Deliver("floor", old) // the lagging delivery
	e.publish("floor", "u", "new")
	if got := j.recvText(t); got != chatMsg("u", "new") {
		t.Fatalf("the joiner got %s, want only the message after its join", got)
	}
}
