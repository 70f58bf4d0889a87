package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// request sends a raw HTTP/1.1 request head (method, path and header
// lines; Host is given with the others) and returns the status and body
// of the answer.
func request(t *testing.T, addr, method, path string, headers ...string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testutil.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testutil.Timeout))
	head := method + " " + path + " HTTP/1.1\r\n" + strings.Join(headers, "\r\n") + "\r\nConnection: close\r\n\r\n"
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	var status int
	fmt.Sscanf(string(b), "HTTP/1.1 %d", &status)
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	return status, body
}

// upgradeHeaders are the header lines of a WebSocket upgrade request.
var upgradeHeaders = []string{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"}

// upgrade sends an upgrade request for path with host and the extra
// header lines, and returns the status and body; it reads only the
// response head of a 101.
func upgrade(t *testing.T, addr, path, host string, extra ...string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, testutil.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testutil.Timeout))
	lines := append([]string{"GET " + path + " HTTP/1.1", "Host: " + host}, upgradeHeaders...)
	lines = append(lines, extra...)
	if _, err := io.WriteString(c, strings.Join(lines, "\r\n")+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil || strings.HasPrefix(string(b), "HTTP/1.1 101") && strings.Contains(string(b), "\r\n\r\n") {
			break
		}
	}
	var status int
	fmt.Sscanf(string(b), "HTTP/1.1 %d", &status)
	_, body, _ := strings.Cut(string(b), "\r\n\r\n")
	return status, body
}

// productionGateway starts a production gateway on r with
// ALLOWED_HOSTS=chat.example.com,.example.org and env on top.
func productionGateway(t *testing.T, r *redistest.Server, env map[string]string) *gateway {
	t.Helper()
	return startGateway(t, withEnv(redisEnvFor(r), map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "chat.example.com,.example.org", "REDIS_BLOCK": "1s",
	}, env))
}

// TestProductionChecksHostAndOrigin: in production ALLOWED_HOSTS applies
// to every HTTP endpoint as to upgrades, and the Origin check defaults to
// the ALLOWED_HOSTS names: a foreign browser origin gets 403, requests
// without Origin and from the allowed hosts' pages are upgraded.
func TestProductionChecksHostAndOrigin(t *testing.T) {
	r := redistest.Start(t)
	g := productionGateway(t, r, nil)

	t.Run("HTTP endpoints", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz", "/stats", "/nope"} {
			for _, tc := range []struct {
				host   string
				status int
			}{
				{"evil.example", 400},
				{"127.0.0.1", 400},
				{"chat.example.com.evil.example", 400},
				{"chat.example.com", 0},
				{"CHAT.example.com:8000", 0},
				{"example.org", 0},
				{"a.b.example.org", 0},
			} {
				status, body := request(t, g.addr, "GET", path, "Host: "+tc.host)
				if tc.status == 0 {
					if status == 400 {
						t.Errorf("GET %s with Host %s: %d %q, want it served", path, tc.host, status, body)
					}
					continue
				}
				if status != tc.status || !strings.Contains(body, "ALLOWED_HOSTS") {
					t.Errorf("GET %s with Host %s: %d %q, want %d naming ALLOWED_HOSTS", path, tc.host, status, body, tc.status)
				}
			}
		}
	})

	t.Run("Origin", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			origin string
			status int
		}{
			{"no Origin", "", 101},
			{"allowed host over https", "https://chat.example.com", 101},
			{"allowed host, other scheme and port", "http://chat.example.com:8080", 101},
			{"allowed domain", "https://app.example.org", 101},
			{"foreign", "https://evil.example", 403},
			{"allowed name as a prefix", "https://chat.example.com.evil.example", 403},
			{"null", "null", 403},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var extra []string
				if tc.origin != "" {
					extra = append(extra, "Origin: "+tc.origin)
				}
				status, body := upgrade(t, g.addr, "/ws/chat/origin/", "chat.example.com", extra...)
				if status != tc.status {
					t.Fatalf("upgrade with Origin %q: %d %q, want %d", tc.origin, status, body, tc.status)
				}
				if status == 403 && !strings.Contains(body, "ALLOWED_ORIGINS") {
					t.Fatalf("403 %q does not name ALLOWED_ORIGINS", body)
				}
			})
		}
	})

	t.Run("ALLOWED_ORIGINS=*", func(t *testing.T) {
		open := productionGateway(t, r, map[string]string{"ALLOWED_ORIGINS": "*"})
		if status, body := upgrade(t, open.addr, "/ws/chat/origin/", "chat.example.com", "Origin: https://evil.example"); status != 101 {
			t.Fatalf("ALLOWED_ORIGINS=*: %d %q, want 101", status, body)
		}
	})

	t.Run("healthcheck sends an allowed Host", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(g.addr)
		env := map[string]string{"ENVIRONMENT": "production", "IP_REDIS": "127.0.0.1", "ALLOWED_HOSTS": ".example.org,chat.example.com", "PORT": port}
		if code, out := runOnce(t, env, "-healthcheck"); code != 0 {
			t.Fatalf("-healthcheck in production: exit %d %q", code, out)
		}
	})
}

// TestAdminListener: with ADMIN_ADDR set, /stats and pprof move there and
// are gone from the public port; /healthz and /readyz answer on both.
func TestAdminListener(t *testing.T) {
	g := startGateway(t, map[string]string{"ADMIN_ADDR": "127.0.0.1:0", "DEBUG_PPROF": "true"})
	if g.admin == "" {
		t.Fatal("no admin address reported")
	}
	if a, _, _ := net.SplitHostPort(g.admin); a != "127.0.0.1" {
		t.Fatalf("admin listener on %s, want loopback", g.admin)
	}
	get := func(addr, path string) int {
		resp, err := (&http.Client{Timeout: testutil.Timeout}).Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s%s: %v", addr, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for path, want := range map[string][2]int{ // public, admin
		"/stats":              {404, 200},
		"/debug/pprof/":       {404, 200},
		"/debug/pprof/symbol": {404, 200},
		"/healthz":            {200, 200},
		"/readyz":             {200, 200},
	} {
		if got := get(g.addr, path); got != want[0] {
			t.Errorf("public GET %s = %d, want %d", path, got, want[0])
		}
		if got := get(g.admin, path); got != want[1] {
			t.Errorf("admin GET %s = %d, want %d", path, got, want[1])
		}
	}
	if s := getAdminStats(t, g); s.Conn.Accepted == 0 {
		t.Fatalf("admin /stats counts no connection: %+v", s)
	}
}

// getAdminStats reads /stats from the admin listener.
func getAdminStats(t *testing.T, g *gateway) statsDoc {
	t.Helper()
	ag := &gateway{addr: g.admin}
	return getStats(t, ag)
}

// TestReadyzHidesInternalAddresses: with Redis down, the public /readyz
// says only "engine unavailable"; the Redis address is in the log and on
// the admin listener.
func TestReadyzHidesInternalAddresses(t *testing.T) {
	r := redistest.Start(t)
	g := productionGateway(t, r, map[string]string{"ADMIN_ADDR": "127.0.0.1:0", "REDIS_TIMEOUT": "300ms"})
	r.Kill()
	port := strconv.Itoa(r.Port())
	var body string
	testutil.Eventually(t, "/readyz to fail", func() bool {
		var status int
		status, body = request(t, g.addr, "GET", "/readyz", "Host: chat.example.com")
		return status == http.StatusServiceUnavailable
	})
	if strings.TrimSpace(body) != "engine unavailable" {
		t.Fatalf("public /readyz body %q, want only \"engine unavailable\"", body)
	}
	if strings.Contains(body, port) || strings.Contains(body, "127.0.0.1") {
		t.Fatalf("public /readyz shows an internal address: %q", body)
	}
	status, detail := request(t, g.admin, "GET", "/readyz", "Host: x")
	if status != http.StatusServiceUnavailable || !strings.HasPrefix(detail, "engine unavailable: ") || len(detail) <= len("engine unavailable: \n") {
		t.Fatalf("admin /readyz %d %q, want 503 with the engine's error", status, detail)
	}
	testutil.Eventually(t, "the engine error to be logged", func() bool { return g.logs.contains("not ready: engine unhealthy") })
}
