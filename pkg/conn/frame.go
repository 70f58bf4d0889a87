package conn

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// maxControlPayload is the largest control frame payload (RFC 6455 5.5).
const maxControlPayload = 125

// buffer is a pooled byte slice. A connection holds one only while a frame
// or a fragmented message is incomplete, so idle connections hold none.
type buffer struct{ b []byte }

var bufferPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 4096)} }}

func getBuffer() *buffer { return bufferPool.Get().(*buffer) }

// maxPooledBuffer bounds the buffers kept for reuse, so one huge message
// does not pin its memory forever.
const maxPooledBuffer = 256 << 10

func (b *buffer) release() {
	if cap(b.b) > maxPooledBuffer {
		return
	}
	b.b = b.b[:0]
	bufferPool.Put(b)
}

// frameReader turns a client's byte stream, read in chunks of any size,
// into complete text messages and control frames (RFC 6455 section 5). It
// enforces the protocol as it goes: every violation is returned as one of
// the errors in close.go, which closeFor maps to a close code.
type frameReader struct {
	max        int     // largest message payload accepted, in bytes
	in         *buffer // bytes of an incomplete frame; nil when none
	msg        *buffer // payload of a fragmented message so far; nil when none
	fragmented bool    // a fragmented text message is in progress
}

// emitFunc receives one complete text message (OpText) or control frame
// (OpPing, OpPong, OpClose). The payload is valid only during the call.
// Returning an error stops the reader, which returns that error.
type emitFunc func(op ws.OpCode, payload []byte) error

// feed parses data, the next bytes read from the client, and calls emit
// for every complete message and control frame. It unmasks payloads in
// place, so data is modified. Bytes of an incomplete frame are kept until
// the next call.
func (r *frameReader) feed(data []byte, emit emitFunc) error {
	if r.in != nil {
		r.in.b = append(r.in.b, data...)
		data = r.in.b
	}
	for len(data) > 0 {
		n, err := r.next(data, emit)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		data = data[n:]
	}
	switch {
	case len(data) == 0:
		r.releaseIn()
	case r.in == nil:
		r.in = getBuffer()
		r.in.b = append(r.in.b, data...)
	default: // data is a suffix of r.in.b: move it to the front
		r.in.b = r.in.b[:copy(r.in.b, data)]
	}
	return nil
}

// reset releases the reader's buffers; the reader may not be used after.
func (r *frameReader) reset() {
	r.releaseIn()
	if r.msg != nil {
		r.msg.release()
		r.msg = nil
	}
	r.fragmented = false
}

func (r *frameReader) releaseIn() {
	if r.in != nil {
		r.in.release()
		r.in = nil
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
	n := hn + int(length)
	payload := b[hn:n]
	ws.Cipher(payload, [4]byte(b[hn-4:hn]), 0)

	switch op {
	case ws.OpText:
		if !fin {
			r.fragmented = true
			r.msg = getBuffer()
			r.msg.b = append(r.msg.b, payload...)
			return n, nil
		}
		if !utf8.Valid(payload) {
			return 0, ErrInvalidUTF8
		}
		return n, emit(ws.OpText, payload)
	case ws.OpContinuation:
		r.msg.b = append(r.msg.b, payload...)
		if !fin {
			return n, nil
		}
		msg := r.msg
		r.msg, r.fragmented = nil, false
		defer msg.release()
		if !utf8.Valid(msg.b) {
			return 0, ErrInvalidUTF8
		}
		return n, emit(ws.OpText, msg.b)
	case ws.OpClose:
		if err := checkClosePayload(payload); err != nil {
			return 0, err
		}
	}
	return n, emit(op, payload)
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

// Frame is one encoded server frame, shared by every connection it is sent
// to: a message is encoded once however many members receive it. Frames
// are pooled and reference-counted; whoever creates one with NewTextFrame
// calls Release once it has handed it to every Send.
type Frame struct {
	buf    []byte
	refs   atomic.Int32
	static bool // never released (pre-encoded pings)
}

var framePool = sync.Pool{New: func() any { return new(Frame) }}

// NewTextFrame encodes payload as one unmasked, final text frame. The
// caller holds one reference and must call Release.
func NewTextFrame(payload []byte) *Frame {
	return newFrame(ws.OpText, payload)
}

func newFrame(op ws.OpCode, payload []byte) *Frame {
	f := framePool.Get().(*Frame)
	f.refs.Store(1)
	f.buf = appendFrame(f.buf[:0], op, payload)
	return f
}

// appendFrame appends an unmasked final frame of op and payload to b.
func appendFrame(b []byte, op ws.OpCode, payload []byte) []byte {
	n := len(payload)
	switch {
	case n < 126:
		b = append(b, 0x80|byte(op), byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|byte(op), 126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|byte(op), 127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return append(b, payload...)
}

// Len returns the encoded size of the frame in bytes.
func (f *Frame) Len() int { return len(f.buf) }

func (f *Frame) retain() {
	if !f.static {
		f.refs.Add(1)
	}
}

// Release drops one reference; the last one returns the frame to the pool.
func (f *Frame) Release() {
	if f.static || f.refs.Add(-1) != 0 {
		return
	}
	if cap(f.buf) > maxPooledBuffer {
		f.buf = nil
	}
	framePool.Put(f)
}

// NewStaticFrame encodes a frame that is never released, for constant
// frames such as pings and fixed error messages. Release does nothing on it.
func NewStaticFrame(op ws.OpCode, payload []byte) *Frame {
	return &Frame{buf: appendFrame(nil, op, payload), static: true}
}

// closeFrame encodes the close frame for ce (an empty one for nil).
func closeFrame(ce *CloseError) *Frame {
	if ce == nil {
		return newFrame(ws.OpClose, nil)
	}
	reason := ce.Reason
	if len(reason) > maxControlPayload-2 {
		reason = reason[:maxControlPayload-2]
		for !utf8.ValidString(reason) { // never cut a character in two
			reason = reason[:len(reason)-1]
		}
	}
	return newFrame(ws.OpClose, ws.NewCloseFrameBody(ce.Code, reason))
}
