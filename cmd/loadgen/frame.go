package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/gobwas/ws"
)

// errFrameTooLarge is returned for a server frame above maxFrameSize.
var errFrameTooLarge = errors.New("loadgen: server frame larger than 1 MiB; the gateway should never send one")

// maxFrameSize bounds what readFrame accepts from the gateway.
const maxFrameSize = 1 << 20

// appendClientFrame appends a single final, masked client frame
// (RFC 6455 section 5.2; clients must mask, section 5.3) with opcode op
// and the given payload to dst.
func appendClientFrame(dst []byte, op ws.OpCode, payload []byte, mask [4]byte) []byte {
	dst = append(dst, 0x80|byte(op))
	n := len(payload)
	switch {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// frame is one frame read from the server. payload aliases the reader's
// buffer and is valid until discard is done.
type frame struct {
	fin     bool
	op      ws.OpCode
	payload []byte
	discard int // bytes to Discard from the reader once payload is used
}

// frameHeader is the parsed head of a server frame.
type frameHeader struct {
	fin    bool
	op     ws.OpCode
	hlen   int // bytes of the head, mask included
	size   int // bytes of the payload
	masked bool
	mask   [4]byte
}

// parseHeader parses the frame head at the start of b. When b holds only
// part of it, ok is false and, if b has at least 2 bytes, h.hlen says how
// many the head takes.
func parseHeader(b []byte) (h frameHeader, ok bool, err error) {
	if len(b) < 2 {
		return h, false, nil
	}
	h.fin, h.op, h.masked = b[0]&0x80 != 0, ws.OpCode(b[0]&0x0f), b[1]&0x80 != 0
	h.hlen = 2
	n := uint64(b[1] & 0x7f)
	switch n {
	case 126:
		h.hlen += 2
	case 127:
		h.hlen += 8
	}
	if h.masked {
		h.hlen += 4
	}
	if len(b) < h.hlen {
		return h, false, nil
	}
	switch n {
	case 126:
		n = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		n = binary.BigEndian.Uint64(b[2:10])
	}
	if n > maxFrameSize {
		return h, false, errFrameTooLarge
	}
	h.size = int(n)
	if h.masked {
		copy(h.mask[:], b[h.hlen-4:h.hlen])
	}
	return h, true, nil
}

// readFrame reads the next frame from br. Frames that fit in br's buffer
// are returned in place, without copying or allocating; the caller must
// call br.Discard(f.discard) when done with f.payload. Larger frames are
// copied into a new slice and f.discard is 0.
func readFrame(br *bufio.Reader) (frame, error) {
	b, err := br.Peek(2)
	if err != nil {
		return frame{}, err
	}
	h, ok, err := parseHeader(b)
	if err == nil && !ok {
		if b, err = br.Peek(h.hlen); err != nil {
			return frame{}, err
		}
		h, _, err = parseHeader(b)
	}
	if err != nil {
		return frame{}, err
	}
	f := frame{fin: h.fin, op: h.op}
	total := h.hlen + h.size
	if total <= br.Size() {
		buf, err := br.Peek(total)
		if err != nil {
			return frame{}, err
		}
		f.payload, f.discard = buf[h.hlen:], total
	} else {
		if _, err := br.Discard(h.hlen); err != nil {
			return frame{}, err
		}
		f.payload = make([]byte, h.size)
		if _, err := io.ReadFull(br, f.payload); err != nil {
			return frame{}, fmt.Errorf("read %d-byte frame payload: %w", h.size, err)
		}
	}
	if h.masked {
		ws.Cipher(f.payload, h.mask, 0)
	}
	return f, nil
}

// parseFrame parses the frame at the start of b, unmasking its payload in
// place. It returns the frame and the bytes it took, or n == 0 when b
// holds only part of it (read more and call again). payload aliases b.
func parseFrame(b []byte) (f frame, n int, err error) {
	h, ok, err := parseHeader(b)
	if !ok || err != nil {
		return frame{}, 0, err
	}
	total := h.hlen + h.size
	if len(b) < total {
		return frame{}, 0, nil
	}
	f = frame{fin: h.fin, op: h.op, payload: b[h.hlen:total]}
	if h.masked {
		ws.Cipher(f.payload, h.mask, 0)
	}
	return f, total, nil
}
