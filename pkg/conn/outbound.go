package conn

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

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

// NewStaticText encodes payload as a final text frame that is never
// released (NewStaticFrame with ws.OpText), for fixed messages such as
// the error frames of a protocol; its users need not import gobwas/ws.
func NewStaticText(payload []byte) *Frame {
	return NewStaticFrame(ws.OpText, payload)
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
