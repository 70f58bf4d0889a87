package room

import (
	"errors"
	"strings"
	"testing"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/conn"
)

func TestHubRoute(t *testing.T) {
	h, err := NewHub(Config{}, testutil.DiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	r100, r101 := strings.Repeat("r", 100), strings.Repeat("r", 101)
	for _, tc := range []struct {
		name   string
		uri    string
		room   string // when status is 0
		status int    // HandshakeError status
		reason string // part of the reason
	}{
		{name: "room", uri: "/ws/chat/lobby/", room: "lobby"},
		{name: "no trailing slash", uri: "/ws/chat/lobby", room: "lobby"},
		{name: "extra segments ignored", uri: "/ws/chat/lobby/extra/seg", room: "lobby"},
		{name: "query", uri: "/ws/chat/lobby/?token=a/b", room: "lobby"},
		{name: "query right after the name", uri: "/ws/chat/lobby?x=1", room: "lobby"},
		{name: "all allowed characters", uri: "/ws/chat/Az09_-.x/", room: "Az09_-.x"},
		{name: "dots", uri: "/ws/chat/../", room: ".."},
		{name: "percent escape", uri: "/ws/chat/%41b%63/", room: "Abc"},
		{name: "lower-case percent escape", uri: "/ws/chat/a%2db/", room: "a-b"},
		{name: "100 bytes", uri: "/ws/chat/" + r100 + "/", room: r100},
		{name: "100 bytes once unescaped", uri: "/ws/chat/" + strings.Repeat("%72", 100) + "/", room: r100},

		{name: "101 bytes", uri: "/ws/chat/" + r101 + "/", status: 400, reason: "101 bytes"},
		{name: "101 bytes once unescaped", uri: "/ws/chat/" + strings.Repeat("%72", 101) + "/", status: 400, reason: "101 bytes"},
		{name: "empty room", uri: "/ws/chat//", status: 400, reason: "empty"},
		{name: "bare prefix", uri: "/ws/chat/", status: 400, reason: "empty"},
		{name: "query instead of a room", uri: "/ws/chat/?room=x", status: 400, reason: "empty"},
		{name: "escaped slash", uri: "/ws/chat/a%2Fb/", status: 400, reason: "'/'"},
		{name: "escaped space", uri: "/ws/chat/a%20b/", status: 400, reason: "' '"},
		{name: "escaped NUL", uri: "/ws/chat/a%00/", status: 400, reason: "room name has"},
		{name: "escaped unicode", uri: "/ws/chat/caf%C3%A9/", status: 400, reason: "room name has"},
		{name: "raw unicode", uri: "/ws/chat/café/", status: 400, reason: "room name has"},
		{name: "plus is not a space", uri: "/ws/chat/a+b/", status: 400, reason: "'+'"},
		{name: "bad escape", uri: "/ws/chat/a%zz/", status: 400, reason: "bad %-escape"},
		{name: "truncated escape", uri: "/ws/chat/a%4/", status: 400, reason: "bad %-escape"},
		{name: "lone percent", uri: "/ws/chat/a%/", status: 400, reason: "bad %-escape"},
		{name: "fragment", uri: "/ws/chat/a#b/", status: 400, reason: "'#'"},
		{name: "prefix without slash", uri: "/ws/chat", status: 404, reason: "no WebSocket endpoint"},
		{name: "other endpoint", uri: "/ws/other/room/", status: 404, reason: "no WebSocket endpoint"},
		{name: "prefix is case-sensitive", uri: "/WS/CHAT/room/", status: 404},
		{name: "escaped prefix", uri: "/ws/%63hat/room/", status: 404},
		{name: "absolute form", uri: "http://host/ws/chat/room/", status: 404},
		{name: "empty URI", uri: "", status: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room, err := h.Route([]byte(tc.uri))
			if tc.status == 0 {
				if err != nil || room != tc.room {
					t.Fatalf("Route(%q) = %q, %v; want %q", tc.uri, room, err, tc.room)
				}
				return
			}
			var he *conn.HandshakeError
			if !errors.As(err, &he) || he.Status != tc.status || !strings.Contains(he.Reason, tc.reason) {
				t.Fatalf("Route(%q) = %q, %v; want a %d naming %q", tc.uri, room, err, tc.status, tc.reason)
			}
			if room != "" {
				t.Fatalf("Route returned room %q with an error", room)
			}
			if strings.ContainsAny(he.Reason, "\r\n") || len(he.Reason) > 200 {
				t.Fatalf("reason %q is not one short line", he.Reason)
			}
		})
	}
}

func TestValidRoomName(t *testing.T) {
	allowed := func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
	}
	t.Run("every byte", func(t *testing.T) {
		for c := 0; c < 256; c++ {
			name := "a" + string([]byte{byte(c)}) + "b"
			err := ValidRoomName(name)
			if (err == nil) != allowed(byte(c)) {
				t.Errorf("ValidRoomName(%q) = %v", name, err)
			}
			if err != nil && !strings.Contains(err.Error(), "at byte 1") {
				t.Errorf("error %q does not name byte 1", err)
			}
		}
	})
	for _, tc := range []struct {
		name, room string
		ok         bool
	}{
		{"empty", "", false},
		{"one byte", "a", true},
		{"one dot", ".", true},
		{"99 bytes", strings.Repeat("x", 99), true},
		{"100 bytes", strings.Repeat("x", 100), true},
		{"101 bytes", strings.Repeat("x", 101), false},
		{"1000 bytes", strings.Repeat("x", 1000), false},
		{"mixed", "Room_1-b.C", true},
		{"multi-byte character", "café", false},
		{"space", "a b", false},
		{"slash", "a/b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidRoomName(tc.room); (err == nil) != tc.ok {
				t.Fatalf("ValidRoomName(%q) = %v, want ok %v", tc.room, err, tc.ok)
			}
		})
	}
}

func TestNewHubNeedsLogger(t *testing.T) {
	if _, err := NewHub(Config{}, nil); err == nil {
		t.Fatal("NewHub without a logger: no error")
	}
	if _, err := NewHub(Config{}, testutil.DiscardLogger()); err != nil {
		t.Fatalf("NewHub: %v", err)
	}
}
