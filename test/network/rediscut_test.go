//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// Timing of TestGatewayCutOffFromRedis.
const (
	sendEvery = 50 * time.Millisecond
	beforeCut = 2 * time.Second
	cutFor    = 10 * time.Second
	afterHeal = 6 * time.Second // REDIS_BACKOFF_MAX (5 s) to reconnect, then acks again
	// readyWithin is how soon /readyz must say 503 after the cut, as
	// docs/operations.md states: REDIS_TIMEOUT (2 s) for the round trip
	// in flight to fail, and a second for the pumps to be marked down.
	readyWithin = 3 * time.Second
)

// TestGatewayCutOffFromRedis: the gateway loses Redis (a partition: no
// FIN, packets dropped) for 10 s while a client sends 20 messages a
// second with ack=1 and a cid each. Checked from a per-message record
// (history.check): every message gets exactly one answer; none answered
// unavailable is stored; every acked message is stored once and reaches
// the room's live member once; an unconfirmed one is stored at most once;
// what is stored is in send order; /readyz says 503 within readyWithin
// and 200 again after the heal; and a client resuming with since= gets
// every stored message once.
func TestGatewayCutOffFromRedis(t *testing.T) {
	lab := netlab.New(t)
	redisHost, gw, clients := lab.Host("redis"), lab.Host("gateway"), lab.Host("clients")
	redisAddr := startRedis(t, redisHost)
	addr := startGateway(t, gw, map[string]string{
		"ENVIRONMENT":   "production",
		"ALLOWED_HOSTS": "*",
		"IP_REDIS":      redisHost.Addr().String(),
		"PORT_REDIS":    strings.TrimPrefix(redisAddr, redisHost.Addr().String()+":"),
	})
	sender := dialWS(t, clients, addr, "/ws/chat/cut/?ack=1&ids=1")
	member := dialWS(t, clients, addr, "/ws/chat/cut/?ids=1")

	h := newHistory()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); h.readAnswers(sender) }()
	go func() { defer wg.Done(); h.readDeliveries(member) }()

	ready := readyzWatch(clients, addr)
	start := time.Now()
	const (
		before = iota
		during
		after
	)
	phase, healAt := before, start.Add(beforeCut+cutFor)
	for n := 1; phase != after || time.Since(healAt) < afterHeal; n++ {
		switch {
		case phase == before && time.Since(start) >= beforeCut:
			lab.Partition(gw, redisHost)
			t.Cleanup(func() {
				if phase == during { // failed during the cut
					lab.Rejoin(gw, redisHost)
				}
			})
			phase = during
			ready.mark("cut")
		case phase == during && time.Since(start) >= beforeCut+cutFor:
			lab.Rejoin(gw, redisHost)
			phase, healAt = after, time.Now()
			ready.mark("heal")
		}
		h.sent(n)
		sender.send(t, fmt.Sprintf(`{"username":"s","message":"m%d","cid":"c%d"}`, n, n))
		time.Sleep(sendEvery)
	}
	// Every message answered; then what the store holds, read back.
	waitFor(t, "every message to be answered", 15*time.Second, h.allAnswered)
	stored := replayRoom(t, clients, addr, "cut")
	sender.c.Close()
	member.c.Close()
	wg.Wait()
	ready.stop()

	counts := h.check(t, stored)
	t.Logf("sent %d: acked %d, unavailable %d, unconfirmed %d (stored %d of them); stored %d; delivered live %d",
		counts.sent, counts.acked, counts.unavailable, counts.unconfirmed, counts.unconfirmedStored, len(stored), counts.delivered)
	downAfter, upAfter := ready.transitions(t)
	t.Logf("/readyz 503 %v after the cut, 200 again %v after the heal", downAfter.Round(time.Millisecond), upAfter.Round(time.Millisecond))
	if downAfter > readyWithin {
		t.Errorf("/readyz said 503 %v after the cut, want within %v", downAfter, readyWithin)
	}
	if last := h.lastAnswer(); last != "ack" {
		t.Errorf("the last message, %v after the heal, was answered %q: delivery did not resume", afterHeal, last)
	}
	if counts.acked == 0 || counts.unavailable+counts.unconfirmed == 0 {
		t.Errorf("the run did not exercise both sides of the cut: %+v", counts)
	}
}

// startRedis runs redis-server on host h (no persistence) and returns its
// address.
func startRedis(t *testing.T, h *netlab.Host) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server not found: install it with `apt-get install -y redis-server` (or run `make test`, which installs it)")
	}
	addr := h.Addr().String() + ":6379"
	cmd := h.Command(bin, "--port", "6379", "--bind", h.Addr().String(), "--save", "", "--appendonly", "no", "--protected-mode", "no")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := h.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not listen within 10 s: %v", h.Name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond every 50 ms until it holds, failing after within.
func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// replayRoom joins room with since=0 and returns the message numbers it
// replays, in order, with their IDs.
func replayRoom(t *testing.T, h *netlab.Host, addr, room string) []stored {
	t.Helper()
	c := dialWS(t, h, addr, "/ws/chat/"+room+"/?ids=1&since=0")
	defer c.c.Close()
	var out []stored
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				t.Fatal("the replaying connection closed")
			}
			var f chatFrame
			if err := json.Unmarshal([]byte(m), &f); err != nil || f.ID == "" {
				t.Fatalf("replay frame %s: want a chat message with an id", m)
			}
			out = append(out, stored{n: f.number(t), id: f.ID})
		case <-time.After(2 * time.Second): // the replay is over: the room is quiet
			return out
		}
	}
}

// readyzWatch polls /readyz from host h every 100 ms and records when it
// changes, and the marks the test sets (cut, heal).
type readyzLog struct {
	mu     sync.Mutex
	events []readyzEvent
	quit   chan struct{}
	done   chan struct{}
}

// readyzEvent is a /readyz change ("200", "503") or a mark, with its time.
type readyzEvent struct {
	what string
	at   time.Time
}

// readyzWatch starts watching /readyz.
func readyzWatch(h *netlab.Host, addr string) *readyzLog {
	r := &readyzLog{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		last := ""
		for {
			state := "200"
			if _, err := httpGet(h, addr, "/readyz"); err != nil {
				state = "503"
			}
			if state != last {
				r.add(state)
				last = state
			}
			select {
			case <-r.quit:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return r
}

// add records an event now.
func (r *readyzLog) add(what string) {
	r.mu.Lock()
	r.events = append(r.events, readyzEvent{what, time.Now()})
	r.mu.Unlock()
}

// mark records a test event (cut, heal).
func (r *readyzLog) mark(what string) { r.add(what) }

// stop ends the watch.
func (r *readyzLog) stop() { close(r.quit); <-r.done }

// transitions returns how long after the cut /readyz first said 503, and
// how long after the heal it said 200 again.
func (r *readyzLog) transitions(t *testing.T) (down, up time.Duration) {
	t.Helper()
	var cut, heal time.Time
	for _, e := range r.events {
		switch {
		case e.what == "cut":
			cut = e.at
		case e.what == "heal":
			heal = e.at
		case e.what == "503" && !cut.IsZero() && heal.IsZero() && down == 0:
			down = e.at.Sub(cut)
		case e.what == "200" && !heal.IsZero() && up == 0:
			up = e.at.Sub(heal)
		}
	}
	if down == 0 || up == 0 {
		t.Fatalf("/readyz did not turn 503 during the cut and 200 after the heal: %v", r.events)
	}
	return down, up
}
