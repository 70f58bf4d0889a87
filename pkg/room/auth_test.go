package room

import (
	"testing"
	"time"

	"github.com/chatgw/gateway/pkg/auth"
	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef"

func token(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	if _, ok := claims["exp"]; !ok {
		claims["exp"] = time.Now().Add(time.Hour).Unix()
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTokens: with a key configured, joins need a valid token allowing
// the room (401, 403 otherwise), and a username claim replaces the
// username of every message of that connection.
func TestTokens(t *testing.T) {
	_, addr := startHub(t, Config{Auth: auth.Config{HS256Secret: testSecret}}, newGateEngine())
	for _, tc := range []struct {
		name, uri string
		status    int
	}{
		{"no token", "/ws/chat/lobby/", 401},
		{"empty token", "/ws/chat/lobby/?token=", 401},
		{"bad token", "/ws/chat/lobby/?token=abc", 401},
		{"expired", "/ws/chat/lobby/?token=" + token(t, jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}), 401},
		{"room not allowed", "/ws/chat/lobby/?token=" + token(t, jwt.MapClaims{"rooms": []string{"team-*"}}), 403},
		{"bad room name still 400", "/ws/chat/a%20b/?token=" + token(t, jwt.MapClaims{}), 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := <-dialAsync(t, addr, tc.uri)
			if r.status != tc.status {
				t.Fatalf("join: status %d (%v), want %d", r.status, r.err, tc.status)
			}
		})
	}

	ana := joined(t, dialAsync(t, addr, "/ws/chat/team-a/?token="+token(t, jwt.MapClaims{"rooms": []string{"team-*"}, "username": "ana <a@b>"})))
	free := joined(t, dialAsync(t, addr, "/ws/chat/team-a/?x=1&token="+token(t, jwt.MapClaims{})))
	ana.send(t, `{"username": "the admin", "message": {"text": "hi"}}`)
	if got, want := free.recvText(t), `{"username":"ana <a@b>","message":{"text":"hi"}}`; got != want {
		t.Fatalf("member got %s, want %s (the token's username)", got, want)
	}
	free.send(t, chatMsg("bo", "as sent"))
	if got := ana.recvText(t); got != chatMsg("bo", "as sent") {
		t.Fatalf("a token without username changed the username: %s", got)
	}
	// A forced username does not excuse a malformed message.
	ana.send(t, `{"message": "no username"}`)
	if got := errorCode(t, ana.recvText(t)); got != CodeMissingField {
		t.Fatalf("got %q, want missing_field", got)
	}
}

func TestSplitKey(t *testing.T) {
	for key, want := range map[string][2]string{
		"lobby":                        {"lobby", ""},
		"lobby" + connKeySep + `"ana"`: {"lobby", `"ana"`},
		"":                             {"", ""},
	} {
		if n, u := splitConnKey(key); n != want[0] || u != want[1] {
			t.Errorf("splitConnKey(%q) = %q, %q; want %q, %q", key, n, u, want[0], want[1])
		}
	}
}
