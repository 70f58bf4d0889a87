package room

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// room holds the local members of one room.
type room struct {
	name    string       // the key of h.rooms; its members' connection key when they set no option (Hub.knownRoom)
	mu      sync.RWMutex // Lock: join, leave, state; RLock: deliver, and a member's own limiter
	members memberList
	pending []*conn.Conn // joined while the subscription is not ready
	state   roomState
	refs    int // members and pending joins; guarded by Hub.mu
	// watchers counts the members with presence=1; guarded by mu.
	watchers int

	// last is the newest entry of the room this node has seen: delivered,
	// acknowledged to a local sender, or the room's end when it was
	// subscribed. A joiner's floor: it never gets an entry at or below
	// it, which is older than its join. lastMu is a leaf, taken under mu
	// (RLock is enough) or alone.
	lastMu sync.Mutex
	last   stream.ID
}

// member is one local member of a room: its connection, whose Slot is
// its index in room.members, and what the Hub keeps about it. rate is
// used only by OnMessage, which runs on the member's event loop one call
// at a time, under room.mu.RLock; the rest changes only under room.mu.Lock.
type member struct {
	c    *conn.Conn // its key holds the username its token forces (splitConnKey)
	sess *session   // its query options and replay (session.go); nil when it set none
	// floor: deliveries at or below it are skipped, as older than the
	// member's join (room.last then) or replayed already (session.go).
	floor stream.ID
	rate  limiter
}

// roomState is where a room's engine subscription stands. Only one
// Subscribe or Unsubscribe runs per room at a time, off the event loops.
type roomState uint8

const (
	roomIdle          roomState = iota // not subscribed
	roomSubscribing                    // Subscribe running; joiners wait in pending
	roomSubscribed                     // members receive messages
	roomUnsubscribing                  // Unsubscribe running after the last member left
)

// OnOpen joins the connection to its room. In a subscribed room that is
// immediate; otherwise the connection waits (conn.OpenPending) while the
// room is subscribed on the engine, off the event loop, and its 101 is
// written once every message published from then on will reach it. A
// join that replays history (since=, history=) also waits for the first
// page of its replay (session.go).
func (h *Hub) OnOpen(c *conn.Conn) (conn.Opening, error) {
	name, _ := splitConnKey(c.Key())
	h.mu.Lock()
	r := h.rooms[name]
	if r == nil {
		r = &room{name: strings.Clone(name)} // not a part of the joiner's URI: knownRoom shares it
		h.rooms[name] = r
	}
	r.refs++
	h.mu.Unlock()

	r.mu.Lock()
	if r.state == roomSubscribed {
		s := h.join(name, r, c)
		h.engine.SetMembers(name, r.members.len())
		r.mu.Unlock()
		if s == nil || !s.async() {
			return conn.OpenNow, nil
		}
		replays := s.opts.replays()
		go h.start(name, r, c, s, replays)
		if replays {
			return conn.OpenPending, nil
		}
		return conn.OpenNow, nil
	}
	r.pending = append(r.pending, c)
	start := r.state == roomIdle
	if start {
		r.state = roomSubscribing
	}
	r.mu.Unlock()
	if start {
		h.subscribeLater(name, r)
	}
	return conn.OpenPending, nil
}

// logSubscribeFailed logs a refused subscription at most once a second,
// with how many were not logged since. While Redis is unreachable every
// join to a new room fails; a line each flooded the log (408 000 lines in
// one overloaded run of BENCHMARKS.md section 15).
func (h *Hub) logSubscribeFailed(name string, err error) {
	h.subLog.Lock()
	now := time.Now()
	if !h.subLog.at.IsZero() && now.Sub(h.subLog.at) < time.Second {
		h.subLog.skipped++
		h.subLog.Unlock()
		return
	}
	skipped := h.subLog.skipped
	h.subLog.at, h.subLog.skipped = now, 0
	h.subLog.Unlock()
	h.log.Warn("cannot subscribe room; its joins are refused with 503 until the engine works", "room", name, "err", err,
		"not_logged_since_last", skipped)
}

// subscribe subscribes the room on the engine and answers its pending
// joins. A room whose joiners all left while the job waited (timed out
// behind a hung engine) goes back to idle without a round trip.
func (h *Hub) subscribe(name string, r *room) {
	r.mu.Lock()
	if len(r.pending) == 0 && r.members.len() == 0 {
		r.state = roomIdle
		r.mu.Unlock()
		h.unref(name, r, 0)
		return
	}
	r.mu.Unlock()
	last, err := h.engine.Subscribe(name)
	r.seen(last)
	r.mu.Lock()
	pend := r.pending
	r.pending = nil
	if err != nil {
		r.state = roomIdle
		r.mu.Unlock()
		h.logSubscribeFailed(name, err)
		refused := &conn.HandshakeError{Status: http.StatusServiceUnavailable, Reason: "the message store is unavailable; retry later"}
		for _, c := range pend {
			c.Complete(refused)
		}
		h.unref(name, r, len(pend))
		return
	}
	r.state = roomSubscribed
	var sessions []*session // of pend, for those with options
	for i, c := range pend {
		if s := h.join(name, r, c); s != nil {
			if sessions == nil {
				sessions = make([]*session, len(pend))
			}
			sessions[i] = s
		}
	}
	empty := r.members.len() == 0
	if empty {
		r.state = roomUnsubscribing // every joiner left meanwhile
	} else if len(pend) > 0 {
		h.engine.SetMembers(name, r.members.len())
	}
	r.mu.Unlock()
	for i, c := range pend {
		var s *session
		if sessions != nil {
			s = sessions[i]
		}
		switch {
		case s == nil || !s.async():
			c.Complete(nil)
		case s.opts.replays():
			go h.start(name, r, c, s, true) // answers the join itself
		default:
			c.Complete(nil)
			go h.start(name, r, c, s, false)
		}
	}
	if empty {
		h.unsubscribe(name, r)
	}
}

// unsubscribe unsubscribes a room whose last member left, then
// subscribes it again if someone joined meanwhile.
func (h *Hub) unsubscribe(name string, r *room) {
	if err := h.engine.Unsubscribe(name); err != nil && !errors.Is(err, stream.ErrClosed) {
		h.log.Warn("cannot unsubscribe room", "room", name, "err", err)
	}
	r.mu.Lock()
	again := len(r.pending) > 0
	if again {
		r.state = roomSubscribing
	} else {
		r.state = roomIdle
	}
	r.mu.Unlock()
	if again {
		h.subscribe(name, r)
		return
	}
	h.unref(name, r, 0)
}

// join makes c a member of r, named name, and returns its session (nil
// when c set no query option). r.mu must be held. The caller reports the
// new count to the engine (SetMembers).
func (h *Hub) join(name string, r *room, c *conn.Conn) *session {
	s := newSession(c)
	lim := h.startLimiter(c)
	if (h.rate.addr.rate > 0 || h.rate.addrMsgs.rate > 0) && c.ClientKnown() {
		lim.addr = h.addrs.get(clientAddr(c.Remote()))
	}
	c.SetSlot(r.members.add(member{c: c, sess: s, floor: r.position(), rate: lim}))
	if s != nil && s.opts.flags&optPresence != 0 {
		r.watchers++
		if r.watchers == 1 {
			h.watch(name, r)
		}
	}
	return s
}

// startLimiter returns the limiter of a connection that joins now: empty
// when its address had a connection closed for its rate within
// RateCloseWindow, else full.
func (h *Hub) startLimiter(c *conn.Conn) limiter {
	now := h.now()
	return h.rate.start(now, c.ClientKnown() && h.banned.has(clientAddr(c.Remote()), now))
}

// seen notes that the node has seen entry id of r: delivered it,
// acknowledged it, or found it as the room's end.
func (r *room) seen(id stream.ID) {
	r.lastMu.Lock()
	if r.last.Less(id) {
		r.last = id
	}
	r.lastMu.Unlock()
}

// position returns the newest entry of r the node has seen.
func (r *room) position() stream.ID {
	r.lastMu.Lock()
	defer r.lastMu.Unlock()
	return r.last
}

// others reports whether r has a member, or a pending join, other than
// c. r.mu must be held (RLock is enough).
func (r *room) others(c *conn.Conn) bool {
	n := r.members.len() + len(r.pending)
	if r.member(c) != nil {
		n--
	}
	return n > 0
}

// member returns c's entry in r.members, or nil when c is not a member.
// r.mu must be held (RLock is enough).
func (r *room) member(c *conn.Conn) *member {
	if i := c.Slot(); i >= 0 && i < r.members.len() {
		if m := r.members.at(i); m.c == c {
			return m
		}
	}
	return nil
}

// OnClose removes the connection from its room (or from its pending
// joins), unsubscribing the room when its last local member leaves.
func (h *Hub) OnClose(c *conn.Conn, _ error) { h.leave(c) }

// leave is OnClose: it removes c from its room or its pending joins, and
// stops its replay. It does nothing for a connection already gone.
func (h *Hub) leave(c *conn.Conn) {
	name, _ := splitConnKey(c.Key())
	r := h.lookup(name)
	if r == nil {
		return
	}
	r.mu.Lock()
	found := false
	if m := r.member(c); m != nil {
		if s := m.sess; s != nil {
			s.stop()
			if s.opts.flags&optPresence != 0 {
				r.watchers--
				if r.watchers == 0 {
					h.unwatch(r)
				}
			}
		}
		if ab := m.rate.addr; ab != nil {
			h.addrs.put(clientAddr(c.Remote()), ab)
		}
		i := c.Slot()
		if moved := r.members.remove(i); moved != nil {
			moved.c.SetSlot(i)
		}
		c.SetSlot(-1)
		found = true
		h.engine.SetMembers(name, r.members.len())
	} else if i := slices.Index(r.pending, c); i >= 0 {
		r.pending = slices.Delete(r.pending, i, i+1)
		found = true
	}
	leave := found && r.members.len() == 0 && len(r.pending) == 0 && r.state == roomSubscribed
	if leave {
		r.state = roomUnsubscribing
	}
	r.mu.Unlock()
	if !found {
		return
	}
	if leave {
		h.unsubscribeLater(name, r)
	}
	h.unref(name, r, 1)
}

// unref drops n references to r and forgets the room when none is left
// and no subscription is running, so a later Subscribe of the same name
// never races with an earlier Unsubscribe.
func (h *Hub) unref(name string, r *room, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.refs -= n
	if r.refs > 0 || h.rooms[name] != r {
		return
	}
	r.mu.RLock()
	idle := r.state == roomIdle
	r.mu.RUnlock()
	if idle {
		delete(h.rooms, name)
	}
}
