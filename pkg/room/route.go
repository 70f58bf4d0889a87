package room

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/chatgw/gateway/pkg/conn"
)

// PathPrefix is where chat rooms live: ws://HOST/ws/chat/<room>/.
const PathPrefix = "/ws/chat/"

// MaxRoomName is the longest room name accepted, in bytes.
const MaxRoomName = 100

// Route maps a request URI to its room: /ws/chat/<room>/ (extra segments
// after the room are ignored, as in the original app). Unknown paths get
// 404, bad room names 400, a query option with a bad value (options.go)
// 400. With a verification key in Config.Auth, the token query parameter must hold a
// valid token (else 401) that allows the room (else 403); a username it
// fixes and the options ride in the connection key (conn.Conn.Key), after the room name (see
// splitConnKey). Token checks run here, on the event loop: an ES256 or RS256
// verification costs tens of microseconds per upgrade.
func (h *Hub) Route(uri []byte) (string, error) {
	if name, ok := h.knownRoom(uri); ok {
		return name, nil
	}
	path, query, _ := strings.Cut(string(uri), "?")
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return "", &conn.HandshakeError{Status: http.StatusNotFound,
			Reason: fmt.Sprintf("no WebSocket endpoint at %q; rooms are at %s<room>/", path, PathPrefix)}
	}
	name, _, _ := strings.Cut(rest, "/")
	if strings.Contains(name, "%") {
		dec, err := url.PathUnescape(name)
		if err != nil {
			return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: "room name has a bad %-escape"}
		}
		name = dec
	}
	if err := ValidRoomName(name); err != nil {
		return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: err.Error()}
	}
	var opts options
	if query != "" {
		var err error
		if opts, err = parseOptions(query, h.historyMax); err != nil {
			return "", err
		}
	}
	connKey := name
	if h.tokens != nil {
		var err error
		if connKey, err = h.authorize(name, query); err != nil {
			return "", err
		}
	}
	return withOptions(connKey, opts), nil
}

// knownRoom returns the name of a room this node holds when uri is its
// plain path (no query, no escape, no token to check), without copying
// uri: most joins are to rooms that have members already, and their
// connections then share the room's name as their key instead of each
// keeping a copy of its URI.
func (h *Hub) knownRoom(uri []byte) (string, bool) {
	rest, ok := bytes.CutPrefix(uri, []byte(PathPrefix))
	if !ok || h.tokens != nil || bytes.IndexByte(uri, '?') >= 0 {
		return "", false
	}
	name, _, _ := bytes.Cut(rest, []byte("/"))
	if bytes.IndexByte(name, '%') >= 0 {
		return "", false
	}
	h.mu.RLock()
	r := h.rooms[string(name)]
	h.mu.RUnlock()
	if r == nil {
		return "", false
	}
	return r.name, true
}

// connKeySep separates the room name from the username a token fixes, and
// that from the query options (withOptions), in a connection key:
// "<room>", "<room>\x00<username as JSON>" or
// "<room>\x00<username or nothing>\x00<options>". Room names never
// contain it, nor does JSON (it escapes control characters).
const connKeySep = "\x00"

// splitConnKey returns the room and the fixed username ("" when none) of a
// connection key.
func splitConnKey(connKey string) (name, user string) {
	name, rest, _ := strings.Cut(connKey, connKeySep)
	user, _, _ = strings.Cut(rest, connKeySep)
	return name, user
}

// authorize checks the token of a request for room name (the token query
// parameter) and returns the connection key.
func (h *Hub) authorize(name, query string) (string, error) {
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: "bad query string"}
	}
	claims, err := h.tokens.Verify(q.Get("token"))
	if err != nil {
		return "", &conn.HandshakeError{Status: http.StatusUnauthorized, Reason: err.Error()}
	}
	if !claims.AllowsRoom(name) {
		return "", &conn.HandshakeError{Status: http.StatusForbidden, Reason: fmt.Sprintf("auth: the token does not allow room %q", name)}
	}
	if claims.Username == nil {
		return name, nil
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(*claims.Username) // a string always encodes
	return name + connKeySep + strings.TrimSuffix(b.String(), "\n"), nil
}

// ValidRoomName checks a room name: 1 to MaxRoomName bytes of ASCII letters,
// digits, '_', '-' and '.'.
func ValidRoomName(name string) error {
	if name == "" {
		return fmt.Errorf("room name is empty; use %s<room>/", PathPrefix)
	}
	if len(name) > MaxRoomName {
		return fmt.Errorf("room name is %d bytes; the limit is %d", len(name), MaxRoomName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("room name has %q at byte %d; use ASCII letters, digits, '_', '-' and '.'", c, i)
		}
	}
	return nil
}
