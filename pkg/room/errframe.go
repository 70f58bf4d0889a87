package room

import (
	"fmt"

	"github.com/chatgw/gateway/pkg/conn"
)

// errorFrames are the pre-encoded error frames, one per decode error.
var errorFrames = map[*decodeError]*conn.Frame{}

var (
	errUnavailable = &decodeError{
		code: CodeUnavailable, detail: "the message was not stored: the message store is unavailable or overloaded; resend it later",
	}
	errUnconfirmed = &decodeError{
		code: CodeUnconfirmed, detail: "the message store did not confirm the message in time: it may still be delivered; resending it may duplicate it",
	}
	unavailableFrame = conn.NewStaticText(errorJSON(errUnavailable))
	unconfirmedFrame = conn.NewStaticText(errorJSON(errUnconfirmed))
)

func init() {
	for _, e := range []*decodeError{errInvalidJSON, errNotObject, errMissingUser, errMissingMessage, errInvalidCID} {
		errorFrames[e] = conn.NewStaticText(errorJSON(e))
	}
}

// errorJSON encodes an error frame: {"error":code,"field":…,"detail":…}.
func errorJSON(e *decodeError) []byte { return appendError(nil, e, "") }

// appendError appends an error frame: {"error":code,"field":…,"detail":…},
// with "cid":<cid as sent> before "detail" when cid is set (ack=1).
func appendError(b []byte, e *decodeError, cid string) []byte {
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
