package stream

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestPumpWindowGrowsWithNodes: with more nodes publishing, each pump
// paces its round trips proportionally more, so that Redis sees about the
// same number of round trips per second; the count of active nodes comes
// from presence (TestRedisActivePeersCounted).
func TestPumpWindowGrowsWithNodes(t *testing.T) {
	e := &Redis{cfg: RedisConfig{BatchWindow: 2 * time.Millisecond}}
	p := &pump{e: e}
	for _, tc := range []struct {
		others int32
		want   time.Duration
	}{
		{0, 2 * time.Millisecond},
		{1, 2 * time.Millisecond},
		{5, 6 * time.Millisecond},
		{40, 16 * time.Millisecond}, // capped at 8 windows
	} {
		e.activePeers.Store(tc.others)
		if w := p.window(); w != tc.want {
			t.Errorf("%d other nodes: window %v, want %v", tc.others, w, tc.want)
		}
	}
	p.e.cfg.BatchWindow = 0
	if w := p.window(); w != 0 {
		t.Fatalf("pacing disabled: window %v", w)
	}
}

// TestRedisActivePeersCounted: each node learns through its presence
// round trip how many other nodes published within peerActive; nodes that
// only hold rooms do not count, and a node that stops publishing stops
// counting after peerActive.
func TestRedisActivePeersCounted(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.PresenceInterval = 100 * time.Millisecond
	nodes := startNodes(t, 4, cfg)
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, "busy")
	}
	// Nodes 0 and 1 publish; 2 and 3 only read.
	publishing := true
	for publishing {
		for _, nd := range nodes[:2] {
			mustPublishID(t, nd.e, "busy", Message{Sender: 1, Payload: []byte("x")})
		}
		publishing = nodes[3].e.activePeers.Load() < 2 || nodes[0].e.activePeers.Load() < 1
		time.Sleep(20 * time.Millisecond) // the pace of the publishers, not a wait
		if t.Context().Err() != nil {
			return
		}
	}
	if n := nodes[3].e.activePeers.Load(); n != 2 {
		t.Fatalf("a reading node counts %d active peers, want 2", n)
	}
	if n := nodes[0].e.activePeers.Load(); n != 1 {
		t.Fatalf("a publishing node counts %d active peers, want 1 (itself excluded)", n)
	}
	testutil.EventuallyWithin(t, peerActive+2*time.Second, "the count to fall to 0 once nobody publishes", func() bool {
		return nodes[3].e.activePeers.Load() == 0
	})
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

// TestRedisIdlePumpReadsBackInOneRoundTrip: at chat rates a message to
// a room with members on this node is stored and read back in one round
// trip, and the node's own writes wake nothing (NOLOOP): one round trip
// per message, no wake. Before client tracking each message also woke the
// node's own blocking read, which then read again. Counts, not timings:
// each message is sent once the last one was delivered, and more than
// four batch windows after it (the pump paces reads after activity closer
// than that: redis_pacing.go), as a room at chat rates sends.
func TestRedisIdlePumpReadsBackInOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t)
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, nil)
	mustSubscribe(t, e, "chat")
	const n = 20
	c.settle(t, e, "chat")
	before := e.Stats()
	for i := range n {
		time.Sleep(5 * DefaultRedisBatchWindow) // the spacing of chat, not a wait for something
		mustPublishID(t, e, "chat", Message{Sender: 1, Payload: fmt.Appendf(nil, "m%d", i)})
		c.waitFor(t, "chat", i+2) // the settle marker, then the messages
	}
	after := e.Stats()
	if trips := after.RoundTrips - before.RoundTrips; trips > n+n/4 {
		t.Fatalf("%d round trips for %d messages at chat rates; want one each", trips, n)
	}
	if w := after.Wakes - before.Wakes; w != 0 {
		t.Fatalf("the node's own messages woke its pump %d times; want none (CLIENT TRACKING NOLOOP)", w)
	}
}

// TestRedisWakesOnlyNodesHoldingTheRoom: at chat rates a message wakes
// the nodes that hold its room, once each, and no other node: Redis's cost
// per message follows the nodes in the room, not the nodes in the system.
// Nodes with no rooms, and nodes with other rooms, send Redis nothing for
// it (idle pumps do not read the signal stream).
func TestRedisWakesOnlyNodesHoldingTheRoom(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Sweep = time.Hour // deliveries come from wakes alone
	nodes := startNodes(t, 4, cfg)
	mustSubscribe(t, nodes[0].e, "pair")
	mustSubscribe(t, nodes[1].e, "pair")
	mustSubscribe(t, nodes[2].e, "other")
	// nodes[3] holds nothing.
	nodes[1].c.settle(t, nodes[1].e, "pair")
	nodes[0].c.waitFor(t, "pair", 1) // node 1's marker woke node 0: before the count starts
	nodes[2].c.settle(t, nodes[2].e, "other")
	var before [4]Stats
	for i, nd := range nodes {
		before[i] = nd.e.Stats()
	}
	const n = 10
	for i := range n {
		// At chat rates (spaced by more than four batch windows, so that
		// no pump starts polling the signal stream): one wake each.
		time.Sleep(5 * DefaultRedisBatchWindow)
		mustPublishID(t, nodes[0].e, "pair", Message{Sender: 1, Payload: fmt.Appendf(nil, "m%d", i)})
		nodes[1].c.waitFor(t, "pair", i+2)
	}
	wakes := func(i int) int64 { return nodes[i].e.Stats().Wakes - before[i].Wakes }
	if w := wakes(1); w < n || w > n+2 {
		t.Fatalf("the other member's node woke %d times for %d messages; want one each", w, n)
	}
	for _, i := range []int{0, 2, 3} {
		if w := wakes(i); w != 0 {
			t.Fatalf("node %d (publisher, other room, no room) woke %d times; want none", i, w)
		}
		if rt := nodes[i].e.Stats().RoundTrips - before[i].RoundTrips; i != 0 && rt > 1 {
			t.Fatalf("node %d made %d round trips for messages to a room it does not hold (a PING at most)", i, rt)
		}
	}
}

// TestRedisTrackingLostIsRecovered: when Redis drops a pump's
// connections, or only the listener that receives its invalidations (and
// with it what the pump's connection tracked), the pump reconnects, reads
// every room again and is woken by the next messages as before, long
// before the sweep.
func TestRedisTrackingLostIsRecovered(t *testing.T) {
	for _, which := range []string{"every connection", "the listener"} {
		t.Run(which, func(t *testing.T) {
			srv := redistest.Start(t)
			cfg := testRedisConfig(t, srv.Addr())
			cfg.Sweep = time.Hour
			nodes := startNodes(t, 2, cfg)
			for _, nd := range nodes {
				mustSubscribe(t, nd.e, "kept")
			}
			nodes[1].c.settle(t, nodes[1].e, "kept")
			// Kill the reading node's connections (or its listener, the
			// target of its pump's REDIRECT): Redis forgets what they
			// tracked.
			killed := 0
			for _, line := range strings.Split(srv.MustDo("CLIENT", "LIST"), "\n") {
				if !strings.Contains(line, "name=chatgw-"+nodes[1].e.node) {
					continue
				}
				id, _, _ := strings.Cut(strings.TrimPrefix(line, "id="), " ")
				if which == "the listener" {
					_, rest, _ := strings.Cut(line, " redir=")
					id, _, _ = strings.Cut(rest, " ")
					if id == "-1" || id == "0" {
						continue // not a pump's connection
					}
				}
				srv.MustDo("CLIENT", "KILL", "ID", id)
				killed++
			}
			if killed == 0 {
				t.Fatalf("found no connection of the reading node to kill in CLIENT LIST")
			}
			var ids []ID
			for i := range 3 {
				ids = append(ids, mustPublishID(t, nodes[0].e, "kept", Message{Sender: 1, Payload: fmt.Appendf(nil, "after-%d", i)}))
			}
			got := nodes[1].c.waitFor(t, "kept", 4)
			for i, m := range got[1:] {
				if m.ID != ids[i] {
					t.Fatalf("delivery %d after the kill has ID %v, want %v", i, m.ID, ids[i])
				}
			}
		})
	}
}

// TestRedisPollsUnderLoadThenWakesAgain: under a burst the reading node
// stops hearing of each message by invalidation and polls the signal
// stream on the pacing grid (far fewer wakes than messages, nothing lost,
// in order); once the burst is over it re-arms what it read while
// polling, so that the next messages at chat rates wake it again, one
// wake each, long before the sweep.
func TestRedisPollsUnderLoadThenWakesAgain(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Sweep = time.Hour
	nodes := startNodes(t, 2, cfg)
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, "burst")
	}
	nodes[1].c.settle(t, nodes[1].e, "burst")
	before := nodes[1].e.Stats()
	const burst = 2000
	ids := publishBurst(t, nodes[0].e, "burst", burst, nil)
	nodes[1].c.waitFor(t, "burst", burst+1)
	if w := nodes[1].e.Stats().Wakes - before.Wakes; w >= burst/4 {
		t.Fatalf("the reading node woke %d times for a burst of %d: it should poll the signals under load", w, burst)
	}
	// The burst is over: polling ends after four quiet windows; give it
	// many more (a loaded machine is slow).
	time.Sleep(100 * DefaultRedisBatchWindow)
	mid := nodes[1].e.Stats()
	for i := range 5 {
		time.Sleep(5 * DefaultRedisBatchWindow)
		ids = append(ids, mustPublishID(t, nodes[0].e, "burst", Message{Sender: 1, Payload: fmt.Appendf(nil, "c%d", i)}))
		nodes[1].c.waitFor(t, "burst", burst+2+i)
	}
	if w := nodes[1].e.Stats().Wakes - mid.Wakes; w != 5 {
		t.Fatalf("after the burst, 5 messages at chat rates woke the reading node %d times; want 5 (its rooms re-armed)", w)
	}
	got := nodes[1].c.waitFor(t, "burst", burst+6)[1:]
	for i, m := range got {
		if m.ID != ids[i] {
			t.Fatalf("delivery %d has ID %v, want %v (lost, doubled or out of order)", i, m.ID, ids[i])
		}
	}
}

// publishBurst publishes n messages to room from e as a steady stream
// (a pause of one batch window every 100, so that they spread over many
// round trips), calling during(i) before message i when during is not
// nil, and returns their IDs in stream order once all are acknowledged.
func publishBurst(t *testing.T, e Engine, room string, n int, during func(i int)) []ID {
	t.Helper()
	done := make(chan ID, n)
	for i := range n {
		if during != nil {
			during(i)
		}
		e.Publish(room, Message{Sender: 1, Payload: fmt.Appendf(nil, "b%d", i)}, func(_ any, id ID, err error) bool {
			if err != nil {
				t.Errorf("publish in the burst: %v", err)
			}
			done <- id
			return false
		}, nil)
		if i%100 == 99 {
			time.Sleep(DefaultRedisBatchWindow)
		}
	}
	ids := make([]ID, 0, n)
	for range n {
		ids = append(ids, <-done)
	}
	slices.SortFunc(ids, func(a, b ID) int {
		switch {
		case a.Less(b):
			return -1
		case b.Less(a):
			return 1
		}
		return 0
	})
	return ids
}

// TestRedisJoinsShareRoundTrips: joins travel in the pump's round trips,
// many to one, as one XINFO STREAM each and no read: 200 rooms joined at
// once cost far fewer round trips than joins, and no XREAD;
// and a message published to each right after its join is delivered.
func TestRedisJoinsShareRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, nil)
	pub := newTestRedis(t, testRedisConfig(t, srv.Addr()), func(string, Message) {}, nil)
	calls := func(cmd string) int {
		out := srv.MustDo("INFO", "commandstats")
		_, rest, _ := strings.Cut(out, "cmdstat_"+cmd+":calls=")
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		return n
	}
	mustSubscribe(t, e, "warm-up")
	time.Sleep(50 * time.Millisecond) // let the warm-up's round trips end
	const n = 200
	before, xreads, xinfos := e.Stats(), calls("xread"), calls("xinfo|stream")
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { mustSubscribe(t, e, fmt.Sprintf("join-%d", i)) })
	}
	wg.Wait()
	if trips := e.Stats().RoundTrips - before.RoundTrips; trips > n/4 {
		t.Fatalf("%d joins at once took %d round trips; want them to share a few", n, trips)
	}
	if d := calls("xinfo|stream") - xinfos; d != n {
		t.Fatalf("%d joins sent %d XINFO STREAM; want one each", n, d)
	}
	if d := calls("xread") - xreads; d != 0 {
		t.Fatalf("%d joins made %d XREADs; a join reads nothing (its XINFO arms the room)", n, d)
	}
	for i := range n {
		mustPublish(t, pub, fmt.Sprintf("join-%d", i), Message{Sender: 2, Payload: []byte("hi")})
	}
	for i := range n {
		c.waitFor(t, fmt.Sprintf("join-%d", i), 1)
	}
}
