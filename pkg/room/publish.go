package room

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// sender is what OnMessage reads about the sender of a message under
// room.mu, so that the rest runs without the lock.
type sender struct {
	wait    time.Duration // > 0: the message waits that long (see conn.Handler); nothing else is set
	verdict verdict       // of its rate limiter (RATE_MODE drop); rateAllowed in pace mode
	user    string        // the username its token fixes, as JSON; "" when none
	acks    bool          // it set ack=1
	alone   bool          // no other local member or pending join: stream.Message.Alone
}

// OnMessage checks a client's message against the sender's rate limit,
// decodes it and publishes it to the room. Over the limit, with RATE_MODE
// pace (the default), the message waits: OnMessage returns how long, and
// the server reads nothing more from the client until then (see
// conn.Handler); with RATE_MODE drop it is dropped and its sender alone
// gets a rate_limited frame, or is closed with 1008 when it goes on. An
// invalid message gets an error frame, only to its sender, and the
// connection stays open. An ack=1 sender's frames about a message name
// the "cid" it carried (ack.go).
func (h *Hub) OnMessage(c *conn.Conn, msg []byte) time.Duration {
	name, _ := splitConnKey(c.Key())
	r := h.lookup(name)
	if r == nil {
		return 0 // not joined: OnMessage follows OnOpen, so never
	}
	now := h.now()
	s, ok := h.admit(r, c, now, len(msg))
	if !ok || s.wait > 0 {
		return s.wait
	}
	switch s.verdict {
	case rateRefused:
		h.stats.rateLimited.Add(1)
		var f chatFields
		if s.acks {
			f, _ = decodeChat(msg) // for its cid
		}
		h.refuse(c, h.rateLimited, f, s.acks)
		return 0
	case rateExceeded:
		h.closeOverRate(c, name, now)
		return 0
	}
	f, derr := decodeChat(msg)
	if derr != nil {
		h.stats.rejected.Add(1)
		h.refuse(c, &derr.errorFrame, f, s.acks)
		return 0
	}
	var ref any = c // what published gets back
	cid := ""
	if s.acks {
		a, id, ok := newAckRef(c, f)
		if !ok {
			h.stats.rejected.Add(1)
			errInvalidCID.send(c, "")
			return 0
		}
		ref, cid = a, id
	}
	h.publish(c, name, s, f, cid, ref)
	return 0
}

// admit checks c's message of n bytes, arriving at now, against c's
// limits and reads what the rest of OnMessage needs, under r.mu.RLock.
// It reports false when c is not a member of r.
func (h *Hub) admit(r *room, c *conn.Conn, now int64, n int) (s sender, ok bool) {
	r.mu.RLock()
	m := r.member(c)
	if m == nil {
		r.mu.RUnlock()
		return s, false
	}
	if h.rate.pace {
		if wait := m.rate.pace(now, &h.rate); wait > 0 {
			r.mu.RUnlock()
			h.stats.ratePaused.Add(1)
			if c.ClientKnown() {
				// Reconnecting buys its address no burst for a while.
				h.banned.add(clientAddr(c.Remote()), now)
			}
			return sender{wait: time.Duration(wait)}, true
		}
	}
	// Bytes (BYTE_RATE, BYTE_RATE_PER_IP) and an address's messages
	// (RATE_LIMIT_PER_IP) are paced in either mode.
	if wait := m.rate.bytesWait(now, &h.rate, n); wait > 0 {
		r.mu.RUnlock()
		h.stats.ratePaused.Add(1)
		return sender{wait: time.Duration(wait)}, true
	}
	h.stats.received.Add(1)
	s.verdict = rateAllowed
	if h.rate.pace {
		m.rate.admit(now, &h.rate)
	} else {
		s.verdict = m.rate.take(now, &h.rate)
	}
	_, s.user = splitConnKey(m.c.Key()) // the username its token forces, as JSON; "" when none
	s.acks = m.sess != nil && m.sess.opts.flags&optAck != 0
	// alone: no other local member, so this node need not read the
	// message back.
	s.alone = r.members.len()+len(r.pending) <= 1
	r.mu.RUnlock()
	return s, true
}

// closeOverRate closes c, which went on over its rate limit (RATE_MODE
// drop), with 1008, and penalizes its address.
func (h *Hub) closeOverRate(c *conn.Conn, name string, now int64) {
	h.stats.rateLimited.Add(1)
	h.stats.rateClosed.Add(1)
	if c.ClientKnown() {
		h.banned.add(clientAddr(c.Remote()), now)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("closing a connection over its rate limit", "room", name, "conn_id", c.ID(), "remote", c.Remote())
	}
	c.Close(rateClose)
}

// publish encodes the message members receive from f, with the username
// s's token fixes if any, and hands it to the engine with cid (ack=1;
// "" for none). The engine's Ack (published) gets ref: c, or its *ackRef.
func (h *Hub) publish(c *conn.Conn, name string, s sender, f chatFields, cid string, ref any) {
	bp := payloadPool.Get().(*[]byte)
	if s.user != "" {
		*bp = appendOutboundUser((*bp)[:0], s.user, f.message)
	} else {
		*bp = appendOutbound((*bp)[:0], f.username, f.message)
	}
	h.engine.Publish(name, stream.Message{Sender: c.ID(), Payload: *bp, CID: cid, Alone: s.alone}, h.ack, ref)
	putPayload(bp)
}

// published is the engine's Ack for the messages of OnMessage: it counts
// the outcome and tells the sender when its message was not stored, or
// may not have been; an ack=1 sender (an *ackRef) also when it was. For
// a stored message it notes the ID as seen in the room (so a later
// joiner does not get it) and answers whether someone else in the room
// here needs it (Message.Alone).
func (h *Hub) published(ref any, id stream.ID, err error) bool {
	var c *conn.Conn
	cid := ""
	a, acked := ref.(*ackRef)
	if acked {
		c, cid = a.c, a.cid
	} else {
		c = ref.(*conn.Conn)
	}
	if err != nil {
		h.notStored(c, cid, err)
		return false
	}
	h.stats.published.Add(1)
	others := true
	name, _ := splitConnKey(c.Key())
	if r := h.lookup(name); r != nil {
		r.mu.RLock()
		r.seen(id)
		others = r.others(c)
		r.mu.RUnlock()
	}
	if acked {
		h.sendAck(a, id)
	}
	return others
}

// notStored counts a message the engine did not store, or did not
// confirm, and sends its sender, c, the error frame, naming cid (as
// sent) when set (ack=1).
func (h *Hub) notStored(c *conn.Conn, cid string, err error) {
	e := errUnavailable
	if errors.Is(err, stream.ErrUnconfirmed) {
		h.stats.unconfirmed.Add(1)
		e = errUnconfirmed
	} else {
		h.stats.unavailable.Add(1)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		name, _ := splitConnKey(c.Key())
		h.log.Debug("publish failed", "room", name, "conn_id", c.ID(), "err", err)
	}
	e.send(c, cid)
}
