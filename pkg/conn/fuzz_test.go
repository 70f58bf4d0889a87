package conn

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// fuzzMax is the MaxMessageBytes of the fuzzed reader: small, so that the
// fuzzer reaches ErrTooLarge.
const fuzzMax = 512

// readerErrors are the errors feed may return.
var readerErrors = []error{
	ErrUnmasked, ErrReservedBits, ErrReservedOpcode, ErrBadControl, ErrBadContinuation,
	ErrBadLength, ErrBadCloseCode, ErrBinary, ErrInvalidUTF8, ErrTooLarge,
}

// clientFrames encodes frames as a client sends them, masked with the
// fixed key testMask (so that seeds are the same on every run), by
// gobwas/ws.
func clientFrames(t testing.TB, frames ...ws.Frame) []byte {
	var out []byte
	for _, f := range frames {
		b, err := ws.CompileFrame(ws.MaskFrameWith(f, testMask))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
}

// refEvents decodes input as client frames with gobwas/ws, apart from
// frameReader, and returns what was sent: each control frame, and each
// message (its fragments joined) when its final frame arrives, unmasked.
// It checks nothing else, and stops at the first incomplete frame.
func refEvents(input []byte) []event {
	r := bytes.NewReader(input)
	var out []event
	var msg []byte
	for {
		h, err := ws.ReadHeader(r)
		if err != nil || h.Length > int64(r.Len()) {
			return out
		}
		p := make([]byte, h.Length)
		_, _ = io.ReadFull(r, p)
		if h.Masked {
			ws.Cipher(p, h.Mask, 0)
		}
		switch {
		case h.OpCode.IsControl():
			out = append(out, event{h.OpCode, string(p)})
		case h.Fin:
			out = append(out, event{ws.OpText, string(append(msg, p...))})
			msg = nil
		default:
			msg = append(msg, p...)
		}
	}
}

// fuzzChunks returns the chunk sizes chosen by ctl: a pseudo-random
// sequence of sizes from 1 to (ctl&63)+1 bytes.
func fuzzChunks(ctl byte) func(int) int {
	x := uint32(ctl)*2654435761 + 1
	limit := uint32(ctl&63) + 1
	return func(int) int {
		x = x*1664525 + 1013904223
		return 1 + int((x>>16)%limit)
	}
}

// fuzzSeeds are the inputs FuzzReadFrame starts from (the committed
// corpus in testdata/fuzz/FuzzReadFrame holds them too, with more split
// choices): valid traffic and each kind of violation.
func fuzzSeeds(tb testing.TB) [][]byte {
	text := ws.NewTextFrame
	chat := []byte(`{"username":"ana","message":"¡hola! 👋"}`)
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	return [][]byte{
		clientFrames(tb, text([]byte("hello"))),
		clientFrames(tb, text(chat)),
		clientFrames(tb, text(long)),
		clientFrames(tb, ws.NewFrame(ws.OpText, false, chat[:10]), ws.NewPingFrame([]byte("mid")), ws.NewFrame(ws.OpContinuation, false, chat[10:13]), ws.NewFrame(ws.OpContinuation, true, chat[13:])),
		clientFrames(tb, ws.NewFrame(ws.OpText, false, nil), ws.NewFrame(ws.OpContinuation, false, nil), ws.NewFrame(ws.OpContinuation, false, []byte("x")), ws.NewFrame(ws.OpContinuation, true, nil)),
		clientFrames(tb, ws.NewPingFrame(nil)),
		clientFrames(tb, ws.NewPingFrame([]byte("ping"))),
		clientFrames(tb, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))),
		clientFrames(tb, ws.NewPingFrame([]byte("1")), text(chat), ws.NewPongFrame(nil), text([]byte("2")), ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, ""))),
		clientFrames(tb, text(make([]byte, fuzzMax+1))),
		clientFrames(tb, ws.NewBinaryFrame([]byte{1, 2, 3})),
		clientFrames(tb, text([]byte{'a', 0xff})),
		clientFrames(tb, ws.NewCloseFrame([]byte{3})),
		clientFrames(tb, ws.NewCloseFrame(ws.NewCloseFrameBody(1005, ""))),
		clientFrames(tb, ws.NewFrame(ws.OpContinuation, true, []byte("x"))),
		unmasked(bText, []byte("hi")),
		frame(0xC1, []byte("rsv")),
		frame(0x83, nil),
		header(bText, 1<<63, true, false),
	}
}

// fuzzControls are the first bytes (split choices) seeds are tried with.
var fuzzControls = []byte{0, 1, 7, 64, 200, 255}

// FuzzReadFrame feeds a byte stream to a frameReader whole, in two halves
// and in chunks chosen by the fuzzer (the first input byte), as epoll
// reads deliver it. The three must emit the same messages and return the
// same error; what is emitted must respect the protocol and be what was
// sent (refEvents decodes the stream apart); and the reader must hold no
// more than maxPartialPerConn at any point.
func FuzzReadFrame(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		for _, ctl := range fuzzControls {
			f.Add(append([]byte{ctl}, s...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		ctl, input := data[0], data[1:]
		whole := feedWhole(fuzzMax, input)
		at := int(ctl) * len(input) / 256
		if at > 0 {
			if got := feedSplit(fuzzMax, input, at); !got.equal(whole) {
				t.Fatalf("split at %d: %v\nwhole: %v", at, got, whole)
			}
		}
		res, r := feedChunks(fuzzMax, input, fuzzChunks(ctl))
		r.reset()
		if !res.equal(whole) {
			t.Fatalf("in chunks (ctl %d): %v\nwhole: %v", ctl, res, whole)
		}
		// What was emitted is what was sent: all of it when the reader
		// found no error, else what came before the error.
		sent := refEvents(input)
		if len(whole.events) > len(sent) || whole.err == nil && len(whole.events) != len(sent) {
			t.Fatalf("emitted %d events, %d sent (err %v)", len(whole.events), len(sent), whole.err)
		}
		for i, ev := range whole.events {
			if ev != sent[i] {
				t.Fatalf("event %d is %v, but %v was sent", i, ev, sent[i])
			}
		}
		// Byte by byte too, checking the bytes held after each.
		br := &frameReader{lim: &readLimits{max: fuzzMax}}
		for i := range input {
			if _, err := br.feed([]byte{input[i]}, func(ws.OpCode, []byte) readResult { return readOn }); err != nil {
				break
			}
			if h := br.held(); h > maxPartialPerConn(fuzzMax) {
				t.Fatalf("after byte %d the reader holds %d bytes, over %d", i, h, maxPartialPerConn(fuzzMax))
			}
		}
		br.reset()
		if whole.err != nil && !isReaderError(whole.err) {
			t.Fatalf("unexpected error %v", whole.err)
		}
		for _, ev := range whole.events {
			p := ev.payload
			switch ev.op {
			case ws.OpText:
				if !utf8.ValidString(p) || len(p) > fuzzMax {
					t.Fatalf("emitted text of %d bytes, valid UTF-8 %v", len(p), utf8.ValidString(p))
				}
			case ws.OpPing, ws.OpPong:
				if len(p) > maxControlPayload {
					t.Fatalf("emitted %v of %d bytes", ev.op, len(p))
				}
			case ws.OpClose:
				if len(p) > maxControlPayload || len(p) == 1 ||
					len(p) >= 2 && (!validCloseCode(ws.StatusCode(binary.BigEndian.Uint16([]byte(p)))) || !utf8.ValidString(p[2:])) {
					t.Fatalf("emitted a bad close payload %q", p)
				}
			default:
				t.Fatalf("emitted opcode %v", ev.op)
			}
		}
	})
}

func isReaderError(err error) bool {
	for _, e := range readerErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
