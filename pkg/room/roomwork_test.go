package room

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestRoomWorkersBound: joins to many new rooms at once run at most
// maxRoomWorkers Subscribes at a time, and every join is answered once
// the engine answers: no job is lost when workers end and start.
func TestRoomWorkersBound(t *testing.T) {
	const rooms = 3 * maxRoomWorkers
	e := newGateEngine()
	e.gates = make(chan chan error, rooms)
	e.setHold(true)
	_, addr := startHub(t, Config{}, e)
	var joins []<-chan dialResult
	for i := range rooms {
		joins = append(joins, dialAsync(t, addr, fmt.Sprintf("/ws/chat/w%d/", i)))
	}
	calls := func() int { return strings.Count(e.callLog(), "sub ") }
	testutil.Eventually(t, "the workers to call Subscribe", func() bool { return calls() == maxRoomWorkers })
	time.Sleep(100 * time.Millisecond) // room for a 17th call, which must not come
	if n := calls(); n != maxRoomWorkers {
		t.Fatalf("%d Subscribes at once, want at most %d", n, maxRoomWorkers)
	}
	for range rooms {
		e.open(t, nil)
	}
	for _, j := range joins {
		joined(t, j) // fails the test unless upgraded
	}
	if n := calls(); n != rooms {
		t.Fatalf("%d Subscribes, want one per room (%d)", n, rooms)
	}
}

// TestSubscribeSkipsAbandonedRoom: a room whose joiners all left while
// its Subscribe waited in the queue is not subscribed at all.
func TestSubscribeSkipsAbandonedRoom(t *testing.T) {
	e := newGateEngine()
	h, _ := startHub(t, Config{}, e)
	r := &room{name: "gone", state: roomSubscribing}
	h.mu.Lock()
	h.rooms["gone"] = r
	h.mu.Unlock()
	h.subscribe("gone", r) // no pending joiner, no member
	if got := e.callLog(); got != "" {
		t.Fatalf("engine calls %q, want none", got)
	}
	if n := roomsOf(h); n != 0 {
		t.Fatalf("%d rooms left, want the abandoned one forgotten", n)
	}
}
