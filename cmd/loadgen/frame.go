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

// readFrame reads the next frame from br. Frames that fit in br's buffer
// are returned in place, without copying or allocating; the caller must
// call br.Discard(f.discard) when done with f.payload. Larger frames are
// copied into a new slice and f.discard is 0.
func readFrame(br *bufio.Reader) (frame, error) {
	hdr, err := br.Peek(2)
	if err != nil {
		return frame{}, err
	}
	f := frame{fin: hdr[0]&0x80 != 0, op: ws.OpCode(hdr[0] & 0x0f)}
	masked := hdr[1]&0x80 != 0
	hlen, n := 2, uint64(hdr[1]&0x7f)
	switch n {
	case 126:
		hlen += 2
	case 127:
		hlen += 8
	}
	if masked {
		hlen += 4
	}
	if hdr, err = br.Peek(hlen); err != nil {
		return frame{}, err
	}
	switch n {
	case 126:
		n = uint64(binary.BigEndian.Uint16(hdr[2:4]))
	case 127:
		n = binary.BigEndian.Uint64(hdr[2:10])
	}
	if n > maxFrameSize {
		return frame{}, errFrameTooLarge
	}
	var mask [4]byte
	if masked {
		copy(mask[:], hdr[hlen-4:hlen])
	}
	total := hlen + int(n)
	if total <= br.Size() {
		buf, err := br.Peek(total)
		if err != nil {
			return frame{}, err
		}
		f.payload, f.discard = buf[hlen:], total
	} else {
		if _, err := br.Discard(hlen); err != nil {
			return frame{}, err
		}
		f.payload = make([]byte, n)
		if _, err := io.ReadFull(br, f.payload); err != nil {
			return frame{}, fmt.Errorf("read %d-byte frame payload: %w", n, err)
		}
	}
	if masked {
		ws.Cipher(f.payload, mask, 0)
	}
	return f, nil
}

// parseFrame parses the frame at the start of b, unmasking its payload in
// place. It returns the frame and the bytes it took, or n == 0 when b
// holds only part of it (read more and call again). payload aliases b.
func parseFrame(b []byte) (f frame, n int, err error) {
	if len(b) < 2 {
		return frame{}, 0, nil
	}
	f = frame{fin: b[0]&0x80 != 0, op: ws.OpCode(b[0] & 0x0f)}
	masked := b[1]&0x80 != 0
	hlen, size := 2, uint64(b[1]&0x7f)
	switch size {
	case 126:
		hlen += 2
	case 127:
		hlen += 8
	}
	if masked {
		hlen += 4
	}
	if len(b) < hlen {
		return frame{}, 0, nil
	}
	switch size {
	case 126:
		size = uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		size = binary.BigEndian.Uint64(b[2:10])
	}
	if size > maxFrameSize {
		return frame{}, 0, errFrameTooLarge
	}
	total := hlen + int(size)
	if len(b) < total {
		return frame{}, 0, nil
	}
	f.payload = b[hlen:total]
	if masked {
		var mask [4]byte
		copy(mask[:], b[hlen-4:hlen])
		ws.Cipher(f.payload, mask, 0)
	}
	return f, total, nil
}
