package main

import (
	"bytes"
	"strconv"
)

// stampPrefix starts every stamp that loadgen writes into a message.
const stampPrefix = "lg:"

// stamp identifies one sent message. It travels as the "message" string of
// a chat frame in the compact form "lg:<run>:<sender>:<seq>:<unix nanos>",
// optionally followed by ":" and padding that receivers ignore.
type stamp struct {
	run    uint32 // random per loadgen process; tells our messages from others'
	sender uint32 // global sender ID: room*senders + index in room
	seq    uint32 // 0, 1, 2, ... per sender
	nanos  int64  // wall clock when the sender wrote the frame
}

// appendStamp appends the text form of s to dst.
func appendStamp(dst []byte, s stamp) []byte {
	dst = append(dst, stampPrefix...)
	dst = strconv.AppendUint(dst, uint64(s.run), 10)
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, uint64(s.sender), 10)
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, uint64(s.seq), 10)
	dst = append(dst, ':')
	return strconv.AppendInt(dst, s.nanos, 10)
}

// appendChatMessage appends the JSON text of a chat frame carrying s to
// dst: {"username":"lg-<sender>","message":"<stamp>[:xxx…]"}, where pad
// is the number of padding bytes after the stamp.
func appendChatMessage(dst []byte, s stamp, pad int, cid bool) []byte {
	dst = append(dst, `{"username":"lg-`...)
	dst = strconv.AppendUint(dst, uint64(s.sender), 10)
	dst = append(dst, `","message":"`...)
	dst = appendStamp(dst, s)
	if pad > 0 {
		dst = append(dst, ':')
		for range pad {
			dst = append(dst, 'x')
		}
	}
	if cid {
		// A client-chosen message ID (-cid, for ack=1): unique per run,
		// sender and message.
		dst = append(dst, `","cid":"`...)
		dst = strconv.AppendUint(dst, uint64(s.run), 36)
		dst = append(dst, '-')
		dst = strconv.AppendUint(dst, uint64(s.sender), 10)
		dst = append(dst, '-')
		dst = strconv.AppendUint(dst, uint64(s.seq), 10)
	}
	return append(dst, `"}`...)
}

// findStamp returns the stamp text inside a received chat frame: the bytes
// from `"lg:` up to the closing quote, without the quotes. It reports false
// when the frame carries no stamp. It does not allocate.
func findStamp(frame []byte) ([]byte, bool) {
	i := bytes.Index(frame, []byte(`"`+stampPrefix))
	if i < 0 {
		return nil, false
	}
	rest := frame[i+1:]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

// parseStamp decodes the text form written by appendStamp. Anything after a
// fifth ':' (padding) is ignored. It does not allocate.
func parseStamp(b []byte) (stamp, bool) {
	if !bytes.HasPrefix(b, []byte(stampPrefix)) {
		return stamp{}, false
	}
	b = b[len(stampPrefix):]
	var f [4]uint64
	for i := range f {
		n, rest, ok := parseDigits(b)
		if !ok {
			return stamp{}, false
		}
		f[i] = n
		last := i == len(f)-1
		switch {
		case len(rest) == 0 && last:
		case len(rest) > 0 && rest[0] == ':':
			rest = rest[1:]
			if last {
				rest = nil // padding
			}
		default:
			return stamp{}, false
		}
		b = rest
	}
	if f[0] > 1<<32-1 || f[1] > 1<<32-1 || f[2] > 1<<32-1 || f[3] > 1<<63-1 {
		return stamp{}, false
	}
	return stamp{run: uint32(f[0]), sender: uint32(f[1]), seq: uint32(f[2]), nanos: int64(f[3])}, true
}

// parseDigits reads a non-empty run of at most 19 decimal digits from the
// front of b and returns the value and the rest of b.
func parseDigits(b []byte) (uint64, []byte, bool) {
	var n uint64
	i := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		if i == 19 {
			return 0, nil, false
		}
		n = n*10 + uint64(b[i]-'0')
	}
	if i == 0 {
		return 0, nil, false
	}
	return n, b[i:], true
}
