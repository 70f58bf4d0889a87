package conn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/fdlimit"
	"github.com/chatgw/gateway/internal/testutil"
)

// logBuffer is a logger's output, safe to read while the server writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

func TestIPKey(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "192.0.2.1"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::"},
	} {
		if got := perIPAddr(netip.MustParseAddr(tc.a)); got != netip.MustParseAddr(tc.b) {
			t.Errorf("perIPAddr(%s) = %s, want %s", tc.a, got, tc.b)
		}
	}
	l := ipLimit{max: 2}
	a, b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2") // one /64
	if !l.acquire(a) || !l.acquire(b) || l.acquire(a) {
		t.Fatal("two addresses of one /64 must share the cap of 2")
	}
	if !l.acquire(netip.MustParseAddr("2001:db8:0:1::1")) {
		t.Fatal("another /64 has its own count")
	}
	l.release(a)
	if l.held(b) != 1 || !l.acquire(b) {
		t.Fatal("release did not free a slot")
	}
	l.release(a)
	l.release(a)
	if l.held(a) != 0 || len(l.n) != 1 {
		t.Fatalf("counts left: %v", l.n)
	}
}

// TestConnectionsPerIP is the attack "thousands of upgraded connections
// from one address" scaled down: with MAX_CONNECTIONS_PER_IP 50, 200
// upgrades from 127.0.0.1 leave 50 open and 150 answered 503 with
// Retry-After at once; another address is not affected, and a slot that
// frees up can be taken again.
func TestConnectionsPerIP(t *testing.T) {
	const perIP, tries = 50, 200
	s := startServer(t, Config{MaxConnectionsPerIP: perIP}, newRecorder())
	var open []net.Conn
	for i := range tries {
		nc, _, resp, body := send(t, s, "127.0.0.1", upgradeRequest("/ws/a"))
		if i < perIP {
			if resp.StatusCode != 101 {
				t.Fatalf("upgrade %d: %d %q, want 101", i, resp.StatusCode, body)
			}
			open = append(open, nc)
			continue
		}
		wantRefusal(t, resp, body, "MAX_CONNECTIONS_PER_IP")
		nc.Close()
	}
	if st := s.Stats(); st.WebSockets != perIP || st.Refused != tries-perIP || st.Open != perIP {
		t.Fatalf("stats %+v; want %d WebSockets and open sockets, %d refused", st, perIP, tries-perIP)
	}
	upgrade(t, s, "127.0.0.2")
	// A client that leaves frees its slot for one more, not two.
	open[0].Close()
	testutil.Eventually(t, "the slot to free up", func() bool { return s.perIP.held(netip.MustParseAddr("127.0.0.1")) == perIP-1 })
	upgrade(t, s, "127.0.0.1")
	nc, _, resp, body := send(t, s, "127.0.0.1", upgradeRequest("/ws/a"))
	nc.Close()
	wantRefusal(t, resp, body, "MAX_CONNECTIONS_PER_IP")
}

// TestDescriptorBudget is the attack "exhaust the descriptors with
// half-open sockets", with a small open-file limit given to the server
// (FileLimit: 164, so 100 sockets and at most 30 WebSockets). A flood of
// half-open sockets from one address holds only MAX_CONNECTIONS_PER_IP
// of them, the rest being answered 503 at once; /healthz and an upgrade
// from elsewhere still work; at the budget new sockets are answered 503
// at once (never an accept loop spinning on EMFILE); once sockets go,
// /healthz answers again.
func TestDescriptorBudget(t *testing.T) {
	var logs logBuffer
	s := startLoggedServer(t, Config{
		FileLimit:           fdlimit.Reserve + 100,
		MaxConnectionsPerIP: 20,
		MaxConnections:      30,
		HandshakeTimeout:    time.Minute, // the half-open sockets stay for the whole test
		HTTPHandler:         healthMux(),
	}, newRecorder(), logs.logger(), nil)
	if got := s.Config().MaxConnections; got != 30 {
		t.Fatalf("MaxConnections in force %d, want 30", got)
	}
	halfOpen := func(local string, n int) (held, refused int) {
		for range n {
			before := s.Stats()
			nc := dialFrom(t, s, local, 0)
			if _, err := nc.Write([]byte("GET /ws/a HTTP/1.1\r\nHost: chat.test\r\n")); err != nil {
				t.Fatal(err)
			}
			// Accepted, the socket is either counted as held or refused.
			testutil.Eventually(t, "the socket to be held or refused", func() bool {
				st := s.Stats()
				return st.Open > before.Open || st.Refused > before.Refused
			})
			if s.Stats().Refused > before.Refused {
				resp, body := readResponse(t, bufio.NewReader(nc))
				wantRefusal(t, resp, body, "")
				refused++
			} else {
				held++
			}
		}
		return held, refused
	}

	held, refused := halfOpen("127.0.0.1", 200)
	if held != 20 || refused != 180 {
		t.Fatalf("one address: %d held, %d refused; want 20 and 180", held, refused)
	}
	if status, _ := get(t, s, "127.0.0.9", "/healthz"); status != 200 {
		t.Fatalf("/healthz during the flood: %d", status)
	}
	for i := range 30 {
		upgrade(t, s, fmt.Sprintf("127.0.1.%d", i/15))
	}
	nc, _, resp, body := send(t, s, "127.0.1.9", upgradeRequest("/ws/a"))
	nc.Close()
	wantRefusal(t, resp, body, "MAX_CONNECTIONS")
	if status, _ := get(t, s, "127.0.0.9", "/healthz"); status != 200 {
		t.Fatalf("/healthz with WebSockets capped: %d", status)
	}

	// Fill the rest of the budget from other addresses: 100 - 20 - 30.
	testutil.Eventually(t, "the refused and plain HTTP sockets to close", func() bool { st := s.Stats(); return st.HTTP == 0 && st.Open == 50 })
	for i := range 50 {
		if h, _ := halfOpen(fmt.Sprintf("127.0.2.%d", i/10), 1); h != 1 {
			t.Fatalf("half-open socket %d of the budget refused; stats %+v", i, s.Stats())
		}
	}
	if st := s.Stats(); st.Open != 100 {
		t.Fatalf("stats %+v; want 100 sockets held", st)
	}
	// At the budget, unfinished heads make room (issue 19, item 2): once
	// they are older than minHeadAge, a liveness probe and a fresh join
	// get in, and heads are evicted with 503 instead.
	filled := time.Now()
	testutil.Eventually(t, "the heads to age", func() bool { return time.Since(filled) > time.Duration(minHeadAge) })
	if status, _ := get(t, s, "127.0.0.9", "/healthz"); status != 200 {
		t.Fatalf("/healthz with the budget full of unfinished heads: %d", status)
	}
	if st := s.Stats(); st.Evicted == 0 {
		t.Fatalf("stats %+v; want unfinished heads evicted", st)
	}
	if strings.Contains(logs.String(), "accept failed") {
		t.Fatalf("accept failures logged:\n%s", logs.String())
	}
}

// TestJoinAtCapEvictsHeads: with the socket budget full of unfinished
// request heads from many addresses (none over its own cap), a fresh
// client still joins, and /healthz still answers: the oldest heads are
// evicted with 503. Before, both got 503.
func TestJoinAtCapEvictsHeads(t *testing.T) {
	s := startServer(t, Config{
		FileLimit:        fdlimit.Reserve + 40,
		HandshakeTimeout: time.Minute,
		HTTPHandler:      healthMux(),
	}, newRecorder())
	var heads []net.Conn
	for i := range 40 {
		nc := dialFrom(t, s, fmt.Sprintf("127.0.3.%d", i), 0)
		if _, err := nc.Write([]byte("GET /ws/a HTTP/1.1\r\nHost: chat.test\r\n")); err != nil {
			t.Fatal(err)
		}
		heads = append(heads, nc)
	}
	testutil.Eventually(t, "the budget to fill", func() bool { return s.Stats().Open == 40 })
	filled := time.Now()
	testutil.Eventually(t, "the heads to age", func() bool { return time.Since(filled) > time.Duration(minHeadAge) })
	if status, _ := get(t, s, "127.0.4.1", "/healthz"); status != 200 {
		t.Fatalf("/healthz at the cap: %d", status)
	}
	nc, _ := upgrade(t, s, "127.0.4.2")
	nc.Close()
	evicted := 0
	for _, h := range heads {
		_ = h.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if b, _ := io.ReadAll(h); strings.Contains(string(b), " 503 ") {
			evicted++
		}
	}
	if evicted == 0 || s.Stats().Evicted == 0 {
		t.Fatalf("%d heads answered 503, stats %+v; want the oldest evicted", evicted, s.Stats())
	}
}

// exhaustedAccept returns an accept function acting out a process at its
// open-file limit while exhausted is set: accept fails with EMFILE unless
// the spare descriptor is closed (only that frees one). fails counts the
// EMFILE answers.
func exhaustedAccept(s *Server, exhausted *atomic.Bool, fails *atomic.Int64) func(int) (int, netip.AddrPort, error) {
	return func(lfd int) (int, netip.AddrPort, error) {
		if exhausted.Load() && s.spare >= 0 { // s.spare: the Serve goroutine's, as this call
			fails.Add(1)
			return -1, netip.AddrPort{}, unix.EMFILE
		}
		return accept4(lfd)
	}
}

// TestAcceptEMFILE: out of descriptors, the server closes its spare one
// to accept the waiting client, answers it 503 and opens the spare again:
// each client is answered, and accept fails once per client, never in a
// loop.
func TestAcceptEMFILE(t *testing.T) {
	var exhausted atomic.Bool
	var fails atomic.Int64
	exhausted.Store(true)
	s := startLoggedServer(t, Config{}, newRecorder(), testutil.DiscardLogger(), func(s *Server) {
		s.accept = exhaustedAccept(s, &exhausted, &fails)
	})
	const clients = 5
	for range clients {
		nc, _, resp, body := send(t, s, "", upgradeRequest("/ws/a"))
		nc.Close()
		wantRefusal(t, resp, body, "out of file descriptors")
	}
	if got := fails.Load(); got > clients+1 {
		t.Fatalf("accept failed %d times for %d clients: it spins", got, clients)
	}
	if st := s.Stats(); st.Refused != clients || st.Open != 0 {
		t.Fatalf("stats %+v; want %d refused and nothing held", st, clients)
	}
	// Descriptors are back.
	exhausted.Store(false)
	upgradeAfterRecovery(t, s)
}

// upgradeAfterRecovery upgrades a client once accept works again. Serve
// may still be in the accept it made with the spare descriptor closed,
// which answers its client 503: then the next client is upgraded.
func upgradeAfterRecovery(t *testing.T, s *Server) {
	t.Helper()
	for i := 0; ; i++ {
		nc, _, resp, body := send(t, s, "", upgradeRequest("/ws/a"))
		if resp.StatusCode == 101 {
			return
		}
		nc.Close()
		if i == 1 || resp.StatusCode != 503 {
			t.Fatalf("after recovery: %d %q", resp.StatusCode, body)
		}
	}
}

// TestAcceptBackoff: when even the spare descriptor does not help (another
// thread took it), Serve backs off as acceptBackoff says, and logs the
// failures at most once a second; then it recovers.
func TestAcceptBackoff(t *testing.T) {
	var logs logBuffer
	var failing atomic.Bool
	var mu sync.Mutex
	var calls []time.Time
	failing.Store(true)
	s := startLoggedServer(t, Config{}, newRecorder(), logs.logger(), func(s *Server) {
		s.accept = func(lfd int) (int, netip.AddrPort, error) {
			if failing.Load() {
				mu.Lock()
				calls = append(calls, time.Now())
				mu.Unlock()
				return -1, netip.AddrPort{}, unix.EMFILE
			}
			return accept4(lfd)
		}
	})
	const episodes = 5 // each: EMFILE, spare closed, EMFILE again, back off
	testutil.Eventually(t, "five rounds of failures", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= 2*episodes
	})
	failing.Store(false)
	mu.Lock()
	got := append([]time.Time(nil), calls[:2*episodes]...)
	mu.Unlock()
	for k := 1; k < episodes; k++ {
		// Sleeps never end early: the gap before each round is at least
		// the back-off, whatever the machine's load.
		if gap, wait := got[2*k].Sub(got[2*k-1]), acceptBackoff.Wait(k); gap < wait {
			t.Fatalf("round %d started %v after the last failure, before its back-off %v", k, gap, wait)
		}
	}
	upgradeAfterRecovery(t, s)
	if n := strings.Count(logs.String(), "accept failed"); n < 1 || n > 2 {
		t.Fatalf("%d warnings for %d failures in well under a second, want 1 (2 if slow):\n%s", n, 2*episodes, logs.String())
	}
}

// TestStatsCountRefusalsAndCloses: every refused upgrade is counted under
// its reason, and close frames by who started the close and their code.
func TestStatsCountRefusalsAndCloses(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxConnectionsPerIP: 1, AllowedOrigins: []string{"https://chat.test"}, MaxMessageBytes: 16}, rec)
	// 403: a foreign Origin.
	nc, _, resp, _ := send(t, s, "127.0.0.21", upgradeRequest("/ws/test", "Origin: https://evil.example"))
	nc.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign Origin: %d, want 403", resp.StatusCode)
	}
	testutil.Eventually(t, "the refused socket to be released", func() bool { return s.Stats().Open == 0 })
	// 503: a second connection from one address over MAX_CONNECTIONS_PER_IP.
	a, abr := upgrade(t, s, "127.0.0.22")
	_, _, resp, body := send(t, s, "127.0.0.22", upgradeRequest("/ws/test"))
	wantRefusal(t, resp, body, "MAX_CONNECTIONS_PER_IP")
	// A server close (1009) and a client close (echoed 1000).
	if _, err := a.Write(clientFrames(t, ws.NewTextFrame([]byte(strings.Repeat("x", 17))))); err != nil {
		t.Fatal(err)
	}
	expectClose(t, a, abr, ws.StatusMessageTooBig, "")
	b, bbr := upgrade(t, s, "127.0.0.23")
	if _, err := b.Write(clientFrames(t, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))); err != nil {
		t.Fatal(err)
	}
	expectClose(t, b, bbr, ws.StatusNormalClosure, "")
	testutil.Eventually(t, "the counts", func() bool {
		st := s.Stats()
		return st.Closes["server 1009"] == 1 && st.Closes["client 1000"] == 1
	})
	st := s.Stats()
	if st.RefusedBy["forbidden"] != 1 || st.RefusedBy["per_ip"] != 1 || st.Refused != 2 {
		t.Errorf("refusals %d by %v; want forbidden 1 and per_ip 1", st.Refused, st.RefusedBy)
	}
}

// TestRawToAddrPort: accept4's address conversion, ports in network byte
// order, mapped IPv4 unmapped, other families the zero AddrPort.
func TestRawToAddrPort(t *testing.T) {
	var rsa unix.RawSockaddrAny
	a4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
	a4.Family, a4.Addr = unix.AF_INET, [4]byte{10, 1, 2, 3}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&a4.Port))[:], 8000)
	if got, want := rawToAddrPort(&rsa), netip.MustParseAddrPort("10.1.2.3:8000"); got != want {
		t.Errorf("IPv4: %v, want %v", got, want)
	}
	rsa = unix.RawSockaddrAny{}
	a6 := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
	a6.Family, a6.Addr = unix.AF_INET6, netip.MustParseAddr("2001:db8::7").As16()
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&a6.Port))[:], 65534)
	if got, want := rawToAddrPort(&rsa), netip.MustParseAddrPort("[2001:db8::7]:65534"); got != want {
		t.Errorf("IPv6: %v, want %v", got, want)
	}
	a6.Addr = netip.MustParseAddr("::ffff:192.0.2.9").As16()
	if got, want := rawToAddrPort(&rsa), netip.MustParseAddrPort("192.0.2.9:65534"); got != want {
		t.Errorf("mapped IPv4: %v, want %v", got, want)
	}
	rsa = unix.RawSockaddrAny{}
	rsa.Addr.Family = unix.AF_UNIX
	if got := rawToAddrPort(&rsa); got.IsValid() {
		t.Errorf("AF_UNIX: %v, want the zero AddrPort", got)
	}
}
