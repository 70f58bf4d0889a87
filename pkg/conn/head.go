package conn

import (
	"bytes"
	"encoding/binary"
	"net/http"
)

// The request-head rules. The loop checks every request head it collects
// with checkHead, before it runs the upgrade or hands the connection to
// the HTTP server, so that both paths refuse the same heads with the same
// status and reason; a refused head is answered with Connection: close and
// its socket closed, so nothing pipelined behind it is read. The rules are
// RFC 9112's (HTTP/1.1 message syntax): as strict as net/http's server,
// and stricter where net/http is lax: it takes a Transfer-Encoding over a
// Content-Length and keeps the connection, folds obs-fold lines, ignores
// Transfer-Encoding in HTTP/1.0 and allows any number of
// Sec-WebSocket-Key. FuzzCheckHead holds the rules to that: a head they
// accept, net/http serves. Later requests on a kept-alive plain-HTTP
// connection are parsed by net/http alone (http.go closes the connection
// after a chunked one).

// headRefusal is why checkHead refuses a request head: the status of the
// answer and its one-line reason.
type headRefusal struct {
	status int
	reason string
}

// The refusals of checkHead.
var (
	headBareLF             = &headRefusal{http.StatusBadRequest, "request lines must end with CRLF, not a bare LF"}
	headRequestLine        = &headRefusal{http.StatusBadRequest, "malformed request line: want METHOD SP request-target SP HTTP-version (RFC 9112 section 3)"}
	headMethod             = &headRefusal{http.StatusBadRequest, "request method is not a token (RFC 9112 section 3.1)"}
	headTarget             = &headRefusal{http.StatusBadRequest, "request target is empty or has a control character (RFC 9112 section 3.2)"}
	headVersion            = &headRefusal{http.StatusBadRequest, "malformed HTTP version in the request line: want HTTP/1.1 (RFC 9112 section 2.3)"}
	headVersionUnsupported = &headRefusal{http.StatusHTTPVersionNotSupported, "HTTP version not supported: only HTTP/1.x"}
	headFold               = &headRefusal{http.StatusBadRequest, "a header line starts with whitespace (obs-fold, RFC 9112 section 5.2)"}
	headNoColon            = &headRefusal{http.StatusBadRequest, "a header line has no colon (RFC 9112 section 5)"}
	headSpaceBeforeColon   = &headRefusal{http.StatusBadRequest, "whitespace between a header field name and its colon (RFC 9112 section 5.1)"}
	headFieldName          = &headRefusal{http.StatusBadRequest, "a header field name is not a token (RFC 9110 section 5.1)"}
	headFieldValue         = &headRefusal{http.StatusBadRequest, "a header field value has a control character such as NUL or CR (RFC 9110 section 5.5)"}
	headNoHost             = &headRefusal{http.StatusBadRequest, "missing Host header (RFC 9112 section 3.2)"}
	headHostTwice          = &headRefusal{http.StatusBadRequest, "more than one Host header (RFC 9112 section 3.2)"}
	headHostValue          = &headRefusal{http.StatusBadRequest, "malformed Host header value (RFC 9112 section 3.2)"}
	headKeyTwice           = &headRefusal{http.StatusBadRequest, "more than one Sec-WebSocket-Key header (RFC 6455 section 11.3.1)"}
	headLengthNumber       = &headRefusal{http.StatusBadRequest, "Content-Length is not a number (RFC 9110 section 8.6)"}
	headLengthDiffer       = &headRefusal{http.StatusBadRequest, "different Content-Length values (RFC 9112 section 6.3)"}
	headTEAndLength        = &headRefusal{http.StatusBadRequest, "both Transfer-Encoding and Content-Length (RFC 9112 section 6.1)"}
	headTEHTTP10           = &headRefusal{http.StatusBadRequest, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)"}
	headTENotChunked       = &headRefusal{http.StatusBadRequest, "Transfer-Encoding does not end with chunked (RFC 9112 section 6.3)"}
	headTEUnsupported      = &headRefusal{http.StatusNotImplemented, "transfer coding not supported: only Transfer-Encoding: chunked is"}
)

// checkHead checks a complete request head (request line, field lines and
// the blank line) and returns why it refuses it, or nil. It does not
// allocate.
func checkHead(head []byte) *headRefusal {
	line, rest, bad := cutLine(head)
	if bad != nil {
		return bad
	}
	http10, bad := checkRequestLine(line)
	if bad != nil {
		return bad
	}
	var (
		hosts, keys   int
		length        []byte // the first Content-Length value
		haveLength    bool
		teLines       int
		teLast        []byte // the last coding of Transfer-Encoding
		teOnlyChunked bool   // one Transfer-Encoding line, "chunked"
	)
	for {
		if line, rest, bad = cutLine(rest); bad != nil {
			return bad
		}
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return headFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			return headNoColon
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if bad := checkFieldName(name); bad != nil {
			return bad
		}
		if !validValue(value) {
			return headFieldValue
		}
		switch {
		case len(name) == len("Host") && bytes.EqualFold(name, []byte("Host")):
			if hosts++; hosts > 1 {
				return headHostTwice
			}
			for _, c := range value {
				if !validHostByte[c] {
					return headHostValue
				}
			}
		case len(name) == len("Content-Length") && bytes.EqualFold(name, []byte("Content-Length")):
			if !validLength(value) {
				return headLengthNumber
			}
			if haveLength && !bytes.Equal(value, length) {
				return headLengthDiffer
			}
			length, haveLength = value, true
		case len(name) == len("Transfer-Encoding") && bytes.EqualFold(name, []byte("Transfer-Encoding")):
			teLines++
			teOnlyChunked = teLines == 1 && bytes.EqualFold(value, []byte("chunked"))
			// The last non-empty element of the list (RFC 9110 section
			// 5.6.1).
			for v := value; len(v) > 0; {
				i := bytes.LastIndexByte(v, ',')
				if e := trimOWS(v[i+1:]); len(e) > 0 {
					teLast = e
					break
				}
				v = v[:max(i, 0)]
			}
		case len(name) == len("Sec-WebSocket-Key") && bytes.EqualFold(name, []byte("Sec-WebSocket-Key")):
			if keys++; keys > 1 {
				return headKeyTwice
			}
		}
	}
	switch {
	case hosts == 0 && !http10:
		return headNoHost
	case teLines == 0:
		return nil
	case haveLength:
		return headTEAndLength
	case http10:
		return headTEHTTP10
	case !bytes.EqualFold(teLast, []byte("chunked")):
		return headTENotChunked
	case !teOnlyChunked:
		return headTEUnsupported
	}
	return nil
}

// cutLine cuts the line ending with CRLF at the start of b and returns it
// without the CRLF.
func cutLine(b []byte) (line, rest []byte, bad *headRefusal) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, headBareLF
	}
	return b[:i-1], b[i+1:], nil
}

// checkRequestLine checks "METHOD SP request-target SP HTTP/d.d" and
// reports whether the version is HTTP/1.0.
func checkRequestLine(line []byte) (http10 bool, bad *headRefusal) {
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest, []byte(" "))
	switch {
	case !ok1 || !ok2:
		return false, headRequestLine
	case len(method) == 0:
		return false, headMethod
	case len(target) == 0:
		return false, headTarget
	}
	for _, c := range method {
		if !tokenByte[c] {
			return false, headMethod
		}
	}
	for _, c := range target {
		// Bytes from 0x80 are let through, as net/http does; the
		// Handler's Route judges the path.
		if c <= ' ' || c == 0x7f {
			return false, headTarget
		}
	}
	if len(version) != len("HTTP/1.1") || string(version[:5]) != "HTTP/" ||
		!isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]) {
		return false, headVersion
	}
	if version[5] != '1' {
		return false, headVersionUnsupported
	}
	return version[7] == '0', nil
}

// checkFieldName checks that name is a token, telling whitespace before
// the colon apart.
func checkFieldName(name []byte) *headRefusal {
	if len(name) == 0 {
		return headFieldName
	}
	if c := name[len(name)-1]; c == ' ' || c == '\t' {
		return headSpaceBeforeColon
	}
	for _, c := range name {
		if !tokenByte[c] {
			return headFieldName
		}
	}
	return nil
}

// trimOWS trims spaces and tabs at both ends of b.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// validValue reports whether a field value has no control character but
// HTAB: only SP, HTAB, VCHAR and obs-text (RFC 9110 section 5.5). It
// tests 8 bytes at a time for a byte below 0x20 or a DEL, and looks at
// single bytes only in words that have one.
func validValue(v []byte) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; len(v) >= 8; v = v[8:] {
		x := binary.LittleEndian.Uint64(v)
		del := x ^ 0x7f*ones
		if ((x-' '*ones)&^x|(del-ones)&^del)&highs != 0 && !validValueBytes(v[:8]) {
			return false
		}
	}
	return validValueBytes(v)
}

// validValueBytes is validValue one byte at a time.
func validValueBytes(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// validLength reports whether v is a Content-Length net/http accepts:
// 1*DIGIT, at most 2^63-1.
func validLength(v []byte) bool {
	const maxLength = "9223372036854775807"
	if len(v) == 0 || len(v) > len(maxLength) {
		return false
	}
	for _, c := range v {
		if !isDigit(c) {
			return false
		}
	}
	return len(v) < len(maxLength) || string(v) <= maxLength
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tokenByte holds the tchar of RFC 9110 section 5.6.2: the bytes of a
// method or a field name.
var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validHostByte holds the bytes net/http accepts in a Host value
// (httpguts.ValidHostHeader): those of a uri-host with a port, leniently.
var validHostByte = func() (t [256]bool) {
	for c := range tokenByte {
		t[c] = tokenByte[c] && c != '#' && c != '^' && c != '`' && c != '|'
	}
	for _, c := range "()+,:;=[]" {
		t[c] = true
	}
	return t
}()
