package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

// Frame first bytes: FIN bit plus opcode.
const (
	finText   = 0x81
	finBinary = 0x82
	finClose  = 0x88
	finPing   = 0x89
	finPong   = 0x8A
	fragText  = 0x01 // text, not final
	fragCont  = 0x00 // continuation, not final
	finCont   = 0x80 // continuation, final
)

// outcome is what a protocol case expects from the gateway.
type outcome struct {
	close   ws.StatusCode // a close frame with this code, then EOF
	pongs   []string      // pong frames with these payloads, in order
	deliver []string      // messages the peer receives, in order
}

func closeBody(code ws.StatusCode, reason string) []byte {
	return ws.NewCloseFrameBody(code, reason)
}

func msg(text string) []byte { return []byte(`{"username":"u","message":"` + text + `"}`) }

// TestProtocolCases runs a table of raw-frame cases in the spirit of the
// Autobahn|Testsuite sections 1 to 7: framing, pings, reserved bits,
// opcodes, fragmentation, UTF-8 and the closing handshake. Each case ends
// with a marker message from a third member, which must be the next frame
// the peer sees: nothing the case withheld (data after a close, an
// over-size or invalid message) reached it.
func TestProtocolCases(t *testing.T) {
	const maxMsg = 4096
	g := startGateway(t, map[string]string{"MAX_MESSAGE_BYTES": fmt.Sprint(maxMsg), "MAX_QUEUE_BYTES": "65536"})
	long := func(n int) string { return strings.Repeat("x", n) }
	bigPayload := []byte(`{"username":"u","message":"` + long(maxMsg-len(`{"username":"u","message":""}`)) + `"}`)
	invalidUTF8 := []byte{'{', '"', 0xff, 0xfe, '"', '}'}
	euro := []byte(`{"username":"u","message":"€uro"}`) // € is 3 bytes: split it across fragments
	split := bytes.Index(euro, []byte("€")) + 1
	cases := []struct {
		section, name string
		frames        [][]byte
		unmasked      bool
		want          outcome
	}{
		// 1. Framing.
		{"1", "text message", [][]byte{rawFrame(finText, msg("one"), false)}, false, outcome{deliver: []string{`{"username":"u","message":"one"}`}}},
		{"1", "16-bit length", [][]byte{rawFrame(finText, msg(long(200)), false)}, false, outcome{deliver: []string{string(msg(long(200)))}}},
		{"1", "exactly MAX_MESSAGE_BYTES", [][]byte{rawFrame(finText, bigPayload, false)}, false, outcome{deliver: []string{string(bigPayload)}}},
		{"1", "over MAX_MESSAGE_BYTES", [][]byte{rawFrame(finText, append(bigPayload, ' '), false)}, false, outcome{close: ws.StatusMessageTooBig}},
		{"1", "64-bit length far over the limit", [][]byte{{finText, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0}}, false, outcome{close: ws.StatusMessageTooBig}},
		{"1", "64-bit length with MSB set", [][]byte{{finText, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}}, false, outcome{close: ws.StatusProtocolError}},
		{"1", "binary message", [][]byte{rawFrame(finBinary, []byte{1, 2, 3}, false)}, false, outcome{close: ws.StatusUnsupportedData}},
		{"1", "unmasked frame", [][]byte{rawFrame(finText, msg("x"), true)}, true, outcome{close: ws.StatusProtocolError}},
		{"1", "two messages in one write", [][]byte{append(rawFrame(finText, msg("a"), false), rawFrame(finText, msg("b"), false)...)}, false,
			outcome{deliver: []string{string(msg("a")), string(msg("b"))}}},
		{"1", "frame split byte by byte", splitBytes(rawFrame(finText, msg("slow"), false)), false, outcome{deliver: []string{string(msg("slow"))}}},

		// 2. Pings and pongs.
		{"2", "ping without payload", [][]byte{rawFrame(finPing, nil, false)}, false, outcome{pongs: []string{""}}},
		{"2", "ping with payload", [][]byte{rawFrame(finPing, []byte("hello"), false)}, false, outcome{pongs: []string{"hello"}}},
		{"2", "ping with 125 bytes", [][]byte{rawFrame(finPing, []byte(long(125)), false)}, false, outcome{pongs: []string{long(125)}}},
		{"2", "ping with 126 bytes", [][]byte{rawFrame(finPing, []byte(long(126)), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"2", "binary ping payload", [][]byte{rawFrame(finPing, []byte{0, 0xff, 0xfe}, false)}, false, outcome{pongs: []string{"\x00\xff\xfe"}}},
		{"2", "unsolicited pong ignored", [][]byte{rawFrame(finPong, []byte("p"), false), rawFrame(finText, msg("after"), false)}, false,
			outcome{deliver: []string{string(msg("after"))}}},
		{"2", "ten pings", repeat(rawFrame(finPing, []byte("n"), false), 10), false, outcome{pongs: strings.Split(strings.Repeat("n", 10), "")}},
		{"2", "fragmented ping", [][]byte{rawFrame(0x09, []byte("a"), false)}, false, outcome{close: ws.StatusProtocolError}},

		// 3. Reserved bits.
		{"3", "RSV1", [][]byte{rawFrame(0xC1, msg("x"), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"3", "RSV2", [][]byte{rawFrame(0xA1, msg("x"), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"3", "RSV3 on a ping", [][]byte{rawFrame(0x99, nil, false)}, false, outcome{close: ws.StatusProtocolError}},

		// 4. Opcodes.
		{"4", "reserved data opcode 3", [][]byte{rawFrame(0x83, nil, false)}, false, outcome{close: ws.StatusProtocolError}},
		{"4", "reserved data opcode 7", [][]byte{rawFrame(0x87, nil, false)}, false, outcome{close: ws.StatusProtocolError}},
		{"4", "reserved control opcode B", [][]byte{rawFrame(0x8B, nil, false)}, false, outcome{close: ws.StatusProtocolError}},
		{"4", "reserved control opcode F", [][]byte{rawFrame(0x8F, nil, false)}, false, outcome{close: ws.StatusProtocolError}},

		// 5. Fragmentation.
		{"5", "text in two fragments", [][]byte{rawFrame(fragText, msg("ab")[:10], false), rawFrame(finCont, msg("ab")[10:], false)}, false,
			outcome{deliver: []string{string(msg("ab"))}}},
		{"5", "text in many fragments", fragments(msg("many"), 3), false, outcome{deliver: []string{string(msg("many"))}}},
		{"5", "ping between fragments", [][]byte{rawFrame(fragText, msg("p")[:5], false), rawFrame(finPing, []byte("mid"), false), rawFrame(finCont, msg("p")[5:], false)}, false,
			outcome{pongs: []string{"mid"}, deliver: []string{string(msg("p"))}}},
		{"5", "continuation without a start", [][]byte{rawFrame(finCont, msg("x"), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"5", "new text inside a fragmented message", [][]byte{rawFrame(fragText, []byte("{"), false), rawFrame(finText, msg("x"), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"5", "fragments over MAX_MESSAGE_BYTES", [][]byte{rawFrame(fragText, bigPayload[:maxMsg-10], false), rawFrame(finCont, []byte(long(11)), false)}, false, outcome{close: ws.StatusMessageTooBig}},
		{"5", "fragmented binary", [][]byte{rawFrame(0x02, []byte{1}, false)}, false, outcome{close: ws.StatusUnsupportedData}},

		// 6. UTF-8.
		{"6", "multi-byte character split across fragments", [][]byte{rawFrame(fragText, euro[:split], false), rawFrame(finCont, euro[split:], false)}, false,
			outcome{deliver: []string{string(euro)}}},
		{"6", "invalid UTF-8 text", [][]byte{rawFrame(finText, invalidUTF8, false)}, false, outcome{close: ws.StatusInvalidFramePayloadData}},
		{"6", "invalid UTF-8 across fragments", [][]byte{rawFrame(fragText, invalidUTF8[:3], false), rawFrame(finCont, invalidUTF8[3:], false)}, false, outcome{close: ws.StatusInvalidFramePayloadData}},
		{"6", "overlong encoding", [][]byte{rawFrame(finText, []byte{'"', 0xc0, 0xaf, '"'}, false)}, false, outcome{close: ws.StatusInvalidFramePayloadData}},
		{"6", "surrogate half", [][]byte{rawFrame(finText, []byte{'"', 0xed, 0xa0, 0x80, '"'}, false)}, false, outcome{close: ws.StatusInvalidFramePayloadData}},

		// 7. Closing handshake.
		{"7", "close 1000 echoed", [][]byte{rawFrame(finClose, closeBody(1000, "bye"), false)}, false, outcome{close: 1000}},
		{"7", "empty close answered 1000", [][]byte{rawFrame(finClose, nil, false)}, false, outcome{close: 1000}},
		{"7", "close 1001 echoed", [][]byte{rawFrame(finClose, closeBody(1001, ""), false)}, false, outcome{close: 1001}},
		{"7", "close 3000 echoed", [][]byte{rawFrame(finClose, closeBody(3000, "app"), false)}, false, outcome{close: 3000}},
		{"7", "close 4999 echoed", [][]byte{rawFrame(finClose, closeBody(4999, ""), false)}, false, outcome{close: 4999}},
		{"7", "close with 1-byte payload", [][]byte{rawFrame(finClose, []byte{3}, false)}, false, outcome{close: ws.StatusProtocolError}},
		{"7", "close code 1005 is reserved", [][]byte{rawFrame(finClose, closeBody(1005, ""), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"7", "close code 999", [][]byte{rawFrame(finClose, closeBody(999, ""), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"7", "close code 2999", [][]byte{rawFrame(finClose, closeBody(2999, ""), false)}, false, outcome{close: ws.StatusProtocolError}},
		{"7", "close reason not UTF-8", [][]byte{rawFrame(finClose, append(closeBody(1000, ""), 0xff), false)}, false, outcome{close: ws.StatusInvalidFramePayloadData}},
		{"7", "close with 125-byte payload", [][]byte{rawFrame(finClose, closeBody(1000, long(123)), false)}, false, outcome{close: 1000}},
		{"7", "data after close ignored", [][]byte{append(rawFrame(finClose, closeBody(1000, ""), false), rawFrame(finText, msg("late"), false)...)}, false, outcome{close: 1000}},
	}
	for i, tc := range cases {
		t.Run(tc.section+"/"+tc.name, func(t *testing.T) {
			room := fmt.Sprintf("proto-%d", i)
			peer, c, third := g.dial(t, room), g.dial(t, room), g.dial(t, room)
			defer func() {
				if t.Failed() {
					return
				}
				third.sendChat("third", "marker")
				if got := peer.recv(); got != chat("third", "marker") {
					t.Fatalf("after the case the peer's next frame is %s, want the third member's marker", got)
				}
			}()
			for _, f := range tc.frames {
				c.writeRaw(f)
			}
			for _, want := range tc.want.pongs {
				f, err := c.next()
				if err != nil || f.op != ws.OpPong || string(f.payload) != want {
					t.Fatalf("want pong %q, got %v %q (err %v)", want, f.op, f.payload, err)
				}
			}
			for _, want := range tc.want.deliver {
				if got := peer.recv(); got != want {
					t.Fatalf("peer got %s, want %s", got, want)
				}
			}
			if tc.want.close != 0 {
				code, reason := c.expectClose(false)
				if code != tc.want.close {
					t.Fatalf("close code %d %q, want %d", code, reason, tc.want.close)
				}
				if code >= 1002 && code < 3000 && reason == "" {
					t.Fatalf("close %d without a reason", code)
				}
				c.expectEOF()
				return
			}
			// Still open and usable.
			c.sendChat("u", "still open")
			if got := peer.recv(); got != chat("u", "still open") {
				t.Fatalf("after the case the peer got %s", got)
			}
		})
	}
}

func splitBytes(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

func repeat(b []byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// fragments splits a text message into n frames.
func fragments(p []byte, n int) [][]byte {
	var out [][]byte
	size := (len(p) + n - 1) / n
	for i := 0; i < len(p); i += size {
		end := min(i+size, len(p))
		b0 := byte(fragCont)
		if i == 0 {
			b0 = fragText
		}
		if end == len(p) {
			b0 |= 0x80
		}
		out = append(out, rawFrame(b0, p[i:end], false))
	}
	return out
}

// TestServerPingsAndDropsSilentClients: with short intervals, a client
// that answers pings stays; one that does not is closed with 1001.
func TestServerPingsAndDropsSilentClients(t *testing.T) {
	g := startGateway(t, map[string]string{"PING_INTERVAL": "100ms", "PONG_TIMEOUT": "200ms"})
	alive, silent := g.dial(t, "pings"), g.dial(t, "pings")

	// alive answers every ping, from its own goroutine, and reports the
	// messages it gets.
	pings := make(chan struct{}, 100)
	texts := make(chan string, 10)
	go func() {
		for {
			f, err := alive.next()
			if err != nil {
				close(texts)
				return
			}
			switch f.op {
			case ws.OpPing:
				_, _ = alive.conn.Write(rawFrame(finPong, f.payload, false))
				pings <- struct{}{}
			case ws.OpText:
				texts <- string(f.payload)
			}
		}
	}()

	// silent reads pings but never answers: it must get a ping, then a
	// close 1001 with a reason.
	f, err := silent.next()
	if err != nil || f.op != ws.OpPing {
		t.Fatalf("silent client: want a ping, got %v %v", f.op, err)
	}
	code, reason := silent.expectClose(false)
	if code != ws.StatusGoingAway || !strings.Contains(reason, "ping timeout") {
		t.Fatalf("silent client closed with %d %q, want 1001 ping timeout", code, reason)
	}

	// alive was pinged several times meanwhile and still gets messages.
	for range 3 {
		select {
		case <-pings:
		case <-time.After(testutil.Timeout):
			t.Fatal("alive client was not pinged")
		}
	}
	other := g.dial(t, "pings")
	other.sendChat("o", "still here?")
	if got, ok := <-texts; !ok || got != chat("o", "still here?") {
		t.Fatalf("alive got %q (open %v), want the message", got, ok)
	}
}

// TestSlowConsumerIsClosedWithoutDelayingOthers: a member that stops
// reading is closed with 1008 once its queue passes MAX_QUEUE_BYTES, while
// a reading member gets every message.
func TestSlowConsumerIsClosedWithoutDelayingOthers(t *testing.T) {
	g := startGateway(t, withEnv(noRateLimit, map[string]string{"MAX_MESSAGE_BYTES": "65536", "MAX_QUEUE_BYTES": "131072", "CLOSE_TIMEOUT": "60s"}))
	sender, fast := g.dial(t, "slow"), g.dial(t, "slow")
	slow := g.dial(t, "slow") // never reads until the end

	const n = 300 // 300 × 60 KB = 18 MB: far more than the socket buffers and the queue
	text := strings.Repeat("z", 60000)
	for i := range n {
		// Lockstep with the fast member, so only the slow one falls behind.
		sender.sendChat("s", text)
		if u, m := fast.recvChat(); u != "s" || len(m) != len(text) {
			t.Fatalf("fast member: message %d wrong", i)
		}
	}
	// Now read the slow one: some messages, then 1008.
	code, reason := slow.expectClose(true)
	if code != ws.StatusPolicyViolation || !strings.Contains(reason, "slow consumer") {
		t.Fatalf("slow client closed with %d %q, want 1008 slow consumer", code, reason)
	}
}

func TestShutdownClosesWith1001(t *testing.T) {
	g := startGateway(t, nil)
	a := g.dial(t, "bye")
	g.stop()
	code, reason := a.expectClose(false)
	if code != ws.StatusGoingAway || reason == "" {
		t.Fatalf("close on shutdown %d %q, want 1001 with a reason", code, reason)
	}
	if exit := <-g.code; exit != 0 {
		t.Fatalf("exit code %d after shutdown, want 0", exit)
	}
	g.code <- 0 // for the cleanup
}
