package conn

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// echoMux serves POST /echo, which reads the whole body and answers its
// length, and GET /healthz.
func echoMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
		case err != nil:
			http.Error(w, "body not read: "+err.Error(), http.StatusRequestTimeout)
		default:
			_, _ = w.Write([]byte(strings.Repeat("x", len(b))))
		}
	})
	return mux
}

// TestSlowHTTPBody is the attack "POST with Content-Length 100000, one
// byte at a time": the HTTP server cuts the request at HTTP_READ_TIMEOUT,
// long before the body is sent; while it lasts the connection is in
// Stats.HTTP, and the cut in Stats.TimedOut.
func TestSlowHTTPBody(t *testing.T) {
	s := startServer(t, Config{HTTPReadTimeout: 300 * time.Millisecond, HTTPMaxBodyBytes: 1 << 20, HTTPHandler: echoMux()}, newRecorder())
	nc := dialFrom(t, s, "", 0)
	if _, err := nc.Write([]byte("POST /echo HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 100000\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the connection to count in Stats.HTTP", func() bool { st := s.Stats(); return st.HTTP == 1 && st.Open == 0 })
	// One byte every 10 ms until the server stops the request.
	sent := make(chan int, 1)
	go func() {
		n := 0
		tick := time.NewTicker(10 * time.Millisecond) // the attacker's pace
		defer tick.Stop()
		for range tick.C {
			if _, err := nc.Write([]byte("a")); err != nil || n == 100000 {
				break
			}
			n++
		}
		sent <- n
	}()
	resp, body := readResponse(t, bufio.NewReader(nc))
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("answer %d %q; want the handler's 408 after the read timeout", resp.StatusCode, body)
	}
	testutil.Eventually(t, "the connection to be closed", func() bool { return s.Stats().HTTP == 0 })
	nc.Close()
	if n := <-sent; n >= 100000 {
		t.Fatalf("the whole body (%d bytes) was sent: the request was never cut", n)
	}
	if st := s.Stats(); st.TimedOut != 1 {
		t.Fatalf("stats %+v; want the timeout counted", st)
	}
}

// TestHTTPBodyLimit: a declared body over HTTP_MAX_BODY_BYTES gets 413
// without being read; an undeclared one (chunked) fails to read past it.
func TestHTTPBodyLimit(t *testing.T) {
	s := startServer(t, Config{HTTPMaxBodyBytes: 1000, HTTPHandler: echoMux()}, newRecorder())
	nc, _, resp, body := send(t, s, "", []byte("POST /echo HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 100000\r\n\r\n"))
	nc.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "HTTP_MAX_BODY_BYTES") {
		t.Fatalf("declared body over the limit: %d %q", resp.StatusCode, body)
	}
	chunk := strings.Repeat("y", 600)
	req := "POST /echo HTTP/1.1\r\nHost: chat.test\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n" + chunk + "\r\n258\r\n" + chunk + "\r\n0\r\n\r\n"
	nc, _, resp, body = send(t, s, "", []byte(req))
	nc.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked body over the limit: %d %q", resp.StatusCode, body)
	}
	nc, _, resp, body = send(t, s, "", []byte("POST /echo HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 5\r\n\r\nhello"))
	nc.Close()
	if resp.StatusCode != 200 || body != "xxxxx" {
		t.Fatalf("small body: %d %q", resp.StatusCode, body)
	}
}

// TestHTTPConnectionsCounted: plain HTTP connections count in
// Stats.HTTP and against MAX_CONNECTIONS_PER_IP until they close; an idle
// keep-alive connection closed by HTTP_IDLE_TIMEOUT is not a timeout.
func TestHTTPConnectionsCounted(t *testing.T) {
	s := startServer(t, Config{MaxConnectionsPerIP: 2, HTTPIdleTimeout: 200 * time.Millisecond, HTTPHandler: echoMux()}, newRecorder())
	keepAlive := []byte("GET /healthz HTTP/1.1\r\nHost: chat.test\r\n\r\n")
	a, abr, resp, _ := send(t, s, "127.0.0.1", keepAlive)
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
	b, _, resp, _ := send(t, s, "127.0.0.1", keepAlive)
	if resp.StatusCode != 200 {
		t.Fatalf("/healthz: %d", resp.StatusCode)
	}
	if st := s.Stats(); st.HTTP != 2 {
		t.Fatalf("stats %+v; want 2 HTTP connections", st)
	}
	nc, _, resp, body := send(t, s, "127.0.0.1", keepAlive)
	nc.Close()
	wantRefusal(t, resp, body, "MAX_CONNECTIONS_PER_IP")
	b.Close()
	testutil.Eventually(t, "the closed connection to count out", func() bool { return s.Stats().HTTP == 1 })
	// The idle one is closed by the server.
	_ = a.SetReadDeadline(time.Now().Add(testutil.Timeout))
	if _, err := abr.ReadByte(); err != io.EOF {
		t.Fatalf("idle keep-alive connection: read %v, want EOF", err)
	}
	testutil.Eventually(t, "the idle connection to count out", func() bool { return s.Stats().HTTP == 0 })
	if st := s.Stats(); st.TimedOut != 0 {
		t.Fatalf("stats %+v: an idle keep-alive connection counted as a timeout", st)
	}
}
