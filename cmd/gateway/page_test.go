package main

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestChatPageRoutes: / and /<room>/ serve the embedded chat page, its
// script and style sheet come from /static/, every answer carries a
// strict Content-Security-Policy, and a bad room name gets 400 as the
// WebSocket path would.
func TestChatPageRoutes(t *testing.T) {
	g := startGateway(t, nil)
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := (&http.Client{Timeout: testutil.Timeout}).Get("http://" + g.addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for _, tc := range []struct {
		name, path, ctype, body string
	}{
		{"root", "/", "text/html; charset=utf-8", `<script src="/static/chat.js"`},
		{"room", "/lobby/", "text/html; charset=utf-8", `id="messages"`},
		{"room with dots", "/a.b-c_D9/", "text/html; charset=utf-8", `id="send-form"`},
		{"script", "/static/chat.js", "text/javascript; charset=utf-8", "textContent"},
		{"style", "/static/chat.css", "text/css; charset=utf-8", "#messages"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(tc.path)
			if resp.StatusCode != 200 || !strings.Contains(body, tc.body) {
				t.Fatalf("GET %s = %d %.80q, want 200 with %q", tc.path, resp.StatusCode, body, tc.body)
			}
			if got := resp.Header.Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			csp := resp.Header.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-") || strings.Contains(csp, "*") {
				t.Errorf("Content-Security-Policy %q is not strict", csp)
			}
			if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
				t.Errorf("X-Content-Type-Options %q, want nosniff", got)
			}
		})
	}
	for _, tc := range []struct {
		name, path string
		status     int
		body       string
	}{
		{"bad byte", "/bad%20room/", 400, "room name has ' '"},
		{"too long", "/" + strings.Repeat("a", 101) + "/", 400, "the limit is 100"},
		{"unknown asset", "/static/nope.js", 404, ""},
		{"two segments", "/lobby/extra/", 404, ""},
		{"no trailing slash", "/lobby", 404, ""},
		{"favicon", "/favicon.ico", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(tc.path)
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.body) {
				t.Fatalf("GET %s = %d %q, want %d with %q", tc.path, resp.StatusCode, body, tc.status, tc.body)
			}
		})
	}
}

// TestChatPageIsNoWebSocketEndpoint: an upgrade to a page path gets 404,
// as any path outside /ws/chat/ does.
func TestChatPageIsNoWebSocketEndpoint(t *testing.T) {
	g := startGateway(t, nil)
	if status, body := upgrade(t, g.addr, "/lobby/", "127.0.0.1"); status != 404 || !strings.Contains(body, "/ws/chat/") {
		t.Errorf("upgrade of /lobby/ = %d %q, want 404 naming /ws/chat/<room>/", status, body)
	}
}

// TestChatPageBehindHostCheck: in production the page answers only to an
// allowed Host, like every other public path.
func TestChatPageBehindHostCheck(t *testing.T) {
	g := productionGateway(t, redistest.Start(t), nil)
	if status, _ := request(t, g.addr, "GET", "/lobby/", "Host: evil.example.net"); status != 400 {
		t.Errorf("GET /lobby/ with a foreign Host = %d, want 400", status)
	}
	if status, body := request(t, g.addr, "GET", "/lobby/", "Host: chat.example.com"); status != 200 || !strings.Contains(body, "/static/chat.js") {
		t.Errorf("GET /lobby/ with an allowed Host = %d, want 200 and the page", status)
	}
}

// TestChatPageHasNoExternalURL: the embedded files load nothing from
// another origin: no http(s):// or protocol-relative URL, no inline
// handler or script the CSP would have to allow, and user data goes in
// with textContent only.
func TestChatPageHasNoExternalURL(t *testing.T) {
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|(src|href)\s*=\s*["']?(https?:|//)`)
	for _, name := range []string{"index.html", "chat.js", "chat.css"} {
		b, err := web.ReadFile("web/" + name)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if m := external.FindString(s); m != "" {
			t.Errorf("%s references an external URL: %q", name, m)
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", " onclick=", " onload=", "@import"} {
			if strings.Contains(s, bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
	page, _ := web.ReadFile("web/index.html")
	if regexp.MustCompile(`<script>|<style`).Match(page) {
		t.Error("index.html has an inline script or style; the CSP allows only files from this origin")
	}
}
