package conn

import (
	"bufio"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

// healthMux answers GET /healthz, as the gateway does.
func healthMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	return mux
}

// TestUpgradeAnswers: every request the loop refuses itself gets an HTTP
// status and a reason at once, never after the handshake timeout (one
// minute here, longer than the test waits).
func TestUpgradeAnswers(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{
		HandshakeTimeout: time.Minute,
		MaxHeaderBytes:   2048,
		AllowedHosts:     []string{"chat.test"},
		AllowedOrigins:   []string{"https://chat.test", ".example.org"},
	}, rec)
	long := "X-Padding: " + strings.Repeat("p", 2100)
	for _, tc := range []struct {
		name   string
		req    string
		status int
		reason string
	}{
		{"valid", string(upgradeRequest("/ws/a")), 101, ""},
		{"bare LF line ends", strings.ReplaceAll(string(upgradeRequest("/ws/a")), "\r\n", "\n"), 400, "CRLF"},
		{"one bare LF", strings.Replace(string(upgradeRequest("/ws/a")), "Upgrade: websocket\r\n", "Upgrade: websocket\n", 1), 400, "CRLF"},
		{"bare LF on a plain HTTP request", "GET /healthz HTTP/1.1\nHost: chat.test\n\n", 400, "CRLF"},
		{"head over MAX_HEADER_BYTES, complete", string(upgradeRequest("/ws/a", long)), 431, "MAX_HEADER_BYTES"},
		{"head over MAX_HEADER_BYTES, unfinished", "GET /ws/a HTTP/1.1\r\n" + long, 431, "MAX_HEADER_BYTES"},
		{"host not allowed", strings.Replace(string(upgradeRequest("/ws/a")), "Host: chat.test", "Host: evil.test", 1), 400, "ALLOWED_HOSTS"},
		{"origin not allowed", string(upgradeRequest("/ws/a", "Origin: https://evil.example")), 403, "ALLOWED_ORIGINS"},
		{"origin with another scheme", string(upgradeRequest("/ws/a", "Origin: http://chat.test")), 403, "ALLOWED_ORIGINS"},
		{"allowed origin", string(upgradeRequest("/ws/a", "Origin: https://chat.test")), 101, ""},
		{"allowed origin, default port", string(upgradeRequest("/ws/a", "Origin: https://CHAT.test:443")), 101, ""},
		{"origin under an allowed domain", string(upgradeRequest("/ws/a", "Origin: http://www.example.org:8080")), 101, ""},
		{"no origin (not a browser)", string(upgradeRequest("/ws/a")), 101, ""},
		{"null origin", string(upgradeRequest("/ws/a", "Origin: null")), 403, "ALLOWED_ORIGINS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _, resp, body := send(t, s, "", []byte(tc.req))
			defer nc.Close()
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.reason) {
				t.Fatalf("answer %d %q; want %d naming %q", resp.StatusCode, body, tc.status, tc.reason)
			}
		})
	}
	testutil.Eventually(t, "every refused socket to be released", func() bool { return s.Stats().Open == 0 })
	if st := s.Stats(); st.TimedOut != 0 || st.Upgraded != 5 {
		t.Fatalf("stats %+v; want 5 upgrades and no timeout", st)
	}
}

// TestOriginAnyWithStar: "*" allows any Origin.
func TestOriginAnyWithStar(t *testing.T) {
	s := startServer(t, Config{AllowedOrigins: []string{"https://chat.test", "*"}}, newRecorder())
	nc, _, resp, body := send(t, s, "", upgradeRequest("/ws/a", "Origin: https://evil.example"))
	defer nc.Close()
	if resp.StatusCode != 101 {
		t.Fatalf("answer %d %q; want 101", resp.StatusCode, body)
	}
}

func TestOriginList(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed []string
		yes, no []string
	}{
		{"empty allows any", nil, []string{"https://a.b", "null", ""}, nil},
		{"star", []string{"*"}, []string{"https://a.b", "null"}, nil},
		{"exact origin", []string{"https://chat.example.com"},
			[]string{"https://chat.example.com", "HTTPS://Chat.Example.COM", "https://chat.example.com:443", "https://chat.example.com/"},
			[]string{"http://chat.example.com", "https://chat.example.com:8443", "https://example.com", "https://chat.example.com.evil.org", "null", "chat.example.com"}},
		{"origin with a port", []string{"http://localhost:3000"},
			[]string{"http://localhost:3000"}, []string{"http://localhost", "http://localhost:3001"}},
		{"bare host: any scheme and port", []string{"chat.example.com"},
			[]string{"https://chat.example.com", "http://chat.example.com:8080"}, []string{"https://example.com", "https://xchat.example.com"}},
		{"domain pattern", []string{".example.com"},
			[]string{"https://example.com", "https://a.b.example.com:1"}, []string{"https://badexample.com", "https://example.org"}},
		{"IPv6", []string{"http://[::1]:8000"}, []string{"http://[::1]:8000"}, []string{"http://[::2]:8000"}},
		{"null when listed", []string{"null"}, []string{"null"}, []string{"https://a.b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := newOriginList(tc.allowed)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range tc.yes {
				if !o.allow(v) {
					t.Errorf("Origin %q refused with %q", v, tc.allowed)
				}
			}
			for _, v := range tc.no {
				if o.allow(v) {
					t.Errorf("Origin %q accepted with %q", v, tc.allowed)
				}
			}
		})
	}
	for _, bad := range []string{"https://a.b/path", "https://", "a.b/path", "https://user@a.b"} {
		if _, err := newOriginList([]string{bad}); err == nil || !strings.Contains(err.Error(), "ALLOWED_ORIGINS") {
			t.Errorf("entry %q: error %v, want one naming ALLOWED_ORIGINS", bad, err)
		}
	}
}

// TestHandshakeTimeout: a request head that does not arrive in time gets
// 408 and the socket is released; it counts in Stats.TimedOut.
func TestHandshakeTimeout(t *testing.T) {
	s := startServer(t, Config{HandshakeTimeout: 100 * time.Millisecond}, newRecorder())
	nc := dialFrom(t, s, "", 0)
	if _, err := nc.Write([]byte("GET /ws/a HTTP/1.1\r\nHost: chat.test\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, body := readResponse(t, bufio.NewReader(nc))
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(body, "HANDSHAKE_TIMEOUT") {
		t.Fatalf("answer %d %q; want 408 naming HANDSHAKE_TIMEOUT", resp.StatusCode, body)
	}
	testutil.Eventually(t, "the socket to be released", func() bool { return s.Stats().Open == 0 })
	if st := s.Stats(); st.TimedOut != 1 {
		t.Fatalf("Stats.TimedOut %d, want 1", st.TimedOut)
	}
}

// TestFramesBehindUpgrade: frames written in the same packet as the
// upgrade request are parsed once the connection is open.
func TestFramesBehindUpgrade(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	req := cat(upgradeRequest("/ws/a"), frame(bText, []byte("first")), frame(bPing, []byte("p")), frame(bFragText, []byte("sec")), frame(bFinCont, []byte("ond")))
	nc, br, resp, body := send(t, s, "", req)
	if resp.StatusCode != 101 {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	if f := readFrame(t, nc, br); f.Header.OpCode != ws.OpPong || string(f.Payload) != "p" {
		t.Fatalf("first frame %v %q, want the pong", f.Header.OpCode, f.Payload)
	}
	for _, want := range []string{"first", "second"} {
		select {
		case got := <-rec.msgs:
			if got != want {
				t.Fatalf("message %q, want %q", got, want)
			}
		case <-time.After(testutil.Timeout):
			t.Fatalf("message %q never delivered", want)
		}
	}
}

// pendingRecorder defers every upgrade (OpenPending) and hands the Conn to
// the test, which completes it.
type pendingRecorder struct {
	*recorder
	pending chan *Conn
}

func (p *pendingRecorder) OnOpen(c *Conn) (Opening, error) {
	p.pending <- c
	return OpenPending, nil
}

// TestFramesWhileJoinPending: frames a client sends before its upgrade is
// completed are held and delivered, in order, after the 101; an upgrade
// refused by Complete gets the Handler's status and no OnClose.
func TestFramesWhileJoinPending(t *testing.T) {
	h := &pendingRecorder{recorder: newRecorder(), pending: make(chan *Conn, 10)}
	s := startServer(t, Config{}, h)
	nc := dialFrom(t, s, "", 0)
	if _, err := nc.Write(cat(upgradeRequest("/ws/a"), frame(bText, []byte("one")))); err != nil {
		t.Fatal(err)
	}
	var c *Conn
	select {
	case c = <-h.pending:
	case <-time.After(testutil.Timeout):
		t.Fatal("OnOpen was not called")
	}
	// More frames while the join is pending, then the answer.
	if _, err := nc.Write(cat(frame(bText, []byte("two")), frame(bPing, []byte("p")))); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the loop to hold the early frames", func() bool { return s.Stats().PartialBytes > 0 })
	c.Complete(nil)
	br := bufio.NewReader(nc)
	if resp, body := readResponse(t, br); resp.StatusCode != 101 {
		t.Fatalf("answer %d %q, want 101", resp.StatusCode, body)
	}
	if f := readFrame(t, nc, br); f.Header.OpCode != ws.OpPong {
		t.Fatalf("frame %v, want the pong", f.Header.OpCode)
	}
	for _, want := range []string{"one", "two"} {
		if got := <-h.msgs; got != want {
			t.Fatalf("message %q, want %q", got, want)
		}
	}
	if st := s.Stats(); st.PartialBytes != 0 || st.Upgraded != 1 {
		t.Fatalf("stats %+v; want nothing held and one upgrade", st)
	}

	// A refused join.
	nc2 := dialFrom(t, s, "", 0)
	if _, err := nc2.Write(upgradeRequest("/ws/b")); err != nil {
		t.Fatal(err)
	}
	c2 := <-h.pending
	c2.Complete(&HandshakeError{Status: http.StatusForbidden, Reason: "not in this room"})
	if resp, body := readResponse(t, bufio.NewReader(nc2)); resp.StatusCode != 403 || !strings.Contains(body, "not in this room") {
		t.Fatalf("answer %d %q, want 403 with the Handler's reason", resp.StatusCode, body)
	}
	testutil.Eventually(t, "the refused socket to be released", func() bool { return s.Stats().WebSockets == 1 })
	select {
	case cause := <-h.closed:
		t.Fatalf("OnClose(%v) for a join refused by Complete", cause)
	default:
	}
}

// TestMaxConnections: past MAX_CONNECTIONS an upgrade gets 503 with
// Retry-After, plain HTTP still answers, and a slot that frees up is
// taken again.
func TestMaxConnections(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxConnections: 3, HTTPHandler: healthMux(), CloseTimeout: 100 * time.Millisecond}, rec)
	var clients []*Conn
	for range 3 {
		_, _, c := dialServer(t, s, rec)
		clients = append(clients, c)
	}
	nc, _, resp, body := send(t, s, "", upgradeRequest("/ws/a"))
	nc.Close()
	wantRefusal(t, resp, body, "MAX_CONNECTIONS")
	if status, body := get(t, s, "", "/healthz"); status != 200 || body != "ok\n" {
		t.Fatalf("/healthz while capped: %d %q", status, body)
	}
	clients[0].Close(ErrShutdown)
	testutil.Eventually(t, "a slot to free up", func() bool { return s.Stats().WebSockets == 2 })
	dialServer(t, s, rec)
	if st := s.Stats(); st.Refused != 1 || st.WebSockets != 3 {
		t.Fatalf("stats %+v; want 1 refused, 3 WebSockets", st)
	}
	if s.Config().MaxConnections != 3 {
		t.Fatalf("Config().MaxConnections = %d, want 3", s.Config().MaxConnections)
	}
}

// TestHandlerRefusalRetryAfter: a 503 from the Handler carries
// Retry-After, like the server's own.
func TestHandlerRefusalRetryAfter(t *testing.T) {
	s := startServer(t, Config{}, refusingHandler{newRecorder()})
	nc, _, resp, body := send(t, s, "", upgradeRequest("/ws/a"))
	defer nc.Close()
	wantRefusal(t, resp, body, "store down")
}

type refusingHandler struct{ *recorder }

func (refusingHandler) OnOpen(*Conn) (Opening, error) { return OpenNow, errors.New("store down") }
