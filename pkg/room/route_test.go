package room

import (
	"testing"
	"unsafe"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/auth"
)

// TestKnownRoomMatchesRoute: Route answers the same with and without the
// room on the node (the known-room shortcut is exact), and a plain path to
// a known room shares the room's name instead of copying the URI.
func TestKnownRoomMatchesRoute(t *testing.T) {
	fresh, err := NewHub(Config{}, testutil.DiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	known, err := NewHub(Config{}, testutil.DiscardLogger())
	if err != nil {
		t.Fatal(err)
	}
	r := &room{name: "x"}
	known.rooms["x"] = r
	for _, uri := range []string{
		"/ws/chat/x/", "/ws/chat/x", "/ws/chat/x/extra", "/ws/chat/x/?ids=1", "/ws/chat/x?ids=1",
		"/ws/chat/%78/", "/ws/chat//", "/ws/chat/", "/ws/chat/y/", "/ws/chatx/", "/other/x/",
	} {
		want, wantErr := fresh.Route([]byte(uri))
		got, gotErr := known.Route([]byte(uri))
		if got != want || (gotErr == nil) != (wantErr == nil) {
			t.Errorf("Route(%q) = %q, %v with the room known; %q, %v without", uri, got, gotErr, want, wantErr)
		}
	}
	for _, uri := range []string{"/ws/chat/x/", "/ws/chat/x", "/ws/chat/x/extra"} {
		if key, _ := known.Route([]byte(uri)); unsafe.StringData(key) != unsafe.StringData(r.name) {
			t.Errorf("Route(%q) copied the name instead of sharing the room's", uri)
		}
	}
	known.tokens = &auth.Verifier{} // a token must be checked: no shortcut
	if _, ok := known.knownRoom([]byte("/ws/chat/x/")); ok {
		t.Error("knownRoom answered for a hub that checks tokens")
	}
}
