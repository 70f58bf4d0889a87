//go:build network

package network

import (
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
// second with ack=1 and a cid each. Checked from the record
// (failoverRecord.check, liveRun with the store read back; promises
// storeIntact and lastAcked): every message gets exactly one answer; none
// answered unavailable is stored or delivered; every acked message is
// stored once, with its ID, and reaches the room's live member once; an
// unconfirmed one is stored at most once, and delivered only if stored;
// what is stored and delivered is in send order; the last message, after
// the heal, is acked; /readyz says 503 within readyWithin of the cut and
// 200 again after the heal; and the run sees both sides of the cut.
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
	run := newLiveRun(1)
	run.addSender(t, clients, addr, "/ws/chat/cut/?ack=1&ids=1", 0)
	run.addMember(t, clients, addr, "/ws/chat/cut/?ids=1", 0)
	run.readStore(clients, addr, "cut")

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
		if !run.send(0, n) {
			break
		}
		time.Sleep(sendEvery)
	}
	c := run.finish(t, 15*time.Second, promises{storeIntact: true, lastAcked: true})
	ready.stop()

	t.Logf("cut off from Redis for %v: %s", cutFor, c.withStore())
	downAfter, upAfter := ready.transitions(t)
	t.Logf("/readyz 503 %v after the cut, 200 again %v after the heal", downAfter.Round(time.Millisecond), upAfter.Round(time.Millisecond))
	if downAfter > readyWithin {
		t.Errorf("/readyz said 503 %v after the cut, want within %v", downAfter, readyWithin)
	}
	if c.acked == 0 || c.unavailable+c.unconfirmed == 0 {
		t.Errorf("the run did not exercise both sides of the cut: %d acked, %d unavailable, %d unconfirmed", c.acked, c.unavailable, c.unconfirmed)
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
