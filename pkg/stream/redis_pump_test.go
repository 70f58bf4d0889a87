package stream

import (
	"fmt"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestPumpWindowGrowsWithNodes: with more nodes publishing, each pump
// paces its round trips proportionally more, so that Redis sees about the
// same number of round trips per second; nodes that stopped publishing
// stop counting.
func TestPumpWindowGrowsWithNodes(t *testing.T) {
	e := &Redis{cfg: RedisConfig{BatchWindow: 2 * time.Millisecond}}
	p := &pump{e: e, peers: map[string]uint64{}}
	if w := p.window(); w != 2*time.Millisecond {
		t.Fatalf("alone: window %v, want 2ms", w)
	}
	ms := uint64(1_000_000)
	see := func(nodes int) {
		for i := range nodes {
			p.sawNode(fmt.Sprintf("node-%d", i), ID{Ms: ms})
		}
		ms += 200
		p.sawNode("node-0", ID{Ms: ms}) // triggers a recount
	}
	for _, tc := range []struct {
		others int
		want   time.Duration
	}{
		{1, 2 * time.Millisecond},
		{5, 6 * time.Millisecond},
		{40, 16 * time.Millisecond}, // capped at 8 windows
	} {
		p.peers = map[string]uint64{}
		see(tc.others)
		if w := p.window(); w != tc.want {
			t.Errorf("%d other nodes: window %v, want %v", tc.others, w, tc.want)
		}
	}
	// The others fall silent: after peerActive only node-0 counts.
	p.peers = map[string]uint64{}
	see(5)
	ms += peerActive + 1
	p.sawNode("node-0", ID{Ms: ms})
	if w := p.window(); w != 2*time.Millisecond {
		t.Fatalf("after the others went quiet: window %v, want 2ms", w)
	}
	p.e.cfg.BatchWindow = 0
	if w := p.window(); w != 0 {
		t.Fatalf("pacing disabled: window %v", w)
	}
}

// TestPumpTicksShareAGrid: a busy pump's next round trip starts on a
// multiple of the window, at least half a window and less than one and a
// half after the last, so that pumps of different nodes, whatever their
// phase, start theirs at the same moments; once on the grid, one window
// apart exactly.
func TestPumpTicksShareAGrid(t *testing.T) {
	base := time.Date(2026, 12, 2, 5, 0, 0, 0, time.UTC)
	for _, w := range []time.Duration{time.Millisecond, 2 * time.Millisecond, 6 * time.Millisecond, 7 * time.Millisecond} {
		for off := time.Duration(0); off < 3*w; off += w / 7 {
			last := base.Add(off)
			next := nextTick(last, w)
			if !next.Truncate(w).Equal(next) {
				t.Fatalf("w=%v last=+%v: next %v is not on the grid", w, off, next)
			}
			if gap := next.Sub(last); gap < w/2 || gap >= w/2+w {
				t.Fatalf("w=%v last=+%v: gap %v, want in [%v, %v)", w, off, gap, w/2, w/2+w)
			}
			if on := next; !nextTick(on, w).Equal(on.Add(w)) {
				t.Fatalf("w=%v: from a grid point %v the next tick is %v, want one window later", w, on, nextTick(on, w))
			}
		}
	}
	// Two nodes out of phase meet on the same tick.
	a, b := base.Add(300*time.Microsecond), base.Add(1700*time.Microsecond)
	w := 2 * time.Millisecond
	ta1 := nextTick(a, w)
	ta2, tb1 := nextTick(ta1, w), nextTick(b, w)
	if !tb1.Equal(ta1) && !tb1.Equal(ta2) {
		t.Fatalf("nodes did not meet: %v, %v and %v", ta1, ta2, tb1)
	}
	if !nextTick(tb1, w).Equal(nextTick(ta2, w)) && !nextTick(tb1, w).Equal(nextTick(ta1, w)) {
		t.Fatalf("nodes drifted apart after meeting")
	}
}

// TestRedisIdlePumpReadsBackInOneRoundTrip: at chat rates the pump
// blocks on the signals between messages; a message published then, to
// a room with members on this node, is read back in the round trip that
// stores it, not after the blocking read returns (which took two more
// round trips per message before: one read that found it, one that found
// nothing). Counts, not timings: each message is sent once the last one
// was delivered and the pump blocks again, and more than four batch
// windows after it (the pump paces reads after activity closer than that:
// redis_pacing.go), as a room at chat rates sends.
func TestRedisIdlePumpReadsBackInOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, nil)
	mustSubscribe(t, e, "chat")
	const n = 20
	idle := func() bool { return e.pumps[0].blocking.Load() && len(e.pumps[0].reqs) == 0 }
	testutil.Eventually(t, "the pump to block on the signals", idle)
	before := e.Stats()
	for i := range n {
		time.Sleep(5 * DefaultRedisBatchWindow) // the spacing of chat, not a wait for something
		mustPublishID(t, e, "chat", Message{Sender: 1, Payload: fmt.Appendf(nil, "m%d", i)})
		c.waitFor(t, "chat", i+1)
		testutil.Eventually(t, "the pump to block again", idle)
	}
	after := e.Stats()
	trips := after.RoundTrips - before.RoundTrips
	if trips > n+n/4 {
		t.Fatalf("%d round trips for %d messages published while the pump blocked (%d blocking reads); want one each", trips, n, after.BlockingReads-before.BlockingReads)
	}
}
