package conn

import (
	"encoding/binary"
	"errors"
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

// clientFrames encodes frames as a client sends them: masked with a random
// key, by gobwas/ws.
func clientFrames(t testing.TB, frames ...ws.Frame) []byte {
	var out []byte
	for _, f := range frames {
		b, err := ws.CompileFrame(ws.MaskFrame(f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	return out
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

// FuzzReadFrame feeds a byte stream to a frameReader whole, in two halves
// and in chunks chosen by the fuzzer (the first input byte), as epoll
// reads deliver it. The three must emit the same messages and return the
// same error, and what is emitted must respect the protocol.
func FuzzReadFrame(f *testing.F) {
	text := ws.NewTextFrame
	chat := []byte(`{"username":"ana","message":"¡hola! 👋"}`)
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	seeds := [][]byte{
		clientFrames(f, text([]byte("hello"))),
		clientFrames(f, text(chat)),
		clientFrames(f, text(long)),
		clientFrames(f, ws.NewFrame(ws.OpText, false, chat[:10]), ws.NewPingFrame([]byte("mid")), ws.NewFrame(ws.OpContinuation, false, chat[10:13]), ws.NewFrame(ws.OpContinuation, true, chat[13:])),
		clientFrames(f, ws.NewPingFrame(nil)),
		clientFrames(f, ws.NewPingFrame([]byte("ping"))),
		clientFrames(f, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))),
		clientFrames(f, ws.NewPingFrame([]byte("1")), text(chat), ws.NewPongFrame(nil), text([]byte("2")), ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, ""))),
		clientFrames(f, text(make([]byte, fuzzMax+1))),
		clientFrames(f, ws.NewBinaryFrame([]byte{1, 2, 3})),
		clientFrames(f, text([]byte{'a', 0xff})),
		clientFrames(f, ws.NewCloseFrame([]byte{3})),
		clientFrames(f, ws.NewCloseFrame(ws.NewCloseFrameBody(1005, ""))),
		clientFrames(f, ws.NewFrame(ws.OpContinuation, true, []byte("x"))),
		unmasked(bText, []byte("hi")),
		frame(0xC1, []byte("rsv")),
		frame(0x83, nil),
		header(bText, 1<<63, true, false),
	}
	for _, s := range seeds {
		for _, ctl := range []byte{0, 1, 7, 64, 200, 255} {
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
