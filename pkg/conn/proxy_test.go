package conn

import (
	"encoding/binary"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

func TestParseProxyHeader(t *testing.T) {
	v2 := func(verCmd, famProto byte, addr []byte) []byte {
		b := append([]byte(nil), proxyV2Sig...)
		b = append(b, verCmd, famProto, 0, 0)
		binary.BigEndian.PutUint16(b[14:], uint16(len(addr)))
		return append(b, addr...)
	}
	v4addr := []byte{192, 0, 2, 7, 10, 0, 0, 1, 0x30, 0x39, 0x1f, 0x40} // 192.0.2.7:12345 -> 10.0.0.1:8000
	v6addr := make([]byte, 36)
	copy(v6addr, netip.MustParseAddr("2001:db8::9").AsSlice())
	binary.BigEndian.PutUint16(v6addr[32:], 443)
	for _, tc := range []struct {
		name   string
		in     string
		n      int
		client string // "" for none
		need   bool
		err    bool
	}{
		{"v1 TCP4", "PROXY TCP4 192.0.2.7 10.0.0.1 12345 8000\r\nGET /", 42, "192.0.2.7:12345", false, false},
		{"v1 TCP6", "PROXY TCP6 2001:db8::9 2001:db8::1 443 8000\r\n", 45, "[2001:db8::9]:443", false, false},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\nGET", 15, "", false, false},
		{"v1 partial", "PROXY TCP4 192.0.2", 0, "", true, false},
		{"v1 signature partial", "PRO", 0, "", true, false},
		{"v1 wrong family", "PROXY TCP4 2001:db8::9 10.0.0.1 1 2\r\n", 0, "", false, true},
		{"v1 bad port", "PROXY TCP4 192.0.2.7 10.0.0.1 x 2\r\n", 0, "", false, true},
		{"v1 no CRLF in 107 bytes", "PROXY " + string(make([]byte, 120)), 0, "", false, true},
		{"v2 IPv4", string(v2(0x21, 0x11, v4addr)) + "GET", 16 + 12, "192.0.2.7:12345", false, false},
		{"v2 IPv6", string(v2(0x21, 0x21, v6addr)), 16 + 36, "[2001:db8::9]:443", false, false},
		{"v2 LOCAL", string(v2(0x20, 0x00, nil)), 16, "", false, false},
		{"v2 partial", string(v2(0x21, 0x11, v4addr)[:20]), 0, "", true, false},
		{"v2 bad version", string(v2(0x31, 0x11, v4addr)), 0, "", false, true},
		{"plain HTTP", "GET /ws/ HTTP/1.1\r\n", 0, "", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, client, need, err := parseProxyHeader([]byte(tc.in))
			got := ""
			if client.IsValid() {
				got = client.String()
			}
			if need != tc.need || (err != nil) != tc.err || !tc.err && (n != tc.n || got != tc.client) {
				t.Fatalf("parseProxyHeader = n %d, client %q, need %v, err %v; want %d, %q, %v, error %v", n, got, need, err, tc.n, tc.client, tc.need, tc.err)
			}
		})
	}
}

func TestForwardedClient(t *testing.T) {
	l, err := parseProxies([]string{"10.0.0.0/8", "2001:db8:ffff::/48"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, xff, fwd string
		want           string // "" for none
	}{
		{"one hop", "192.0.2.7", "", "192.0.2.7"},
		{"rightmost untrusted", "198.51.100.1, 192.0.2.7, 10.0.0.2", "", "192.0.2.7"},
		{"a client's forged hop is left of the real one", "6.6.6.6, 192.0.2.7", "", "192.0.2.7"},
		{"all trusted: the leftmost", "10.0.0.5, 10.0.0.2", "", "10.0.0.5"},
		{"with a port", "192.0.2.7:4711", "", "192.0.2.7"},
		{"Forwarded", "", `for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"`, "2001:db8:cafe::17"},
		{"Forwarded wins", "198.51.100.1", "for=192.0.2.60", "192.0.2.60"},
		{"obfuscated node", "", "for=_hidden", ""},
		{"unknown", "unknown", "", ""},
		{"empty", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, ok := l.forwardedClient(tc.xff, tc.fwd)
			got := ""
			if ok {
				got = a.String()
			}
			if got != tc.want {
				t.Fatalf("forwardedClient(%q, %q) = %q, want %q", tc.xff, tc.fwd, got, tc.want)
			}
		})
	}
	if _, err := parseProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Fatal("a bad CIDR was accepted")
	}
	if l, err := parseProxies([]string{"none"}); err != nil || len(l) != 0 {
		t.Fatalf("none: %v %v", l, err)
	}
	if l, _ := parseProxies(nil); !l.trusts(netip.MustParseAddr("127.0.0.1")) || !l.trusts(netip.MustParseAddr("192.168.1.1")) || l.trusts(netip.MustParseAddr("192.0.2.7")) {
		t.Fatal("the default trusts the wrong addresses")
	}
}

// TestTrustedProxyNamesTheClient: from a trusted proxy, the PROXY header
// (v1 here) and X-Forwarded-For set the connection's address, which the
// per-address cap then counts, not the proxy's; a proxy that names no
// client is not counted. From a peer that is not trusted, both are
// ignored: a PROXY header is a bad request, X-Forwarded-For changes
// nothing.
func TestTrustedProxyNamesTheClient(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxConnectionsPerIP: 1, TrustedProxies: []string{"127.0.0.1"}}, rec)
	opened := func() *Conn {
		t.Helper()
		select {
		case c := <-rec.opened:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no connection opened")
			return nil
		}
	}
	via := func(proxyHeader string, headers ...string) int {
		t.Helper()
		_, _, resp, _ := send(t, s, "127.0.0.1", append([]byte(proxyHeader), upgradeRequest("/ws/p", headers...)...))
		return resp.StatusCode
	}
	if code := via("PROXY TCP4 192.0.2.7 10.0.0.1 12345 8000\r\n"); code != http.StatusSwitchingProtocols {
		t.Fatalf("through the proxy: %d", code)
	}
	if c := opened(); c.Remote().String() != "192.0.2.7:12345" || !c.ClientKnown() {
		t.Fatalf("Remote %v (known %v), want the client the PROXY header names", c.Remote(), c.ClientKnown())
	}
	// The same client again: over its cap of 1. Another client: fine.
	if code := via("PROXY TCP4 192.0.2.7 10.0.0.1 12346 8000\r\n"); code != http.StatusServiceUnavailable {
		t.Fatalf("a second connection of the same client: %d, want 503", code)
	}
	if code := via("", "X-Forwarded-For: 198.51.100.1, 192.0.2.8"); code != http.StatusSwitchingProtocols {
		t.Fatalf("X-Forwarded-For: %d", code)
	}
	if c := opened(); c.Remote().Addr().String() != "192.0.2.8" {
		t.Fatalf("Remote %v, want the rightmost untrusted hop", c.Remote())
	}
	// The proxy without a word: not counted, however many.
	for range 3 {
		if code := via(""); code != http.StatusSwitchingProtocols {
			t.Fatalf("the proxy's own connection: %d", code)
		}
		if c := opened(); c.ClientKnown() || c.Remote().Addr().String() != "127.0.0.1" {
			t.Fatalf("Remote %v (known %v), want the proxy, unknown", c.Remote(), c.ClientKnown())
		}
	}

	// 127.0.0.2 is not trusted.
	if _, _, resp, _ := send(t, s, "127.0.0.2", append([]byte("PROXY TCP4 192.0.2.9 10.0.0.1 1 2\r\n"), upgradeRequest("/ws/p")...)); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a PROXY header from an untrusted peer: %d, want 400", resp.StatusCode)
	}
	testutil.Eventually(t, "the refused connection to be released", func() bool {
		return s.perIP.held(netip.MustParseAddr("127.0.0.2")) == 0
	})
	if _, _, resp, _ := send(t, s, "127.0.0.2", upgradeRequest("/ws/p", "X-Forwarded-For: 192.0.2.10")); resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("X-Forwarded-For from an untrusted peer: %d", resp.StatusCode)
	}
	if c := opened(); c.Remote().Addr().String() != "127.0.0.2" || !c.ClientKnown() {
		t.Fatalf("Remote %v, want the peer: a forged header changes nothing", c.Remote())
	}
	// and is counted as itself: its cap of 1 is used.
	if _, _, resp, _ := send(t, s, "127.0.0.2", upgradeRequest("/ws/p", "X-Forwarded-For: 192.0.2.11")); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a second connection of the untrusted peer: %d, want 503", resp.StatusCode)
	}
}
