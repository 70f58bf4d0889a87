package main

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

// TestAcceptKey: the example of RFC 6455 section 1.3.
func TestAcceptKey(t *testing.T) {
	if got := acceptKey([]byte("dGhlIHNhbXBsZSBub25jZQ==")); string(got[:]) != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("acceptKey = %q, want the RFC's s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", got)
	}
}

// TestNewKeyDiffers: keys are 24 base64 characters and differ.
func TestNewKeyDiffers(t *testing.T) {
	rng := rand.NewPCG(1, 2)
	seen := map[[wsKeyLen]byte]bool{}
	for range 1000 {
		k := newKey(rng)
		if seen[k] || !strings.HasSuffix(string(k[:]), "==") {
			t.Fatalf("key %q: repeated or not 16 bytes in base64", k)
		}
		seen[k] = true
	}
}

// TestParseUpgradeResponse checks whole answers, each followed by a frame,
// and each answer cut at every byte, as reads may cut it.
func TestParseUpgradeResponse(t *testing.T) {
	key := newKey(rand.NewPCG(3, 4))
	accept := acceptKey(key[:])
	ok := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + string(accept[:]) + "\r\n\r\n"
	tests := []struct {
		name string
		resp string
		err  error // nil: the head is whole at its end
	}{
		{"101", ok, nil},
		{"101, any case, spaces, bare LF, other fields", "HTTP/1.1 101 OK\nserver: x\nconnection:  upgrade \nUPGRADE:\tWebSocket\nsec-websocket-accept: " + string(accept[:]) + "\n\n", nil},
		{"101 with empty extensions", strings.Replace(ok, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: \r\n\r\n", 1), nil},
		{"503", "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", ws.StatusError(503)},
		{"HTTP/1.0", strings.Replace(ok, "HTTP/1.1", "HTTP/1.0", 1), ws.ErrHandshakeBadProtocol},
		{"not HTTP", "SSH-2.0-OpenSSH_9.6\r\n", ws.ErrMalformedResponse},
		{"bad status", "HTTP/1.1 1o1 Switching\r\n", ws.ErrMalformedResponse},
		{"field without colon", strings.Replace(ok, "Upgrade: websocket", "Upgrade websocket", 1), ws.ErrMalformedResponse},
		{"Upgrade other", strings.Replace(ok, "websocket", "h2c", 1), ws.ErrHandshakeBadUpgrade},
		{"no Upgrade", strings.Replace(ok, "Upgrade: websocket\r\n", "", 1), ws.ErrHandshakeBadUpgrade},
		{"Connection other", strings.Replace(ok, "Connection: Upgrade", "Connection: close", 1), ws.ErrHandshakeBadConnection},
		{"no Connection", strings.Replace(ok, "Connection: Upgrade\r\n", "", 1), ws.ErrHandshakeBadConnection},
		{"wrong accept", strings.Replace(ok, string(accept[:]), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", 1), ws.ErrHandshakeBadSecAccept},
		{"no accept", strings.Replace(ok, "Sec-WebSocket-Accept: "+string(accept[:])+"\r\n", "", 1), ws.ErrHandshakeBadSecAccept},
		{"a protocol not offered", strings.Replace(ok, "\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n", 1), ws.ErrHandshakeBadSubProtocol},
		{"an extension not offered", strings.Replace(ok, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n", 1), ws.ErrHandshakeBadExtensions},
		{"head over 4 KiB", strings.Replace(ok, "\r\n\r\n", "\r\nX: "+strings.Repeat("x", maxResponseHead)+"\r\n\r\n", 1), errResponseHeadTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := "\x81\x05hello" // what follows the head is not its business
			n, err := parseUpgradeResponse([]byte(tt.resp+frames), &key)
			if !errors.Is(err, tt.err) || err == nil && n != len(tt.resp) {
				t.Fatalf("parse = %d, %v; want %d, %v", n, err, len(tt.resp), tt.err)
			}
			// Cut anywhere, the answer asks for more or fails as the whole
			// does once the line at fault is in; a status is known from
			// the status line.
			statusLine := strings.Index(tt.resp, "\n") + 1
			for cut := range len(tt.resp) {
				n, err := parseUpgradeResponse([]byte(tt.resp[:cut]), &key)
				switch {
				case n != 0 || err != nil && !errors.Is(err, tt.err):
					t.Fatalf("cut at %d: %d, %v; want 0 and nil or %v", cut, n, err, tt.err)
				case errors.As(tt.err, new(ws.StatusError)) && cut >= statusLine && err == nil:
					t.Fatalf("cut at %d, after the status line: no error, want %v", cut, tt.err)
				}
			}
		})
	}
}
