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

// newAckRef checks the cid of an ack=1 sender's message, f, and returns
// the ref its Publish carries and the cid decoded ("" when it sent none);
// ok is false when the cid is not a string of 1 to MaxCID bytes.
func newAckRef(c *conn.Conn, f chatFields) (ref *ackRef, cid string, ok bool) {
	cid, ok = checkCID(f.cid)
	if !ok {
		return nil, "", false
	}
	ref = &ackRef{c: c}
	if cid != "" {
		ref.cid = string(f.cid)
	}
	return ref, cid, true
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
