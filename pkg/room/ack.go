package room

import (
	"encoding/json"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// Acknowledgements (ack=1). The sender of a message gets
// {"ack":"<id>","cid":<cid>} once the engine stored it, and every error
// frame about it names its cid too. With a cid the message is published
// with stream.Message.CID, so the engine stores a resend of the same cid
// (after a reconnect, even to another node) once and acks the first ID:
// a client that resends every unacknowledged message gets each delivered
// exactly once. The cid is never forwarded to members.

// ackRef is the Publish ref of an ack=1 sender's message.
type ackRef struct {
	c   *conn.Conn
	cid string // the cid as the client sent it (a JSON string); "" when none
}

// publishAcked is the rest of OnMessage for an ack=1 sender: decode,
// check the cid, publish with it.
func (h *Hub) publishAcked(c *conn.Conn, name string, msg []byte, user string, alone bool) {
	f, derr := decodeChat(msg)
	if derr != nil {
		h.stats.rejected.Add(1)
		h.refuseWithCID(c, msg, derr)
		return
	}
	cid, ok := checkCID(f.cid)
	if !ok {
		h.stats.rejected.Add(1)
		c.Send(errorFrames[errInvalidCID])
		return
	}
	ref := &ackRef{c: c}
	if cid != "" {
		ref.cid = string(f.cid)
	}
	bp := payloadPool.Get().(*[]byte)
	if user != "" {
		*bp = appendOutboundUser((*bp)[:0], user, f.message)
	} else {
		*bp = appendOutbound((*bp)[:0], f.username, f.message)
	}
	h.engine.Publish(name, stream.Message{Sender: c.ID(), Payload: *bp, CID: cid, Alone: alone}, h.ack, ref)
	putPayload(bp)
}

// refuseWithCID sends an ack=1 sender the error frame of a message it
// sent, msg, refused for e (nil: the rate limit), naming the message's
// cid when it has a valid one.
func (h *Hub) refuseWithCID(c *conn.Conn, msg []byte, e *decodeError) {
	if e == nil {
		e = h.limitE
	}
	f, _ := decodeChat(msg)
	if cid, ok := checkCID(f.cid); !ok || cid == "" {
		if e == h.limitE {
			c.Send(h.limitF)
		} else {
			c.Send(errorFrames[e])
		}
		return
	}
	sendError(c, e, string(f.cid))
}

// sendError sends c the error frame of e naming cid (as sent).
func sendError(c *conn.Conn, e *decodeError, cid string) {
	fr := textFrame(func(b []byte) []byte { return appendError(b, e, cid) })
	c.Send(fr)
	fr.Release()
}

// sendAck sends the sender of an accepted message its ack frame.
func (h *Hub) sendAck(a *ackRef, id stream.ID) {
	fr := textFrame(func(b []byte) []byte { return appendAck(b, id, a.cid) })
	a.c.Send(fr)
	fr.Release()
}

// checkCID checks the raw JSON value of a message's "cid": absent (nil)
// is fine and gives "", else it must be a JSON string of 1 to MaxCID
// bytes, returned decoded.
func checkCID(raw []byte) (cid string, ok bool) {
	if raw == nil {
		return "", true
	}
	if raw[0] != '"' || json.Unmarshal(raw, &cid) != nil || cid == "" || len(cid) > MaxCID {
		return "", false
	}
	return cid, true
}
