package room

import (
	"fmt"

	"github.com/chatgw/gateway/pkg/conn"
)

// Error frames. The sender of a refused message, and only it, gets one
// error frame, {"error":<code>,"field":…,"cid":…,"detail":…}, and keeps
// its connection: a refused message is not a close (the closes are in
// pkg/conn/close.go).

// Error codes sent to a client whose message was refused. They are stable:
// clients may match on them.
const (
	CodeInvalidJSON  = "invalid_json"  // the message is not JSON
	CodeNotObject    = "not_object"    // JSON, but not an object
	CodeMissingField = "missing_field" // "username" or "message" is absent
	CodeUnavailable  = "unavailable"   // the message was not stored: resend it later
	CodeUnconfirmed  = "unconfirmed"   // the store did not answer in time: the message may or may not be delivered
	CodeRateLimited  = "rate_limited"  // over the sender's rate limit (RATE_LIMIT): the message was dropped
	CodeInvalidField = "invalid_field" // ack=1: "cid" is not a string of 1 to MaxCID bytes
)

// errorFrame is one error frame: the stable code that says why a message
// was refused, the field at fault, and what to do about it, with the
// frame encoded once without "cid". A decode failure is a decodeError
// (decode.go); the engine's refusals and the rate limit's are plain
// errorFrame values.
type errorFrame struct {
	code   string
	field  string // the field at fault (CodeMissingField, CodeInvalidField); "" for none
	detail string
	static *conn.Frame // the frame without "cid"
}

// newErrorFrame returns the error frame of code, with its frame encoded.
func newErrorFrame(code, field, detail string) *errorFrame {
	e := &errorFrame{code: code, field: field, detail: detail}
	e.static = conn.NewStaticText(errorJSON(e))
	return e
}

// The error frames of a message the engine did not store, or did not
// confirm in time. (The rate_limited frame states the Hub's limits:
// Hub.rateLimited, made by NewHub.)
var (
	errUnavailable = newErrorFrame(CodeUnavailable, "",
		"the message was not stored: the message store is unavailable or overloaded; resend it later")
	errUnconfirmed = newErrorFrame(CodeUnconfirmed, "",
		"the message store did not confirm the message in time: it may still be delivered; resending it may duplicate it")
)

// newRateLimited returns the rate_limited error frame of the limits of cfg
// (RATE_MODE drop), which a defaulted Config always sets.
func newRateLimited(cfg Config) *errorFrame {
	return newErrorFrame(CodeRateLimited, "", fmt.Sprintf(
		"message dropped: over %g messages per second (bursts of %d); more than %d drops within %v close the connection",
		cfg.RateLimit, cfg.RateBurst, cfg.RateCloseAfter, RateCloseWindow))
}

// send sends c the error frame, naming cid (as the client sent it, a
// JSON string) before "detail" when cid is set (ack=1).
func (e *errorFrame) send(c *conn.Conn, cid string) {
	if cid == "" {
		c.Send(e.static)
		return
	}
	fr := textFrame(func(b []byte) []byte { return appendError(b, e, cid) })
	c.Send(fr)
	fr.Release()
}

// refuse sends the sender of a refused message the error frame e. An
// ack=1 sender's (acks) names the message's cid when it carried a valid
// one; f is what decoding the message found (zero when it was not
// decoded).
func (h *Hub) refuse(c *conn.Conn, e *errorFrame, f chatFields, acks bool) {
	cid := ""
	if acks {
		if id, ok := checkCID(f.cid); ok && id != "" {
			cid = string(f.cid)
		}
	}
	e.send(c, cid)
}

// errorJSON encodes an error frame: {"error":code,"field":…,"detail":…}.
func errorJSON(e *errorFrame) []byte { return appendError(nil, e, "") }

// appendError appends an error frame: {"error":code,"field":…,"detail":…},
// with "cid":<cid as sent> before "detail" when cid is set (ack=1).
func appendError(b []byte, e *errorFrame, cid string) []byte {
	b = fmt.Appendf(b, `{"error":%q`, e.code)
	if e.field != "" {
		b = fmt.Appendf(b, `,"field":%q`, e.field)
	}
	if cid != "" {
		b = append(b, `,"cid":`...)
		b = append(b, cid...)
	}
	return fmt.Appendf(b, `,"detail":%q}`, e.detail)
}
