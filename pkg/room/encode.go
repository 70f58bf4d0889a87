package room

import (
	"strconv"
	"sync"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// appendOutbound appends the message members receive:
// {"username":<username>,"message":<message>}.
func appendOutbound(b, username, message []byte) []byte {
	b = append(b, `{"username":`...)
	b = appendCompact(b, username)
	b = append(b, `,"message":`...)
	b = appendCompact(b, message)
	return append(b, '}')
}

// appendOutboundUser is appendOutbound with a username fixed by the
// sender's token, already encoded as compact JSON.
func appendOutboundUser(b []byte, username string, message []byte) []byte {
	b = append(b, `{"username":`...)
	b = append(b, username...)
	b = append(b, `,"message":`...)
	b = appendCompact(b, message)
	return append(b, '}')
}

// appendWithID appends payload, a chat object as members receive it,
// with the entry's ID as its last member (ids=1):
// {"username":…,"message":…,"id":"<ms>-<seq>"}. A payload that is not an
// object is appended unchanged.
func appendWithID(b, payload []byte, id stream.ID) []byte {
	if len(payload) < 2 || payload[len(payload)-1] != '}' {
		return append(b, payload...)
	}
	b = append(b, payload[:len(payload)-1]...)
	if len(payload) > 2 {
		b = append(b, ',')
	}
	b = append(b, `"id":"`...)
	b = id.AppendTo(b)
	return append(b, `"}`...)
}

// appendAck appends the frame that acknowledges an accepted message to
// an ack=1 sender: {"ack":"<id>"} or, when it sent one,
// {"ack":"<id>","cid":<cid as sent>}.
func appendAck(b []byte, id stream.ID, cid string) []byte {
	b = append(b, `{"ack":"`...)
	b = id.AppendTo(b)
	b = append(b, '"')
	if cid != "" {
		b = append(b, `,"cid":`...)
		b = append(b, cid...)
	}
	return append(b, '}')
}

// appendTruncated appends the frame that tells a since= client that the
// entries after since were trimmed before it could replay them:
// {"truncated":{"since":"<id>","from":"<id>"}}, from being the oldest
// entry still held (what the replay starts with); without "from" when
// nothing is held.
func appendTruncated(b []byte, since stream.ID, from stream.ID, held bool) []byte {
	b = append(b, `{"truncated":{"since":"`...)
	b = since.AppendTo(b)
	b = append(b, '"')
	if held {
		b = append(b, `,"from":"`...)
		b = from.AppendTo(b)
		b = append(b, '"')
	}
	return append(b, `}}`...)
}

// appendPresence appends the presence frame of a presence=1 member:
// {"presence":{"members":N}}.
func appendPresence(b []byte, n int) []byte {
	b = append(b, `{"presence":{"members":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, `}}`...)
}

// appendCompact appends a valid raw JSON value without the insignificant
// white space between its tokens.
func appendCompact(b, v []byte) []byte {
	if len(v) > 0 && v[0] != '{' && v[0] != '[' {
		return append(b, v...) // scalars hold no white space between tokens
	}
	inStr := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inStr:
			if c == '\\' {
				b = append(b, c, v[i+1])
				i++
				continue
			}
			if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			continue
		}
		b = append(b, c)
	}
	return b
}

// maxPooledPayload is the largest buffer putPayload keeps in payloadPool.
const maxPooledPayload = 64 << 10

// payloadPool holds the buffers messages and frames are encoded into.
var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// putPayload returns a buffer of payloadPool, unless it grew large.
func putPayload(bp *[]byte) {
	if cap(*bp) <= maxPooledPayload {
		payloadPool.Put(bp)
	}
}

// textFrame encodes a frame from the bytes append writes into a pooled
// buffer. The caller releases the frame.
func textFrame(enc func([]byte) []byte) *conn.Frame {
	bp := payloadPool.Get().(*[]byte)
	*bp = enc((*bp)[:0])
	f := conn.NewTextFrame(*bp)
	putPayload(bp)
	return f
}
