package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestAfterID covers how History reads truncation from the entries of
// XRANGE <after> +.
func TestAfterID(t *testing.T) {
	id := func(ms, seq uint64) ID { return ID{Ms: ms, Seq: seq} }
	entries := func(ids ...ID) []Message {
		ms := make([]Message, len(ids))
		for i, id := range ids {
			ms[i].ID = id
		}
		return ms
	}
	for _, tc := range []struct {
		name      string
		msgs      []Message
		after     ID
		exists    bool
		want      []ID
		truncated bool
	}{
		{"after held", entries(id(5, 2), id(6, 0)), id(5, 2), true, []ID{id(6, 0)}, false},
		{"after held, last", entries(id(5, 2)), id(5, 2), true, []ID{}, false},
		{"after is the entry before the first held", entries(id(5, 2), id(6, 0)), id(5, 1), true, []ID{id(5, 2), id(6, 0)}, false},
		{"an entry between them was trimmed", entries(id(5, 2), id(6, 0)), id(5, 0), true, []ID{id(5, 2), id(6, 0)}, true},
		{"an earlier millisecond", entries(id(5, 2), id(6, 0)), id(4, 7), true, []ID{id(5, 2), id(6, 0)}, true},
		{"first held starts a millisecond: unknown, truncated", entries(id(6, 0)), id(5, 2), true, []ID{id(6, 0)}, true},
		{"nothing after, key exists", nil, id(9, 0), true, []ID{}, false},
		{"nothing after, key gone", nil, id(9, 0), false, []ID{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, truncated := afterID(tc.msgs, tc.after, tc.exists)
			ids := []ID{}
			for _, m := range got {
				ids = append(ids, m.ID)
			}
			if !slices.Equal(ids, tc.want) || truncated != tc.truncated {
				t.Fatalf("afterID = %v, truncated %v; want %v, %v", ids, truncated, tc.want, tc.truncated)
			}
		})
	}
}

// TestRedisHistoryTruncation writes entries with chosen IDs next to the
// engine's and trims them exactly (XTRIM MAXLEN, without ~), then checks
// what History says after each ID.
func TestRedisHistoryTruncation(t *testing.T) {
	srv := redistest.Start(t)
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), func(string, Message) {}, nil)
	ctx := context.Background()
	const room = "crafted"
	key := e.key(room)
	for _, id := range []string{"5-0", "5-1", "5-2", "6-0", "6-1"} {
		srv.MustDo("XADD", key, id, "s", "1", "p", "entry "+id)
	}
	check := func(after string, n int, want []string, truncated bool) {
		t.Helper()
		a, err := ParseID(after)
		if err != nil {
			t.Fatal(err)
		}
		got, tr, err := e.History(ctx, room, a, n)
		if err != nil {
			t.Fatalf("History after %s: %v", after, err)
		}
		ids := []string{}
		for _, m := range got {
			ids = append(ids, m.ID.String())
			if string(m.Payload) != "entry "+m.ID.String() || m.Sender != 1 {
				t.Fatalf("History after %s: entry %v holds sender %d payload %q", after, m.ID, m.Sender, m.Payload)
			}
		}
		if !slices.Equal(ids, want) || tr != truncated {
			t.Fatalf("History after %s (n %d) = %v, truncated %v; want %v, truncated %v", after, n, ids, tr, want, truncated)
		}
	}

	srv.MustDo("XTRIM", key, "MAXLEN", "3") // holds 5-2 6-0 6-1
	check("5-1", 10, []string{"5-2", "6-0", "6-1"}, false)
	check("5-0", 10, []string{"5-2", "6-0", "6-1"}, true)
	check("5-0", 2, []string{"5-2", "6-0"}, true)
	check("4-9", 10, []string{"5-2", "6-0", "6-1"}, true)
	check("5-2", 10, []string{"6-0", "6-1"}, false)
	check("5-2", 1, []string{"6-0"}, false)
	check("6-1", 10, []string{}, false)
	check("9-0", 10, []string{}, false)

	srv.MustDo("XTRIM", key, "MAXLEN", "2") // holds 6-0 6-1
	// The entry before 6-0 cannot be known: History errs on the safe side.
	check("5-2", 10, []string{"6-0", "6-1"}, true)
	check("6-0", 10, []string{"6-1"}, false)

	srv.MustDo("DEL", key) // expired
	check("6-1", 10, []string{}, true)
	check("0-0", 10, []string{}, false)
}

// TestRedisDedupeNoScript: the server loses its script cache (SCRIPT
// FLUSH, as after a restart or failover). The script calls answered
// NOSCRIPT were not run: they are sent again, with the script's text,
// and a sender's messages, with and without CID, stay in order.
func TestRedisDedupeNoScript(t *testing.T) {
	srv := redistest.Start(t)
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, nil)
	const room = "noscript"
	mustSubscribe(t, e, room)
	for round := range 3 {
		srv.MustDo("SCRIPT", "FLUSH")
		var msgs []Message
		for i := range 60 {
			m := Message{Sender: 1, Payload: fmt.Appendf(nil, "%d-%d", round, i)}
			if i%2 == 0 {
				m.CID = fmt.Sprintf("ns-%d-%d", round, i)
			}
			msgs = append(msgs, m)
		}
		publishAll(t, e, room, msgs)
		if got := srv.MustDo("SCRIPT", "EXISTS", publishSHA); got != "1" {
			t.Fatalf("round %d: the script is not loaded again after NOSCRIPT (SCRIPT EXISTS = %q)", round, got)
		}
	}
	got := c.settle(t, e, room)
	var want, ps []string
	for round := range 3 {
		for i := range 60 {
			want = append(want, fmt.Sprintf("%d-%d", round, i))
		}
	}
	for _, m := range got {
		ps = append(ps, string(m.Payload))
	}
	if !slices.Equal(ps, want) {
		i := 0
		for i < min(len(ps), len(want)) && ps[i] == want[i] {
			i++
		}
		t.Fatalf("delivered %d messages, want %d in order; first difference at %d: got %q, want %q",
			len(ps), len(want), i, ps[i:min(i+5, len(ps))], want[i:min(i+5, len(want))])
	}
	if s := e.Stats(); s.Refused != 0 || s.Unconfirmed != 0 || s.Duplicates != 0 {
		t.Fatalf("Stats %+v: want nothing refused, unconfirmed or duplicated", s)
	}
	// Each round met NOSCRIPT at least once: the path was taken.
	var noscript int
	for line := range strings.Lines(srv.MustDo("INFO", "errorstats")) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "errorstat_NOSCRIPT:count="); ok {
			noscript, _ = strconv.Atoi(v)
		}
	}
	if noscript < 3 {
		t.Fatalf("Redis answered NOSCRIPT %d times, want at least once per round (3)", noscript)
	}
}

// TestRedisDedupeKeys checks the keys the CID path writes: the dedupe key
// with its window, and the room's TTL, also when the stream vanished
// while its CID was remembered.
func TestRedisDedupeKeys(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.DedupeWindow = time.Minute
	e := newTestRedis(t, cfg, func(string, Message) {}, nil)
	const room = "keys"
	id := mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("x"), CID: "abc"})
	dkey := fmt.Sprintf("%s:{%d}#cid:%d:%s:%s", cfg.Prefix, e.shardOf(room), len(room), room, "abc")
	if got := srv.MustDo("GET", dkey); got != id.String() {
		t.Fatalf("GET %s = %q, want the entry's ID %s", dkey, got, id)
	}
	pttl := func(key string) int64 {
		t.Helper()
		n, err := strconv.ParseInt(srv.MustDo("PTTL", key), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if ms := pttl(dkey); ms <= 0 || ms > time.Minute.Milliseconds() {
		t.Fatalf("PTTL of the dedupe key = %d ms, want within REDIS_DEDUPE_WINDOW (1m)", ms)
	}
	if ms := pttl(e.key(room)); ms <= 0 {
		t.Fatalf("PTTL of a stream created by the script = %d, want REDIS_TTL", ms)
	}

	// The stream expires while the CID is remembered: the resend appends
	// nothing; the next message recreates the stream, with its TTL.
	srv.MustDo("DEL", e.key(room))
	if again := mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("x"), CID: "abc"}); again != id {
		t.Fatalf("resend acked %v, want %v", again, id)
	}
	mustPublishID(t, e, room, Message{Sender: 1, Payload: []byte("y")})
	if ms := pttl(e.key(room)); ms <= 0 {
		t.Fatalf("PTTL of the stream recreated after a duplicate = %d, want REDIS_TTL", ms)
	}
}

// TestRedisPresenceNodeDies: a node that can no longer reach Redis (as
// if it died: its connections are cut) stops being counted once its
// presence hash expires, within 3 × REDIS_PRESENCE_INTERVAL of its last
// refresh.
func TestRedisPresenceNodeDies(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	proxy := redistest.StartProxy(t, srv.Addr())
	a := newTestRedis(t, cfg, func(string, Message) {}, nil)
	cfgB := cfg
	cfgB.Addrs = []string{proxy.Addr()}
	b := newTestRedis(t, cfgB, func(string, Message) {}, nil)
	ctx := context.Background()
	a.SetMembers("room", 2)
	b.SetMembers("room", 3)
	for _, e := range []*Redis{a, b} {
		testutil.Eventually(t, "both nodes to count 5 members", func() bool {
			n, err := e.Members(ctx, "room")
			return err == nil && n == 5
		})
	}
	proxy.Close()
	start := time.Now()
	bound := 3 * cfg.PresenceInterval
	testutil.EventuallyWithin(t, bound+2*time.Second, "the cut-off node to stop being counted", func() bool {
		n, err := a.Members(ctx, "room")
		return err == nil && n == 2
	})
	t.Logf("the cut-off node stopped being counted after %v (documented bound: %v after its last refresh)",
		time.Since(start).Round(time.Millisecond), bound)
}

// TestRedisReadsUnavailable: History, Last and Members say
// ErrUnavailable when Redis is down.
func TestRedisReadsUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	a := newTestRedis(t, cfg, func(string, Message) {}, nil)
	b := newTestRedis(t, cfg, func(string, Message) {}, nil)
	b.SetMembers("room", 1)
	ctx := context.Background()
	testutil.Eventually(t, "the other node to be counted", func() bool {
		n, err := a.Members(ctx, "room")
		return err == nil && n == 1
	})
	srv.Kill()
	if _, _, err := a.History(ctx, "room", ID{Ms: 1}, 10); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("History with Redis down: %v, want ErrUnavailable", err)
	}
	if _, _, err := a.History(ctx, "room", ID{}, 10); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("History from zero with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := a.Last(ctx, "room", 10); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Last with Redis down: %v, want ErrUnavailable", err)
	}
	if _, err := a.Members(ctx, "room"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Members with Redis down: %v, want ErrUnavailable", err)
	}
}

// testNodesHistory is the part of the multi-node suite about CIDs and
// presence: n engines sharing cfg's Redis.
func testNodesHistory(t *testing.T, n int, cfg RedisConfig) {
	ctx := context.Background()

	t.Run("DedupeAcrossNodes", func(t *testing.T) {
		// A client resends after reconnecting to another node.
		nodes := startNodes(t, n, cfg)
		for _, nd := range nodes {
			mustSubscribe(t, nd.e, "dedupe")
		}
		first := mustPublishID(t, nodes[0].e, "dedupe", Message{Sender: 1, Payload: []byte("once"), CID: "x-1"})
		for i, nd := range nodes[1:] {
			if again := mustPublishID(t, nd.e, "dedupe", Message{Sender: 2, Payload: []byte("twice"), CID: "x-1"}); again != first {
				t.Fatalf("node %d acked the resend with %v, want the first ID %v", i+1, again, first)
			}
		}
		for i, nd := range nodes {
			got := nd.c.settle(t, nd.e, "dedupe")
			if len(got) != 1 || got[0].ID != first || string(got[0].Payload) != "once" {
				t.Fatalf("node %d got %d messages, want the first one only", i, len(got))
			}
		}
	})

	t.Run("Presence", func(t *testing.T) {
		nodes := startNodes(t, n, cfg)
		counts := make([]int, n)
		for i, nd := range nodes {
			counts[i] = i + 1
			nd.e.SetMembers("lobby", counts[i])
		}
		nodes[0].e.SetMembers("side", 7)
		expect := func(what string, live []node, lobby, side int) {
			t.Helper()
			for i, nd := range live {
				testutil.Eventually(t, fmt.Sprintf("node %d to count %d in lobby and %d in side (%s)", i, lobby, side, what), func() bool {
					l, err1 := nd.e.Members(ctx, "lobby")
					s, err2 := nd.e.Members(ctx, "side")
					return err1 == nil && err2 == nil && l == lobby && s == side
				})
			}
		}
		sum := func() int {
			s := 0
			for _, c := range counts {
				s += c
			}
			return s
		}
		expect("start", nodes, sum(), 7)

		counts[1] = 0
		nodes[1].e.SetMembers("lobby", 0)
		nodes[0].e.SetMembers("side", 4)
		expect("after changes", nodes, sum(), 4)

		last := nodes[n-1]
		if err := last.e.Close(ctx); err != nil {
			t.Fatal(err)
		}
		counts[n-1] = 0
		expect("after a node closed", nodes[:n-1], sum(), 4)
	})
}

// BenchmarkRedisHistoryDecode decodes the XRANGE reply of a History call
// of 100 entries of 128 bytes, with its truncation check.
func BenchmarkRedisHistoryDecode(b *testing.B) {
	srv := redistest.Start(b)
	e := newTestRedis(b, testRedisConfig(b, srv.Addr()), func(string, Message) {}, nil)
	const batch = 100
	payload := bytes.Repeat([]byte("x"), 128)
	msgs := make([]Message, batch+1)
	for i := range msgs {
		msgs[i] = Message{Sender: 1 << 40, Payload: payload}
	}
	ids := publishAll(b, e, "history", msgs)
	ctx := context.Background()
	entries, err := e.client.Do(ctx, e.client.B().Xrange().Key(e.key("history")).Start(ids[0].String()).End("+").Count(batch+1).Build()).ToArray()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got, truncated := afterID(e.decodeEntries(entries), ids[0], true)
		if len(got) != batch || truncated {
			b.Fatalf("decoded %d entries (truncated %v), want %d", len(got), truncated, batch)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/msg")
}
