package conn

import (
	"errors"
	"fmt"

	"github.com/gobwas/ws"
)

// StatusTryAgainLater is close code 1013, "Try Again Later": the server
// is overloaded (RFC 6455 section 11.7, IANA WebSocket Close Code
// Number Registry). gobwas/ws has no constant for it.
const StatusTryAgainLater ws.StatusCode = 1013

// CloseError is the close frame the server sends when it ends a
// connection: a status code (RFC 6455 section 7.4) and a reason text of at
// most 123 bytes (section 5.5: a control frame's payload is at most 125
// bytes, two of which hold the code). Every cause of a close maps to one
// CloseError in closeFor, so the client always learns why.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

// Error returns "websocket close <code>: <reason>".
func (e *CloseError) Error() string {
	return fmt.Sprintf("websocket close %d: %s", e.Code, e.Reason)
}

// The causes of a server-side close. They are returned by the frame reader
// and the write queue and turned into close frames by closeFor; OnClose
// receives them so the application can log or count them.
var (
	// ErrUnmasked: a client frame without a mask (RFC 6455 section 5.1).
	ErrUnmasked = errors.New("conn: client frame is not masked")
	// ErrReservedBits: RSV1-3 set with no extension negotiated (5.2).
	ErrReservedBits = errors.New("conn: reserved bits set")
	// ErrReservedOpcode: an opcode the protocol does not define (5.2).
	ErrReservedOpcode = errors.New("conn: reserved opcode")
	// ErrBadControl: a fragmented control frame or one over maxControlPayload
	// bytes (5.5).
	ErrBadControl = errors.New("conn: fragmented or oversized control frame")
	// ErrBadContinuation: a continuation frame with no message in progress,
	// or a new data frame inside a fragmented message (5.4).
	ErrBadContinuation = errors.New("conn: bad fragmentation")
	// ErrBadLength: a 64-bit length with its most significant bit set (5.2).
	ErrBadLength = errors.New("conn: bad payload length")
	// ErrBadCloseCode: a close frame with a 1-byte payload or a status code
	// that may not be sent (7.4).
	ErrBadCloseCode = errors.New("conn: bad close frame")
	// ErrBinary: a binary message; the chat protocol is text JSON only.
	ErrBinary = errors.New("conn: binary message")
	// ErrInvalidUTF8: a text message or close reason that is not UTF-8 (8.1).
	ErrInvalidUTF8 = errors.New("conn: invalid UTF-8")
	// ErrTooLarge: a message longer than Config.MaxMessageBytes.
	ErrTooLarge = errors.New("conn: message too large")
	// ErrSlowConsumer: the outbound queue passed Config.MaxQueueBytes
	// because the client does not read fast enough.
	ErrSlowConsumer = errors.New("conn: slow consumer")
	// ErrFragmentTimeout: a message stayed unfinished (fragments, or a
	// frame split across reads) longer than Config.FragmentTimeout.
	ErrFragmentTimeout = errors.New("conn: message not finished in time")
	// ErrServerBusy: the bytes held for unfinished messages of all
	// connections reached Config.MaxPartialBytes.
	ErrServerBusy = errors.New("conn: server busy: too many unfinished messages")
	// ErrPingTimeout: no data and no pong within Config.PongTimeout of a
	// ping.
	ErrPingTimeout = errors.New("conn: ping timeout")
	// ErrShutdown: the server is shutting down.
	ErrShutdown = errors.New("conn: server shutting down")
	// ErrPeerClosed: the client sent a close frame; the server echoed it.
	ErrPeerClosed = errors.New("conn: closed by peer")
	// ErrEOF: the client closed the TCP connection without a close frame.
	ErrEOF = errors.New("conn: connection closed without close frame")
)

// badControlReason is the close reason for ErrBadControl.
var badControlReason = fmt.Sprintf("control frames must be final and at most %d bytes", maxControlPayload)

// closeFor maps the cause of a close to the close frame sent to the
// client. Causes it does not know (write errors, I/O failures) map to nil:
// the socket is gone and no frame can be sent.
func closeFor(err error) *CloseError {
	var ce *CloseError
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, ErrUnmasked):
		return &CloseError{ws.StatusProtocolError, "client frames must be masked"}
	case errors.Is(err, ErrReservedBits):
		return &CloseError{ws.StatusProtocolError, "reserved bits set without an extension"}
	case errors.Is(err, ErrReservedOpcode):
		return &CloseError{ws.StatusProtocolError, "unknown opcode"}
	case errors.Is(err, ErrBadControl):
		return &CloseError{ws.StatusProtocolError, badControlReason}
	case errors.Is(err, ErrBadContinuation):
		return &CloseError{ws.StatusProtocolError, "bad fragmentation: unexpected continuation or data frame"}
	case errors.Is(err, ErrBadLength):
		return &CloseError{ws.StatusProtocolError, "bad payload length"}
	case errors.Is(err, ErrBadCloseCode):
		return &CloseError{ws.StatusProtocolError, "bad close frame: invalid status code or length"}
	case errors.Is(err, ErrBinary):
		return &CloseError{ws.StatusUnsupportedData, "binary messages are not supported; send JSON text"}
	case errors.Is(err, ErrInvalidUTF8):
		return &CloseError{ws.StatusInvalidFramePayloadData, "text is not valid UTF-8"}
	case errors.Is(err, ErrTooLarge):
		return &CloseError{ws.StatusMessageTooBig, "message too large; see MAX_MESSAGE_BYTES"}
	case errors.Is(err, ErrSlowConsumer):
		return &CloseError{ws.StatusPolicyViolation, "slow consumer: messages were not read in time"}
	case errors.Is(err, ErrFragmentTimeout):
		return &CloseError{ws.StatusPolicyViolation, "message not finished in time; see FRAGMENT_TIMEOUT"}
	case errors.Is(err, ErrServerBusy):
		return &CloseError{StatusTryAgainLater, "server busy: too many unfinished messages; retry later"}
	case errors.Is(err, ErrPingTimeout):
		return &CloseError{ws.StatusGoingAway, "ping timeout: no pong received"}
	case errors.Is(err, ErrShutdown):
		return &CloseError{ws.StatusGoingAway, "server shutting down; reconnect"}
	default:
		return nil
	}
}

// validCloseCode reports whether a client may send code in a close frame
// (RFC 6455 section 7.4.1 and the IANA registry, section 11.7).
func validCloseCode(code ws.StatusCode) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	default:
		return false
	}
}
