package room

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

func TestRateConfig(t *testing.T) {
	d := Config{}.Defaulted()
	if d.RateLimit != DefaultRateLimit || d.RateBurst != DefaultRateBurst || d.RateCloseAfter != DefaultRateCloseAfter {
		t.Fatalf("Defaulted() = %+v", d)
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"negative rate", Config{RateLimit: -1}, "RATE_LIMIT"},
		{"absurd rate", Config{RateLimit: 2e9}, "RATE_LIMIT"},
		{"negative burst", Config{RateBurst: -1}, "RATE_BURST"},
		{"negative close", Config{RateCloseAfter: -1}, "RATE_CLOSE_AFTER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewHub(tc.cfg, testutil.DiscardLogger()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewHub: %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// TestLimiter drives the token buckets with a synthetic clock.
func TestLimiter(t *testing.T) {
	p := newRateParams(Config{RateLimit: 10, RateBurst: 3, RateCloseAfter: 2})
	var l limiter
	ms := int64(time.Millisecond)
	now := int64(time.Hour) // any start: a new limiter is full
	want := func(at int64, v verdict) {
		t.Helper()
		if got := l.take(at, &p); got != v {
			t.Fatalf("take at +%dms = %d, want %d", (at-int64(time.Hour))/ms, got, v)
		}
	}
	// A burst of 3, then refusals; the 3rd refusal within 10s closes.
	want(now, rateAllowed)
	want(now, rateAllowed)
	want(now, rateAllowed)
	want(now, rateRefused)
	want(now+50*ms, rateRefused)
	// One token per 100ms: at +100ms there is one again.
	want(now+100*ms, rateAllowed)
	want(now+100*ms, rateExceeded)

	// A steady sender at the limit is never refused.
	l = limiter{}
	for i := range int64(1000) {
		want(now+i*100*ms, rateAllowed)
	}
	// Refusals are forgiven at RateCloseAfter per RateCloseWindow: two
	// refusals every 10s never close.
	l = limiter{}
	for i := range int64(20) {
		at := now + i*int64(RateCloseWindow)
		for range 3 {
			want(at, rateAllowed)
		}
		want(at, rateRefused)
		want(at, rateRefused)
		l.tat = 0 // a full bucket again for the next round
	}
}

// TestRateLimitedSender: over its limit a sender's messages are dropped
// with a rate_limited frame to it alone; going on closes it with 1008;
// other members see only the accepted messages.
func TestRateLimitedSender(t *testing.T) {
	e := newGateEngine()
	h, addr := startHub(t, Config{RateLimit: 0.001, RateBurst: 3, RateCloseAfter: 2, RateMode: RateModeDrop}, e)
	a := joined(t, dialAsync(t, addr, "/ws/chat/rl/"))
	b := joined(t, dialAsync(t, addr, "/ws/chat/rl/"))
	for i := range 6 {
		a.send(t, chatMsg("a", string(rune('0'+i))))
	}
	// Messages 0-2 pass (the burst); 3 and 4 are refused; 5 closes.
	for _, want := range []string{CodeRateLimited, CodeRateLimited} {
		if got := errorCode(t, a.recvText(t)); got != want {
			t.Fatalf("sender got %q, want %q", got, want)
		}
	}
	op, p := a.read(t)
	if op != ws.OpClose {
		t.Fatalf("sender got %v %q, want a close frame", op, p)
	}
	code, reason := ws.ParseCloseFrameData([]byte(p))
	if code != ws.StatusPolicyViolation || !strings.Contains(reason, "rate limit") {
		t.Fatalf("close %d %q, want 1008 naming the rate limit", code, reason)
	}
	for i := range 3 {
		if got := b.recvText(t); got != chatMsg("a", string(rune('0'+i))) {
			t.Fatalf("member got %s, want message %d", got, i)
		}
	}
	// The next frame b sees is a new member's message: nothing over the
	// limit leaked. (It joins from another address: a's is penalized.)
	c := joined(t, dialFrom(t, "127.0.0.2", addr, "/ws/chat/rl/"))
	c.send(t, chatMsg("c", "marker"))
	if got := b.recvText(t); got != chatMsg("c", "marker") {
		t.Fatalf("member got %s, want the marker", got)
	}
	s := h.Stats()
	if s.RateLimited != 3 || s.RateClosed != 1 || s.Received != 7 {
		t.Fatalf("stats %+v, want 3 rate_limited, 1 closed, 7 received", s)
	}
}

// TestReconnectAfterRateCloseHasNoBurst: once a connection is closed for
// its rate, new connections from its address start with an empty bucket
// (their first message is refused), while another address keeps its
// burst.
func TestReconnectAfterRateCloseHasNoBurst(t *testing.T) {
	e := newGateEngine()
	_, addr := startHub(t, Config{RateLimit: 0.01, RateBurst: 3, RateCloseAfter: 1, RateMode: RateModeDrop}, e)
	flooder := joined(t, dialFrom(t, "127.0.0.1", addr, "/ws/chat/pb/"))
	for range 5 {
		flooder.send(t, chatMsg("f", "x"))
	}
	if got := errorCode(t, flooder.recvText(t)); got != CodeRateLimited {
		t.Fatalf("flooder got %q", got)
	}
	if op, _ := flooder.read(t); op != ws.OpClose {
		t.Fatalf("flooder got %v, want a close", op)
	}
	again := joined(t, dialFrom(t, "127.0.0.1", addr, "/ws/chat/pb/"))
	again.send(t, chatMsg("f", "again"))
	if got := errorCode(t, again.recvText(t)); got != CodeRateLimited {
		t.Fatalf("reconnected flooder's first message: %q, want rate_limited", got)
	}
	other := joined(t, dialFrom(t, "127.0.0.2", addr, "/ws/chat/pb/"))
	peer := joined(t, dialFrom(t, "127.0.0.3", addr, "/ws/chat/pb/"))
	for i := range 3 {
		other.send(t, chatMsg("o", string(rune('0'+i))))
	}
	for i := range 3 {
		if got := peer.recvText(t); got != chatMsg("o", string(rune('0'+i))) {
			t.Fatalf("another address lost its burst: peer got %s", got)
		}
	}
}

// TestPacedSenderLosesNothing: in RateMode pace (the default) a sender over
// its limit is read more slowly: every message reaches the other member,
// in order, no faster than the rate allows after the burst; the sender
// gets no error frame and stays open. Held back often enough, its address
// is penalized: a new connection from it starts without a burst, yet
// loses nothing either.
func TestPacedSenderLosesNothing(t *testing.T) {
	e := newGateEngine()
	h, addr := startHub(t, Config{RateLimit: 50, RateBurst: 5}, e)
	a := joined(t, dialAsync(t, addr, "/ws/chat/pace/"))
	b := joined(t, dialAsync(t, addr, "/ws/chat/pace/"))
	const n = 30
	start := time.Now()
	for i := range n {
		a.send(t, chatMsg("a", fmt.Sprint(i)))
	}
	for i := range n {
		if got := b.recvText(t); got != chatMsg("a", fmt.Sprint(i)) {
			t.Fatalf("member got %s, want message %d", got, i)
		}
	}
	if d := time.Since(start); d < 450*time.Millisecond {
		t.Fatalf("%d messages delivered in %v: faster than 50/s after a burst of 5", n, d)
	}
	s := h.Stats()
	if s.RatePaused == 0 || s.RateLimited != 0 || s.RateClosed != 0 || s.Received != n {
		t.Fatalf("stats %+v: want pauses, nothing refused or closed, %d received", s, n)
	}
	// The address was held back: a new connection from
	// it starts without a burst, so its messages are paced from the first.
	again := joined(t, dialAsync(t, addr, "/ws/chat/pace/"))
	paused := h.Stats().RatePaused
	for i := range 3 {
		again.send(t, chatMsg("again", fmt.Sprint(i)))
	}
	for i := range 3 {
		if got := b.recvText(t); got != chatMsg("again", fmt.Sprint(i)) {
			t.Fatalf("member got %s, want again's message %d", got, i)
		}
	}
	if h.Stats().RatePaused == paused {
		t.Fatal("the penalized address's new connection had a burst")
	}
	a.send(t, chatMsg("a", "still open"))
	if got := b.recvText(t); got != chatMsg("a", "still open") {
		t.Fatalf("member got %s, want the paced sender's last message", got)
	}
}

func TestClientAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:1":                 "192.0.2.7",
		"[::ffff:192.0.2.7]:1":        "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:1":    "2001:db8:1:2::",
		"[2001:db8:1:2:ffff::1]:9000": "2001:db8:1:2::",
	} {
		if got := clientAddr(netip.MustParseAddrPort(in)); got.String() != want {
			t.Errorf("clientAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestPenaltiesExpireAndStayBounded(t *testing.T) {
	var p penalties
	a := netip.MustParseAddr("192.0.2.1")
	p.add(a, 0)
	if !p.has(a, int64(RateCloseWindow)-1) || p.has(a, int64(RateCloseWindow)) {
		t.Fatal("a penalty must last RateCloseWindow")
	}
	for i := range maxPenalties + 10 {
		p.add(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 0)
	}
	if n := len(p.until); n > maxPenalties {
		t.Fatalf("%d addresses remembered, more than %d", n, maxPenalties)
	}
	p.add(a, int64(RateCloseWindow)) // all expired: swept to make room
	if !p.has(a, int64(RateCloseWindow)) || len(p.until) != 1 {
		t.Fatalf("after expiry: %d remembered, has(a)=%v", len(p.until), p.has(a, int64(RateCloseWindow)))
	}
}

// TestByteRatesPace (issue 19, item 1): large messages are read no faster
// than BYTE_RATE per connection and BYTE_RATE_PER_IP per client address
// (the connections of one address together), whatever RATE_LIMIT allows;
// nothing is dropped.
func TestByteRatesPace(t *testing.T) {
	text := strings.Repeat("x", 950) // ~1 KiB a message
	for _, tc := range []struct {
		name    string
		cfg     Config
		senders int
		each    int
		atLeast time.Duration
	}{
		// 8 KiB/s, bursts of 8 KiB: 16 KiB in 1 s at least.
		{"connection", Config{ByteRate: 8 << 10, ByteRatePerIP: -1, MaxMessageBytes: 1 << 10}, 1, 16, 800 * time.Millisecond},
		// 4 KiB/s per address, bursts of 32 KiB: 40 KiB from two
		// connections of one address: past the burst, about 1.6 s.
		{"address", Config{ByteRate: -1, ByteRatePerIP: 4 << 10, MaxMessageBytes: 1 << 10}, 2, 20, 1400 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newGateEngine()
			h, addr := startHub(t, tc.cfg, e)
			recv := joined(t, dialFrom(t, "127.0.0.3", addr, "/ws/chat/bytes/"))
			var senders []*wsClient
			for range tc.senders {
				senders = append(senders, joined(t, dialFrom(t, "127.0.0.2", addr, "/ws/chat/bytes/")))
			}
			start := time.Now()
			for i := range tc.each {
				for k, c := range senders {
					c.send(t, chatMsg(fmt.Sprint(k), fmt.Sprint(i, text)))
				}
			}
			next := map[string]int{}
			for range tc.senders * tc.each {
				var m struct{ Username, Message string }
				if err := json.Unmarshal([]byte(recv.recvText(t)), &m); err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprint(next[m.Username], text); m.Message != want {
					t.Fatalf("from %s: a message out of order, want number %d", m.Username, next[m.Username])
				}
				next[m.Username]++
			}
			if d := time.Since(start); d < tc.atLeast {
				t.Fatalf("%d KiB in %v: faster than the byte rate allows (%v)", tc.senders*tc.each, d, tc.atLeast)
			}
			if s := h.Stats(); s.RatePaused == 0 || s.RateLimited != 0 {
				t.Fatalf("stats %+v: want pauses, nothing refused", s)
			}
		})
	}
}

// TestNeighbourOfAFlooderLosesNothing (issue 19, item 4): once a flooder
// from an address was held back, another client from the same address (a
// NAT) still gets every message through: it only starts without a burst.
func TestNeighbourOfAFlooderLosesNothing(t *testing.T) {
	e := newGateEngine()
	_, addr := startHub(t, Config{RateLimit: 100, RateBurst: 10}, e)
	recv := joined(t, dialFrom(t, "127.0.0.3", addr, "/ws/chat/nat/"))
	flooder := joined(t, dialFrom(t, "127.0.0.2", addr, "/ws/chat/nat/"))
	for i := range 50 {
		flooder.send(t, chatMsg("f", fmt.Sprint(i)))
	}
	for range 50 {
		recv.recvText(t)
	}
	neighbour := joined(t, dialFrom(t, "127.0.0.2", addr, "/ws/chat/nat/"))
	for i := range 30 {
		neighbour.send(t, chatMsg("n", fmt.Sprint(i)))
	}
	for i := range 30 {
		if got := recv.recvText(t); got != chatMsg("n", fmt.Sprint(i)) {
			t.Fatalf("the neighbour's message %d: got %s", i, got)
		}
	}
}
