package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// haproxyConfig is the deploy example the test runs as it is.
var haproxyConfig = filepath.Join("..", "..", "deploy", "haproxy", "haproxy.cfg")

// startHAProxy runs deploy/haproxy/haproxy.cfg in front of two gateways
// and returns its two listeners: HTTP mode (X-Forwarded-For) and TCP mode
// (PROXY protocol v2). It fails, never skips, when haproxy is missing.
func startHAProxy(t *testing.T, g1, g2 *gateway) (httpAddr, tcpAddr string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/haproxy") // not on a user's PATH
	}
	if err != nil {
		t.Fatal("haproxy is not installed: install it with `apt-get install -y --no-install-recommends haproxy` (or run `make test`, which installs it)")
	}
	httpAddr, tcpAddr = freeAddr(t), freeAddr(t)
	cmd := exec.Command(bin, "-db", "-f", haproxyConfig)
	cmd.Env = append(os.Environ(), "GATEWAY_1="+g1.addr, "GATEWAY_2="+g2.addr, "HTTP_BIND="+httpAddr, "TCP_BIND="+tcpAddr)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy: %s", out.String())
		}
	})
	for _, a := range []string{httpAddr, tcpAddr} {
		testutil.Eventually(t, "haproxy to listen on "+a, func() bool {
			c, err := net.Dial("tcp", a)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
	return httpAddr, tcpAddr
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// dialFromAddr opens a WebSocket to ws://addr/ws/chat/<room>/ from the
// local address local, with extra request headers.
func dialFromAddr(t *testing.T, addr, room, local string, header http.Header) (*client, error) {
	t.Helper()
	d := ws.Dialer{
		Header: ws.HandshakeHeaderHTTP(header),
		NetDial: func(ctx context.Context, network, a string) (net.Conn, error) {
			nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
			return nd.DialContext(ctx, network, a)
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/ws/chat/"+room+"/")
	if err != nil {
		return nil, err
	}
	c := &client{t: t, conn: conn, br: br}
	if br == nil {
		c.br = bufio.NewReader(conn)
	}
	t.Cleanup(func() { conn.Close() })
	return c, nil
}

// refused reports whether err is an upgrade answered 503.
func refused(err error) bool {
	var se ws.StatusError
	return errors.As(err, &se) && int(se) == http.StatusServiceUnavailable
}

// TestThroughHAProxy (issue 20, item 4): two production nodes behind
// Debian's HAProxy running deploy/haproxy/haproxy.cfg, in TCP mode with a
// PROXY v2 header and in HTTP mode with X-Forwarded-For. Through it, many
// clients from many addresses, all arriving from the proxy's one address,
// chat with nothing refused; a client address over its own cap is refused
// while the others are not; a forged X-Forwarded-For, through the proxy
// or straight from a peer that is not trusted, is ignored.
func TestThroughHAProxy(t *testing.T) {
	r := redistest.Start(t)
	env := withEnv(redisEnvFor(r), map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*",
		"MAX_CONNECTIONS_PER_IP": "50", "TRUSTED_PROXIES": "127.0.0.1"})
	g1, g2 := startGateway(t, env), startGateway(t, env)
	httpAddr, tcpAddr := startHAProxy(t, g1, g2)
	for _, tc := range []struct {
		name, addr string
		clients    int // from clients/50 addresses, 50 each: each at its cap
	}{
		{"tcp send-proxy-v2", tcpAddr, 1000},
		{"http X-Forwarded-For", httpAddr, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const perAddr, roomSize = 50, 10
			src := func(i int) string { return fmt.Sprintf("127.%d.%d.%d", len(tc.name), i/perAddr/250+1, i/perAddr%250+1) }
			var members []*client
			for i := range tc.clients {
				c, err := dialFromAddr(t, tc.addr, fmt.Sprintf("px%d", i/roomSize), src(i), nil)
				if err != nil {
					t.Fatalf("client %d from %s: %v", i, src(i), err)
				}
				members = append(members, c)
			}
			// Each room's first member says hello; the other nine hear it.
			for k := 0; k < len(members); k += roomSize {
				members[k].sendChat("u", fmt.Sprint("hello ", k/roomSize))
			}
			for i, c := range members {
				if i%roomSize == 0 {
					continue
				}
				if _, msg := c.recvChat(); msg != fmt.Sprint("hello ", i/roomSize) {
					t.Fatalf("client %d got %q", i, msg)
				}
			}
			for _, c := range members {
				c.conn.Close()
			}
			testutil.Eventually(t, "the members to leave", func() bool {
				return getStats(t, g1).Conn.Open+getStats(t, g2).Conn.Open == 0
			})
			// One address fills its cap on both nodes (50 each, HAProxy
			// alternating): one more from it is refused, one from another
			// address is not.
			at := fmt.Sprintf("127.99.%d.1", len(tc.name))
			for i := range 2 * perAddr {
				c, err := dialFromAddr(t, tc.addr, "cap", at, nil)
				if err != nil {
					t.Fatalf("client %d from %s: %v", i, at, err)
				}
				defer c.conn.Close() // before the next case counts
			}
			if _, err := dialFromAddr(t, tc.addr, "cap", at, nil); !refused(err) {
				t.Fatalf("one more client from %s: %v, want 503 (MAX_CONNECTIONS_PER_IP)", at, err)
			}
			if c, err := dialFromAddr(t, tc.addr, "cap", "127.98.0.1", nil); err != nil {
				t.Fatalf("a client from another address: %v", err)
			} else {
				defer c.conn.Close()
			}
			if tc.addr == httpAddr {
				// Claiming another address changes nothing: HAProxy appends
				// the real one, which the gateway takes.
				forged := http.Header{"X-Forwarded-For": []string{"127.98.0.2"}}
				if _, err := dialFromAddr(t, tc.addr, "cap", at, forged); !refused(err) {
					t.Fatalf("a forged X-Forwarded-For through the proxy: %v, want 503 for the real address", err)
				}
			}
		})
	}
	// Straight to a node from a peer that is not a trusted proxy: its
	// X-Forwarded-For is ignored, it is counted as itself.
	for i := range 50 {
		if _, err := dialFromAddr(t, g1.addr, "direct", "127.97.0.1", http.Header{"X-Forwarded-For": []string{fmt.Sprintf("127.96.0.%d", i+1)}}); err != nil {
			t.Fatalf("direct client %d: %v", i, err)
		}
	}
	if _, err := dialFromAddr(t, g1.addr, "direct", "127.97.0.1", http.Header{"X-Forwarded-For": []string{"127.96.1.1"}}); !refused(err) {
		t.Fatalf("a 51st direct client with a forged X-Forwarded-For: %v, want 503: the header is ignored", err)
	}
}
