package room

import (
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// Deliver is the engine's Handler: it encodes m once and queues the frame
// on every local member of the room except the sender and those that
// joined after it (their floor). A member with a session may get the
// frame with the ID (ids=1), or hold it while its replay runs
// (session.go). A loss notice (m.Lost) goes to the members that follow
// IDs (notifyLost).
func (h *Hub) Deliver(name string, m stream.Message) {
	r := h.lookup(name)
	if r == nil {
		return
	}
	if m.Lost {
		h.notifyLost(r, m)
		return
	}
	f := conn.NewTextFrame(m.Payload)
	var fid *conn.Frame // f with the ID, made for the first ids=1 member
	n := 0
	r.mu.RLock()
	r.seen(m.ID)
	for mb := range r.members.all() {
		c := mb.c
		if c.ID() == m.Sender || !mb.floor.Less(m.ID) {
			continue // its own, or older than its join or replay
		}
		s := mb.sess
		if s == nil {
			c.Send(f)
			n++
			continue
		}
		switch {
		case s.replaying:
			s.hold(m)
			continue
		case s.opts.flags&optIDs != 0:
			if fid == nil {
				fid = textFrame(func(b []byte) []byte { return appendWithID(b, m.Payload, m.ID) })
			}
			c.Send(fid)
		default:
			c.Send(f)
		}
		n++
	}
	r.mu.RUnlock()
	f.Release()
	if fid != nil {
		fid.Release()
	}
	h.stats.delivered.Add(int64(n))
}

// notifyLost tells the members of r that follow IDs (ids=1, since=,
// history=) that entries between m.LostAfter and m.ID were lost before
// this node could deliver them: {"truncated":{"since":…,"from":…}}, the
// frame a replay starts with when history was trimmed. A replaying
// member holds it, and gets it at the switch if the range reaches past
// its replay. Plain members get nothing: the original protocol has no
// such frame.
func (h *Hub) notifyLost(r *room, m stream.Message) {
	var f *conn.Frame
	r.mu.RLock()
	for mb := range r.members.all() {
		s := mb.sess
		if s == nil || !s.followsIDs() || !mb.floor.Less(m.ID) {
			continue
		}
		if s.replaying {
			s.hold(m)
			continue
		}
		if m.LostAfter.Less(mb.floor) {
			// Joined within the range: from its start on.
			g := lostFrame(m, mb.floor)
			mb.c.Send(g)
			g.Release()
			continue
		}
		if f == nil {
			f = lostFrame(m, m.LostAfter)
		}
		mb.c.Send(f)
	}
	r.mu.RUnlock()
	if f != nil {
		f.Release()
	}
}

// lostFrame encodes the truncated frame of notice m for a member that
// got everything up to after: {"truncated":{"since":…,"from":m.ID}}, since
// the later of m.LostAfter and after.
func lostFrame(m stream.Message, after stream.ID) *conn.Frame {
	since := m.LostAfter
	if since.Less(after) {
		since = after
	}
	return textFrame(func(b []byte) []byte { return appendTruncated(b, since, m.ID, true) })
}
