package main

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strconv"

	"github.com/gobwas/ws"
)

// The client side of the opening handshake (RFC 6455 section 4.1) for the
// dialer of the epoll loops (dial.go): the request gobwas ws.Dialer
// writes, byte for byte in the same order, and the checks ws.Dialer makes
// of the answer, run on the bytes the loop has read so far. The answer is
// parsed again from its start after each read; it is whole in one read
// almost always.

// wsGUID is appended to the key to compute Sec-WebSocket-Accept (RFC 6455
// section 1.3).
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// wsKeyLen is the length of a Sec-WebSocket-Key: 16 random bytes in
// base64 (RFC 6455 section 4.1).
const wsKeyLen = 24

// maxResponseHead bounds the head of the server's answer (status line and
// header fields, through the blank line); a longer head fails the dial.
const maxResponseHead = 4 << 10

// errResponseHeadTooLarge: the answer to the upgrade request did not end
// its head within maxResponseHead bytes.
var errResponseHeadTooLarge = errors.New("loadgen: the answer to the upgrade request has no end of header within 4 KiB: is -url a WebSocket gateway?")

// acceptKey returns the Sec-WebSocket-Accept that answers key:
// base64(SHA-1(key + GUID)) (RFC 6455 section 4.2.2).
func acceptKey(key []byte) (accept [28]byte) {
	var buf [wsKeyLen + len(wsGUID)]byte
	sum := sha1.Sum(append(append(buf[:0], key...), wsGUID...))
	base64.StdEncoding.Encode(accept[:], sum[:])
	return accept
}

// newKey returns a fresh Sec-WebSocket-Key from rng. A load tool needs
// keys that differ, not secret ones: a seeded PCG per loop is enough and
// costs no system call.
func newKey(rng *rand.PCG) (key [wsKeyLen]byte) {
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], rng.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], rng.Uint64())
	base64.StdEncoding.Encode(key[:], raw[:])
	return key
}

// appendRequest appends the upgrade request for room of t with key, as
// ws.Dialer writes it: request line, Host, Upgrade, Connection,
// Sec-WebSocket-Version, Sec-WebSocket-Key.
func (t *target) appendRequest(b []byte, room int, key *[wsKeyLen]byte) []byte {
	b = append(b, t.reqHead...)
	b = strconv.AppendInt(b, int64(room), 10)
	b = append(b, t.reqTail...)
	b = append(b, key[:]...)
	return append(b, "\r\n\r\n"...)
}

// requestParts returns the upgrade request to <path>/ws/chat/<prefix><room>/
// on host, with query if not empty, before the room number and after it
// up to the key.
func requestParts(host, path, prefix, query string) (head, tail string) {
	head = "GET " + path + "/ws/chat/" + prefix
	tail = "/"
	if query != "" {
		tail += "?" + query
	}
	tail += " HTTP/1.1\r\nHost: " + host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
	return head, tail
}

// parseUpgradeResponse checks the server's answer to the upgrade request
// made with key, as far as b holds it. It returns the length of the head
// (status line and header fields, through the blank line) once b holds
// all of it, 0 while more must be read, or why the upgrade failed, with
// ws.Dialer's errors: ws.StatusError for a status other than 101 (known
// from the status line alone), ws.ErrHandshakeBad... for a header field
// that does not agree to the upgrade or is missing.
func parseUpgradeResponse(b []byte, key *[wsKeyLen]byte) (int, error) {
	line, n, ok := nextLine(b, 0)
	if !ok {
		return 0, headBound(len(b))
	}
	if err := checkStatusLine(line); err != nil {
		return 0, err
	}
	const (
		seenUpgrade = 1 << iota
		seenConnection
		seenAccept
	)
	var seen int
	for {
		if line, n, ok = nextLine(b, n); !ok {
			return 0, headBound(len(b))
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, ws.ErrMalformedResponse
		}
		name, value = trimSpace(name), trimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Upgrade")):
			seen |= seenUpgrade
			if !bytes.EqualFold(value, []byte("websocket")) {
				return 0, ws.ErrHandshakeBadUpgrade
			}
		case bytes.EqualFold(name, []byte("Connection")):
			seen |= seenConnection
			if !bytes.EqualFold(value, []byte("Upgrade")) {
				return 0, ws.ErrHandshakeBadConnection
			}
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Accept")):
			seen |= seenAccept
			if want := acceptKey(key[:]); !bytes.Equal(value, want[:]) {
				return 0, ws.ErrHandshakeBadSecAccept
			}
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Protocol")):
			return 0, ws.ErrHandshakeBadSubProtocol // none was offered
		case bytes.EqualFold(name, []byte("Sec-WebSocket-Extensions")):
			if len(value) > 0 {
				return 0, ws.ErrHandshakeBadExtensions // none was offered
			}
		}
	}
	switch {
	case n > maxResponseHead:
		return 0, errResponseHeadTooLarge
	case seen&seenUpgrade == 0:
		return 0, ws.ErrHandshakeBadUpgrade
	case seen&seenConnection == 0:
		return 0, ws.ErrHandshakeBadConnection
	case seen&seenAccept == 0:
		return 0, ws.ErrHandshakeBadSecAccept
	}
	return n, nil
}

// headBound returns errResponseHeadTooLarge when an incomplete head of
// size bytes can no longer end within maxResponseHead, nil otherwise.
func headBound(size int) error {
	if size >= maxResponseHead {
		return errResponseHeadTooLarge
	}
	return nil
}

// nextLine returns the line of b that starts at from, without its "\n"
// or "\r\n" (a bare "\n" ends a line too, as for ws.Dialer), and where
// the next one starts; ok is false if the line has no end in b yet.
func nextLine(b []byte, from int) (line []byte, next int, ok bool) {
	i := bytes.IndexByte(b[from:], '\n')
	if i < 0 {
		return nil, from, false
	}
	line = b[from : from+i]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, from + i + 1, true
}

// checkStatusLine checks "HTTP/1.1 101 Switching Protocols" as ws.Dialer
// does: HTTP/1.x with x >= 1, then status 101.
func checkStatusLine(line []byte) error {
	proto, rest, _ := bytes.Cut(line, []byte(" "))
	status, _, _ := bytes.Cut(rest, []byte(" "))
	version, ok := bytes.CutPrefix(proto, []byte("HTTP/"))
	if !ok {
		return ws.ErrMalformedResponse
	}
	major, minor, ok := bytes.Cut(version, []byte("."))
	maj, okMaj := atoi(major)
	mnr, okMnr := atoi(minor)
	code, okCode := atoi(status)
	switch {
	case !ok || !okMaj || !okMnr || !okCode:
		return ws.ErrMalformedResponse
	case maj != 1 || mnr < 1:
		return ws.ErrHandshakeBadProtocol
	case code != 101:
		return ws.StatusError(code)
	}
	return nil
}

// atoi parses 1 to 9 ASCII digits.
func atoi(b []byte) (int, bool) {
	if len(b) == 0 || len(b) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// trimSpace drops the spaces and tabs around a header name or value.
func trimSpace(b []byte) []byte {
	return bytes.Trim(b, " \t")
}
