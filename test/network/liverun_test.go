//go:build network

package network

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// liveRun records the traffic of a test in one room: its senders (ack=1,
// ids=1) and live members (ids=1), into a failoverRecord checked by
// failoverRecord.check once the traffic is over (finish). A test whose
// faults spare the store leaves the record liveOnly; one that reads the
// store back (readStore) has finish replay the room first.
type liveRun struct {
	rec     *failoverRecord
	senders []*wsClient
	clients []*wsClient // senders and members: what finish closes
	reading sync.WaitGroup
	closing atomic.Bool // set before finish closes the clients
	// replay, set by readStore, reads back what the store holds (nil:
	// the record is liveOnly).
	replay func() ([]roomFrame, error)

	mu      sync.Mutex
	sendErr []string
}

// newLiveRun returns a run of senders senders, all in one room, that
// does not read the store back (liveOnly) unless readStore says so.
func newLiveRun(senders int) *liveRun {
	rec := newFailoverRecord(make([]int, senders), 1)
	rec.liveOnly = true
	return &liveRun{rec: rec}
}

// readStore makes finish read back what the store holds before it
// checks: a since=0 replay of room, joined from host h on the gateway at
// addr once every message is answered. The record is then not liveOnly.
func (l *liveRun) readStore(h *netlab.Host, addr, room string) {
	l.replay = func() ([]roomFrame, error) { return replayFrames(h, addr, room, "0", nil) }
	l.rec.liveOnly = false
}

// addSender opens the next sender's WebSocket (path must ask for ack=1
// and ids=1) from host h to the gateway at addr, the run's gateway gw,
// and records its answers and what it gets as a member.
func (l *liveRun) addSender(t *testing.T, h *netlab.Host, addr, path string, gw int) {
	t.Helper()
	k := len(l.senders)
	if k == len(l.rec.roomOf) {
		t.Fatalf("sender %d of a run of %d", k, k)
	}
	w := dialWS(t, h, addr, path)
	m := l.rec.addMember(0, gw, k)
	l.senders = append(l.senders, w)
	l.clients = append(l.clients, w)
	l.reading.Add(1)
	go func() { defer l.reading.Done(); l.rec.readAnswers(k, w, m, l.closing.Load) }()
}

// addMember opens a member's WebSocket (path must ask for ids=1) from
// host h to the gateway at addr, the run's gateway gw, records what it
// gets and returns it.
func (l *liveRun) addMember(t *testing.T, h *netlab.Host, addr, path string, gw int) *foMember {
	t.Helper()
	w := dialWS(t, h, addr, path)
	m := l.rec.addMember(0, gw, -1)
	l.clients = append(l.clients, w)
	l.reading.Add(1)
	go func() { defer l.reading.Done(); l.rec.readMember(m, w, l.closing.Load) }()
	return m
}

// send sends sender k's message n (the next one), from any goroutine,
// and reports whether the write succeeded; a failure is recorded for
// finish.
func (l *liveRun) send(k, n int) bool {
	err := l.senders[k].write(textFrame(l.rec.sent(k, n)))
	if err != nil {
		l.mu.Lock()
		l.sendErr = append(l.sendErr, fmt.Sprintf("sender %d, message %d: %v", k, n, err))
		l.mu.Unlock()
	}
	return err == nil
}

// finish waits (at most within) until every message sent is answered,
// reads the store back (readStore), waits until every member got what it
// must (failoverRecord.complete), closes the clients, and checks the
// record against p. Call it once the senders have stopped.
func (l *liveRun) finish(t *testing.T, within time.Duration, p promises) failoverCounts {
	t.Helper()
	deadline := time.Now().Add(within)
	until := func(cond func() bool) {
		for !cond() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if l.replay != nil {
		until(func() bool { return l.rec.unanswered() == 0 })
		stored, err := l.replay()
		if err != nil {
			t.Fatalf("replay of the store: %v", err)
		}
		l.rec.mu.Lock()
		l.rec.stored[0] = stored
		l.rec.mu.Unlock()
	}
	until(l.rec.complete)
	l.closing.Store(true)
	for _, w := range l.clients {
		w.c.Close()
	}
	l.reading.Wait()
	l.mu.Lock()
	for _, e := range l.sendErr {
		t.Errorf("send: %s", e)
	}
	l.mu.Unlock()
	return l.rec.check(t, p)
}
