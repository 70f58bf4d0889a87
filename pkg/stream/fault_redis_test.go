package stream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// outcome is what one published message got back.
type outcome struct {
	sender, seq int
	id          ID
	err         error
	took        time.Duration
}

// TestRedisPauseExactOutcomes stops Redis (SIGSTOP) for a while under
// steady publishing from two nodes, as an independent fault test did, and
// checks every outcome against what the stream holds afterwards:
//   - every accepted message is stored and delivered to the other node
//     exactly once, with the ID its sender got;
//   - every message answered ErrUnavailable ("not stored") is not stored;
//   - each sender's messages are stored and delivered in the order sent,
//     across the pause;
//   - no sender waits longer than twice REDIS_TIMEOUT for an answer.
func TestRedisPauseExactOutcomes(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.MaxLen = 1 << 20 // keep everything: the stream is the ground truth
	nodes := startNodes(t, 2, cfg)
	const room = "pause"
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, room)
	}
	// Senders 0 and 1 publish through node 0, 2 and 3 through node 1, each
	// from one goroutine without waiting for answers, as an event loop does.
	const senders = 4
	var mu sync.Mutex
	var outs []outcome
	var published [senders]int // messages each sender published
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for s := range senders {
		e := nodes[s/2].e
		wg.Go(func() {
			tick := time.NewTicker(3 * time.Millisecond)
			defer tick.Stop()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					published[s] = seq
					return
				case <-tick.C:
				}
				start := time.Now()
				e.Publish(room, Message{Sender: uint64(100 + s), Payload: fmt.Appendf(nil, "%d:%d", s, seq)},
					ackOf(func(_ any, id ID, err error) {
						mu.Lock()
						outs = append(outs, outcome{s, seq, id, err, time.Since(start)})
						mu.Unlock()
					}), nil)
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // publishing before the pause: the test's subject, not synchronisation
	srv.Pause()
	time.Sleep(2 * time.Second) // the pause itself
	srv.Resume()
	testutil.Eventually(t, "both nodes healthy again", func() bool {
		return nodes[0].e.Health() == nil && nodes[1].e.Health() == nil
	})
	time.Sleep(300 * time.Millisecond) // publishing after the pause
	close(stop)
	wg.Wait()
	// Every Publish gets exactly one answer, within the bound.
	sent := 0
	for _, n := range published {
		sent += n
	}
	testutil.EventuallyWithin(t, 3*cfg.Timeout, "an answer to every message", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(outs) >= sent
	})
	mu.Lock()
	seen := map[[2]int]int{}
	for _, o := range outs {
		if seen[[2]int{o.sender, o.seq}]++; seen[[2]int{o.sender, o.seq}] > 1 {
			t.Fatalf("message %d:%d was answered twice", o.sender, o.seq)
		}
	}
	if len(outs) != sent {
		t.Fatalf("%d answers for %d messages", len(outs), sent)
	}
	mu.Unlock()

	// What the stream holds, in stream order.
	key := nodes[0].e.key(room)
	lines := strings.Split(srv.MustDo("XRANGE", key, "-", "+"), "\n")
	type entry struct {
		id          string
		sender, seq int
	}
	var stored []entry
	for i := 0; i+4 < len(lines); i += 5 {
		var s, q int
		if _, err := fmt.Sscanf(lines[i+4], "%d:%d", &s, &q); err != nil {
			t.Fatalf("stream entry %q: %v", lines[i:i+5], err)
		}
		stored = append(stored, entry{lines[i], s, q})
	}
	inStream := map[[2]int]string{}
	last := map[int]int{}
	for _, en := range stored {
		k := [2]int{en.sender, en.seq}
		if _, dup := inStream[k]; dup {
			t.Fatalf("message %v stored twice", k)
		}
		inStream[k] = en.id
		if q, ok := last[en.sender]; ok && en.seq <= q {
			t.Fatalf("sender %d: message %d stored after %d (order broken)", en.sender, en.seq, q)
		}
		last[en.sender] = en.seq
	}
	var accepted, refused, unconfirmed int
	bound := 2*cfg.Timeout + time.Second // documented bound, plus slack for a loaded CI machine
	mu.Lock()
	for _, o := range outs {
		k := [2]int{o.sender, o.seq}
		if o.took > bound {
			t.Errorf("message %v answered after %v, want at most %v", k, o.took, bound)
		}
		switch {
		case o.err == nil:
			accepted++
			if id, ok := inStream[k]; !ok || id != o.id.String() {
				t.Errorf("accepted message %v (ID %v) is not in the stream (found %q)", k, o.id, id)
			}
		case errors.Is(o.err, ErrUnavailable):
			refused++
			if _, ok := inStream[k]; ok {
				t.Errorf("message %v was answered %v but is stored", k, o.err)
			}
		case errors.Is(o.err, ErrUnconfirmed):
			unconfirmed++
		default:
			t.Errorf("message %v: unexpected error %v", k, o.err)
		}
	}
	mu.Unlock()
	t.Logf("%d sent: %d accepted, %d refused (not stored), %d unconfirmed; %d stored", sent, accepted, refused, unconfirmed, len(stored))
	if refused+unconfirmed == 0 {
		t.Fatal("nothing failed during the pause: the test did not pause Redis")
	}
	// The engines' counters agree with the answers the senders got.
	var st Stats
	for _, nd := range nodes {
		s := nd.e.Stats()
		st.Accepted += s.Accepted
		st.Refused += s.Refused
		st.Unconfirmed += s.Unconfirmed
		st.RoundTripErrors += s.RoundTripErrors
	}
	if st.Accepted != int64(accepted) || st.Refused != int64(refused) || st.Unconfirmed != int64(unconfirmed) || st.RoundTripErrors == 0 {
		t.Errorf("Stats of both nodes: %d accepted, %d refused, %d unconfirmed, %d failed round trips; senders saw %d, %d, %d and some failures",
			st.Accepted, st.Refused, st.Unconfirmed, st.RoundTripErrors, accepted, refused, unconfirmed)
	}
	// Each node delivers exactly what the stream holds, in stream order.
	for i, nd := range nodes {
		got := nd.c.settle(t, nd.e, room)
		seen := map[ID]int{}
		for j, m := range got {
			if k, dup := seen[m.ID]; dup {
				t.Errorf("node %d delivered %v (%q) twice: at %d and %d", i, m.ID, m.Payload, k, j)
			}
			seen[m.ID] = j
		}
		if len(got) != len(stored) {
			ids := map[string]bool{}
			for _, en := range stored {
				ids[en.id] = true
			}
			for _, m := range got {
				if !ids[m.ID.String()] {
					t.Errorf("node %d delivered %v (%q), which the stream does not hold", i, m.ID, m.Payload)
				}
			}
			t.Fatalf("node %d delivered %d messages, the stream holds %d", i, len(got), len(stored))
		}
		for j, m := range got {
			if m.ID.String() != stored[j].id {
				t.Fatalf("node %d delivery %d has ID %v, stream entry %s", i, j, m.ID, stored[j].id)
			}
		}
	}
}

// TestRedisPublishRefusedByRedis: Redis error replies to XADD mean the
// message was not stored: ErrUnavailable, and the engine keeps working.
func TestRedisPublishRefusedByRedis(t *testing.T) {
	srv := redistest.Start(t)
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), func(string, Message) {}, nil)
	ctx := context.Background()

	t.Run("WRONGTYPE", func(t *testing.T) {
		srv.MustDo("SET", e.key("str"), "not a stream")
		_, err := PublishWait(ctx, e, "str", Message{Sender: 1, Payload: []byte("x")})
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Fatalf("Publish to a string key = %v, want ErrUnavailable naming WRONGTYPE", err)
		}
		mustPublish(t, e, "fine", Message{Sender: 1, Payload: []byte("x")})
	})
	t.Run("OOM", func(t *testing.T) {
		srv.MustDo("CONFIG", "SET", "maxmemory-policy", "noeviction")
		srv.MustDo("CONFIG", "SET", "maxmemory", "1")
		_, err := PublishWait(ctx, e, "oom", Message{Sender: 1, Payload: []byte("x")})
		srv.MustDo("CONFIG", "SET", "maxmemory", "0")
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "OOM") {
			t.Fatalf("Publish when Redis is out of memory = %v, want ErrUnavailable naming OOM", err)
		}
		if n := srv.MustDo("EXISTS", e.key("oom")); n != "0" {
			t.Fatalf("a refused message was stored (EXISTS = %s)", n)
		}
		mustPublish(t, e, "oom", Message{Sender: 1, Payload: []byte("after")})
		if err := e.Health(); err != nil {
			t.Fatalf("Health after refused publishes: %v", err)
		}
		s := e.Stats()
		if s.Refused != 2 || s.Accepted != 2 || s.RoundTrips == 0 || s.RoundTripLatency.Count() != uint64(s.RoundTrips) ||
			s.PublishLatency.Count() != 4 {
			t.Fatalf("Stats after 2 refused and 2 accepted publishes: %+v", s)
		}
	})
}

// TestRedisMalformedEntriesDoNotStick: a batch of malformed entries (more
// than one read returns) must not wedge the room: the cursor moves past
// them, they are logged (rate-limited), and the next good message arrives.
func TestRedisMalformedEntriesDoNotStick(t *testing.T) {
	srv := redistest.Start(t)
	log := newLogSink(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.ReadCount = 5
	c := newCollector()
	e := newTestRedis(t, cfg, c.handle, log)
	pub := newTestRedis(t, cfg, func(string, Message) {}, nil)
	mustSubscribe(t, e, "bad")
	key := e.key("bad")
	// Written without a signal: the pump's sweep (every REDIS_SWEEP)
	// finds them, from the cursor Subscribe set before them.
	for i := range 3 * cfg.ReadCount {
		srv.MustDo("XADD", key, "*", "junk", strconv.Itoa(i))
	}
	srv.MustDo("XADD", key, "*", "s", "not-a-number", "p", "x")
	testutil.EventuallyWithin(t, 5*time.Second, "the malformed-entry warning", func() bool {
		return strings.Contains(log.String(), "skipped malformed stream entries")
	})
	mustPublish(t, pub, "bad", Message{Sender: 1, Payload: []byte("good")})
	got := c.settle(t, pub, "bad")
	if len(got) != 1 || string(got[0].Payload) != "good" {
		t.Fatalf("delivered %d messages (%v), want just the good one", len(got), got)
	}
	if n := e.Stats().Malformed; n != int64(3*cfg.ReadCount+1) {
		t.Errorf("Stats.Malformed = %d, want %d", n, 3*cfg.ReadCount+1)
	}
	if strings.Count(log.String(), "skipped malformed stream entries") != 1 {
		t.Fatalf("malformed entries logged more than once within %v:\n%s", badLogEvery, log.String())
	}
	if err := e.Health(); err != nil {
		t.Fatalf("Health after skipping malformed entries: %v", err)
	}
}

// TestRedisStreamVanishesOrGoesBack: a room stream that is deleted (or
// expires) and recreated, or replaced by one with older IDs (a restore),
// keeps delivering new messages.
func TestRedisStreamVanishesOrGoesBack(t *testing.T) {
	srv := redistest.Start(t)
	log := newLogSink(t)
	cfg := testRedisConfig(t, srv.Addr())
	c := newCollector()
	e := newTestRedis(t, cfg, c.handle, log)
	pub := newTestRedis(t, cfg, func(string, Message) {}, nil)
	mustSubscribe(t, e, "gone")
	c.logOnFailure(t, "gone")
	key := e.key("gone")
	mustPublish(t, pub, "gone", Message{Sender: 1, Payload: []byte("one")})
	c.settle(t, pub, "gone")

	srv.MustDo("DEL", key)
	// A stream recreated within the same millisecond could reuse the old
	// last ID (a reader that read it takes the new entry as read); wait
	// until Redis's clock has moved past the last entry delivered, the
	// settle marker, not just the first.
	got := c.waitFor(t, "gone", 1)
	last := got[len(got)-1].ID
	testutil.EventuallyWithin(t, time.Second, "Redis's clock to pass the last ID", func() bool {
		f := strings.Fields(srv.MustDo("TIME"))
		sec, _ := strconv.ParseUint(f[0], 10, 64)
		us, _ := strconv.ParseUint(f[1], 10, 64)
		return sec*1000+us/1000 > last.Ms
	})
	mustPublish(t, pub, "gone", Message{Sender: 1, Payload: []byte("after-delete")})
	testutil.EventuallyWithin(t, 5*time.Second, "the message after the stream vanished", func() bool {
		got := c.waitFor(t, "gone", 1)
		return string(got[len(got)-1].Payload) == "after-delete"
	})

	// Back in time: the stream now ends before what the reader read.
	// One script: the engine may be raising the stream it found gone.
	srv.MustDo("EVAL", "redis.call('DEL', KEYS[1]) return redis.call('XADD', KEYS[1], '1-1', 's', '1', 'p', 'old')", "1", key)
	mustPublish(t, pub, "gone", Message{Sender: 1, Payload: []byte("after-restore")})
	testutil.EventuallyWithin(t, 5*time.Second, "the message after the stream went back in time", func() bool {
		got := c.waitFor(t, "gone", 1)
		return string(got[len(got)-1].Payload) == "after-restore"
	})
}

// TestRedisAloneHint: a message published with Alone (the sender is the
// only member on its node) is stored and delivered to other nodes as
// usual; the publishing node may skip it.
func TestRedisAloneHint(t *testing.T) {
	srv := redistest.Start(t)
	nodes := startNodes(t, 2, testRedisConfig(t, srv.Addr()))
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, "pair")
	}
	id := mustPublishID(t, nodes[0].e, "pair", Message{Sender: 7, Payload: []byte("hi"), Alone: true})
	got := nodes[1].c.settle(t, nodes[1].e, "pair")
	if len(got) != 1 || got[0].ID != id || got[0].Alone {
		t.Fatalf("other node got %+v, want the message with ID %v (Alone cleared)", got, id)
	}
}

// TestRedisCorruptReplies: replies whose stream IDs are garbage (through
// a fault-injecting proxy in front of a real Redis): an XADD answered with
// a non-ID is reported as ErrUnconfirmed (it may be stored: it is), reads
// that cannot decode an entry's ID stick the room and fail Health rather
// than skip it; once replies are sound again every stored message is
// delivered exactly once, in stream order.
func TestRedisCorruptReplies(t *testing.T) {
	srv := redistest.Start(t)
	px := redistest.StartProxy(t, srv.Addr())
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, px.Addr()), c.handle, nil)
	pub := newTestRedis(t, testRedisConfig(t, srv.Addr()), func(string, Message) {}, nil)
	mustSubscribe(t, e, "px")
	mustPublish(t, pub, "px", Message{Sender: 1, Payload: []byte("before")})
	c.waitFor(t, "px", 1)

	px.CorruptIDs(true)
	// The pump may be backing off already (its reads fail too): then the
	// message is refused as not stored, and the next one is tried.
	var unconfirmed string
	tick := time.NewTicker(5 * time.Millisecond) // poll interval
	defer tick.Stop()
	deadline := time.Now().Add(testutil.Timeout)
	for i := 0; unconfirmed == ""; i++ {
		payload := fmt.Sprintf("unconfirmed-%d", i)
		_, err := PublishWait(context.Background(), e, "px", Message{Sender: 2, Payload: []byte(payload)})
		switch {
		case errors.Is(err, ErrUnconfirmed) && strings.Contains(err.Error(), `"bad"`):
			unconfirmed = payload
		case errors.Is(err, ErrUnavailable) && time.Now().Before(deadline):
			<-tick.C
		default:
			t.Fatalf("Publish answered with a non-ID = %v, want ErrUnconfirmed quoting the reply", err)
		}
	}
	mustPublish(t, pub, "px", Message{Sender: 1, Payload: []byte("during")})
	var herr error
	testutil.EventuallyWithin(t, 5*time.Second, "Health to fail on undecodable replies", func() bool {
		herr = e.Health()
		return herr != nil
	})
	t.Logf("Health while replies are corrupt: %v", herr)

	px.CorruptIDs(false)
	mustPublish(t, pub, "px", Message{Sender: 1, Payload: []byte("after")})
	testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	got := c.settle(t, pub, "px")
	var payloads []string
	for _, m := range got {
		payloads = append(payloads, string(m.Payload))
	}
	want := []string{"before", unconfirmed, "during", "after"}
	if strings.Join(payloads, ",") != strings.Join(want, ",") {
		t.Fatalf("delivered %q, want %q (the stream's order, once each)", payloads, want)
	}
}

// TestRedisSignalStreamBroken: something else wrote a string at the
// signal stream's key, so every signal write fails and a polling pump's
// read of the signals is refused. Messages are still stored and
// acknowledged, and delivered at once and in order, at chat rates and in
// a burst during which the key breaks: idle pumps are told by Redis
// (tracking), a pump does not start polling a stream it cannot read, and
// one whose polling read is refused goes back to tracked reads.
func TestRedisSignalStreamBroken(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Sweep = time.Hour // the sweep cannot be what delivers them
	nodes := startNodes(t, 2, cfg)
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, "sig")
	}
	nodes[1].c.settle(t, nodes[1].e, "sig")
	sigKey := nodes[0].e.pumps[0].sigKey
	srv.MustDo("DEL", sigKey)
	srv.MustDo("SET", sigKey, "not a stream")
	var ids []ID
	for i := range 3 {
		time.Sleep(5 * DefaultRedisBatchWindow) // chat rates
		id, err := PublishWait(context.Background(), nodes[0].e, "sig", Message{Sender: 1, Payload: fmt.Appendf(nil, "m%d", i)})
		if err != nil {
			t.Fatalf("Publish %d with a broken signal key: %v (the message itself is stored)", i, err)
		}
		ids = append(ids, id)
		nodes[1].c.waitFor(t, "sig", i+2)
	}
	// A burst that makes node 1 poll, with the key mended first and
	// broken again halfway, while node 1 polls.
	srv.MustDo("DEL", sigKey)
	const burst = 2000
	ids = append(ids, publishBurst(t, nodes[0].e, "sig", burst, func(i int) {
		if i == burst/2 {
			srv.MustDo("DEL", sigKey)
			srv.MustDo("SET", sigKey, "not a stream")
		}
	})...)
	got := nodes[1].c.waitFor(t, "sig", 1+3+burst)[1:]
	for i, m := range got {
		if m.ID != ids[i] {
			t.Fatalf("delivery %d has ID %v, want %v", i, m.ID, ids[i])
		}
	}
}
