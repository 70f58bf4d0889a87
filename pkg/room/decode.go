package room

import "fmt"

// The chat message format of the original app: a client sends a JSON
// object with "username" and "message"; members receive exactly
// {"username":<value>,"message":<value>}, each value the JSON the client
// sent (compacted), every other member dropped.

// MaxCID is the longest "cid" accepted from an ack=1 client, in bytes
// (decoded).
const MaxCID = 128

// decodeError says why a message did not decode, or carried a bad
// field: its error frame, encoded once.
type decodeError struct{ errorFrame }

// newDecodeError returns the decode error of code and its frame.
func newDecodeError(code, field, detail string) *decodeError {
	return &decodeError{*newErrorFrame(code, field, detail)}
}

var (
	errInvalidJSON    = newDecodeError(CodeInvalidJSON, "", `message is not valid JSON; send {"username": "...", "message": "..."}`)
	errNotObject      = newDecodeError(CodeNotObject, "", `message must be a JSON object: {"username": "...", "message": "..."}`)
	errMissingUser    = newDecodeError(CodeMissingField, "username", `message has no "username" key`)
	errMissingMessage = newDecodeError(CodeMissingField, "message", `message has no "message" key`)
	errInvalidCID     = newDecodeError(CodeInvalidField, "cid", fmt.Sprintf(`"cid" must be a string of 1 to %d bytes`, MaxCID))
)

// chatFields are the raw JSON values of the fields a chat message may
// carry; nil for a field that is absent.
type chatFields struct {
	username, message []byte
	cid               []byte // the client's message ID (ack=1); never forwarded
}

// decodeChat validates data as one JSON value (RFC 8259) and returns the
// raw JSON of its "username", "message" and "cid" fields (the last one
// wins when a name repeats, as in Python's json module). It does not
// allocate; the returned slices point into data. On a missing-field error
// the fields found are still returned, so the error frame of an ack=1
// client can name its cid.
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
			name := fieldNameOf(data[k0+1 : s.i-1])
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
			switch name {
			case nameUsername:
				f.username = data[v0:s.i]
			case nameMessage:
				f.message = data[v0:s.i]
			case nameCID:
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

// fieldName is the name of an object member that a chat message may
// carry (RFC 8259 section 4), as fieldNameOf classifies it.
type fieldName uint8

const (
	nameOther fieldName = iota
	nameUsername
	nameMessage
	nameCID
)

// fieldNameOf classifies the raw name of an object member (without quotes), decoding escapes
// such as "user\u006eame" as a JSON parser would.
func fieldNameOf(raw []byte) fieldName {
	var buf [8]byte
	n := 0
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '\\' {
			if i+1 >= len(raw) {
				return nameOther
			}
			switch raw[i+1] {
			case 'u':
				if i+5 >= len(raw) {
					return nameOther
				}
				r := 0
				for _, h := range raw[i+2 : i+6] {
					r = r<<4 | int(unhex(h))
				}
				if r >= 0x80 {
					return nameOther // not part of an ASCII name
				}
				c = byte(r)
				i += 5
			default:
				return nameOther // \n, \" ... never occur in our names
			}
		}
		if n == len(buf) {
			return nameOther
		}
		buf[n] = c
		n++
	}
	switch string(buf[:n]) {
	case "username":
		return nameUsername
	case "message":
		return nameMessage
	case "cid":
		return nameCID
	}
	return nameOther
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
