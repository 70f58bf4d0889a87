package room

import (
	"strconv"

	"github.com/chatgw/gateway/pkg/stream"
)

// The chat message format of the original app: a client sends a JSON
// object with "username" and "message"; members receive exactly
// {"username":<value>,"message":<value>}, each value the JSON the client
// sent (compacted), every other key dropped.

// Error codes sent to a client whose message was refused. They are stable:
// clients may match on them.
const (
	CodeInvalidJSON  = "invalid_json"  // the message is not JSON
	CodeNotObject    = "not_object"    // JSON, but not an object
	CodeMissingField = "missing_field" // "username" or "message" is absent
	CodeUnavailable  = "unavailable"   // the message was not stored: resend it later
	CodeUnconfirmed  = "unconfirmed"   // the store did not answer in time: the message may or may not be delivered
	CodeRateLimited  = "rate_limited"  // over the sender's rate limit (RATE_LIMIT): the message was dropped
	CodeInvalidField = "invalid_field" // ack=1: "cid" is not a string of 1 to MaxCID bytes
)

// MaxCID is the longest "cid" accepted from an ack=1 client, in bytes
// (decoded).
const MaxCID = 128

// decodeError says why a message was refused.
type decodeError struct {
	code   string
	field  string // for CodeMissingField
	detail string
}

var (
	errInvalidJSON    = &decodeError{code: CodeInvalidJSON, detail: `message is not valid JSON; send {"username": "...", "message": "..."}`}
	errNotObject      = &decodeError{code: CodeNotObject, detail: `message must be a JSON object: {"username": "...", "message": "..."}`}
	errMissingUser    = &decodeError{code: CodeMissingField, field: "username", detail: `message has no "username" key`}
	errMissingMessage = &decodeError{code: CodeMissingField, field: "message", detail: `message has no "message" key`}
	errInvalidCID     = &decodeError{code: CodeInvalidField, field: "cid", detail: `"cid" must be a string of 1 to 128 bytes`}
)

// maxDepth bounds the nesting of JSON values accepted.
const maxDepth = 128

// decodeMessage validates data as one JSON value (RFC 8259) and returns
// the raw JSON of its "username" and "message" keys (the last one wins when
// a key repeats, as in Python's json module). It does not allocate; the
// returned slices point into data.
func decodeMessage(data []byte) (username, message []byte, err *decodeError) {
	f, err := decodeChat(data)
	if err != nil {
		return nil, nil, err
	}
	return f.username, f.message, nil
}

// chatFields are the raw JSON values of the keys a chat message may
// carry; nil for a key that is absent.
type chatFields struct {
	username, message []byte
	cid               []byte // the client's message ID (ack=1); never forwarded
}

// decodeChat is decodeMessage returning "cid" too. On a missing-field
// error the fields found are still returned, so the error frame of an
// ack=1 client can name its cid.
func decodeChat(data []byte) (f chatFields, err *decodeError) {
	s := scanner{b: data}
	s.skipSpace()
	if s.i < len(s.b) && s.b[s.i] != '{' {
		if s.value(0) && s.end() {
			return f, errNotObject
		}
		return f, errInvalidJSON
	}
	if s.i >= len(s.b) {
		return f, errInvalidJSON
	}
	s.i++ // '{'
	s.skipSpace()
	if s.peek() == '}' {
		s.i++
	} else {
		for {
			s.skipSpace()
			k0 := s.i
			if !s.str() {
				return chatFields{}, errInvalidJSON
			}
			key := keyOf(data[k0+1 : s.i-1])
			s.skipSpace()
			if s.peek() != ':' {
				return chatFields{}, errInvalidJSON
			}
			s.i++
			s.skipSpace()
			v0 := s.i
			if !s.value(1) {
				return chatFields{}, errInvalidJSON
			}
			switch key {
			case keyUsername:
				f.username = data[v0:s.i]
			case keyMessage:
				f.message = data[v0:s.i]
			case keyCID:
				f.cid = data[v0:s.i]
			}
			s.skipSpace()
			if c := s.peek(); c == ',' {
				s.i++
				continue
			} else if c == '}' {
				s.i++
				break
			}
			return chatFields{}, errInvalidJSON
		}
	}
	if !s.end() {
		return chatFields{}, errInvalidJSON
	}
	switch {
	case f.username == nil:
		return f, errMissingUser
	case f.message == nil:
		return f, errMissingMessage
	}
	return f, nil
}

type key uint8

const (
	keyOther key = iota
	keyUsername
	keyMessage
	keyCID
)

// keyOf classifies a raw object key (without quotes), decoding escapes
// such as "user\u006eame" as a JSON parser would.
func keyOf(raw []byte) key {
	var buf [8]byte
	n := 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '\\' {
			if i+1 >= len(raw) {
				return keyOther
			}
			switch raw[i+1] {
			case 'u':
				if i+5 >= len(raw) {
					return keyOther
				}
				r := 0
				for _, h := range raw[i+2 : i+6] {
					r = r<<4 | int(unhex(h))
				}
				if r >= 0x80 {
					return keyOther // not part of an ASCII key
				}
				c = byte(r)
				i += 5
			default:
				return keyOther // \n, \" ... never occur in our keys
			}
		}
		if n == len(buf) {
			return keyOther
		}
		buf[n] = c
		n++
	}
	switch string(buf[:n]) {
	case "username":
		return keyUsername
	case "message":
		return keyMessage
	case "cid":
		return keyCID
	}
	return keyOther
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10
	}
	return 0
}

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
// with the entry's ID as its last key (ids=1):
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

// scanner is a validating JSON scanner over a byte slice. The input is
// already valid UTF-8 (the WebSocket layer checks text messages).
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) skipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.skipSpace()
	return s.i == len(s.b)
}

// value scans one JSON value at s.i.
func (s *scanner) value(depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch c := s.peek(); {
	case c == '"':
		return s.str()
	case c == '{':
		return s.object(depth)
	case c == '[':
		return s.array(depth)
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return false
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

func (s *scanner) object(depth int) bool {
	s.i++ // '{'
	s.skipSpace()
	if s.peek() == '}' {
		s.i++
		return true
	}
	for {
		s.skipSpace()
		if !s.str() {
			return false
		}
		s.skipSpace()
		if s.peek() != ':' {
			return false
		}
		s.i++
		s.skipSpace()
		if !s.value(depth + 1) {
			return false
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

func (s *scanner) array(depth int) bool {
	s.i++ // '['
	s.skipSpace()
	if s.peek() == ']' {
		s.i++
		return true
	}
	for {
		s.skipSpace()
		if !s.value(depth + 1) {
			return false
		}
		s.skipSpace()
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

// str scans a string, leaving s.i after its closing quote.
func (s *scanner) str() bool {
	if s.peek() != '"' {
		return false
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s.b)-s.i < 5 {
					return false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !isHex(h) {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		}
	}
	return false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func (s *scanner) number() bool {
	if s.peek() == '-' {
		s.i++
	}
	switch c := s.peek(); {
	case c == '0':
		s.i++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.peek() == '.' {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

// digits scans one or more digits.
func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}
