package main

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/stream"
)

// Regression tests of issue 18: every message in order, never early,
// never silently skipped. Each reproduces one finding of the issue and
// failed before its fix; the model-based test (model_test.go) checks the
// same promises on random histories.

// sendAcked sends a chat message from an ack=1 client and returns the ID
// it was stored with, skipping chat frames that arrive meanwhile.
func sendAcked(t *testing.T, c *client, text string) string {
	t.Helper()
	c.sendChat("u", text)
	for {
		w := decodeWire(t, c.recv())
		switch {
		case w.Ack != "":
			return w.Ack
		case w.Error != "":
			t.Fatalf("message %q: error frame %+v", text, w)
		}
	}
}

// TestJoinerGetsNothingEarlier (item 1): a member alone on its node sends
// messages; a member that joins later on the same node gets only what
// is sent after it joined, not the earlier ones.
func TestJoinerGetsNothingEarlier(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, _ *gateway) {
		s := one.dial(t, "/ws/chat/leak1/?ack=1")
		for i := range 20 {
			sendAcked(t, s, fmt.Sprint("old", i))
		}
		j := one.dial(t, "leak1")
		sendAcked(t, s, "new")
		if _, msg := j.recvChat(); msg != "new" {
			t.Fatalf("the later joiner got %q first, want \"new\": messages from before its join leaked", msg)
		}
	})
}

// TestSinceJoinerMissesNothing (item 3): a since= joiner that joins while
// the room's only other member is sending gets, without delay, every
// message after its since point, among them the one published as it
// joined.
func TestSinceJoinerMissesNothing(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, _ *gateway) {
		s := one.dial(t, "/ws/chat/gap/?ack=1")
		last := sendAcked(t, s, "first")
		for round := range 60 {
			text := fmt.Sprint("r", round)
			sent := make(chan error, 1)
			go func() { sent <- wsutil.WriteClientText(s.conn, []byte(chat("u", text))) }()
			j := one.dial(t, "/ws/chat/gap/?ids=1&since="+last)
			j.timeout = 2 * time.Second
			w := decodeWire(t, j.recv())
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			id := decodeWire(t, s.recv()).Ack
			if w.Message == nil || *w.Message != text || w.ID != id {
				t.Fatalf("round %d: the since=%s joiner got %+v first, want %q (%s)", round, last, w, text, id)
			}
			j.conn.Close()
			last = id
		}
	})
}

// TestSenderOrderSurvivesNoScript (item 2): with the script cache emptied
// (SCRIPT FLUSH, as after a restart or failover) while two nodes send
// messages with cids, each sender's messages are stored, acknowledged
// and delivered in the order sent.
func TestSenderOrderSurvivesNoScript(t *testing.T) {
	r := redistest.Start(t)
	nodes := startNodes(t, 2, redisEnvFor(r))
	const n = 400
	// Pipelines larger than Redis reads at once (16 KiB), so that another
	// node's commands can run between the commands of one round trip.
	pad := strings.Repeat("x", 1000)
	for round := range 6 {
		room := fmt.Sprint("noscript", round)
		watch := nodes[0].dial(t, "/ws/chat/"+room+"/?ids=1")
		senders := []*client{nodes[0].dial(t, "/ws/chat/"+room+"/?ack=1"), nodes[1].dial(t, "/ws/chat/"+room+"/?ack=1")}
		var wg sync.WaitGroup
		errs := make(chan error, len(senders))
		for k, c := range senders {
			wg.Go(func() {
				for i := range n {
					if i == n/4 && k == 0 {
						r.MustDo("SCRIPT", "FLUSH") // while both nodes send
					}
					if err := wsutil.WriteClientText(c.conn, fmt.Appendf(nil, `{"username":"s%d","message":"%d %s","cid":"c%d-%d"}`, k, i, pad, k, i)); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		for k, c := range senders {
			var prev stream.ID
			for i := range n {
				w := decodeWire(t, c.recv())
				for w.Message != nil { // the other sender's messages
					w = decodeWire(t, c.recv())
				}
				id, err := stream.ParseID(w.Ack)
				if err != nil || w.CID != fmt.Sprintf("c%d-%d", k, i) {
					t.Fatalf("round %d: sender %d's frame %d is %+v, want the ack of c%d-%d", round, k, i, w, k, i)
				}
				if !prev.Less(id) {
					t.Fatalf("round %d: sender %d's message %d stored as %v, not after its message %d (%v)", round, k, i, id, i-1, prev)
				}
				prev = id
			}
		}
		next := [2]int{}
		for range 2 * n {
			w := decodeWire(t, watch.recv())
			k, _ := strconv.Atoi((*w.Username)[1:])
			if want := fmt.Sprint(next[k], " ", pad); *w.Message != want {
				num, _, _ := strings.Cut(*w.Message, " ")
				t.Fatalf("round %d: got message %s of sender %d, want %d", round, num, k, next[k])
			}
			next[k]++
		}
	}
}

// TestReplayReadsPastForeignEntries (item 4): an entry the gateway did not
// write, among 150 messages, does not end a since=0 replay early.
func TestReplayReadsPastForeignEntries(t *testing.T) {
	r := redistest.Start(t)
	g := startNodes(t, 1, redisEnvFor(r))[0]
	s := g.dial(t, "/ws/chat/foreign/?ack=1")
	for i := range 150 {
		if i == 75 {
			r.MustDo("XADD", "chat:{"+strconv.Itoa(shardOf("foreign"))+"}:foreign", "*", "note", "x")
		}
		sendAcked(t, s, fmt.Sprint("m", i))
	}
	j := g.dial(t, "/ws/chat/foreign/?ids=1&since=0")
	_, texts := recvIDs(t, j, 150)
	for i, text := range texts {
		if text != fmt.Sprint("m", i) {
			t.Fatalf("replayed message %d is %q, want m%d", i, text, i)
		}
	}
	sendAcked(t, s, "live")
	if _, msg := j.recvChat(); msg != "live" {
		t.Fatalf("after the replay got %q, want the live message", msg)
	}
}

// shardOf is the engine's shard of a room with the default
// REDIS_READ_SHARDS (16): FNV-1a of its name.
func shardOf(room string) int {
	h := uint32(2166136261)
	for i := 0; i < len(room); i++ {
		h ^= uint32(room[i])
		h *= 16777619
	}
	return int(h % 16)
}

// TestSinceWithinHeldIsNotTruncated (item 5): a since= in the bare <ms>
// form, or an ID that was never an entry but lies within the held ones,
// replays what follows it with no truncated frame.
func TestSinceWithinHeldIsNotTruncated(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, _ *gateway) {
		s := one.dial(t, "/ws/chat/bare/?ack=1")
		var ids []stream.ID
		for i := range 3 {
			id, _ := stream.ParseID(sendAcked(t, s, fmt.Sprint("a", i)))
			ids = append(ids, id)
		}
		testutil.Eventually(t, "the clock to pass the first messages", func() bool {
			return uint64(time.Now().UnixMilli()) > ids[2].Ms+1
		})
		sendAcked(t, s, "b")
		for _, since := range []string{strconv.FormatUint(ids[2].Ms+1, 10), stream.ID{Ms: ids[2].Ms, Seq: ids[2].Seq + 1}.String()} {
			j := one.dial(t, "/ws/chat/bare/?ids=1&since="+since)
			w := decodeWire(t, j.recv())
			if w.Truncated != nil || w.Message == nil || *w.Message != "b" {
				t.Fatalf("since=%s: first frame %+v, want message b and no truncated frame", since, w)
			}
			j.conn.Close()
		}
		// A room that never had a message, resumed from a recent ID.
		j := one.dial(t, "/ws/chat/empty/?ids=1&since="+ids[0].String())
		s2 := one.dial(t, "/ws/chat/empty/?ack=1")
		sendAcked(t, s2, "first")
		if w := decodeWire(t, j.recv()); w.Truncated != nil || w.Message == nil || *w.Message != "first" {
			t.Fatalf("since= a recent ID in an empty room: first frame %+v, want the message and no truncated frame", w)
		}
	})
}

// TestSinceAfterExpiryIsTruncated (item 6): once a room expired (REDIS_TTL)
// and was pruned, a resume from before the expiry gets a truncated frame
// before the new messages.
func TestSinceAfterExpiryIsTruncated(t *testing.T) {
	g := startGateway(t, withEnv(noRateLimit, map[string]string{"REDIS_TTL": "300ms", "REDIS_DEDUPE_WINDOW": "300ms"}))
	s := g.dial(t, "/ws/chat/expire/?ack=1")
	old := sendAcked(t, s, "old")
	s.conn.Close()
	oldID, _ := stream.ParseID(old)
	// The engine prunes at most every second, from a publish.
	other := g.dial(t, "/ws/chat/other/?ack=1")
	testutil.Eventually(t, "the room to expire and be pruned", func() bool {
		if uint64(time.Now().UnixMilli()) < oldID.Ms+1500 {
			return false
		}
		sendAcked(t, other, "prune")
		return true
	})
	s = g.dial(t, "/ws/chat/expire/?ack=1")
	sendAcked(t, s, "new")
	j := g.dial(t, "/ws/chat/expire/?ids=1&since="+old)
	w := decodeWire(t, j.recv())
	if w.Truncated == nil || w.Truncated.Since != old {
		t.Fatalf("resume from before the expiry: first frame %+v, want truncated since %s", w, old)
	}
	if _, msg := j.recvChat(); msg != "new" {
		t.Fatalf("after the truncated frame got %q, want the new message", msg)
	}
}

// TestSinceInTheFuture (item 8): since= beyond the room's newest message is
// taken as the end of the room: live messages arrive.
func TestSinceInTheFuture(t *testing.T) {
	engines(t, nil, func(t *testing.T, one, two *gateway) {
		s := one.dial(t, "/ws/chat/future/?ack=1")
		sendAcked(t, s, "before")
		for _, since := range []string{"99999999999999-0", "99999999999999"} {
			j := two.dial(t, "/ws/chat/future/?ids=1&since="+since)
			sendAcked(t, s, "live "+since)
			if _, msg := j.recvChat(); msg != "live "+since {
				t.Fatalf("since=%s: got %q, want the live message", since, msg)
			}
			j.conn.Close()
		}
	})
}

// TestPresenceAtMostOnceASecond (item 9): under join churn, a presence=1
// member's frames come at least a second apart, the first included,
// whatever the phase of the join against the Hub's once-a-second poll.
func TestPresenceAtMostOnceASecond(t *testing.T) {
	g := startGateway(t, noRateLimit)
	// The first presence=1 member starts the poll: it ticks every second
	// from about now.
	first := g.dial(t, "/ws/chat/churn/?presence=1")
	decodeWire(t, first.recv())
	ticks := time.Now()
	var churn []*client
	for round, phase := range []time.Duration{300 * time.Millisecond, 800 * time.Millisecond} {
		// Join at this phase of the poll's period: a wait for the clock,
		// not for an event.
		next := ticks.Add((time.Since(ticks)/time.Second + 1) * time.Second)
		time.Sleep(time.Until(next.Add(phase)))
		w := g.dial(t, "/ws/chat/churn/?presence=1")
		f0 := decodeWire(t, w.recv())
		t0 := time.Now()
		churn = append(churn, g.dial(t, "churn")) // the count changes at once
		f1 := decodeWire(t, w.recv())
		if d := time.Since(t0); d < 900*time.Millisecond || f0.Presence == nil || f1.Presence == nil {
			t.Fatalf("round %d: presence frames %+v and %+v %v apart, want two at least a second apart", round, f0, f1, d)
		}
		w.conn.Close()
	}
	for _, c := range churn {
		c.conn.Close()
	}
}

// TestStartLogStatesTheCapsInForce (issue 19, item 5): the "gateway
// listening" line names the connection caps the server enforces, not a
// figure derived from the open-file limit beside them.
func TestStartLogStatesTheCapsInForce(t *testing.T) {
	g := startGateway(t, map[string]string{"LOG_LEVEL": "info", "MAX_CONNECTIONS": "1234", "MAX_CONNECTIONS_PER_IP": "77"})
	for _, want := range []string{"max_connections=1234", "max_connections_per_ip=77"} {
		if !g.logs.contains(want) {
			t.Fatalf("the start log does not say %s", want)
		}
	}
}

// TestDedupeKeySizeAsDocumented (issue 19, item 5): README says a cid's
// dedupe key costs Redis about 230 bytes, of which MEMORY USAGE reports
// about 150 (the rest is the keyspace's and the expiry's entries: 225 B
// per key measured as used_memory over 10 000 such keys); check the part
// Redis reports for one key with a 36-byte cid.
func TestDedupeKeySizeAsDocumented(t *testing.T) {
	r := redistest.Start(t)
	g := startNodes(t, 1, redisEnvFor(r))[0]
	s := g.dial(t, "/ws/chat/dedupe-size/?ack=1")
	s.send(`{"username":"u","message":"m","cid":"0123456789abcdef0123456789abcdef0123"}`)
	if w := decodeWire(t, s.recv()); w.Ack == "" {
		t.Fatalf("no ack: %+v", w)
	}
	keys := strings.Fields(r.MustDo("KEYS", "chat:{*}#cid:*"))
	if len(keys) != 1 {
		t.Fatalf("dedupe keys %q, want one", keys)
	}
	n, err := strconv.Atoi(r.MustDo("MEMORY", "USAGE", keys[0]))
	if err != nil || n < 120 || n > 190 {
		t.Fatalf("MEMORY USAGE of the dedupe key: %d (%v); README says about 150 of about 230 bytes", n, err)
	}
	t.Logf("dedupe key %s: %d bytes", keys[0], n)
}
