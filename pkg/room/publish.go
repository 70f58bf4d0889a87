package room

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

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
	name, _ := splitKey(c.Key())
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return 0 // not joined: OnMessage follows OnOpen, so never
	}
	now := h.now()
	r.mu.RLock()
	m := r.member(c)
	if m == nil {
		r.mu.RUnlock()
		return 0
	}
	if h.rate.pace {
		if wait := m.rate.pace(now, &h.rate); wait > 0 {
			r.mu.RUnlock()
			h.stats.ratePaused.Add(1)
			if c.ClientKnown() {
				// Reconnecting buys its address no burst for a while.
				h.banned.add(clientAddr(c.Remote()), now)
			}
			return time.Duration(wait)
		}
	}
	// Bytes (BYTE_RATE, BYTE_RATE_PER_IP) and an address's messages
	// (RATE_LIMIT_PER_IP) are paced in either mode.
	if wait := m.rate.bytesWait(now, &h.rate, len(msg)); wait > 0 {
		r.mu.RUnlock()
		h.stats.ratePaused.Add(1)
		return time.Duration(wait)
	}
	h.stats.received.Add(1)
	v := rateAllowed
	if h.rate.pace {
		m.rate.admit(now, &h.rate)
	} else {
		v = m.rate.take(now, &h.rate)
	}
	user := m.user
	acks := m.sess != nil && m.sess.opts.flags&optAck != 0
	// alone: no other local member, so this node need not read the
	// message back.
	alone := len(r.members)+len(r.pending) <= 1
	r.mu.RUnlock()
	switch v {
	case rateRefused:
		h.stats.rateLimited.Add(1)
		if acks {
			h.refuseWithCID(c, msg, nil)
			return 0
		}
		c.Send(h.limitF)
		return 0
	case rateExceeded:
		h.stats.rateLimited.Add(1)
		h.stats.rateClosed.Add(1)
		if c.ClientKnown() {
			h.banned.add(clientAddr(c.Remote()), now)
		}
		if h.log.Enabled(context.Background(), slog.LevelDebug) {
			h.log.Debug("closing a connection over its rate limit", "room", name, "conn_id", c.ID(), "remote", c.Remote())
		}
		c.Close(rateClose)
		return 0
	}
	if acks {
		h.publishAcked(c, name, msg, user, alone)
		return 0
	}
	username, message, derr := decodeMessage(msg)
	if derr != nil {
		h.stats.rejected.Add(1)
		c.Send(errorFrames[derr])
		return 0
	}
	bp := payloadPool.Get().(*[]byte)
	if user != "" {
		*bp = appendOutboundUser((*bp)[:0], user, message)
	} else {
		*bp = appendOutbound((*bp)[:0], username, message)
	}
	h.engine.Publish(name, stream.Message{Sender: c.ID(), Payload: *bp, Alone: alone}, h.ack, c)
	putPayload(bp)
	return 0
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
	if err == nil {
		h.stats.published.Add(1)
		others := true
		name, _ := splitKey(c.Key())
		h.mu.RLock()
		r := h.rooms[name]
		h.mu.RUnlock()
		if r != nil {
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
	f := unavailableFrame
	code := errUnavailable
	switch {
	case errors.Is(err, stream.ErrUnconfirmed):
		h.stats.unconfirmed.Add(1)
		f, code = unconfirmedFrame, errUnconfirmed
	default:
		h.stats.unavailable.Add(1)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		name, _ := splitKey(c.Key())
		h.log.Debug("publish failed", "room", name, "conn_id", c.ID(), "err", err)
	}
	if cid != "" {
		sendError(c, code, cid)
		return false
	}
	c.Send(f)
	return false
}
