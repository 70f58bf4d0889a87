package conn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// headCase is a request head and the answer the loop gives it: status 0
// means accepted (101 for an upgrade, the handler's answer for plain
// HTTP). A refusal names reason and closes the connection.
type headCase struct {
	name   string
	edit   func(head string) string // turns a valid head into the case
	status int
	reason string
}

// Edits of a valid head ("GET ... HTTP/1.1\r\nHost: chat.test\r\n...\r\n\r\n").
func addLines(lines ...string) func(string) string {
	return func(h string) string {
		return strings.TrimSuffix(h, "\r\n") + strings.Join(lines, "\r\n") + "\r\n\r\n"
	}
}

func replace(old, with string) func(string) string {
	return func(h string) string { return strings.Replace(h, old, with, 1) }
}

func setRequestLine(line string) func(string) string {
	return func(h string) string { return line + h[strings.Index(h, "\r\n"):] }
}

// headCases are the request-head rules (head.go), each as an edit of a
// valid head; TestHeadRules applies each to an upgrade and to a plain-HTTP
// request.
var headCases = []headCase{
	{"valid", func(h string) string { return h }, 0, ""},
	{"tab and obs-text in a value", addLines("X-Test:\ta\tb \xe2\x82\xac\t"), 0, ""},
	{"empty value", addLines("X-Test:"), 0, ""},
	{"two equal Content-Lengths", addLines("Content-Length: 0", "Content-Length: 0"), 0, ""},

	// Body framing (RFC 9112 section 6).
	{"Transfer-Encoding and Content-Length", addLines("Transfer-Encoding: chunked", "Content-Length: 0"), 400, "both Transfer-Encoding and Content-Length"},
	{"Content-Length and Transfer-Encoding", addLines("Content-Length: 5", "Transfer-Encoding: chunked"), 400, "both Transfer-Encoding and Content-Length"},
	{"Transfer-Encoding not ending with chunked", addLines("Transfer-Encoding: gzip"), 400, "end with chunked"},
	{"chunked then gzip", addLines("Transfer-Encoding: chunked, gzip"), 400, "end with chunked"},
	{"gzip then chunked", addLines("Transfer-Encoding: gzip, chunked"), 501, "only Transfer-Encoding: chunked"},
	{"two Transfer-Encoding lines", addLines("Transfer-Encoding: gzip", "Transfer-Encoding: chunked"), 501, "only Transfer-Encoding: chunked"},
	{"Transfer-Encoding in HTTP/1.0", func(h string) string {
		return addLines("Transfer-Encoding: chunked")(strings.Replace(h, "HTTP/1.1", "HTTP/1.0", 1))
	}, 400, "HTTP/1.0"},
	{"two different Content-Lengths", addLines("Content-Length: 0", "Content-Length: 1"), 400, "different Content-Length"},
	{"Content-Length 0 and 00", addLines("Content-Length: 0", "Content-Length: 00"), 400, "different Content-Length"},
	{"Content-Length list", addLines("Content-Length: 0, 0"), 400, "Content-Length is not a number"},
	{"Content-Length with a sign", addLines("Content-Length: +0"), 400, "Content-Length is not a number"},
	{"Content-Length not a number", addLines("Content-Length: zero"), 400, "Content-Length is not a number"},
	{"empty Content-Length", addLines("Content-Length: "), 400, "Content-Length is not a number"},
	{"Content-Length over 2^63-1", addLines("Content-Length: 9223372036854775808"), 400, "Content-Length is not a number"},

	// Field lines (RFC 9112 section 5, RFC 9110 section 5).
	{"NUL in a value", addLines("X-Test: a\x00b"), 400, "control character"},
	{"NUL in the Host value", replace("Host: chat.test", "Host: chat.test\x00.evil"), 400, "control character"},
	{"bare CR in a value", addLines("X-Test: a\rb"), 400, "control character"},
	{"DEL in a value", addLines("X-Test: a\x7fb"), 400, "control character"},
	{"escape in a value", addLines("X-Test: \x1b[31m"), 400, "control character"},
	{"space before the colon of Host", replace("Host: chat.test", "Host : chat.test"), 400, "whitespace between a header field name and its colon"},
	{"tab before a colon", addLines("X-Test\t: a"), 400, "whitespace between a header field name and its colon"},
	{"obs-fold", addLines("X-Test: a", " b"), 400, "obs-fold"},
	{"obs-fold with a tab", addLines("X-Test: a", "\tb"), 400, "obs-fold"},
	{"whitespace before the first field", replace("\r\nHost:", "\r\n Host:"), 400, "obs-fold"},
	{"field name not a token", addLines("X(y): a"), 400, "not a token"},
	{"empty field name", addLines(": a"), 400, "not a token"},
	{"line without a colon", addLines("X-Test a"), 400, "no colon"},
	{"duplicate Host", addLines("Host: chat.test"), 400, "more than one Host"},
	{"duplicate Host, other case", addLines("host: evil.test"), 400, "more than one Host"},
	{"missing Host", replace("Host: chat.test\r\n", ""), 400, "missing Host"},
	{"malformed Host", replace("Host: chat.test", "Host: chat test"), 400, "malformed Host"},
	{"duplicate Sec-WebSocket-Key", func(h string) string {
		if !strings.Contains(h, "Sec-WebSocket-Key") {
			h = addLines("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")(h)
		}
		return addLines("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==")(h)
	}, 400, "more than one Sec-WebSocket-Key"},
	{"bare LF", replace("Host: chat.test\r\n", "Host: chat.test\n"), 400, "CRLF"},

	// Request line (RFC 9112 section 3).
	{"two spaces after the method", func(h string) string { return strings.Replace(h, " ", "  ", 1) }, 400, "request target"},
	{"space at the end of the request line", replace(" HTTP/1.1\r\n", " HTTP/1.1 \r\n"), 400, "HTTP version"},
	{"space in the target", replace(" HTTP/1.1\r\n", "?a b HTTP/1.1\r\n"), 400, "HTTP version"},
	{"control character in the target", replace(" HTTP/1.1\r\n", "\x01 HTTP/1.1\r\n"), 400, "request target"},
	{"method not a token", func(h string) string { return "G(T" + h[3:] }, 400, "method"},
	{"three-digit version", replace(" HTTP/1.1\r\n", " HTTP/1.10\r\n"), 400, "HTTP version"},
	{"no version", replace(" HTTP/1.1\r\n", "\r\n"), 400, "request line"},
	{"lower-case http", replace(" HTTP/1.1\r\n", " http/1.1\r\n"), 400, "HTTP version"},
}

const plainHead = "GET /healthz HTTP/1.1\r\nHost: chat.test\r\n\r\n"

// TestHeadRules sends each head of headCases as an upgrade and as a plain
// HTTP request, over a real socket, with a second request pipelined behind
// it: a refused head gets its status and one-line reason, then the
// connection is closed without answering the pipelined request; both
// paths answer alike.
func TestHeadRules(t *testing.T) {
	s := startServer(t, Config{HandshakeTimeout: time.Minute, HTTPHandler: echoMux()}, newRecorder())
	for _, tc := range headCases {
		for _, path := range []struct{ name, head string }{
			{"upgrade", string(upgradeRequest("/ws/a"))},
			{"plain", plainHead},
		} {
			t.Run(path.name+"/"+tc.name, func(t *testing.T) {
				req := tc.edit(path.head)
				if tc.status == 0 {
					nc, _, resp, body := send(t, s, "", []byte(req))
					nc.Close()
					if want := map[string]int{"upgrade": 101, "plain": 200}[path.name]; resp.StatusCode != want {
						t.Fatalf("%q: answer %d %q; want %d", req, resp.StatusCode, body, want)
					}
					return
				}
				nc, br, resp, body := send(t, s, "", []byte(req+plainHead))
				defer nc.Close()
				if resp.StatusCode != tc.status || !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
					t.Fatalf("%q: answer %d %q; want %d and one line naming %q", req, resp.StatusCode, body, tc.status, tc.reason)
				}
				if !resp.Close {
					t.Errorf("%q: the refusal does not say Connection: close", req)
				}
				wantEOF(t, nc, br)
			})
		}
	}
	testutil.Eventually(t, "every socket to be released", func() bool { st := s.Stats(); return st.Open == 0 && st.HTTP == 0 })
}

// wantEOF checks that the server closes the connection without sending
// anything more (no answer to a pipelined request).
func wantEOF(t *testing.T, nc net.Conn, br *bufio.Reader) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		t.Fatalf("after the refusal: read %q, %v; want the connection closed with nothing more", rest, err)
	}
}

// TestSmuggledBodyPipelined is the attack of issue 19: a POST with both
// Transfer-Encoding and Content-Length, a pipelined GET /stats behind it.
// The POST gets 400, the GET no answer.
func TestSmuggledBodyPipelined(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/", echoMux())
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("stats\n")) })
	s := startServer(t, Config{HTTPHandler: mux}, newRecorder())
	req := "POST /echo HTTP/1.1\r\nHost: chat.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n" +
		"GET /stats HTTP/1.1\r\nHost: chat.test\r\n\r\n"
	nc, br, resp, body := send(t, s, "", []byte(req))
	defer nc.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "Transfer-Encoding and Content-Length") {
		t.Fatalf("answer %d %q; want 400 naming Transfer-Encoding and Content-Length", resp.StatusCode, body)
	}
	wantEOF(t, nc, br)
}

// TestHTTPLaterRequestCloses: a request after the first on a kept-alive
// plain-HTTP connection is parsed by net/http alone, which takes a
// chunked body over a Content-Length, and a Content-Length over the
// Transfer-Encoding of HTTP/1.0; the answer to a chunked or HTTP/1.0
// request closes the connection (RFC 9112 section 6.1), and what was
// pipelined behind it is not answered. A request with a Content-Length
// keeps the connection.
func TestHTTPLaterRequestCloses(t *testing.T) {
	s := startServer(t, Config{HTTPHandler: echoMux()}, newRecorder())
	for _, req := range []string{
		"POST /echo HTTP/1.1\r\nHost: chat.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\na\r\n0\r\n\r\n",
		"POST /echo HTTP/1.0\r\nHost: chat.test\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\na",
	} {
		nc, br, resp, body := send(t, s, "", []byte(plainHead))
		if resp.StatusCode != 200 || resp.Close {
			t.Fatalf("first request: %d %q, close %v; want 200, kept alive", resp.StatusCode, body, resp.Close)
		}
		if _, err := nc.Write([]byte("POST /echo HTTP/1.1\r\nHost: chat.test\r\nContent-Length: 2\r\n\r\nab")); err != nil {
			t.Fatal(err)
		}
		if resp, body = readResponse(t, br); resp.StatusCode != 200 || body != "xx" || resp.Close {
			t.Fatalf("POST with Content-Length: %d %q, close %v; want 200 \"xx\", kept alive", resp.StatusCode, body, resp.Close)
		}
		if _, err := nc.Write([]byte(req + plainHead)); err != nil {
			t.Fatal(err)
		}
		if resp, body = readResponse(t, br); !resp.Close {
			t.Fatalf("%q on a kept-alive connection: %d %q without Connection: close", req, resp.StatusCode, body)
		}
		wantEOF(t, nc, br)
		nc.Close()
	}
}

// browserHead is the upgrade request of a current browser.
var browserHead = []byte("GET /ws/chat/lobby/?ids=1&ack=1 HTTP/1.1\r\n" +
	"Host: chat.example.com\r\n" +
	"Connection: Upgrade\r\n" +
	"Pragma: no-cache\r\n" +
	"Cache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n" +
	"Upgrade: websocket\r\n" +
	"Origin: https://chat.example.com\r\n" +
	"Sec-WebSocket-Version: 13\r\n" +
	"Accept-Encoding: gzip, deflate, br, zstd\r\n" +
	"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n" +
	"Cookie: _ga=GA1.1.1234567890.1733000000; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbmEifQ.c2lnbmF0dXJl\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" +
	"\r\n")

// TestCheckHead runs headCases on checkHead itself, on both heads.
func TestCheckHead(t *testing.T) {
	if bad := checkHead(browserHead); bad != nil {
		t.Fatalf("the browser head refused: %v", *bad)
	}
	for _, tc := range headCases {
		for _, head := range []string{string(upgradeRequest("/ws/a")), plainHead} {
			bad := checkHead([]byte(tc.edit(head)))
			switch {
			case tc.status == 0 && bad != nil:
				t.Errorf("%s: %q refused: %v", tc.name, tc.edit(head), *bad)
			case tc.status != 0 && (bad == nil || bad.status != tc.status || !strings.Contains(bad.reason, tc.reason)):
				t.Errorf("%s: %q: %v; want %d naming %q", tc.name, tc.edit(head), bad, tc.status, tc.reason)
			}
		}
	}
}

// TestValidValue compares validValue with the byte-by-byte check: every
// byte value at every offset of a word and the tail.
func TestValidValue(t *testing.T) {
	for size := range 20 {
		for at := range size {
			for c := range 256 {
				v := bytes.Repeat([]byte("a"), size)
				v[at] = byte(c)
				if got, want := validValue(v), validValueBytes(v); got != want {
					t.Fatalf("%q: %v, want %v", v, got, want)
				}
			}
		}
	}
}

func TestCheckHeadAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts under the race detector are meaningless")
	}
	bad := []byte(strings.Replace(string(browserHead), "Host: ", "Host : ", 1))
	allocs := testing.AllocsPerRun(100, func() {
		if checkHead(browserHead) != nil || checkHead(bad) == nil {
			t.Fatal("wrong verdict")
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per check, want 0", allocs)
	}
}

// BenchmarkCheckHead measures the head rules on a browser's upgrade head.
func BenchmarkCheckHead(b *testing.B) {
	b.SetBytes(int64(len(browserHead)))
	b.ReportAllocs()
	for b.Loop() {
		if bad := checkHead(browserHead); bad != nil {
			b.Fatal(bad.reason)
		}
	}
}

// netHTTP answers heads with an http.Server of its own over in-memory
// pipes, for FuzzCheckHead to compare with.
type netHTTP struct {
	ln *chanListener
}

func newNetHTTP(tb testing.TB) *netHTTP {
	ln := newChanListener()
	srv := &http.Server{
		Handler:  http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Header().Set("Connection", "close") }),
		ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelDebug),
	}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Close() })
	return &netHTTP{ln: ln}
}

// status returns net/http's status for head, or 0 if it gave none.
func (n *netHTTP) status(head []byte) int {
	client, server := net.Pipe()
	defer client.Close()
	n.ln.push(server)
	_ = client.SetDeadline(time.Now().Add(testutil.Timeout))
	go func() { _, _ = client.Write(head) }()
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// FuzzCheckHead checks the head rules against net/http's server: a head
// checkHead accepts, net/http serves, so the upgrade path is at least as
// strict as plain HTTP. The one exception is a request target net/url
// cannot parse, which the Handler's Route refuses on the upgrade path.
// The input is cut after its first blank line, as the loop cuts a head.
func FuzzCheckHead(f *testing.F) {
	f.Add(browserHead)
	for _, tc := range headCases {
		f.Add([]byte(tc.edit(string(upgradeRequest("/ws/a")))))
		f.Add([]byte(tc.edit(plainHead)))
	}
	n := newNetHTTP(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, crlfcrlf)
		if end < 0 {
			return
		}
		if validValue(data) != validValueBytes(data) {
			t.Fatalf("validValue(%q) is wrong", data)
		}
		head := data[:end+len(crlfcrlf)]
		bad := checkHead(head)
		if again := checkHead(head); again != bad {
			t.Fatalf("%q: %v, then %v", head, bad, again)
		}
		// A refused head is fine whatever net/http says: the rules are
		// stricter than net/http.
		if status := n.status(head); bad == nil && status != 200 && !(status == 400 && badTarget(head)) {
			t.Fatalf("%q: accepted, but net/http answers %d", head, status)
		}
	})
}

// badTarget reports whether net/url refuses the request target of head.
func badTarget(head []byte) bool {
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
	if req != nil {
		req.Body.Close()
	}
	var ue *url.Error
	return errors.As(err, &ue)
}
