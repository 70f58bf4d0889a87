package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/room"
)

// floodEnv are the limits of the flood tests (RATE_MODE drop): high
// enough that the bystander (one message per floodPace) stays under them,
// so that only the flooder is limited.
var floodEnv = map[string]string{"RATE_LIMIT": "500", "RATE_BURST": "20", "RATE_CLOSE_AFTER": "20", "RATE_MODE": "drop"}

// redisEntryBytes is the most Redis spends on one stream entry of a
// message of size bytes, as docs/limits-room.md states it: the allocator
// rounds a stream node up by at most a quarter, plus 1 KiB of entry,
// node and key overhead.
func redisEntryBytes(size int) int64 { return int64(size + size/4 + 1024) }

// redisFixedBytes bounds what Redis holds besides the room streams: the
// signal stream (at most ~10 000 short entries) and client buffers.
const redisFixedBytes = 2 << 20

const (
	floodPace    = 5 * time.Millisecond // the bystander sends one message per floodPace
	floodSamples = 60                   // latency samples per window
	floodWindows = 3                    // windows without and with the flood, alternating
	floodMembers = 4                    // members of the flooded room besides the flooder
)

// TestFloodIsLimitedAndIsolated: with RATE_MODE drop, one client floods
// its room as fast as it can, reconnecting whenever it is closed. Each of
// its connections gets rate_limited frames, then a 1008 close; the other
// members of its room stay open and keep receiving; and another room's
// send-to-receive latency during the flood stays within a ratio of its
// latency without it, measured in the same test.
func TestFloodIsLimitedAndIsolated(t *testing.T) {
	g := startGateway(t, floodEnv)
	floodScenario(t, g, g)
}

// TestFloodIsPacedAndIsolated: with the default limits (RATE_MODE pace),
// one client floods its room as fast as it can on one connection. It is
// read more slowly: it is never closed and gets no error frame, its room's
// members get its messages no faster than RATE_LIMIT allows (after
// RATE_BURST), in order, and another room's latency during the flood
// stays within a ratio of its latency without it; on one node and on two
// sharing a Redis.
func TestFloodIsPacedAndIsolated(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		g := startGateway(t, nil)
		paceScenario(t, g, g)
	})
	t.Run("redis", func(t *testing.T) {
		r := redistest.Start(t)
		env := withEnv(redisEnvFor(r), map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "REDIS_BATCH_WINDOW": "-1ms"})
		paceScenario(t, startGateway(t, env), startGateway(t, env))
	})
}

// floodRooms joins the flooded room's members (on b and a, alternately)
// and the bystander room's sender (on a) and receiver (on b).
func floodRooms(t *testing.T, a, b *gateway) (members []*watcher, sender, receiver *client) {
	members = make([]*watcher, floodMembers)
	for i := range members {
		node := b
		if i%2 == 1 {
			node = a
		}
		members[i] = watch(node.dial(t, "flooded"))
	}
	return members, a.dial(t, "bystander"), b.dial(t, "bystander")
}

// bystanderUnhurt fails the test when the bystander's latency during the
// flood passes a ratio of its latency without plus a slack: the median
// medianRatio times plus medianSlack, the 90th percentile p90Ratio times
// plus p90Slack. It returns the summary for the log.
func bystanderUnhurt(t *testing.T, base, during []time.Duration) string {
	t.Helper()
	bMed, bP90 := percentile(base, 0.5), percentile(base, 0.9)
	dMed, dP90 := percentile(during, 0.5), percentile(during, 0.9)
	if dMed > medianRatio*bMed+medianSlack || dP90 > p90Ratio*bP90+p90Slack {
		t.Fatalf("another room's latency rose from p50 %v p90 %v to p50 %v p90 %v during the flood: more than %dx+%v (median) or %dx+%v (p90)",
			bMed, bP90, dMed, dP90, medianRatio, medianSlack, p90Ratio, p90Slack)
	}
	return fmt.Sprintf("bystander latency without flood: p50 %v p90 %v max %v; during: p50 %v p90 %v max %v",
		bMed, bP90, percentile(base, 1), dMed, dP90, percentile(during, 1))
}

// What bystanderUnhurt allows: a ratio of the latency without the flood
// plus a slack. The slack covers the scheduling of this 2-core machine,
// where the flooder, the gateway and the bystander share the cores and a
// sub-millisecond median quadruples from one wake-up more (seen: 0.29 to
// 1.2ms); it stays far below what a flood did before the limits (issue
// 9: 4 to 180ms at p99) and below what a person notices.
const (
	medianRatio, p90Ratio = 4, 8
	medianSlack           = 2 * time.Millisecond
	p90Slack              = 10 * time.Millisecond
)

// bystanderPace keeps the bystander of paceScenario under the default
// RATE_LIMIT (100 messages per second): 50 per second.
// (bystanderSamples per window).
const (
	bystanderPace    = 20 * time.Millisecond
	bystanderSamples = 30
)

// paceScenario floods room "flooded" on a from one connection during
// alternating windows, as floodScenario does, and checks what pacing
// promises (TestFloodIsPacedAndIsolated).
func paceScenario(t *testing.T, a, b *gateway) {
	members, sender, receiver := floodRooms(t, a, b)
	fl := a.dial(t, "flooded")
	flood := watch(fl) // errors or a close would show here
	sink := discardSink(t)
	var base, during []time.Duration
	var flooding, span time.Duration // time spent flooding; from the first flood's start to the last's end
	var first time.Time
	for w := range floodWindows {
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- floodSink(sink, stop) }()
		base = append(base, measureLatencyEvery(t, sender, receiver, fmt.Sprint("base", w), nil, bystanderPace, bystanderSamples)...)
		close(stop)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		stop = make(chan struct{})
		start := time.Now()
		if first.IsZero() {
			first = start
		}
		go func() { done <- floodConn(fl, stop) }()
		during = append(during, measureLatencyEvery(t, sender, receiver, fmt.Sprint("flood", w), nil, bystanderPace, bystanderSamples)...)
		close(stop)
		flooding += time.Since(start)
		span = time.Since(first)
		<-done
	}
	fl.conn.Close()
	// The members got the flood at the rate at most, and a marker after it.
	members[0].c.sendChat("marker", "after the flood")
	for i, m := range members[1:] {
		if err := m.waitFor(chat("marker", "after the flood")); err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
	}
	got := members[1].count() - 1
	// The bucket refills between flood windows too.
	limit := room.DefaultRateBurst + int(room.DefaultRateLimit*span.Seconds()*1.1) + 10
	if got == 0 || got > limit {
		t.Fatalf("a member got %d flood messages over %v; want some, at most %d (RATE_BURST + RATE_LIMIT per second)", got, span, limit)
	}
	if n := flood.count(); n != 0 {
		t.Fatalf("the flooder got %d frames (error frames?); want none", n)
	}
	t.Logf("flooder delivered %d messages in %v (%.0f/s); %s", got, flooding, float64(got)/flooding.Seconds(), bystanderUnhurt(t, base, during))
	s := getStats(t, a)
	if s.Hub.RatePaused == 0 || s.Hub.RateLimited != 0 || s.Hub.RateClosed != 0 {
		t.Fatalf("stats: %d paused, %d rate_limited, %d rate_closed; want pauses only", s.Hub.RatePaused, s.Hub.RateLimited, s.Hub.RateClosed)
	}
}

// floodConn writes messages to c as fast as it can until stop is closed;
// the writes block while the gateway reads slowly.
func floodConn(c *client, stop <-chan struct{}) error {
	buf := rawFrame(finText, msg("flood"), false)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.conn.Write(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // blocked by the gateway's pacing: look at stop
			}
			return err
		}
	}
}

// floodSink writes messages as fast as it can to a sink that discards
// them, until stop is closed: the flooding client's own cost, without the
// gateway's.
func floodSink(addr string, stop <-chan struct{}) error {
	c, err := net.DialTimeout("tcp", addr, testutil.Timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := rawFrame(finText, msg("flood"), false)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
}

// TestFloodIsLimitedAndIsolatedOnRedis is the same on two production
// nodes sharing a Redis: the flooder and the bystander's sender on one
// node, the bystander's receiver on the other, and members of the
// flooded room on both, so that messages cross Redis both ways. (A
// flooder alone in its room on a node makes each reconnection subscribe
// and unsubscribe the room on Redis: that join churn is bounded by the
// connection limits, not by these.)
//
// Round-trip pacing is off (REDIS_BATCH_WINDOW): a paced pump adds up to a
// window to every message by design once it is busy, and while the event
// loops are kept busy its pacing timer fires late (about 5ms here, with
// the same Redis commands as without the flood); that is the engine's
// trade-off, measured elsewhere, not what a flooder costs.
func TestFloodIsLimitedAndIsolatedOnRedis(t *testing.T) {
	r := redistest.Start(t)
	nodes := startNodes(t, 2, withEnv(redisEnvFor(r), floodEnv, map[string]string{"REDIS_BATCH_WINDOW": "-1ms"}))
	floodScenario(t, nodes[0], nodes[1])
}

// floodScenario runs the flood: the flooder and the bystander's sender on
// a, the bystander's receiver on b, the members on both. The bystander's
// latency is sampled in alternating windows without and with the flood,
// so that whatever else loads the machine weighs on both alike. In the
// windows without the flood the same flooding client writes as fast to a
// sink that only discards: the flooder shares this machine's two cores
// with the gateway, and what is compared is the gateway's own cost.
func floodScenario(t *testing.T, a, b *gateway) {
	members, sender, receiver := floodRooms(t, a, b)

	f := &flooder{once: func() error { return floodOnce(a) }, errc: make(chan error, 1)}
	sink := discardSink(t)
	control := &flooder{once: func() error { return floodSinkOnce(sink) }, errc: make(chan error, 1)}
	var base, during []time.Duration
	for w := range floodWindows {
		control.start(t)
		base = append(base, measureLatency(t, sender, receiver, fmt.Sprint("base", w), control.errc)...)
		control.stop(t)
		f.start(t)
		during = append(during, measureLatency(t, sender, receiver, fmt.Sprint("flood", w), f.errc)...)
		f.stop(t)
	}

	// (b) The members are still open and get messages: a marker sent by
	// one of them after the flood reaches the others. (A new connection
	// from the flooder's address would start with an empty bucket.)
	members[0].c.sendChat("marker", "after the flood")
	for i, m := range members[1:] {
		if err := m.waitFor(chat("marker", "after the flood")); err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
	}
	// Besides the flooder's, a published the bystander's messages and, on
	// one node, the marker.
	others := int64(2 * floodWindows * floodSamples)
	if a == b {
		others++
	}
	acceptedDelivered(t, a, members, others)

	// (c) The bystander's latency (bystanderUnhurt). (Before the limits,
	// issue 9 saw one flooder take another room's p99 from 4 to 180ms.)
	n := f.rounds.Load()
	t.Logf("%d flooding connections closed, %d refused by the connection caps; %s", n, f.capped.Load(), bystanderUnhurt(t, base, during))
	s := getStats(t, a)
	if s.Hub.RateLimited == 0 || s.Hub.RateClosed < n {
		t.Fatalf("stats: %d rate_limited, %d rate_closed; want some, and at least the %d flooders closed", s.Hub.RateLimited, s.Hub.RateClosed, n)
	}
}

// acceptedDelivered checks that every message the gateway accepted from
// the flooder reached every member of the flooded room once: none lost,
// none twice. The accepted count is what node a stored (/stats
// published) less others, the messages published on a by anyone else;
// members[0] sent the marker, the others received it too.
func acceptedDelivered(t *testing.T, a *gateway, members []*watcher, others int64) {
	t.Helper()
	var accepted int64
	var got []int
	defer func() {
		if t.Failed() {
			t.Logf("accepted from the flooder: %d; texts received by each member (the marker included but by members[0]): %v", accepted, got)
		}
	}()
	testutil.Eventually(t, "every member to receive every message accepted from the flooder", func() bool {
		accepted = getStats(t, a).Hub.Published - others
		got = got[:0]
		all := true
		for i, m := range members {
			n := m.count()
			got = append(got, n)
			want := accepted + 1 // and the marker
			if i == 0 {
				want = accepted
			}
			all = all && int64(n) == want
		}
		return all
	})
	if accepted < 1 {
		t.Fatalf("the gateway accepted %d of the flooder's messages; want some, and a stats count that adds up", accepted)
	}
	t.Logf("each member received all %d messages accepted from the flooder", accepted)
}

// flooder runs once (floodOnce, or floodSinkOnce) in a loop, reconnecting
// whenever it is closed or refused, between start and stop.
type flooder struct {
	once           func() error
	rounds, capped atomic.Int64 // connections closed for their rate; refused by the caps
	errc           chan error   // the first failure
	quit           chan struct{}
	wg             sync.WaitGroup
}

// start starts flooding and returns once a first flooding connection
// has been closed: the flood is on.
func (f *flooder) start(t *testing.T) {
	t.Helper()
	f.quit = make(chan struct{})
	from := f.rounds.Load()
	f.wg.Go(func() {
		for {
			select {
			case <-f.quit:
				return
			default:
			}
			err := f.once()
			if se := ws.StatusError(0); errors.As(err, &se) && se == http.StatusServiceUnavailable {
				f.capped.Add(1) // over the per-address connection cap: reconnect
				continue
			}
			if err != nil {
				select {
				case f.errc <- err:
				default:
				}
				return
			}
			f.rounds.Add(1)
		}
	})
	testutil.Eventually(t, "a first flooding connection to be closed", func() bool {
		select {
		case err := <-f.errc:
			t.Fatalf("flooder: %v", err)
		default:
		}
		return f.rounds.Load() != from
	})
}

// stop stops flooding and fails the test if the flooder failed.
func (f *flooder) stop(t *testing.T) {
	t.Helper()
	close(f.quit)
	f.wg.Wait()
	select {
	case err := <-f.errc:
		t.Fatalf("flooder: %v", err)
	default:
	}
}

// discardSink listens on loopback and discards whatever it is sent.
func discardSink(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return l.Addr().String()
}

// floodSinkOnce is floodOnce aimed at a sink: it connects and writes as
// many messages, one per write, as a flooding connection gets to write
// before the gateway closes it, then disconnects.
func floodSinkOnce(addr string) error {
	c, err := net.DialTimeout("tcp", addr, testutil.Timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := rawFrame(finText, msg("flood"), false)
	for range 1000 {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// floodOnce connects a flooder to room "flooded" and writes messages as
// fast as it can until it is closed. It checks (a): rate_limited error
// frames first, then a 1008 close with a reason.
func floodOnce(g *gateway) error {
	c, err := g.tryDial("flooded")
	if err != nil {
		return err
	}
	defer c.conn.Close()
	buf := rawFrame(finText, msg("flood"), false)
	type result struct {
		limited int
		code    ws.StatusCode
		reason  string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for {
			f, err := c.next()
			if err != nil {
				r.err = fmt.Errorf("after %d rate_limited frames: %w", r.limited, err)
				done <- r
				return
			}
			switch f.op {
			case ws.OpText:
				var e struct{ Error, Detail string }
				switch {
				case json.Unmarshal(f.payload, &e) != nil:
					r.err = fmt.Errorf("flooder got %q", f.payload)
				case e.Error == "":
					continue // a message of an earlier flooding connection
				case e.Error != room.CodeRateLimited || e.Detail == "":
					r.err = fmt.Errorf("flooder got %s; want only rate_limited error frames before the close", f.payload)
				}
				if r.err != nil {
					done <- r
					return
				}
				r.limited++
			case ws.OpClose:
				r.code, r.reason = ws.ParseCloseFrameData(f.payload)
				done <- r
				return
			}
		}
	}()
	for {
		select {
		case r := <-done:
			switch {
			case r.err != nil:
				return r.err
			case r.limited == 0:
				return fmt.Errorf("closed with %d %q before any rate_limited frame", r.code, r.reason)
			case r.code != ws.StatusPolicyViolation || !strings.Contains(r.reason, "rate limit"):
				return fmt.Errorf("closed with %d %q; want 1008 naming the rate limit", r.code, r.reason)
			}
			return nil
		default:
		}
		if _, err := c.conn.Write(buf); err != nil {
			r := <-done // the server closed the connection: its close frame came first
			if r.err != nil {
				return r.err
			}
			if r.code != ws.StatusPolicyViolation {
				return fmt.Errorf("write failed (%v) and close %d %q; want 1008", err, r.code, r.reason)
			}
			return nil
		}
	}
}

// watcher reads a member's frames in the background.
type watcher struct {
	c      *client
	mu     sync.Mutex
	texts  int
	err    error // why reading stopped: a close frame or an I/O error
	seen   map[string]bool
	notify chan struct{}
}

func watch(c *client) *watcher {
	w := &watcher{c: c, seen: map[string]bool{}, notify: make(chan struct{}, 1)}
	go func() {
		for {
			f, err := c.next()
			w.mu.Lock()
			switch {
			case err != nil:
				w.err = err
			case f.op == ws.OpClose:
				code, reason := ws.ParseCloseFrameData(f.payload)
				w.err = fmt.Errorf("closed with %d %q", code, reason)
			case f.op == ws.OpText:
				w.texts++
				if bytes.Contains(f.payload, []byte("marker")) {
					w.seen[string(f.payload)] = true
				}
			case f.op == ws.OpPing:
				_, _ = c.conn.Write(rawFrame(finPong, f.payload, false))
			}
			stop := w.err != nil
			w.mu.Unlock()
			select {
			case w.notify <- struct{}{}:
			default:
			}
			if stop {
				return
			}
		}
	}()
	return w
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.texts
}

// waitFor waits until the member received text, and fails if it was
// closed first.
func (w *watcher) waitFor(text string) error {
	deadline := time.After(testutil.Timeout)
	for {
		w.mu.Lock()
		seen, err := w.seen[text], w.err
		w.mu.Unlock()
		switch {
		case seen:
			return nil
		case err != nil:
			return fmt.Errorf("stopped reading before %s: %w", text, err)
		}
		select {
		case <-w.notify:
		case <-deadline:
			return errors.New("timed out waiting for " + text)
		}
	}
}

// measureLatency sends floodSamples messages from sender, one per
// floodPace, and returns how long each took to reach receiver. It stops
// early with a failure when stop reports an error.
func measureLatency(t *testing.T, sender, receiver *client, phase string, stop <-chan error) []time.Duration {
	return measureLatencyEvery(t, sender, receiver, phase, stop, floodPace, floodSamples)
}

// measureLatencyEvery is measureLatency with n messages, one per pace.
func measureLatencyEvery(t *testing.T, sender, receiver *client, phase string, stop <-chan error, pace time.Duration, n int) []time.Duration {
	t.Helper()
	got := make(chan time.Time, n)
	go func() {
		for range n {
			f, err := receiver.next()
			if err != nil {
				close(got)
				return
			}
			if f.op == ws.OpPing {
				_, _ = receiver.conn.Write(rawFrame(finPong, f.payload, false))
				continue
			}
			got <- time.Now()
		}
	}()
	tick := time.NewTicker(pace)
	defer tick.Stop()
	var lat []time.Duration
	for i := range n {
		start := time.Now()
		sender.sendChat("bystander", phase+strconv.Itoa(i))
		select {
		case at, ok := <-got:
			if !ok {
				t.Fatalf("%s: the bystander's receiver stopped after %d messages", phase, i)
			}
			lat = append(lat, at.Sub(start))
		case err := <-stop:
			t.Fatalf("flooder: %v", err)
		case <-time.After(testutil.Timeout):
			t.Fatalf("%s: message %d not received", phase, i)
		}
		<-tick.C
	}
	return lat
}

// percentile returns the p-th quantile (0 to 1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

// TestRedisMemoryBoundedUnderAbuse fills rooms with maximum-size messages
// at the maximum rate the limits allow and checks that Redis's memory
// stays within the bound docs/limits-room.md gives ("What Redis holds"):
// each room stream within REDIS_MAXLEN × redisEntryBytes(message), and
// used_memory within rooms times that plus redisFixedBytes. Small
// REDIS_MAXLEN and MAX_MESSAGE_BYTES keep it to about a second.
func TestRedisMemoryBoundedUnderAbuse(t *testing.T) {
	const (
		rooms    = 4
		maxLen   = 40
		msgBytes = 4096
		rate     = 400 // messages per second per connection
	)
	r := redistest.Start(t)
	g := startGateway(t, withEnv(redisEnvFor(r), map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*",
		"REDIS_MAXLEN": strconv.Itoa(maxLen), "MAX_MESSAGE_BYTES": strconv.Itoa(msgBytes),
		"RATE_LIMIT": strconv.Itoa(rate), "RATE_BURST": "10",
	}))
	used := func() int64 {
		for _, line := range strings.Split(r.MustDo("INFO", "memory"), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatal("no used_memory in INFO memory")
		return 0
	}
	before := used()

	// Each room's sender writes 3×REDIS_MAXLEN messages of exactly
	// MAX_MESSAGE_BYTES, one per 1/RATE_LIMIT: the most the limits let
	// through. Any rate_limited reply would mean the pace was wrong.
	body := strings.Repeat("x", msgBytes-len(`{"username":"u","message":""}`))
	frame := rawFrame(finText, []byte(`{"username":"u","message":"`+body+`"}`), false)
	var wg sync.WaitGroup
	errs := make(chan error, rooms)
	for i := range rooms {
		c := g.dial(t, fmt.Sprint("mem-", i))
		go func() {
			for {
				f, err := c.next()
				if err != nil {
					return
				}
				if f.op == ws.OpText {
					errs <- fmt.Errorf("sender %d got %s", i, f.payload)
					return
				}
			}
		}()
		wg.Go(func() {
			tick := time.NewTicker(time.Second / rate)
			defer tick.Stop()
			for range 3 * maxLen {
				if _, err := c.conn.Write(frame); err != nil {
					errs <- err
					return
				}
				<-tick.C
			}
		})
	}
	wg.Wait()
	keys := strings.Fields(r.MustDo("KEYS", "*:mem-*"))
	testutil.Eventually(t, "every message to be stored", func() bool {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		return getStats(t, g).Hub.Published >= 3*maxLen*rooms
	})
	if len(keys) != rooms {
		keys = strings.Fields(r.MustDo("KEYS", "*:mem-*"))
	}
	entries := 0
	for _, k := range keys {
		n, _ := strconv.Atoi(strings.TrimSpace(r.MustDo("XLEN", k)))
		entries += n
	}
	grown := used() - before
	perRoom := maxLen * redisEntryBytes(msgBytes)
	for _, k := range keys {
		n, _ := strconv.ParseInt(strings.TrimSpace(r.MustDo("MEMORY", "USAGE", k, "SAMPLES", "0")), 10, 64)
		if n > perRoom {
			t.Errorf("room stream %s holds %d bytes, over REDIS_MAXLEN × %d = %d", k, n, redisEntryBytes(msgBytes), perRoom)
		}
	}
	bound := rooms*perRoom + redisFixedBytes
	t.Logf("%d rooms, %d entries kept (REDIS_MAXLEN %d), used_memory grew %d bytes; bound %d", len(keys), entries, maxLen, grown, bound)
	if len(keys) != rooms || entries > rooms*maxLen*5/4 {
		t.Fatalf("%d room streams with %d entries: REDIS_MAXLEN %d not applied", len(keys), entries, maxLen)
	}
	if grown > bound {
		t.Fatalf("Redis memory grew by %d bytes, over the documented bound %d", grown, bound)
	}
}

// TestOverloadedReply: with Redis hung and PUBLISH_QUEUE full, further
// messages are refused at once with "unavailable" (the detail says the
// store is overloaded), the sender keeps its connection, and delivery
// resumes when Redis does.
func TestOverloadedReply(t *testing.T) {
	r := redistest.Start(t)
	g := startNodes(t, 1, withEnv(redisEnvFor(r), map[string]string{"PUBLISH_QUEUE": "4", "REDIS_TIMEOUT": "5s"}))[0]
	sender, peer := g.dial(t, "overload"), g.dial(t, "overload")
	r.Pause()
	resumed := false
	defer func() {
		if !resumed {
			r.Resume()
		}
	}()
	const sent = 40
	for i := range sent {
		sender.sendChat("s", strconv.Itoa(i))
	}
	// The queue holds a few; the rest are refused before Redis could
	// answer anything.
	f, err := sender.next()
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error, Detail string }
	if json.Unmarshal(f.payload, &e) != nil || e.Error != "unavailable" || !strings.Contains(e.Detail, "overloaded") {
		t.Fatalf("sender got %s while Redis is hung and the queue full, want unavailable naming overload", f.payload)
	}
	r.Resume()
	resumed = true
	// Whatever was queued may be delivered (or answered unconfirmed);
	// then a new message goes through on the same connection.
	sender.timeout, peer.timeout = 2*testutil.Timeout, 2*testutil.Timeout
	testutil.Eventually(t, "every message to be answered", func() bool {
		h := getStats(t, g).Hub
		return h.Published+h.Unavailable+h.Unconfirmed >= sent
	})
	sender.sendChat("s", "after")
	for {
		if u, m := peer.recvChat(); u == "s" && m == "after" {
			break
		}
	}
	if s := getStats(t, g); s.Hub.Unavailable == 0 {
		t.Fatalf("stats count no unavailable: %+v", s.Hub)
	}
}
