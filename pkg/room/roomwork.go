package room

import "sync"

// maxRoomWorkers bounds the goroutines that subscribe and unsubscribe
// rooms on the engine, off the event loops. A burst of joins to new rooms
// used to start a goroutine per room (1 000 at once when 10 000
// connections join 1 000 rooms), whose stacks stayed in the process's
// memory after they ended: about 20 of the 580 bytes per idle connection
// of that run (BENCHMARKS.md section 16). Joins to different rooms still
// overlap: the Redis engine shares round trips between concurrent
// Subscribes, and sixteen keep it busy. While Redis hangs (no answer, no
// error), joins to new rooms queue behind each other's timeouts; a room
// whose joiners all gave up meanwhile is skipped (subscribe).
const maxRoomWorkers = 16

// roomChange is what a roomJob does to its room's subscription.
type roomChange uint8

const (
	changeSubscribe roomChange = iota
	changeUnsubscribe
)

// roomJob is one subscription change of a room.
type roomJob struct {
	name   string
	r      *room
	change roomChange
}

// roomWork is the queue of roomJobs and its workers, started on demand
// and ended when the queue is empty. mu, a leaf, guards every field.
type roomWork struct {
	mu      sync.Mutex
	jobs    []roomJob
	head    int // jobs[head:] are waiting
	running int // workers
}

// subscribeLater subscribes room r on a worker (h.subscribe).
func (h *Hub) subscribeLater(name string, r *room) { h.enqueue(roomJob{name, r, changeSubscribe}) }

// unsubscribeLater unsubscribes room r on a worker (h.unsubscribe).
func (h *Hub) unsubscribeLater(name string, r *room) { h.enqueue(roomJob{name, r, changeUnsubscribe}) }

// enqueue queues j and starts a worker when fewer than maxRoomWorkers
// run. A room has at most one job queued or running (its state allows one
// change at a time), so the order between rooms does not matter.
func (h *Hub) enqueue(j roomJob) {
	w := &h.work
	w.mu.Lock()
	if w.head > len(w.jobs)/2 { // drop the jobs taken, so a queue never empty keeps its size
		n := copy(w.jobs, w.jobs[w.head:])
		clear(w.jobs[n:])
		w.jobs, w.head = w.jobs[:n], 0
	}
	w.jobs = append(w.jobs, j)
	start := w.running < maxRoomWorkers
	if start {
		w.running++
	}
	w.mu.Unlock()
	if start {
		go h.roomWorker()
	}
}

// roomWorker runs queued jobs until none is left.
func (h *Hub) roomWorker() {
	w := &h.work
	for {
		w.mu.Lock()
		if w.head == len(w.jobs) {
			w.jobs, w.head = w.jobs[:0], 0
			w.running--
			w.mu.Unlock()
			return
		}
		j := w.jobs[w.head]
		w.jobs[w.head] = roomJob{}
		w.head++
		w.mu.Unlock()
		switch j.change {
		case changeSubscribe:
			h.subscribe(j.name, j.r)
		case changeUnsubscribe:
			h.unsubscribe(j.name, j.r)
		}
	}
}
