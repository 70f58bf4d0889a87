package conn

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

// First bytes of client frames: FIN bit, RSV bits and opcode.
const (
	bText     = 0x81
	bBinary   = 0x82
	bClose    = 0x88
	bPing     = 0x89
	bPong     = 0x8A
	bFragText = 0x01 // text, not final
	bFragBin  = 0x02 // binary, not final
	bCont     = 0x00 // continuation, not final
	bFinCont  = 0x80 // continuation, final
)

// testMask is the masking key of the frames built by the tests.
var testMask = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// header encodes a client frame header: b0, the payload length in its
// shortest form (or the 64-bit form when long64 is set) and, when masked,
// testMask.
func header(b0 byte, length uint64, masked, long64 bool) []byte {
	var mask byte
	if masked {
		mask = 0x80
	}
	b := []byte{b0}
	switch {
	case long64 || length > 0xffff:
		b = append(b, mask|127)
		b = binary.BigEndian.AppendUint64(b, length)
	case length >= 126:
		b = append(b, mask|126)
		b = binary.BigEndian.AppendUint16(b, uint16(length))
	default:
		b = append(b, mask|byte(length))
	}
	if masked {
		b = append(b, testMask[:]...)
	}
	return b
}

// frame encodes a masked client frame with payload.
func frame(b0 byte, payload []byte) []byte {
	b := header(b0, uint64(len(payload)), true, false)
	p := append([]byte(nil), payload...)
	ws.Cipher(p, testMask, 0)
	return append(b, p...)
}

// unmasked encodes a client frame without a mask.
func unmasked(b0 byte, payload []byte) []byte {
	return append(header(b0, uint64(len(payload)), false, false), payload...)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func closePayload(code ws.StatusCode, reason string) []byte {
	return ws.NewCloseFrameBody(code, reason)
}

// event is one call of the emit function.
type event struct {
	op      ws.OpCode
	payload string
}

func (e event) String() string { return fmt.Sprintf("%v %q", e.op, e.payload) }

// result is everything a frameReader did with an input.
type result struct {
	events []event
	err    error
}

func (r result) equal(o result) bool {
	if r.err != o.err || len(r.events) != len(o.events) {
		return false
	}
	for i := range r.events {
		if r.events[i] != o.events[i] {
			return false
		}
	}
	return true
}

func (r result) String() string { return fmt.Sprintf("events %v, err %v", r.events, r.err) }

// feedChunks feeds input to a new frameReader in the given chunks (each
// copied first: feed unmasks in place) and stops at the first error.
func feedChunks(max int, input []byte, sizes func(i int) int) (result, *frameReader) {
	r := &frameReader{lim: &readLimits{max: max}}
	var res result
	emit := func(op ws.OpCode, p []byte) readResult {
		res.events = append(res.events, event{op, string(p)})
		return readOn
	}
	for i, off := 0, 0; off < len(input); i++ {
		n := min(sizes(i), len(input)-off)
		chunk := append([]byte(nil), input[off:off+n]...)
		off += n
		if _, err := r.feed(chunk, emit); err != nil {
			res.err = err
			break
		}
	}
	return res, r
}

func feedWhole(max int, input []byte) result {
	res, r := feedChunks(max, input, func(int) int { return len(input) })
	r.reset()
	return res
}

func feedSplit(max int, input []byte, at int) result {
	res, r := feedChunks(max, input, func(i int) int {
		if i == 0 {
			return at
		}
		return len(input)
	})
	r.reset()
	return res
}

func feedBytes(max int, input []byte) result {
	res, r := feedChunks(max, input, func(int) int { return 1 })
	r.reset()
	return res
}

// splitPoints returns every 2-way split of an input of n bytes, or, for
// long inputs, the splits inside the first and last frames' headers plus a
// stride through the payload (all splits of a 64 KiB input would take
// minutes).
func splitPoints(n int) []int {
	var at []int
	if n <= 2048 {
		for i := 1; i < n; i++ {
			at = append(at, i)
		}
		return at
	}
	for i := 1; i < n; i++ {
		if i < 64 || n-i < 64 || i%997 == 0 {
			at = append(at, i)
		}
	}
	return at
}

func texts(s ...string) []event {
	out := make([]event, len(s))
	for i := range s {
		out[i] = event{ws.OpText, s[i]}
	}
	return out
}

type readerCase struct {
	name   string
	max    int // 0 means 1024
	input  []byte
	events []event
	err    error
}

func readerCases() []readerCase {
	long := func(n int) []byte { return bytes.Repeat([]byte("x"), n) }
	euro := "€uro" // € is 3 bytes
	badCodes := []ws.StatusCode{0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535}
	goodCodes := []ws.StatusCode{1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999}

	cases := []readerCase{
		// Complete messages.
		{name: "empty input"},
		{name: "empty text", input: frame(bText, nil), events: texts("")},
		{name: "short text", input: frame(bText, []byte("hello")), events: texts("hello")},
		{name: "text of 125 bytes", input: frame(bText, long(125)), events: texts(string(long(125)))},
		{name: "text of 126 bytes (16-bit length)", input: frame(bText, long(126)), events: texts(string(long(126)))},
		{name: "text of 1000 bytes", input: frame(bText, long(1000)), events: texts(string(long(1000)))},
		{name: "text of 65535 bytes", max: 70000, input: frame(bText, long(65535)), events: texts(string(long(65535)))},
		{name: "text of 65536 bytes (64-bit length)", max: 70000, input: frame(bText, long(65536)), events: texts(string(long(65536)))},
		{name: "non-minimal 64-bit length accepted", input: cat(header(bText, 3, true, true), maskedPayload("abc")), events: texts("abc")},
		{name: "text of exactly max", max: 100, input: frame(bText, long(100)), events: texts(string(long(100)))},
		{name: "multi-byte UTF-8", input: frame(bText, []byte("José ¡hola! 👋")), events: texts("José ¡hola! 👋")},
		{name: "two texts", input: cat(frame(bText, []byte("a")), frame(bText, []byte("b"))), events: texts("a", "b")},
		{name: "ping", input: frame(bPing, []byte("p")), events: []event{{ws.OpPing, "p"}}},
		{name: "empty ping", input: frame(bPing, nil), events: []event{{ws.OpPing, ""}}},
		{name: "ping of 125 bytes", input: frame(bPing, long(125)), events: []event{{ws.OpPing, string(long(125))}}},
		{name: "ping with binary payload", input: frame(bPing, []byte{0, 0xff}), events: []event{{ws.OpPing, "\x00\xff"}}},
		{name: "pong", input: frame(bPong, []byte("q")), events: []event{{ws.OpPong, "q"}}},
		{name: "empty close", input: frame(bClose, nil), events: []event{{ws.OpClose, ""}}},
		{name: "close 1000 with reason", input: frame(bClose, closePayload(1000, "bye")), events: []event{{ws.OpClose, string(closePayload(1000, "bye"))}}},
		{name: "close of 125 bytes", input: frame(bClose, closePayload(1000, string(long(123)))), events: []event{{ws.OpClose, string(closePayload(1000, string(long(123))))}}},
		{name: "control frames are not counted in max", max: 4, input: frame(bPing, long(125)), events: []event{{ws.OpPing, string(long(125))}}},
		{name: "mixed", input: cat(frame(bPing, []byte("1")), frame(bText, []byte("a")), frame(bPong, nil), frame(bText, []byte("b")), frame(bClose, closePayload(1001, ""))),
			events: []event{{ws.OpPing, "1"}, {ws.OpText, "a"}, {ws.OpPong, ""}, {ws.OpText, "b"}, {ws.OpClose, string(closePayload(1001, ""))}}},

		// Fragmented messages.
		{name: "two fragments", input: cat(frame(bFragText, []byte("hel")), frame(bFinCont, []byte("lo"))), events: texts("hello")},
		{name: "many fragments with empty ones", input: cat(frame(bFragText, nil), frame(bCont, []byte("a")), frame(bCont, nil), frame(bCont, []byte("b")), frame(bFinCont, nil)), events: texts("ab")},
		{name: "ping between fragments", input: cat(frame(bFragText, []byte("a")), frame(bPing, []byte("mid")), frame(bFinCont, []byte("b"))),
			events: []event{{ws.OpPing, "mid"}, {ws.OpText, "ab"}}},
		{name: "pong, ping and close between fragments", input: cat(frame(bFragText, []byte("a")), frame(bPong, nil), frame(bCont, []byte("b")), frame(bPing, nil), frame(bClose, nil), frame(bFinCont, []byte("c"))),
			events: []event{{ws.OpPong, ""}, {ws.OpPing, ""}, {ws.OpClose, ""}, {ws.OpText, "abc"}}},
		{name: "character split across fragments", input: cat(frame(bFragText, []byte(euro[:1])), frame(bCont, []byte(euro[1:2])), frame(bFinCont, []byte(euro[2:]))), events: texts(euro)},
		{name: "fragments of exactly max", max: 10, input: cat(frame(bFragText, long(4)), frame(bCont, long(4)), frame(bFinCont, long(2))), events: texts(string(long(10)))},
		{name: "fragments of max with a 125-byte ping", max: 10, input: cat(frame(bFragText, long(5)), frame(bPing, long(125)), frame(bFinCont, long(5))),
			events: []event{{ws.OpPing, string(long(125))}, {ws.OpText, string(long(10))}}},
		{name: "fragmented then whole", input: cat(frame(bFragText, []byte("a")), frame(bFinCont, []byte("b")), frame(bText, []byte("c"))), events: texts("ab", "c")},
		{name: "max counts per message", max: 4, input: cat(frame(bFragText, long(2)), frame(bFinCont, long(2)), frame(bFragText, long(3)), frame(bFinCont, long(1))), events: texts("xxxx", "xxxx")},

		// Reserved bits (RFC 6455 5.2).
		{name: "RSV1 on text", input: frame(0xC1, []byte("x")), err: ErrReservedBits},
		{name: "RSV2 on text", input: frame(0xA1, []byte("x")), err: ErrReservedBits},
		{name: "RSV3 on text", input: frame(0x91, []byte("x")), err: ErrReservedBits},
		{name: "RSV on ping", input: frame(0x99, nil), err: ErrReservedBits},
		{name: "RSV on continuation", input: cat(frame(bFragText, []byte("a")), frame(0xC0, []byte("b"))), err: ErrReservedBits},
		{name: "RSV before reserved opcode", input: frame(0xF3, nil), err: ErrReservedBits},
		{name: "RSV refused from the first byte pair", input: []byte{0xC1, 0x80 | 126}, err: ErrReservedBits},

		// Masking (5.1).
		{name: "unmasked text", input: unmasked(bText, []byte("x")), err: ErrUnmasked},
		{name: "unmasked ping", input: unmasked(bPing, nil), err: ErrUnmasked},
		{name: "unmasked close", input: unmasked(bClose, closePayload(1000, "")), err: ErrUnmasked},
		{name: "unmasked continuation", input: cat(frame(bFragText, []byte("a")), unmasked(bFinCont, []byte("b"))), err: ErrUnmasked},
		{name: "unmasked refused from the first byte pair", input: []byte{bText, 126}, err: ErrUnmasked},

		// Control frames (5.5).
		{name: "ping of 126 bytes", input: frame(bPing, long(126)), err: ErrBadControl},
		{name: "pong with a 64-bit length", input: cat(header(bPong, 1, true, true), maskedPayload("a")), err: ErrBadControl},
		{name: "close of 126 bytes", input: frame(bClose, append(closePayload(1000, ""), long(124)...)), err: ErrBadControl},
		{name: "fragmented ping", input: frame(0x09, nil), err: ErrBadControl},
		{name: "fragmented pong", input: frame(0x0A, nil), err: ErrBadControl},
		{name: "fragmented close", input: frame(0x08, nil), err: ErrBadControl},
		{name: "oversized ping refused from its header", input: []byte{bPing, 0x80 | 126}, err: ErrBadControl},

		// Fragmentation (5.4).
		{name: "final continuation without a start", input: frame(bFinCont, []byte("x")), err: ErrBadContinuation},
		{name: "continuation without a start", input: frame(bCont, []byte("x")), err: ErrBadContinuation},
		{name: "continuation after a complete message", input: cat(frame(bText, []byte("a")), frame(bFinCont, []byte("b"))), events: texts("a"), err: ErrBadContinuation},
		{name: "text inside a fragmented message", input: cat(frame(bFragText, []byte("a")), frame(bText, []byte("b"))), err: ErrBadContinuation},
		{name: "fragmented text inside a fragmented message", input: cat(frame(bFragText, []byte("a")), frame(bFragText, []byte("b"))), err: ErrBadContinuation},
		{name: "binary inside a fragmented message", input: cat(frame(bFragText, []byte("a")), frame(bBinary, []byte("b"))), err: ErrBadContinuation},

		// Lengths (5.2) and MAX_MESSAGE_BYTES.
		{name: "64-bit length with MSB set", input: cat(header(bText, 1<<63|1, true, false)), err: ErrBadLength},
		{name: "64-bit length all ones", input: cat(header(bText, ^uint64(0), true, false)), err: ErrBadLength},
		{name: "text over max", max: 100, input: frame(bText, long(101)), err: ErrTooLarge},
		{name: "16-bit text over max", max: 200, input: frame(bText, long(300)), err: ErrTooLarge},
		{name: "64-bit text over max", max: 1000, input: frame(bText, long(70000)), err: ErrTooLarge},
		{name: "over max refused from the header", max: 100, input: header(bText, 1<<40, true, false), err: ErrTooLarge},
		{name: "unmasked refused before the length check", max: 100, input: header(bText, 101, false, false)[:2], err: ErrUnmasked},
		{name: "fragments over max", max: 10, input: cat(frame(bFragText, long(6)), frame(bFinCont, long(5))), err: ErrTooLarge},
		{name: "fragments over max refused from the header", max: 10, input: cat(frame(bFragText, long(6)), frame(bCont, long(4)), header(bFinCont, 1, true, false)), err: ErrTooLarge},
		{name: "first fragment over max", max: 10, input: cat(frame(bFragText, long(11))), err: ErrTooLarge},
		{name: "message before too large", max: 10, input: cat(frame(bText, []byte("ok")), frame(bText, long(11))), events: texts("ok"), err: ErrTooLarge},

		// Binary messages: the chat protocol is text only.
		{name: "binary", input: frame(bBinary, []byte{1, 2, 3}), err: ErrBinary},
		{name: "empty binary", input: frame(bBinary, nil), err: ErrBinary},
		{name: "fragmented binary", input: cat(frame(bFragBin, []byte{1}), frame(bFinCont, []byte{2})), err: ErrBinary},
		{name: "binary after a text", input: cat(frame(bText, []byte("a")), frame(bBinary, nil)), events: texts("a"), err: ErrBinary},

		// UTF-8 (8.1).
		{name: "invalid UTF-8 text", input: frame(bText, []byte{'a', 0xff}), err: ErrInvalidUTF8},
		{name: "overlong encoding", input: frame(bText, []byte{0xc0, 0xaf}), err: ErrInvalidUTF8},
		{name: "surrogate half", input: frame(bText, []byte{0xed, 0xa0, 0x80}), err: ErrInvalidUTF8},
		{name: "code point over U+10FFFF", input: frame(bText, []byte{0xf4, 0x90, 0x80, 0x80}), err: ErrInvalidUTF8},
		{name: "truncated character at the end", input: frame(bText, []byte(euro[:2])), err: ErrInvalidUTF8},
		{name: "invalid UTF-8 across fragments", input: cat(frame(bFragText, []byte{'a', 0xe2}), frame(bFinCont, []byte{'b'})), err: ErrInvalidUTF8},
		{name: "fragments ending mid-character", input: cat(frame(bFragText, []byte("a")), frame(bFinCont, []byte(euro[:1]))), err: ErrInvalidUTF8},
		{name: "close reason not UTF-8", input: frame(bClose, append(closePayload(1000, "a"), 0xff)), err: ErrInvalidUTF8},
		{name: "ping payload is not checked for UTF-8", input: frame(bPing, []byte{0xff}), events: []event{{ws.OpPing, "\xff"}}},

		// Close frames (5.5.1, 7.4).
		{name: "close with 1-byte payload", input: frame(bClose, []byte{0x03}), err: ErrBadCloseCode},
	}
	for _, code := range badCodes {
		cases = append(cases, readerCase{name: fmt.Sprintf("close code %d", code), input: frame(bClose, closePayload(code, "")), err: ErrBadCloseCode})
	}
	for _, code := range goodCodes {
		p := string(closePayload(code, "r"))
		cases = append(cases, readerCase{name: fmt.Sprintf("close code %d", code), input: frame(bClose, []byte(p)), events: []event{{ws.OpClose, p}}})
	}
	for _, op := range []byte{3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF} {
		cases = append(cases,
			readerCase{name: fmt.Sprintf("reserved opcode %X", op), input: frame(0x80|op, nil), err: ErrReservedOpcode},
			readerCase{name: fmt.Sprintf("reserved opcode %X not final", op), input: frame(op, []byte("x")), err: ErrReservedOpcode},
			readerCase{name: fmt.Sprintf("reserved opcode %X unmasked", op), input: unmasked(0x80|op, nil), err: ErrReservedOpcode},
		)
	}
	return cases
}

// maskedPayload masks s with testMask, for frames built from header.
func maskedPayload(s string) []byte {
	p := []byte(s)
	ws.Cipher(p, testMask, 0)
	return p
}

// TestFrameReader feeds every case whole, in every 2-way split and byte by
// byte: epoll reads are partial, so the result must not depend on where
// the stream is cut.
func TestFrameReader(t *testing.T) {
	for _, tc := range readerCases() {
		t.Run(tc.name, func(t *testing.T) {
			max := tc.max
			if max == 0 {
				max = 1024
			}
			want := result{events: tc.events, err: tc.err}
			got := feedWhole(max, tc.input)
			if !got.equal(want) {
				t.Fatalf("whole: got %v\nwant %v", got, want)
			}
			for _, at := range splitPoints(len(tc.input)) {
				if got := feedSplit(max, tc.input, at); !got.equal(want) {
					t.Fatalf("split at %d: got %v\nwant %v", at, got, want)
				}
			}
			if got := feedBytes(max, tc.input); !got.equal(want) {
				t.Fatalf("byte by byte: got %v\nwant %v", got, want)
			}
			for _, ev := range got.events {
				if ev.op == ws.OpText && (!utf8.ValidString(ev.payload) || len(ev.payload) > max) {
					t.Fatalf("emitted text %q is not UTF-8 or over max", ev.payload)
				}
			}
		})
	}
}

// TestFrameReaderHoldsNoBufferWhenIdle: a reader keeps a buffer only while
// a frame or a fragmented message is incomplete, so idle connections hold
// none.
func TestFrameReaderHoldsNoBufferWhenIdle(t *testing.T) {
	msg := frame(bText, []byte("hello"))
	frag := frame(bFragText, []byte("he"))
	for _, tc := range []struct {
		name        string
		input       []byte
		wantIn      bool // bytes of an incomplete frame kept
		wantMsg     bool // a fragmented message in progress
		wantPending int  // len(r.in.b)
	}{
		{"complete frame", msg, false, false, 0},
		{"two complete frames", cat(msg, msg), false, false, 0},
		{"one byte of a frame", msg[:1], true, false, 1},
		{"frame but its last byte", msg[:len(msg)-1], true, false, len(msg) - 1},
		{"frame and a partial one", cat(msg, msg[:3]), true, false, 3},
		{"first fragment", frag, false, true, 0},
		{"first fragment and a partial ping", cat(frag, frame(bPing, nil)[:4]), true, true, 4},
		{"whole fragmented message", cat(frag, frame(bFinCont, []byte("llo"))), false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, at := range append(splitPoints(len(tc.input)), len(tc.input)) {
				res, r := feedChunks(1024, tc.input, func(i int) int {
					if i == 0 {
						return at
					}
					return len(tc.input)
				})
				if res.err != nil {
					t.Fatalf("split at %d: %v", at, res.err)
				}
				if (r.in != nil) != tc.wantIn || (r.msg != nil) != tc.wantMsg || r.fragmented != tc.wantMsg {
					t.Fatalf("split at %d: holds in=%v msg=%v fragmented=%v, want in=%v msg=%v", at, r.in != nil, r.msg != nil, r.fragmented, tc.wantIn, tc.wantMsg)
				}
				if r.in != nil && len(r.in.b) != tc.wantPending {
					t.Fatalf("split at %d: %d bytes pending, want %d", at, len(r.in.b), tc.wantPending)
				}
				r.reset()
				if r.in != nil || r.msg != nil || r.fragmented {
					t.Fatal("reset left buffers or state behind")
				}
			}
		})
	}
}

// TestFrameReaderEmitStop: readStop returned by emit stops the reader,
// which returns it; the frames after it are not parsed.
func TestFrameReaderEmitStop(t *testing.T) {
	input := cat(frame(bText, []byte("a")), frame(bText, []byte("b")), frame(bBinary, nil))
	r := &frameReader{lim: &readLimits{max: 100}}
	defer r.reset()
	var got []string
	res, err := r.feed(input, func(op ws.OpCode, p []byte) readResult {
		got = append(got, string(p))
		return readStop
	})
	if res != readStop || err != nil || len(got) != 1 || got[0] != "a" {
		t.Fatalf("feed returned result %d, err %v after %q; want readStop after [a]", res, err, got)
	}
}

// TestFrameReaderUnmasksInPlace: feed documents that it unmasks data in
// place; the emitted payload aliases the input when the frame arrived in
// one read, so no copy is made.
func TestFrameReaderUnmasksInPlace(t *testing.T) {
	input := frame(bText, []byte("hello"))
	r := &frameReader{lim: &readLimits{max: 100}}
	defer r.reset()
	var aliased bool
	_, err := r.feed(input, func(op ws.OpCode, p []byte) readResult {
		aliased = &p[0] == &input[6]
		return readOn
	})
	if err != nil || !aliased || string(input[6:]) != "hello" {
		t.Fatalf("err %v, aliased %v, input payload %q: want the payload unmasked in place", err, aliased, input[6:])
	}
}

func TestAppendFrame(t *testing.T) {
	for _, tc := range []struct {
		n       int
		hdrSize int
	}{
		{0, 2}, {1, 2}, {125, 2}, {126, 4}, {127, 4}, {65535, 4}, {65536, 10}, {1 << 20, 10},
	} {
		for _, op := range []ws.OpCode{ws.OpText, ws.OpClose, ws.OpPing, ws.OpPong} {
			if op.IsControl() && tc.n > maxControlPayload {
				continue
			}
			t.Run(fmt.Sprintf("%v/%d", op, tc.n), func(t *testing.T) {
				payload := make([]byte, tc.n)
				for i := range payload {
					payload[i] = byte('a' + i%26)
				}
				prefix := []byte("prefix")
				b := appendFrame(prefix, op, payload)
				if !bytes.Equal(b[:len(prefix)], prefix) {
					t.Fatal("appendFrame overwrote the slice it appends to")
				}
				b = b[len(prefix):]
				if len(b) != tc.hdrSize+tc.n {
					t.Fatalf("frame is %d bytes, want %d header + %d payload", len(b), tc.hdrSize, tc.n)
				}
				f, err := ws.ReadFrame(bytes.NewReader(b))
				if err != nil {
					t.Fatal(err)
				}
				h := f.Header
				if !h.Fin || h.Rsv != 0 || h.Masked || h.OpCode != op || h.Length != int64(tc.n) || !bytes.Equal(f.Payload, payload) {
					t.Fatalf("read back %+v with %d payload bytes", h, len(f.Payload))
				}
				if hs := ws.HeaderSize(h); hs != tc.hdrSize {
					t.Fatalf("header of %d bytes, gobwas would write %d", tc.hdrSize, hs)
				}
			})
		}
	}
}

func TestNewTextFrame(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			payload := bytes.Repeat([]byte("z"), n)
			f := NewTextFrame(payload)
			defer f.Release()
			if f.Len() != len(f.buf) {
				t.Fatalf("Len() = %d, want %d", f.Len(), len(f.buf))
			}
			want, err := ws.CompileFrame(ws.NewTextFrame(payload))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f.buf, want) {
				t.Fatalf("NewTextFrame differs from gobwas' encoding")
			}
		})
	}
	t.Run("static", func(t *testing.T) {
		f := NewStaticFrame(ws.OpPing, []byte("x"))
		want, _ := ws.CompileFrame(ws.NewPingFrame([]byte("x")))
		if !bytes.Equal(f.buf, want) {
			t.Fatalf("NewStaticFrame = %x, want %x", f.buf, want)
		}
	})
	t.Run("empty close", func(t *testing.T) {
		f := closeFrame(nil)
		defer f.Release()
		if !bytes.Equal(f.buf, []byte{0x88, 0}) {
			t.Fatalf("closeFrame(nil) = %x, want 8800", f.buf)
		}
	})
}

// TestFrameReferences checks the reference counts of pooled frames.
// Whether sync.Pool hands a frame back is up to the runtime (the race
// detector drops some Puts), so only the counts are checked.
func TestFrameReferences(t *testing.T) {
	t.Run("retain and release", func(t *testing.T) {
		f := NewTextFrame([]byte("hi"))
		if got := f.refs.Load(); got != 1 {
			t.Fatalf("new frame has %d references, want 1", got)
		}
		f.retain()
		f.retain()
		if got := f.refs.Load(); got != 3 {
			t.Fatalf("after 2 retains: %d references, want 3", got)
		}
		f.Release()
		f.Release()
		if got := f.refs.Load(); got != 1 || f.buf == nil {
			t.Fatalf("after 2 releases: %d references, want 1 and the buffer kept", got)
		}
		f.Release()
		if got := f.refs.Load(); got != 0 {
			t.Fatalf("after the last release: %d references, want 0", got)
		}
	})
	t.Run("reused frame starts at one", func(t *testing.T) {
		for range 100 {
			f := NewTextFrame([]byte("a"))
			if got := f.refs.Load(); got != 1 {
				t.Fatalf("NewTextFrame handed out a frame with %d references", got)
			}
			if !bytes.Equal(f.buf, []byte{0x81, 1, 'a'}) {
				t.Fatalf("reused frame encodes %x", f.buf)
			}
			f.Release()
		}
	})
	t.Run("static frames ignore counting", func(t *testing.T) {
		f := NewStaticFrame(ws.OpText, []byte("s"))
		f.retain()
		f.Release()
		f.Release()
		f.Release()
		if got := f.refs.Load(); got != 0 || !bytes.Equal(f.buf, []byte{0x81, 1, 's'}) {
			t.Fatalf("static frame: %d references, buf %x", got, f.buf)
		}
	})
	t.Run("huge buffers are not pooled", func(t *testing.T) {
		f := NewTextFrame(make([]byte, maxPooledBuffer+1))
		f.Release()
		// f is in the pool now; only this goroutine could have taken it.
		if f.buf != nil {
			t.Fatalf("a %d-byte buffer stayed on a pooled frame", cap(f.buf))
		}
	})
}

func TestBufferClasses(t *testing.T) {
	for _, tc := range []struct{ n, cap int }{
		{0, 512}, {1, 512}, {512, 512}, {513, 1024}, {4096, 4096}, {4097, 8192}, {maxPooledBuffer, maxPooledBuffer}, {maxPooledBuffer + 1, maxPooledBuffer + 1},
	} {
		b := getBuffer(tc.n)
		if len(b.b) != 0 || cap(b.b) < tc.n || cap(b.b) >= 2*max(tc.n, minBuffer) {
			t.Errorf("getBuffer(%d): len %d cap %d, want empty with cap %d", tc.n, len(b.b), cap(b.b), tc.cap)
		}
		b.release()
	}
	b := getBuffer(10)
	b.b = append(b.b, "data"...)
	b.release()
	if len(b.b) != 0 {
		t.Fatal("release kept the buffer's contents")
	}
	big := &buffer{b: make([]byte, 10, maxPooledBuffer+1)}
	big.release()
	if len(big.b) != 10 {
		t.Fatal("a buffer over maxPooledBuffer was reset for the pool")
	}
	// appendBuffer moves the bytes to a larger class when full.
	b = appendBuffer(nil, []byte("abc"))
	for range 300 {
		b = appendBuffer(b, []byte("0123456789"))
	}
	if len(b.b) != 3003 || cap(b.b) != 4096 || string(b.b[:5]) != "abc01" {
		t.Fatalf("appendBuffer: len %d cap %d, start %q", len(b.b), cap(b.b), b.b[:5])
	}
	b.release()
}

// TestFrameRate: the reader lets FrameBurst frames through at once, then
// one per 1/FrameRate; every complete frame counts, whatever its kind or
// size, once, however it is split across reads. A frame over the rate
// pauses the reader: it keeps the frame and what follows, untouched, and
// takes them when resumed in time; nothing is lost.
func TestFrameRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		one  []byte // one frame, after frame(bFragText, "x") for continuations
	}{
		{"text", frame(bText, []byte("hi"))},
		{"ping", frame(bPing, nil)},
		{"pong", frame(bPong, []byte("p"))},
		{"empty continuation", frame(bCont, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &frameReader{lim: &readLimits{max: 1 << 20}}
			defer r.reset()
			r.lim.setRate(10, 5) // 100 ms per frame, 5 at once
			r.lim.now = int64(time.Hour)
			frames := 0
			count := func(ws.OpCode, []byte) readResult { frames++; return readOn }
			feed := func(b []byte) error {
				// Byte by byte: a frame counts when it is complete.
				for i := range b {
					if res, err := r.feed([]byte{b[i]}, count); err != nil || res != readOn {
						return fmt.Errorf("result %d (want readOn), err %v", res, err)
					}
				}
				return nil
			}
			if tc.name == "empty continuation" {
				if err := feed(frame(bFragText, []byte("x"))); err != nil {
					t.Fatal(err)
				}
			} else if err := feed(tc.one); err != nil {
				t.Fatal(err)
			}
			for i := 2; i <= 5; i++ {
				if err := feed(tc.one); err != nil {
					t.Fatalf("frame %d of a burst of 5: %v", i, err)
				}
			}
			// Frames 6 and 7 in one read: the reader pauses at 6 and keeps both.
			before := frames
			// (Continuations are not emitted: the bytes kept tell.)
			if res, err := r.feed(cat(tc.one, tc.one), count); res != readPause || err != nil || !r.paused || len(r.in.b) != 2*len(tc.one) {
				t.Fatalf("frames 6 and 7 at once: result %d, err %v (paused %v), want a pause keeping both", res, err, r.paused)
			}
			if frames != before {
				t.Fatalf("%d frames taken past the burst", frames-before)
			}
			if w := r.frameWait(); w <= 0 || w > int64(100*time.Millisecond) {
				t.Fatalf("wait %v, want up to one interval", time.Duration(w))
			}
			r.lim.now += int64(100 * time.Millisecond)
			if res, err := r.resume(count); res != readPause || err != nil || len(r.in.b) != len(tc.one) {
				t.Fatalf("resumed 100 ms later: result %d, err %v; want frame 6 taken and a pause at 7", res, err)
			}
			r.lim.now += int64(100 * time.Millisecond)
			if res, err := r.resume(count); res != readOn || err != nil || r.paused || r.in != nil {
				t.Fatalf("resumed again: result %d, err %v, paused %v; want frame 7 taken and nothing kept", res, err, r.paused)
			}
			if tc.name != "empty continuation" && frames != before+2 {
				t.Fatalf("%d frames emitted after the pauses, want 2", frames-before)
			}
			r.lim.now += int64(time.Minute)
			for i := 1; i <= 5; i++ {
				if err := feed(tc.one); err != nil {
					t.Fatalf("frame %d of a burst after a pause: %v", i, err)
				}
			}
		})
	}
	t.Run("no limit", func(t *testing.T) {
		nop := func(ws.OpCode, []byte) readResult { return readOn }
		r := &frameReader{lim: &readLimits{max: 1 << 20}}
		r.lim.setRate(-1, 0)
		if res, err := r.feed(bytes.Repeat(frame(bPing, nil), 100_000), nop); res != readOn || err != nil {
			t.Fatalf("result %d, err %v; want every frame taken", res, err)
		}
	})
}

// TestFrameReaderDiscard: a closing connection's reader keeps no message
// and emits none, still checks the framing and still emits control
// frames (the client's close frame is what it waits for).
func TestFrameReaderDiscard(t *testing.T) {
	r := &frameReader{lim: &readLimits{max: 100}}
	defer r.reset()
	var got []event
	emit := func(op ws.OpCode, p []byte) readResult {
		got = append(got, event{op, string(p)})
		return readOn
	}
	if _, err := r.feed(frame(bFragText, []byte("unfinished")), emit); err != nil || r.msg == nil {
		t.Fatalf("fragment: %v, kept %v", err, r.msg != nil)
	}
	r.discardData()
	if r.msg != nil || r.held() != 0 {
		t.Fatal("discardData kept the message")
	}
	in := cat(frame(bCont, []byte("more")), frame(bPing, []byte("p")), frame(bFinCont, []byte("end")), frame(bText, []byte("text")), frame(bClose, nil))
	if _, err := r.feed(in, emit); err != nil {
		t.Fatal(err)
	}
	want := []event{{ws.OpPing, "p"}, {ws.OpClose, ""}}
	if fmt.Sprint(got) != fmt.Sprint(want) || r.held() != 0 {
		t.Fatalf("emitted %v, holding %d; want %v and nothing held", got, r.held(), want)
	}
	if _, err := r.feed(frame(bFinCont, nil), emit); err != ErrBadContinuation {
		t.Fatalf("continuation with no message: %v, want ErrBadContinuation", err)
	}
}

// TestFrameReaderHoldsOneFrame: bytes that follow an incomplete frame in
// the same read are not appended to it (and parsed from the kept copy),
// and what the reader holds stays under maxPartialPerConn however the
// stream is cut: a message of max bytes in fragments with a control frame
// in the middle, byte by byte.
func TestFrameReaderHoldsOneFrame(t *testing.T) {
	const maxMsg = 1000
	r := &frameReader{lim: &readLimits{max: maxMsg}}
	defer r.reset()
	nop := func(ws.OpCode, []byte) readResult { return readOn }
	first := frame(bText, bytes.Repeat([]byte("a"), 300))
	// First read: 100 bytes of the frame. Second: the rest of it and 5
	// whole frames behind it.
	if _, err := r.feed(append([]byte(nil), first[:100]...), nop); err != nil || r.in == nil || cap(r.in.b) != minBuffer {
		t.Fatalf("partial frame: %v; want it kept in a %d-byte buffer", err, minBuffer)
	}
	rest := cat(first[100:], bytes.Repeat(frame(bText, []byte("b")), 5))
	if _, err := r.feed(rest, nop); err != nil || r.in != nil {
		t.Fatalf("rest: %v, still holding %v", err, r.in != nil)
	}
	in := cat(frame(bFragText, bytes.Repeat([]byte("x"), 600)), frame(bPing, bytes.Repeat([]byte("p"), 125)), frame(bFinCont, bytes.Repeat([]byte("y"), 400)))
	most := 0
	for i := range in {
		if _, err := r.feed([]byte{in[i]}, nop); err != nil {
			t.Fatalf("byte %d: %v", i, err)
		}
		most = max(most, r.held())
	}
	if most > maxPartialPerConn(maxMsg) || r.held() != 0 {
		t.Fatalf("held at most %d bytes (bound %d), %d at the end", most, maxPartialPerConn(maxMsg), r.held())
	}
	t.Logf("held at most %d bytes for a %d-byte message (bound %d)", most, maxMsg, maxPartialPerConn(maxMsg))
}

// TestDeclinedMessageIsEmittedAgainWhole: an emit function that declines
// a text message for now (readPause), single-frame or fragmented, gets it
// again, the same bytes, after resume, followed by what came after it;
// frames before it are not emitted twice.
func TestDeclinedMessageIsEmittedAgainWhole(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"one frame", frame(bText, []byte("declined"))},
		{"fragments", cat(frame(bFragText, []byte("decl")), frame(bPing, []byte("p")), frame(bCont, []byte("in")), frame(bFinCont, []byte("ed")))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &frameReader{lim: &readLimits{max: 1 << 20}}
			defer r.reset()
			var got []string
			decline := true
			emit := func(op ws.OpCode, p []byte) readResult {
				if op == ws.OpText && string(p) == "declined" && decline {
					decline = false
					return readPause
				}
				got = append(got, fmt.Sprintf("%v:%s", op, p))
				return readOn
			}
			data := cat(frame(bText, []byte("first")), tc.msg, frame(bText, []byte("after")))
			// Split in two reads, in the middle of the declined message.
			half := len(data) / 2
			res, err := r.feed(data[:half], emit)
			if res == readOn && err == nil {
				res, err = r.feed(data[half:], emit)
			}
			if res != readPause || err != nil || !r.paused {
				t.Fatalf("feed: result %d, err %v, paused %v; want a pause", res, err, r.paused)
			}
			if res, err := r.resume(emit); res != readOn || err != nil || r.paused {
				t.Fatalf("resume: result %d, err %v, paused %v", res, err, r.paused)
			}
			want := []string{"1:first", "1:declined", "1:after"}
			if tc.name == "fragments" {
				want = []string{"1:first", "9:p", "1:declined", "1:after"}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("emitted %q, want %q", got, want)
			}
		})
	}
}
