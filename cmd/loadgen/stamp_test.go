package main

import (
	"encoding/json"
	"io"
	"testing"
)

func TestStampRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		s    stamp
		pad  int
	}{
		{"zero", stamp{}, 0},
		{"typical", stamp{run: 12345, sender: 7, seq: 42, nanos: 1_700_000_000_123_456_789}, 0},
		{"max", stamp{run: 1<<32 - 1, sender: 1<<32 - 1, seq: 1<<32 - 1, nanos: 1<<63 - 1}, 0},
		{"padded", stamp{run: 1, sender: 2, seq: 3, nanos: 4}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := appendChatMessage(nil, tt.s, tt.pad, false)
			var m struct{ Username, Message string }
			if err := json.Unmarshal(msg, &m); err != nil {
				t.Fatalf("message %s is not JSON: %v", msg, err)
			}
			// The gateway may re-encode the JSON; the stamp must survive.
			reencoded, _ := json.Marshal(map[string]string{"message": m.Message, "username": m.Username})
			for _, frame := range [][]byte{msg, reencoded} {
				sb, ok := findStamp(frame)
				if !ok {
					t.Fatalf("findStamp(%s) found nothing", frame)
				}
				got, ok := parseStamp(sb)
				if !ok || got != tt.s {
					t.Fatalf("parseStamp(%q) = %+v, %v; want %+v", sb, got, ok, tt.s)
				}
			}
		})
	}
}

func TestParseStampRejects(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"no prefix", "1:2:3:4"},
		{"too few fields", "lg:1:2:3"},
		{"empty field", "lg:1::3:4"},
		{"letters", "lg:1:a:3:4"},
		{"run overflow", "lg:4294967296:2:3:4"},
		{"nanos overflow", "lg:1:2:3:9999999999999999999"},
		{"too many digits", "lg:1:2:3:12345678901234567890"},
		{"trailing junk", "lg:1:2:3:4x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, ok := parseStamp([]byte(tt.in)); ok {
				t.Errorf("parseStamp(%q) = %+v, want failure", tt.in, s)
			}
		})
	}
}

func TestFindStamp(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{"spaced JSON", `{"username": "lg-1", "message": "lg:1:2:3:4"}`, "lg:1:2:3:4", true},
		{"error frame", `{"error":"invalid_json","detail":"x"}`, "", false},
		{"unterminated", `{"message":"lg:1:2:3:4`, "", false},
		{"username is not a stamp", `{"username":"lg-9","message":"hi"}`, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := findStamp([]byte(tt.in))
			if ok != tt.ok || string(got) != tt.want {
				t.Errorf("findStamp(%s) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestStampPathDoesNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 256)
	s := stamp{run: 1, sender: 2, seq: 3, nanos: 4}
	allocs := testing.AllocsPerRun(100, func() {
		buf = appendChatMessage(buf[:0], s, 0, true)
		sb, _ := findStamp(buf)
		if _, ok := parseStamp(sb); !ok {
			t.Fatal("round trip failed")
		}
	})
	if allocs != 0 {
		t.Errorf("encode+decode allocates %v times per message, want 0", allocs)
	}
}

// TestChatMessageWithCID: -cid adds a unique "cid" after the message and
// the stamp is still found.
func TestChatMessageWithCID(t *testing.T) {
	s := stamp{run: 35, sender: 2, seq: 7, nanos: 9}
	msg := appendChatMessage(nil, s, 0, true)
	var m struct{ Username, Message, CID string }
	if err := json.Unmarshal(msg, &m); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
	if m.CID != "z-2-7" {
		t.Errorf("cid %q, want z-2-7 (run in base 36, sender, seq)", m.CID)
	}
	sb, ok := findStamp(msg)
	if st, ok2 := parseStamp(sb); !ok || !ok2 || st != s {
		t.Errorf("stamp of %s: %+v, want %+v", msg, st, s)
	}
}

// TestFrameKinds: acknowledgements and presence or history frames are
// counted as such, not as unparsed or error frames.
func TestFrameKinds(t *testing.T) {
	cfg, err := parseFlags([]string{"-options", "ids=1&ack=1", "-cid"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	r := newRunner(cfg, io.Discard)
	c := &client{}
	for _, f := range []string{`{"ack":"1-0","cid":"a"}`, `{"presence":{"members":3}}`, `{"truncated":{"since":"1-0","from":"2-0"}}`, `{"error":"unconfirmed","cid":"a"}`} {
		c.onMessage(r, []byte(f))
	}
	if c.acks != 1 || c.info != 2 || c.errFrames != 1 || c.unparsed != 0 {
		t.Fatalf("acks %d info %d errors %d unparsed %d; want 1, 2, 1, 0", c.acks, c.info, c.errFrames, c.unparsed)
	}
	if _, err := parseFlags([]string{"-options", "a=1#x"}, io.Discard); err == nil {
		t.Error("-options with a fragment was accepted")
	}
}
