package room

import (
	"context"
	"sync"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
)

// Presence. Every join and leave reports the room's local member count
// to the engine (SetMembers), which sums the counts of every live node
// (Members). A presence=1 member gets {"presence":{"members":N}} right
// after it joins (Hub.start) and whenever the count changes: one
// goroutine polls Members once per PresenceInterval for the rooms that
// have such members and sends the frame to those whose last one differs,
// so updates are coalesced to at most one per room and interval. Neither
// runs on an event loop.

// PresenceInterval is how often the member counts of rooms with
// presence=1 members are polled: the most often their frames change.
const PresenceInterval = time.Second

// presenceWorkers bounds the Members calls of one poll in flight at once
// (each one Redis round trip), so that a slow room does not hold up the
// others.
const presenceWorkers = 8

// watch adds r, named name, to the rooms the poller reads, starting the
// poller with the first. r.mu is held.
func (h *Hub) watch(name string, r *room) {
	h.watchMu.Lock()
	h.watched[r] = name
	h.watchMu.Unlock()
	h.presenceOnce.Do(func() { go h.presenceLoop() })
}

// unwatch removes r from the polled rooms. r.mu is held.
func (h *Hub) unwatch(r *room) {
	h.watchMu.Lock()
	delete(h.watched, r)
	h.watchMu.Unlock()
}

// presenceLoop polls until Close.
func (h *Hub) presenceLoop() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-h.quit; cancel() }()
	t := time.NewTicker(PresenceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h.pollPresence(ctx)
	}
}

type watchedRoom struct {
	name string
	r    *room
}

// pollPresence reads the count of every watched room, presenceWorkers at
// a time, and sends it to the room's presence=1 members that last got
// another.
func (h *Hub) pollPresence(ctx context.Context) {
	h.watchMu.Lock()
	rooms := make([]watchedRoom, 0, len(h.watched))
	for r, name := range h.watched {
		rooms = append(rooms, watchedRoom{name, r})
	}
	h.watchMu.Unlock()
	work := make(chan watchedRoom)
	var wg sync.WaitGroup
	for range min(presenceWorkers, len(rooms)) {
		wg.Go(func() {
			for w := range work {
				h.pollRoom(ctx, w)
			}
		})
	}
	for _, w := range rooms {
		if ctx.Err() != nil {
			break
		}
		work <- w
	}
	close(work)
	wg.Wait()
}

// pollRoom reads one room's count and sends it to its presence=1
// members that last got another.
func (h *Hub) pollRoom(ctx context.Context, w watchedRoom) {
	cctx, cancel := context.WithTimeout(ctx, engineTimeout)
	n, err := h.engine.Members(cctx, w.name)
	cancel()
	if err != nil {
		return // the next poll tries again
	}
	var f *conn.Frame
	w.r.mu.RLock()
	for mb := range w.r.members.all() {
		if s := mb.sess; s != nil && s.opts.flags&optPresence != 0 {
			f = sendPresence(mb.c, s, n, f)
		}
	}
	w.r.mu.RUnlock()
	if f != nil {
		f.Release()
	}
}

// sendPresence sends c the presence frame of n members unless it was the
// last one c got, or c got one less than PresenceInterval ago (the next
// poll sends it then). f is the frame of n when already encoded, else
// nil; it returns the frame for the next member, which the caller
// releases.
func sendPresence(c *conn.Conn, s *session, n int, f *conn.Frame) *conn.Frame {
	now := time.Now().UnixNano()
	s.mu.Lock()
	if s.presence == n || now-s.presenceAt < int64(PresenceInterval) {
		s.mu.Unlock()
		return f
	}
	s.presence, s.presenceAt = n, now
	s.mu.Unlock()
	if f == nil {
		f = textFrame(func(b []byte) []byte { return appendPresence(b, n) })
	}
	c.Send(f)
	return f
}
