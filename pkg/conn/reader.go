package conn

import (
	"encoding/binary"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxControlPayload is the largest control frame payload (RFC 6455 5.5).
const maxControlPayload = 125

// maxFrameHeader is the largest client frame header: 2 bytes, a 64-bit
// length and the masking key (RFC 6455 5.2).
const maxFrameHeader = 14

// holds with messages of at most max bytes: an unfinished message of at
// most max bytes, one incomplete frame (a data frame whose payload fits
// in what the message has left, or a control frame) and, as buffers grow
// by doubling, at most twice each.
func maxPartialPerConn(max int) int {
	return 2*(max+maxFrameHeader+maxControlPayload) + 2*minBuffer
}

// frameReader turns a client's byte stream, read in chunks of any size,
// into complete text messages and control frames (RFC 6455 section 5). It
// enforces the protocol as it goes: every violation is returned as one of
// the errors in close.go, which closeFor maps to a close code.
//
// It holds bytes only for an unfinished message: the payload of a
// fragmented message so far (msg) and at most one incomplete frame (in),
// each in a buffer of at most twice its length (maxPartialPerConn).
//
// Pausing. The reader stops at a frame it may not take yet: over the frame
// rate, or a text message the emit function declines for now (errPause).
// It keeps that frame and everything after it, masked as it arrived, in
// in (paused set), and feed returns errPause; resume feeds them again.
// The caller reads nothing more from the client meanwhile, so TCP flow
// control slows the client down: nothing is dropped, order is kept.
type frameReader struct {
	max        int     // largest message payload accepted, in bytes
	in         *buffer // bytes of one incomplete frame, or the bytes kept by a pause; nil when none
	msg        *buffer // payload of a fragmented message so far; nil when none
	fragmented bool    // a fragmented text message is in progress
	discard    bool    // drop data payloads (closing): fragments are not kept
	completed  bool    // a text message ended during the last feed
	paused     bool    // in holds the bytes from the first frame not taken: resume them

	// Frame rate limit, a GCRA token bucket in integer nanoseconds: each
	// frame moves tat (the theoretical arrival time) interval later; a
	// frame that finds tat more than tolerance ahead of now pauses the
	// reader until it is not. interval 0 means no limit.
	now       int64 // clock of the current feed, unix ns; set by the caller
	tat       int64
	interval  int64
	tolerance int64
}

// errPause is returned by feed and resume when the reader paused, and by
// an emit function that declines a text message for now.
var errPause = errors.New("conn: reading paused")

// frameWait returns how long a reader paused at the frame rate must wait
// before the next frame fits.
func (r *frameReader) frameWait() int64 { return r.tat - r.tolerance - r.now }

// setRate limits the reader to rate frames per second on average and
// burst frames at once; rate <= 0 means no limit.
func (r *frameReader) setRate(rate, burst int) {
	if rate <= 0 {
		r.interval, r.tolerance = 0, 0
		return
	}
	r.interval = max(int64(time.Second)/int64(rate), 1)
	r.tolerance = int64(max(burst, 1)-1) * r.interval
}

// emitFunc receives one complete text message (OpText) or control frame
// (OpPing, OpPong, OpClose). The payload is valid only during the call.
// Returning an error stops the reader, which returns that error;
// returning errPause for a text message pauses the reader at it: the
// message is emitted again, whole, after resume.
type emitFunc func(op ws.OpCode, payload []byte) error

// feed parses data, the next bytes read from the client, and calls emit
// for every complete message and control frame. It unmasks payloads in
// place, so data is modified. The bytes of an incomplete frame are kept
// until the next call.
//
// When the reader pauses it returns errPause and keeps the bytes from the
// frame it stopped at (see frameReader); feed must not be called again
// before resume.
func (r *frameReader) feed(data []byte, emit emitFunc) error {
	r.completed = false
	// Finish the frame kept from the last read first, taking from data
	// only the bytes it lacks: the kept buffer never holds more than it.
	for r.in != nil && len(data) > 0 {
		take := min(frameMissing(r.in.b), len(data))
		r.in = appendBuffer(r.in, data[:take])
		data = data[take:]
		n, err := r.next(r.in.b, emit)
		if err == errPause {
			r.pause(data) // in keeps the frame, the rest follows it
			return err
		}
		if n > 0 || err != nil {
			// Consumed, or never to be: after an error the reader starts
			// afresh with the next read (a closing connection only looks
			// for the close frame).
			r.releaseIn()
		}
		if err != nil {
			return err
		}
	}
	for len(data) > 0 {
		n, err := r.next(data, emit)
		if err == errPause {
			r.pause(data)
			return err
		}
		if err != nil {
			return err
		}
		if n == 0 {
			r.in = appendBuffer(nil, data)
			return nil
		}
		data = data[n:]
	}
	return nil
}

// pause keeps rest, the bytes after the frame the reader stopped at (in
// holds that frame, or rest starts with it), for resume.
func (r *frameReader) pause(rest []byte) {
	r.in = appendBuffer(r.in, rest)
	r.paused = true
}

// resume feeds the bytes kept by a pause again; it may pause again.
func (r *frameReader) resume(emit emitFunc) error {
	b := r.in
	r.in, r.paused = nil, false
	err := r.feed(b.b, emit) // copies what it keeps before b goes back to its pool
	b.release()
	return err
}

// dropPaused forgets the bytes kept by a pause (a closing connection's
// frames are not delivered).
func (r *frameReader) dropPaused() {
	if r.paused {
		r.releaseIn()
		r.paused = false
	}
}

// frameMissing returns how many more bytes the incomplete frame at the
// start of b needs: to complete its header when that is not complete yet,
// else to complete the frame. next has checked the header fields that b
// holds, so the length is within the limits.
func frameMissing(b []byte) int {
	if len(b) < 2 {
		return 2 - len(b)
	}
	hn := 6
	switch b[1] & 0x7f {
	case 126:
		hn = 8
	case 127:
		hn = 14
	}
	if len(b) < hn {
		return hn - len(b)
	}
	var length uint64
	switch b[1] & 0x7f {
	case 126:
		length = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		length = binary.BigEndian.Uint64(b[2:])
	default:
		length = uint64(b[1] & 0x7f)
	}
	return hn + int(length) - len(b)
}

// held returns the bytes of buffer the reader holds.
func (r *frameReader) held() int {
	n := 0
	if r.in != nil {
		n += cap(r.in.b)
	}
	if r.msg != nil {
		n += cap(r.msg.b)
	}
	return n
}

// reset releases the reader's buffers; the reader may not be used after.
func (r *frameReader) reset() {
	r.releaseIn()
	r.releaseMsg()
	r.fragmented = false
}

// discardData makes the reader drop the payloads of data frames from now
// on, and the message it holds: a closing connection's messages are not
// delivered, so they need not be kept.
func (r *frameReader) discardData() {
	r.discard = true
	r.releaseMsg()
}

func (r *frameReader) releaseIn() {
	if r.in != nil {
		r.in.release()
		r.in = nil
	}
}

func (r *frameReader) releaseMsg() {
	if r.msg != nil {
		r.msg.release()
		r.msg = nil
	}
}

// next parses the frame at the start of b. It returns the number of bytes
// the frame took, or 0 when b does not hold the whole frame yet. Header
// fields are checked as soon as they arrive, so a bad or oversized frame is
// refused before its payload is read.
func (r *frameReader) next(b []byte, emit emitFunc) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	fin := b[0]&0x80 != 0
	op := ws.OpCode(b[0] & 0x0f)
	length := uint64(b[1] & 0x7f)
	switch {
	case b[0]&0x70 != 0:
		return 0, ErrReservedBits
	case op.IsReserved():
		return 0, ErrReservedOpcode
	case b[1]&0x80 == 0:
		return 0, ErrUnmasked
	case op.IsControl():
		if !fin || length > maxControlPayload {
			return 0, ErrBadControl
		}
	case op == ws.OpContinuation:
		if !r.fragmented {
			return 0, ErrBadContinuation
		}
	case r.fragmented:
		return 0, ErrBadContinuation
	case op == ws.OpBinary:
		return 0, ErrBinary
	}

	hn := 2
	switch length {
	case 126:
		if len(b) < 4 {
			return 0, nil
		}
		length, hn = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, nil
		}
		length, hn = binary.BigEndian.Uint64(b[2:]), 10
		if length>>63 != 0 {
			return 0, ErrBadLength
		}
	}
	if !op.IsControl() && length > uint64(r.max-r.msgLen()) {
		return 0, ErrTooLarge
	}
	hn += 4 // masking key
	if len(b) < hn || uint64(len(b)-hn) < length {
		return 0, nil
	}
	if r.interval > 0 && !r.discard {
		if r.tat < r.now {
			r.tat = r.now
		}
		if r.tat-r.now > r.tolerance {
			return 0, errPause // FRAME_RATE: read on when the bucket allows
		}
		r.tat += r.interval
	}
	n := hn + int(length)
	payload := b[hn:n]
	mask := [4]byte(b[hn-4 : hn])

	switch op {
	case ws.OpText:
		if !fin {
			r.fragmented = true
			if !r.discard {
				ws.Cipher(payload, mask, 0)
				r.msg = appendBuffer(nil, payload)
			}
			return n, nil
		}
		if r.discard {
			r.completed = true
			return n, nil
		}
		ws.Cipher(payload, mask, 0)
		if !utf8.Valid(payload) {
			return 0, ErrInvalidUTF8
		}
		if err := emit(ws.OpText, payload); err != nil {
			if err == errPause {
				ws.Cipher(payload, mask, 0) // as it arrived, to be read again
				r.untake()
				return 0, err
			}
			r.completed = true
			return n, err
		}
		r.completed = true
		return n, nil
	case ws.OpContinuation:
		if r.discard {
			if fin {
				r.fragmented, r.completed = false, true
			}
			return n, nil
		}
		ws.Cipher(payload, mask, 0)
		before := r.msgLen()
		r.msg = appendBuffer(r.msg, payload)
		if !fin {
			return n, nil
		}
		msg := r.msg
		r.msg, r.fragmented = nil, false
		if !utf8.Valid(msg.b) {
			msg.release()
			return 0, ErrInvalidUTF8
		}
		if err := emit(ws.OpText, msg.b); err == errPause {
			// Back to the fragments before this frame, which is read
			// again as it arrived.
			msg.b = msg.b[:before]
			r.msg, r.fragmented = msg, true
			ws.Cipher(payload, mask, 0)
			r.untake()
			return 0, err
		} else if err != nil {
			msg.release()
			r.completed = true
			return n, err
		}
		msg.release()
		r.completed = true
		return n, nil
	}
	ws.Cipher(payload, mask, 0)
	if op == ws.OpClose {
		if err := checkClosePayload(payload); err != nil {
			return 0, err
		}
	}
	return n, emit(op, payload)
}

// untake gives back the frame-rate token of a frame read again later.
func (r *frameReader) untake() {
	if r.interval > 0 {
		r.tat -= r.interval
	}
}

func (r *frameReader) msgLen() int {
	if r.msg == nil {
		return 0
	}
	return len(r.msg.b)
}

// checkClosePayload validates a close frame's body: empty, or a valid
// status code followed by a UTF-8 reason (RFC 6455 5.5.1 and 7.4).
func checkClosePayload(p []byte) error {
	switch {
	case len(p) == 0:
		return nil
	case len(p) == 1:
		return ErrBadCloseCode
	case !validCloseCode(ws.StatusCode(binary.BigEndian.Uint16(p))):
		return ErrBadCloseCode
	case !utf8.Valid(p[2:]):
		return ErrInvalidUTF8
	}
	return nil
}
