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

// liveRun records the traffic of a test whose faults spare the store:
// its senders (ack=1, ids=1) and live members (ids=1) in one room, into a
// failoverRecord that is not read back from the store (liveOnly), checked
// by failoverRecord.check once the traffic is over (finish).
type liveRun struct {
	rec     *failoverRecord
	senders []*wsClient
	clients []*wsClient // senders and members: what finish closes
	reading sync.WaitGroup
	closing atomic.Bool // set before finish closes the clients

	mu      sync.Mutex
	sendErr []string
}

// newLiveRun returns a run of senders senders, all in one room.
func newLiveRun(senders int) *liveRun {
	rec := newFailoverRecord(make([]int, senders), 1)
	rec.liveOnly = true
	return &liveRun{rec: rec}
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

// finish waits (at most within) until every message sent is answered and
// delivered to every member but its sender, closes the clients, and
// checks the record against p. Call it once the senders have stopped.
func (l *liveRun) finish(t *testing.T, within time.Duration, p promises) failoverCounts {
	t.Helper()
	deadline := time.Now().Add(within)
	for !l.rec.complete() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
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
