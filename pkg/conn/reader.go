package conn

import (
	"encoding/binary"
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
// rate, or a text message the emit function declines for now (readPause).
// It keeps that frame and everything after it, masked as it arrived, in
// in (paused set), and feed returns readPause; resume feeds them again.
// The caller reads nothing more from the client meanwhile, so TCP flow
// control slows the client down: nothing is dropped, order is kept.
type frameReader struct {
	lim        *readLimits // its loop's limits and clock, shared by the loop's readers
	in         *buffer     // bytes of one incomplete frame, or the bytes kept by a pause; nil when none
	msg        *buffer     // payload of a fragmented message so far; nil when none
	fragmented bool        // a fragmented text message is in progress
	discard    bool        // drop data payloads (closing): fragments are not kept
	completed  bool        // a text message ended during the last feed
	paused     bool        // in holds the bytes from the first frame not taken: resume them

	// Frame rate limit, a GCRA token bucket in integer nanoseconds: each
	// frame moves tat (the theoretical arrival time) lim.interval later;
	// a frame that finds tat more than lim.tolerance ahead of lim.now
	// pauses the reader until it is not. lim.interval 0 means no limit.
	tat int64
}

// readLimits are the limits of every reader of a loop, and the loop's
// clock. They are the same for all its connections, so each reader points
// to one copy instead of carrying its own (an idle connection is mostly
// its Conn).
type readLimits struct {
	now       int64 // clock of the current feed, unix ns; set by the loop before it feeds a reader
	max       int   // largest message payload accepted, in bytes
	interval  int64 // frame rate: ns per frame; 0 means no limit
	tolerance int64 // frame rate: how far ahead (ns) tat may run: the burst
}

// readResult is what an emit function tells the reader after a frame, and
// what feed and resume tell their caller: read on, stop, or pause. Errors
// are kept for protocol violations; these are not errors.
type readResult uint8

const (
	// readOn: go on with the next frame (feed and resume: all of data was
	// taken or kept).
	readOn readResult = iota
	// readStop: the frame closed or released the connection; the reader
	// parses nothing more of this read.
	readStop
	// readPause: the reader paused at a frame, over the frame rate or a
	// text message the emit function declined for now; resume later.
	readPause
)

// frameWait returns how long a reader paused at the frame rate must wait
// before the next frame fits.
func (r *frameReader) frameWait() int64 { return r.tat - r.lim.tolerance - r.lim.now }

// setRate limits readers to rate frames per second on average and burst
// frames at once; rate <= 0 means no limit.
func (l *readLimits) setRate(rate, burst int) {
	if rate <= 0 {
		l.interval, l.tolerance = 0, 0
		return
	}
	l.interval = max(int64(time.Second)/int64(rate), 1)
	l.tolerance = int64(max(burst, 1)-1) * l.interval
}

// emitFunc receives one complete text message (OpText) or control frame
// (OpPing, OpPong, OpClose). The payload is valid only during the call.
// Returning readStop stops the reader, which returns readStop; returning
// readPause for a text message pauses the reader at it: the message is
// emitted again, whole, after resume.
type emitFunc func(op ws.OpCode, payload []byte) readResult

// feed parses data, the next bytes read from the client, and calls emit
// for every complete message and control frame. It unmasks payloads in
// place, so data is modified. The bytes of an incomplete frame are kept
// until the next call.
//
// A protocol violation is returned as an error (close.go). When the reader
// pauses it returns readPause and keeps the bytes from the frame it
// stopped at (see frameReader); feed must not be called again before
// resume.
func (r *frameReader) feed(data []byte, emit emitFunc) (readResult, error) {
	r.completed = false
	// Finish the frame kept from the last read first, taking from data
	// only the bytes it lacks: the kept buffer never holds more than it.
	for r.in != nil && len(data) > 0 {
		take := min(frameMissing(r.in.b), len(data))
		r.in = appendBuffer(r.in, data[:take])
		data = data[take:]
		n, res, err := r.next(r.in.b, emit)
		if res == readPause {
			r.pause(data) // in keeps the frame, the rest follows it
			return res, nil
		}
		if n > 0 || err != nil {
			// Consumed, or never to be: after an error the reader starts
			// afresh with the next read (a closing connection only looks
			// for the close frame).
			r.releaseIn()
		}
		if err != nil || res == readStop {
			return res, err
		}
	}
	for len(data) > 0 {
		n, res, err := r.next(data, emit)
		if res == readPause {
			r.pause(data)
			return res, nil
		}
		if err != nil || res == readStop {
			return res, err
		}
		if n == 0 {
			r.in = appendBuffer(nil, data)
			return readOn, nil
		}
		data = data[n:]
	}
	return readOn, nil
}

// pause keeps rest, the bytes after the frame the reader stopped at (in
// holds that frame, or rest starts with it), for resume.
func (r *frameReader) pause(rest []byte) {
	r.in = appendBuffer(r.in, rest)
	r.paused = true
}

// resume feeds the bytes kept by a pause again; it may pause again.
func (r *frameReader) resume(emit emitFunc) (readResult, error) {
	b := r.in
	r.in, r.paused = nil, false
	res, err := r.feed(b.b, emit) // copies what it keeps before b goes back to its pool
	b.release()
	return res, err
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

// frameHeader is what next needs of a frame's header.
type frameHeader struct {
	op  ws.OpCode
	fin bool
	hn  int // header length, the masking key included
	n   int // frame length: header and payload
}

// header checks the header of the frame at the start of b as far as b
// holds it, so that a bad or oversized frame is refused before its
// payload is read. It reports whether b holds the whole frame.
func (r *frameReader) header(b []byte) (h frameHeader, whole bool, err error) {
	if len(b) < 2 {
		return h, false, nil
	}
	h.fin = b[0]&0x80 != 0
	h.op = ws.OpCode(b[0] & 0x0f)
	length := uint64(b[1] & 0x7f)
	switch {
	case b[0]&0x70 != 0:
		return h, false, ErrReservedBits
	case h.op.IsReserved():
		return h, false, ErrReservedOpcode
	case b[1]&0x80 == 0:
		return h, false, ErrUnmasked
	case h.op.IsControl():
		if !h.fin || length > maxControlPayload {
			return h, false, ErrBadControl
		}
	case h.op == ws.OpContinuation:
		if !r.fragmented {
			return h, false, ErrBadContinuation
		}
	case r.fragmented:
		return h, false, ErrBadContinuation
	case h.op == ws.OpBinary:
		return h, false, ErrBinary
	}

	h.hn = 2
	switch length {
	case 126:
		if len(b) < 4 {
			return h, false, nil
		}
		length, h.hn = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return h, false, nil
		}
		length, h.hn = binary.BigEndian.Uint64(b[2:]), 10
		if length>>63 != 0 {
			return h, false, ErrBadLength
		}
	}
	if !h.op.IsControl() && length > uint64(r.lim.max-r.msgLen()) {
		return h, false, ErrTooLarge
	}
	h.hn += 4 // masking key
	if len(b) < h.hn || uint64(len(b)-h.hn) < length {
		return h, false, nil
	}
	h.n = h.hn + int(length)
	return h, true, nil
}

// next parses the frame at the start of b. It returns the number of bytes
// the frame took, or 0 when b does not hold the whole frame yet, when the
// frame is refused (err) or when the reader pauses at it (readPause).
func (r *frameReader) next(b []byte, emit emitFunc) (int, readResult, error) {
	h, whole, err := r.header(b)
	if !whole {
		return 0, readOn, err
	}
	if !r.take() {
		return 0, readPause, nil // FRAME_RATE: read on when the bucket allows
	}
	payload := b[h.hn:h.n]
	mask := [4]byte(b[h.hn-4 : h.hn])
	switch h.op {
	case ws.OpText:
		return r.text(h, payload, mask, emit)
	case ws.OpContinuation:
		return r.continuation(h, payload, mask, emit)
	}
	ws.Cipher(payload, mask, 0)
	if h.op == ws.OpClose {
		if err := checkClosePayload(payload); err != nil {
			return 0, readOn, err
		}
	}
	return h.n, emit(h.op, payload), nil
}

// take takes the frame rate's token for the next frame. It reports false,
// taking nothing, when the frame must wait; a closing reader (discard) is
// not limited.
func (r *frameReader) take() bool {
	if r.lim.interval == 0 || r.discard {
		return true
	}
	if now := r.lim.now; r.tat < now {
		r.tat = now
	}
	if r.tat-r.lim.now > r.lim.tolerance {
		return false
	}
	r.tat += r.lim.interval
	return true
}

// text handles a text frame: a whole message, emitted, or the first
// fragment of one, kept.
func (r *frameReader) text(h frameHeader, payload []byte, mask [4]byte, emit emitFunc) (int, readResult, error) {
	if !h.fin {
		r.fragmented = true
		if !r.discard {
			ws.Cipher(payload, mask, 0)
			r.msg = appendBuffer(nil, payload)
		}
		return h.n, readOn, nil
	}
	if r.discard {
		r.completed = true
		return h.n, readOn, nil
	}
	ws.Cipher(payload, mask, 0)
	if !utf8.Valid(payload) {
		return 0, readOn, ErrInvalidUTF8
	}
	res := emit(ws.OpText, payload)
	if res == readPause {
		ws.Cipher(payload, mask, 0) // as it arrived, to be read again
		r.untake()
		return 0, res, nil
	}
	r.completed = true
	return h.n, res, nil
}

// continuation handles a continuation frame: it adds to the fragmented
// message, and emits the message with its final fragment.
func (r *frameReader) continuation(h frameHeader, payload []byte, mask [4]byte, emit emitFunc) (int, readResult, error) {
	if r.discard {
		if h.fin {
			r.fragmented, r.completed = false, true
		}
		return h.n, readOn, nil
	}
	ws.Cipher(payload, mask, 0)
	before := r.msgLen()
	r.msg = appendBuffer(r.msg, payload)
	if !h.fin {
		return h.n, readOn, nil
	}
	msg := r.msg
	r.msg, r.fragmented = nil, false
	if !utf8.Valid(msg.b) {
		msg.release()
		return 0, readOn, ErrInvalidUTF8
	}
	res := emit(ws.OpText, msg.b)
	if res == readPause {
		// Back to the fragments before this frame, which is read again
		// as it arrived.
		msg.b = msg.b[:before]
		r.msg, r.fragmented = msg, true
		ws.Cipher(payload, mask, 0)
		r.untake()
		return 0, res, nil
	}
	msg.release()
	r.completed = true
	return h.n, res, nil
}

// untake gives back the frame-rate token of a frame read again later.
func (r *frameReader) untake() {
	if r.lim.interval > 0 {
		r.tat -= r.lim.interval
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
