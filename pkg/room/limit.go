package room

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/pkg/auth"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/gobwas/ws"
)

// Defaults of Config's zero fields.
const (
	// DefaultRateLimit is the default of Config.RateLimit (RATE_LIMIT):
	// far above what a person types, so that only scripts meet it, and
	// high enough that a script's burst of a few hundred messages is
	// through in a few seconds.
	DefaultRateLimit = 100.0
	// DefaultRateBurst is the default of Config.RateBurst (RATE_BURST):
	// with DefaultRateLimit, 200 messages sent back to back are all read
	// within a second.
	DefaultRateBurst = 100
	// DefaultRateLimitPerIP is the default of Config.RateLimitPerIP
	// (RATE_LIMIT_PER_IP): five times DefaultRateLimit, for all the
	// people behind one address together.
	DefaultRateLimitPerIP = 5 * DefaultRateLimit
	// DefaultByteRate is the default of Config.ByteRate (BYTE_RATE): 256
	// KiB/s, a hundred times what a person writes.
	DefaultByteRate = 256 << 10
	// DefaultByteRatePerIP is the default of Config.ByteRatePerIP
	// (BYTE_RATE_PER_IP): 1 MiB/s from one client address, ten thousand
	// 100-byte messages a second.
	DefaultByteRatePerIP = 1 << 20
	// RateModePace and RateModeDrop are the values of Config.RateMode.
	RateModePace = "pace"
	RateModeDrop = "drop"
	// DefaultRateCloseAfter is the default of Config.RateCloseAfter
	// (RATE_CLOSE_AFTER).
	DefaultRateCloseAfter = 20
	// DefaultHistoryMax is the default of Config.HistoryMax (HISTORY_MAX).
	DefaultHistoryMax = 100
	// MaxHistoryMax bounds Config.HistoryMax: a history=N join reads its N
	// entries in one engine call.
	MaxHistoryMax = 1000
	// defaultMaxMessageBytes is the default of Config.MaxMessageBytes, the
	// same as conn.Config.MaxMessageBytes's (MAX_MESSAGE_BYTES).
	defaultMaxMessageBytes = 64 << 10
)

// RateCloseWindow is the window of Config.RateCloseAfter: a connection
// refused more than RateCloseAfter messages within it is closed.
const RateCloseWindow = 10 * time.Second

// maxRateLimit keeps the interval between messages at one nanosecond or
// more.
const maxRateLimit = 1e9

// Config tunes the Hub. A zero field takes its default; the env tags give
// the variables cmd/gateway reads them from. A help text that states a
// constant's value (RateCloseWindow, addrBurstSeconds, MaxHistoryMax) is
// checked against it by TestConfigHelpStatesConstants, as a struct tag
// cannot refer to a constant.
type Config struct {
	// RateLimit is how many messages per second one connection may send,
	// on average; what happens over it is RateMode's. Zero means
	// DefaultRateLimit.
	RateLimit float64 `env:"RATE_LIMIT" help:"messages per second one connection may send on average; over it the connection is read more slowly (RATE_MODE pace) or its messages dropped (drop)"`
	// RateBurst is how many messages a connection may send at once, above
	// RateLimit, after a quiet spell (the token bucket's size). Zero means
	// DefaultRateBurst.
	RateBurst int `env:"RATE_BURST" help:"messages one connection may send at once above RATE_LIMIT after a quiet spell"`
	// RateMode says what happens to a message over RateLimit. "pace" (the
	// default, also for ""): it waits; the server reads nothing more from
	// the connection until the rate allows it, so TCP slows the client
	// down and nothing is lost or reordered. "drop": it is dropped, its
	// sender gets a rate_limited frame, and a connection refused more than
	// RateCloseAfter messages within RateCloseWindow is closed with 1008.
	RateMode string `env:"RATE_MODE" help:"over RATE_LIMIT: pace reads the connection more slowly (nothing is dropped); drop drops messages with a rate_limited frame and closes a connection that goes on"`
	// RateCloseAfter is how many messages a connection may have refused
	// for RateLimit within RateCloseWindow in RateMode drop; the next one
	// closes it with 1008. Zero means DefaultRateCloseAfter. (Either mode
	// makes new connections from an address whose connection went over its
	// rate, held back or closed, start with an empty bucket for
	// RateCloseWindow, so that
	// reconnecting buys no burst; in pace mode they are still never
	// dropped.)
	RateCloseAfter int `env:"RATE_CLOSE_AFTER" help:"RATE_MODE drop: rate_limited refusals within 10s after which the connection is closed with 1008"`
	// RateLimitPerIP is RateLimit for all the connections of one client
	// address together (IPv4, IPv6 /64), with bursts of as many; behind a
	// trusted proxy the real client's address, and a trusted proxy that
	// names no client is not limited. Over it they are read more slowly,
	// whatever RateMode: so a flooder gains nothing by opening (or
	// reopening) many connections. Zero means DefaultRateLimitPerIP; -1
	// means no limit.
	RateLimitPerIP float64 `env:"RATE_LIMIT_PER_IP" help:"messages per second all connections of one client address may send together (bursts of as many); over it they are read more slowly; -1: no limit"`
	// ByteRate is how many bytes of messages per second one connection
	// may send on average, with bursts of connBurstSeconds' worth (at least
	// minBurstMessages messages of MAX_MESSAGE_BYTES): over it the
	// connection is read more slowly, whatever RateMode. It bounds how fast
	// a client can fill Redis with large messages. Zero means
	// DefaultByteRate; -1 means no limit.
	ByteRate int64 `env:"BYTE_RATE" help:"bytes of messages per second one connection may send on average (bursts of a second's worth); over it the connection is read more slowly; -1: no limit"`
	// ByteRatePerIP is ByteRate for all the connections of one client
	// address (IPv4, IPv6 /64) together, with bursts of addrBurstSeconds'
	// worth; behind a trusted proxy the real client's address
	// (conn.Config.TrustedProxies), and a trusted proxy that names no
	// client is not limited. Zero means DefaultByteRatePerIP; -1 means no
	// limit.
	ByteRatePerIP int64 `env:"BYTE_RATE_PER_IP" help:"bytes of messages per second all connections of one client address may send together (bursts of 8 seconds' worth); over it they are read more slowly; -1: no limit"`
	// MaxMessageBytes is the largest message a connection may send
	// (conn.Config.MaxMessageBytes): the byte buckets hold at least a few.
	// Zero means defaultMaxMessageBytes. cmd/gateway sets it; it has no
	// variable of its own.
	MaxMessageBytes int
	// HistoryMax caps the N of a history=N join: the most messages it
	// replays. Zero means DefaultHistoryMax; at most MaxHistoryMax.
	HistoryMax int `env:"HISTORY_MAX" help:"the most messages a ?history=N join replays (N above it is capped); at most 1000"`
	// Auth sets the verification key (or secret) of the tokens that every
	// upgrade must then carry (?token=<JWT>). Zero means no authentication.
	Auth auth.Config
}

// Defaulted returns c with every zero field set to the default the Hub
// uses for it, without checking anything: what `gateway -h` prints.
func (c Config) Defaulted() Config {
	c.RateLimit = cmp.Or(c.RateLimit, DefaultRateLimit)
	c.RateBurst = cmp.Or(c.RateBurst, DefaultRateBurst)
	c.RateCloseAfter = cmp.Or(c.RateCloseAfter, DefaultRateCloseAfter)
	c.RateMode = cmp.Or(c.RateMode, RateModePace)
	c.RateLimitPerIP = cmp.Or(c.RateLimitPerIP, DefaultRateLimitPerIP)
	c.ByteRate = cmp.Or(c.ByteRate, DefaultByteRate)
	c.ByteRatePerIP = cmp.Or(c.ByteRatePerIP, DefaultByteRatePerIP)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, defaultMaxMessageBytes)
	c.HistoryMax = cmp.Or(c.HistoryMax, DefaultHistoryMax)
	return c
}

// withDefaults checks c and fills its zero fields.
func (c Config) withDefaults() (Config, error) {
	switch {
	case c.RateLimit < 0 || c.RateLimit > maxRateLimit || math.IsNaN(c.RateLimit):
		return c, fmt.Errorf("room: RATE_LIMIT is %g; want a positive number of messages per second up to %g, or unset it for %g", c.RateLimit, float64(maxRateLimit), DefaultRateLimit)
	case c.RateBurst < 0:
		return c, fmt.Errorf("room: RATE_BURST is %d; want a positive number of messages, or unset it for %d", c.RateBurst, DefaultRateBurst)
	case c.RateCloseAfter < 0:
		return c, fmt.Errorf("room: RATE_CLOSE_AFTER is %d; want a positive number of refusals, or unset it for %d", c.RateCloseAfter, DefaultRateCloseAfter)
	case c.RateMode != "" && c.RateMode != RateModePace && c.RateMode != RateModeDrop:
		return c, fmt.Errorf("room: RATE_MODE is %q; want %q (read more slowly) or %q (drop and close), or unset it for %q", c.RateMode, RateModePace, RateModeDrop, RateModePace)
	case c.RateLimitPerIP < -1 || c.RateLimitPerIP > maxRateLimit || math.IsNaN(c.RateLimitPerIP):
		return c, fmt.Errorf("room: RATE_LIMIT_PER_IP is %g; want messages per second up to %g, -1 for no limit, or unset it for %g", c.RateLimitPerIP, float64(maxRateLimit), DefaultRateLimitPerIP)
	case c.ByteRate < -1:
		return c, fmt.Errorf("room: BYTE_RATE is %d; want bytes per second, -1 for no limit, or unset it for %d", c.ByteRate, DefaultByteRate)
	case c.ByteRatePerIP < -1:
		return c, fmt.Errorf("room: BYTE_RATE_PER_IP is %d; want bytes per second, -1 for no limit, or unset it for %d", c.ByteRatePerIP, DefaultByteRatePerIP)
	case c.HistoryMax < 0 || c.HistoryMax > MaxHistoryMax:
		return c, fmt.Errorf("room: HISTORY_MAX is %d; want 1 to %d messages, or unset it for %d", c.HistoryMax, MaxHistoryMax, DefaultHistoryMax)
	}
	return c.Defaulted(), nil
}

// rateParams are Config's rate limits as GCRA intervals and tolerances,
// in nanoseconds.
type rateParams struct {
	interval, tolerance             int64 // messages: 1/RateLimit, (RateBurst-1)/RateLimit
	strikeInterval, strikeTolerance int64 // refusals: RateCloseWindow/RateCloseAfter, and (RateCloseAfter-1) of them
	pace                            bool  // RateMode pace: hold messages back instead of refusing them
	conn, addr                      byteRate
	addrMsgs                        byteRate // RateLimitPerIP, as a bucket of one "byte" per message
}

// byteRate is a bytes-per-second bucket: rate bytes/s (0: no limit), and
// burst, the span (ns) of a full bucket.
type byteRate struct{ rate, burst int64 }

// Bursts of the byte buckets, in seconds of their rate: a connection's
// holds a second's worth, an address's eight; both hold at least
// minBurstMessages messages of the largest size.
const (
	connBurstSeconds = 1
	addrBurstSeconds = 8
	minBurstMessages = 4
)

func newByteRate(rate, burst int64) byteRate {
	if rate <= 0 {
		return byteRate{}
	}
	return byteRate{rate: rate, burst: burst * int64(time.Second) / rate}
}

// cost is the time n bytes take of the bucket (ns).
func (b byteRate) cost(n int) int64 { return int64(n) * int64(time.Second) / b.rate }

func newRateParams(c Config) rateParams {
	iv := max(int64(float64(time.Second)/c.RateLimit), 1)
	siv := max(int64(RateCloseWindow)/int64(c.RateCloseAfter), 1)
	return rateParams{
		interval:        iv,
		tolerance:       iv * int64(c.RateBurst-1),
		strikeInterval:  siv,
		strikeTolerance: siv * int64(c.RateCloseAfter-1),
		pace:            c.RateMode != RateModeDrop,
		conn:            newByteRate(c.ByteRate, max(connBurstSeconds*c.ByteRate, minBurstMessages*int64(c.MaxMessageBytes))),
		addr:            newByteRate(c.ByteRatePerIP, max(addrBurstSeconds*c.ByteRatePerIP, minBurstMessages*int64(c.MaxMessageBytes))),
		addrMsgs:        newByteRate(int64(c.RateLimitPerIP), int64(c.RateLimitPerIP)),
	}
}

// verdict is what the limiter decides about one message.
type verdict uint8

const (
	rateAllowed  verdict = iota // publish it
	rateRefused                 // drop it; tell the sender "rate_limited"
	rateExceeded                // drop it and close the connection with 1008
)

// limiter is one connection's token bucket for its messages, one for the
// refusals it has had and one for its bytes, each kept as the single time
// of the generic cell rate algorithm (GCRA), and its address's shared
// byte bucket: 32 bytes, no allocation, no clock of its own. The zero
// limiter is full and has no address bucket.
type limiter struct {
	tat     int64       // when the message bucket is full again (ns since Hub.epoch)
	strikes int64       // the same for the refusals
	bytes   int64       // the same for the bytes
	addr    *addrBucket // the client address's bytes; nil when not limited
}

// waitBytes returns how long (ns) until n more bytes fit the bucket whose
// full time is tat, 0 when they fit now (the caller then moves tat).
func waitBytes(tat, now int64, b byteRate, n int) int64 {
	if b.rate == 0 {
		return 0
	}
	cost := min(b.cost(n), b.burst) // a message larger than the burst fits an empty bucket
	return max(max(tat, now)+cost-now-b.burst, 0)
}

// bytesWait decides about the bytes of one message of n bytes arriving at
// now: 0 once they are taken from the connection's and the address's
// buckets, else how long until they fit (nothing is taken).
func (l *limiter) bytesWait(now int64, p *rateParams, n int) int64 {
	if w := waitBytes(l.bytes, now, p.conn, n); w > 0 {
		return w
	}
	if l.addr != nil && p.addrMsgs.rate > 0 {
		if w := l.addr.msgs.take(now, p.addrMsgs, 1); w > 0 {
			return w
		}
	}
	if l.addr != nil && p.addr.rate > 0 {
		if w := l.addr.bytes.take(now, p.addr, n); w > 0 {
			return w // (the message's token is spent again when it comes back)
		}
	}
	if p.conn.rate > 0 {
		l.bytes = max(l.bytes, now) + min(p.conn.cost(n), p.conn.burst)
	}
	return 0
}

// addrBucket holds the buckets shared by the connections of one client
// address, on every event loop: its messages (RateLimitPerIP) and bytes
// (ByteRatePerIP). refs (the members holding it) is guarded by
// addrBuckets.mu.
type addrBucket struct {
	msgs, bytes sharedBucket
	refs        int32
}

// sharedBucket is a GCRA time moved by compare-and-swap.
type sharedBucket struct{ tat atomic.Int64 }

// take takes n units when they fit, else returns how long until they do.
func (a *sharedBucket) take(now int64, b byteRate, n int) int64 {
	for {
		old := a.tat.Load()
		if w := waitBytes(old, now, b, n); w > 0 {
			return w
		}
		if a.tat.CompareAndSwap(old, max(old, now)+min(b.cost(n), b.burst)) {
			return 0
		}
	}
}

// addrBuckets holds the byte buckets of the client addresses with members
// on this node. Its mutex is a leaf.
type addrBuckets struct {
	mu sync.Mutex
	m  map[netip.Addr]*addrBucket
}

// get returns a's bucket, counting one more holder.
func (b *addrBuckets) get(a netip.Addr) *addrBucket {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[netip.Addr]*addrBucket)
	}
	ab := b.m[a]
	if ab == nil {
		ab = &addrBucket{}
		b.m[a] = ab
	}
	ab.refs++
	return ab
}

// put counts one holder of a's bucket less, and forgets it with the last.
func (b *addrBuckets) put(a netip.Addr, ab *addrBucket) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ab.refs--; ab.refs <= 0 && b.m[a] == ab {
		delete(b.m, a)
	}
}

// take decides about one message arriving at now.
func (l *limiter) take(now int64, p *rateParams) verdict {
	if gcra(&l.tat, now, p.interval, p.tolerance) {
		return rateAllowed
	}
	if gcra(&l.strikes, now, p.strikeInterval, p.strikeTolerance) {
		return rateRefused
	}
	return rateExceeded
}

// pace decides about one message arriving at now in RateMode pace: 0 when
// it fits (admit then takes it), else how long (ns) until it does.
// Nothing is taken for a message held back: it comes again when it fits.
func (l *limiter) pace(now int64, p *rateParams) (wait int64) {
	return max(max(l.tat, now)-now-p.tolerance, 0)
}

// admit takes a message that pace let through from the bucket.
func (l *limiter) admit(now int64, p *rateParams) { l.tat = max(l.tat, now) + p.interval }

// gcra admits one event at now when the bucket whose full time is *tat
// has room: at most tolerance/interval+1 events at once, one per interval
// on average.
func gcra(tat *int64, now, interval, tolerance int64) bool {
	t := max(*tat, now)
	if t-now > tolerance {
		return false
	}
	*tat = t + interval
	return true
}

// start returns the limiter of a new connection: full, or empty (no
// burst; its first message allowed one interval after it joins) when its
// address was penalized.
func (p *rateParams) start(now int64, penalized bool) limiter {
	if !penalized {
		return limiter{}
	}
	return limiter{tat: now + p.tolerance + p.interval}
}

// maxPenalties bounds the addresses penalties remembers.
const maxPenalties = 1 << 16

// penalties remembers, for RateCloseWindow, the client addresses (IPv4,
// or IPv6 /64) that had a connection go on over its rate limit (closed in
// RateMode drop, held back in pace). New
// connections from them start with an empty bucket, so that reconnecting
// does not buy a flooder a new burst; a person sharing the address (a
// NAT) can still send one message per 1/RateLimit from the start, which
// is faster than anyone types, and in pace mode loses nothing. Its mutex is a leaf: taken
// under Hub.mu or room.mu, never the other way.
type penalties struct {
	mu    sync.Mutex
	until map[netip.Addr]int64 // expiry, on the Hub's clock
}

// clientAddr is the unit penalties count by: the IPv4 address, or the
// /64 of an IPv6 one (one subscriber's network).
func clientAddr(ap netip.AddrPort) netip.Addr {
	a := ap.Addr().Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// add penalizes a until now+RateCloseWindow. When maxPenalties addresses
// are remembered and none has expired, a is not: the limit per connection
// still holds.
func (p *penalties) add(a netip.Addr, now int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.until == nil {
		p.until = make(map[netip.Addr]int64)
	}
	if _, ok := p.until[a]; !ok && len(p.until) >= maxPenalties {
		if p.prune(now); len(p.until) >= maxPenalties {
			return
		}
	}
	p.until[a] = now + int64(RateCloseWindow)
}

// prune forgets the addresses whose penalty has expired at now. p.mu
// must be held.
func (p *penalties) prune(now int64) {
	for a, t := range p.until {
		if t <= now {
			delete(p.until, a)
		}
	}
}

// has reports whether a is penalized at now.
func (p *penalties) has(a netip.Addr, now int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.until[a]
	if ok && t <= now {
		delete(p.until, a)
		ok = false
	}
	return ok
}

// ErrRateExceeded is the cause of closing a connection that kept sending
// over its rate limit; OnClose receives it inside the *conn.CloseError
// sent to the client (1008).
var ErrRateExceeded = errors.New("room: rate limit exceeded")

// rateClose is the close frame of such a connection: 1008, policy
// violation (RFC 6455 section 7.4.1).
var rateClose = fmt.Errorf("%w: %w", ErrRateExceeded, &conn.CloseError{
	Code: ws.StatusPolicyViolation, Reason: "rate limit exceeded: too many messages refused; see RATE_LIMIT",
})
