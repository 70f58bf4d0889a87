package conn

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"
)

func TestCloseFor(t *testing.T) {
	peer := fmt.Errorf("%w: %w", ErrPeerClosed, &CloseError{Code: 3001})
	custom := &CloseError{Code: 4000, Reason: "kicked"}
	for _, tc := range []struct {
		name string
		err  error
		code ws.StatusCode // 0: no close frame
	}{
		{"unmasked", ErrUnmasked, ws.StatusProtocolError},
		{"reserved bits", ErrReservedBits, ws.StatusProtocolError},
		{"reserved opcode", ErrReservedOpcode, ws.StatusProtocolError},
		{"bad control", ErrBadControl, ws.StatusProtocolError},
		{"bad continuation", ErrBadContinuation, ws.StatusProtocolError},
		{"bad length", ErrBadLength, ws.StatusProtocolError},
		{"bad close code", ErrBadCloseCode, ws.StatusProtocolError},
		{"binary", ErrBinary, ws.StatusUnsupportedData},
		{"invalid UTF-8", ErrInvalidUTF8, ws.StatusInvalidFramePayloadData},
		{"too large", ErrTooLarge, ws.StatusMessageTooBig},
		{"slow consumer", ErrSlowConsumer, ws.StatusPolicyViolation},
		{"fragment timeout", ErrFragmentTimeout, ws.StatusPolicyViolation},
		{"server busy", ErrServerBusy, StatusTryAgainLater},
		{"ping timeout", ErrPingTimeout, ws.StatusGoingAway},
		{"shutdown", ErrShutdown, ws.StatusGoingAway},
		{"wrapped too large", fmt.Errorf("room x: %w", ErrTooLarge), ws.StatusMessageTooBig},
		{"joined invalid UTF-8", errors.Join(errors.New("other"), ErrInvalidUTF8), ws.StatusInvalidFramePayloadData},
		{"peer close is echoed", peer, 3001},
		{"CloseError as is", custom, 4000},
		{"peer closed without code", ErrPeerClosed, 0},
		{"EOF", ErrEOF, 0},
		{"nil", nil, 0},
		{"unknown error", errors.New("write: broken pipe"), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ce := closeFor(tc.err)
			if tc.code == 0 {
				if ce != nil {
					t.Fatalf("closeFor(%v) = %v, want nil", tc.err, ce)
				}
				return
			}
			if ce == nil || ce.Code != tc.code {
				t.Fatalf("closeFor(%v) = %v, want code %d", tc.err, ce, tc.code)
			}
			if !validCloseCode(ce.Code) {
				t.Fatalf("code %d may not be sent", ce.Code)
			}
			if tc.code < 3000 && (ce.Reason == "" || len(ce.Reason) > 123 || !utf8.ValidString(ce.Reason)) {
				t.Fatalf("reason %q: want 1 to 123 bytes of UTF-8", ce.Reason)
			}
			// The encoded close frame carries the code and the reason.
			f := closeFrame(ce)
			defer f.Release()
			wf, err := ws.ReadFrame(bytes.NewReader(f.buf))
			if err != nil || wf.Header.OpCode != ws.OpClose || !wf.Header.Fin || wf.Header.Masked {
				t.Fatalf("close frame %x: %+v %v", f.buf, wf.Header, err)
			}
			code, reason := ws.ParseCloseFrameData(wf.Payload)
			if code != ce.Code || reason != ce.Reason {
				t.Fatalf("close frame says %d %q, want %d %q", code, reason, ce.Code, ce.Reason)
			}
		})
	}
}

// TestCloseFrameTruncatesReasonOnRuneBoundary: a reason over 123 bytes is
// cut to fit the control frame; the cut must not split a character, or the
// client must fail the connection with 1007 (RFC 6455 8.1).
func TestCloseFrameTruncatesReasonOnRuneBoundary(t *testing.T) {
	for _, tc := range []struct{ name, reason string }{
		{"ASCII", strings.Repeat("a", 200)},
		{"2-byte characters", strings.Repeat("é", 100)},
		{"3-byte characters", strings.Repeat("€", 60)},
		{"4-byte characters", strings.Repeat("👋", 40)},
		{"one character across byte 123", strings.Repeat("a", 122) + "€"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := closeFrame(&CloseError{Code: ws.StatusPolicyViolation, Reason: tc.reason})
			defer f.Release()
			wf, err := ws.ReadFrame(bytes.NewReader(f.buf))
			if err != nil {
				t.Fatal(err)
			}
			if len(wf.Payload) > maxControlPayload {
				t.Fatalf("close payload is %d bytes, over %d", len(wf.Payload), maxControlPayload)
			}
			_, reason := ws.ParseCloseFrameData(wf.Payload)
			if !utf8.ValidString(reason) || !strings.HasPrefix(tc.reason, reason) || len(reason) < maxControlPayload-2-3 {
				t.Fatalf("reason cut to %q (%d bytes): want the longest UTF-8 prefix of at most 123 bytes", reason, len(reason))
			}
		})
	}
}

func TestValidCloseCode(t *testing.T) {
	valid := map[ws.StatusCode]bool{}
	for c := ws.StatusCode(1000); c <= 1003; c++ {
		valid[c] = true
	}
	for c := ws.StatusCode(1007); c <= 1014; c++ {
		valid[c] = true
	}
	for c := ws.StatusCode(3000); c <= 4999; c++ {
		valid[c] = true
	}
	for _, tc := range []struct {
		name     string
		from, to ws.StatusCode
	}{
		{"0 to 999: not used", 0, 999},
		{"1000 to 1015: protocol", 1000, 1015},
		{"1016 to 2999: reserved", 1016, 2999},
		{"3000 to 4999: registered and private", 3000, 4999},
		{"5000 and up", 5000, 65535},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for c := tc.from; ; c++ {
				if got := validCloseCode(c); got != valid[c] {
					t.Errorf("validCloseCode(%d) = %v, want %v", c, got, valid[c])
				}
				if c == tc.to {
					break
				}
			}
		})
	}
	// The codes that must never be on the wire (RFC 6455 7.4.1).
	for _, c := range []ws.StatusCode{1004, 1005, 1006, 1015} {
		if validCloseCode(c) {
			t.Errorf("validCloseCode(%d) = true; it may not be sent", c)
		}
	}
}
