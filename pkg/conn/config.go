package conn

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/http"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/fdlimit"
)

// Config sets the limits of the WebSocket server. A zero field takes its
// default (Defaulted); the env tags give the variables cmd/gateway reads
// them from, and the help tags what `gateway -h` says about them. Where a
// field says so, -1 means "no limit".
type Config struct {
	// MaxMessageBytes is the largest message a client may send; a longer one
	// closes the connection with 1009. Zero means 64 KiB. It also bounds
	// what one connection holds for an unfinished message: at most about
	// twice MaxMessageBytes of buffer (maxPartialPerConn).
	MaxMessageBytes int `env:"MAX_MESSAGE_BYTES" help:"largest client message in bytes (at most half of MAX_QUEUE_BYTES); longer ones close with 1009"`
	// MaxQueueBytes bounds the bytes queued for one client that does not
	// read; past it the connection is closed with 1008. Zero means 1 MiB.
	// It must be at least 2×MaxMessageBytes (minQueueMessages) and at
	// most 1 GiB (maxQueueBytes).
	MaxQueueBytes int `env:"MAX_QUEUE_BYTES" help:"bytes queued for a client that does not read before it is closed with 1008 (at least 2x MAX_MESSAGE_BYTES, at most 1 GiB)"`
	// MaxPartialBytes bounds the bytes the server holds for unfinished
	// frames and fragmented messages, all connections together, counted
	// as buffer capacity (Stats.PartialBytes). A connection whose read
	// would pass it is closed with 1013 (try again later). Zero means 64
	// MiB; it must leave room for one connection holding a message of
	// MaxMessageBytes. (Request heads are bounded by MaxHeaderBytes and
	// HandshakeTimeout instead.)
	MaxPartialBytes int `env:"MAX_PARTIAL_BYTES" help:"bytes held for unfinished frames and messages, all connections together; a connection that would pass it is closed with 1013"`
	// FragmentTimeout bounds the time a message may stay unfinished: from
	// its first fragment, or the first byte of a frame split across reads,
	// to its end. Control frames in between do not extend it. Past it the
	// connection is closed with 1008. Zero means 15s.
	FragmentTimeout time.Duration `env:"FRAGMENT_TIMEOUT" help:"time a message may stay unfinished (fragments, or a frame split across reads) before the connection is closed with 1008"`
	// FrameRate is the number of frames per second a client may send on
	// average; every frame counts (text, continuation, ping, pong, close,
	// even empty ones). A client over it, past FrameBurst, is read more
	// slowly: the server stops reading its socket until the rate allows
	// the next frame, so TCP slows the client down; nothing is dropped.
	// Zero means 200; -1 means no limit.
	FrameRate int `env:"FRAME_RATE" help:"frames per second a client may send on average (every frame counts, even empty continuations and pings); over it the connection is read more slowly, nothing is dropped; -1 means no limit"`
	// FrameBurst is the number of frames a client may send at once above
	// FrameRate. Zero means 1000.
	FrameBurst int `env:"FRAME_BURST" help:"frames a client may send back to back before FRAME_RATE applies"`
	// MaxConnections bounds the WebSocket connections held at once
	// (joining, open or closing); over it an upgrade gets 503 with
	// Retry-After. NewServer lowers it to fit FileLimit (see
	// Server.Config). Zero or -1 means as many as the open-file limit
	// allows, less a reserve for the process and plain HTTP.
	MaxConnections int `env:"MAX_CONNECTIONS" help:"WebSocket connections held at once; over it upgrades get 503; unset or -1: as many as the open-file limit allows"`
	// MaxConnectionsPerIP bounds the connections of any kind (in
	// handshake, WebSocket, or plain HTTP) that one client IPv4 address or
	// IPv6 /64 may hold; a connection over it is answered 503 with
	// Retry-After at once and closed. The client's address is the real one
	// behind a trusted proxy (TrustedProxies), and a trusted proxy that
	// names no client is not counted. Zero means a quarter of
	// MaxConnections, at least 1000 (perIPDefault): more than a NAT'd office or a
	// carrier-grade NAT brings to one node; -1 means no limit (cmd/gateway
	// sets that in development).
	MaxConnectionsPerIP int `env:"MAX_CONNECTIONS_PER_IP" help:"connections of any kind one client address (IPv4, IPv6 /64) may hold, the real client behind a trusted proxy; over it new ones get 503 at once; unset: a quarter of MAX_CONNECTIONS, at least 1000 (production) or none (development); -1 means no limit"`
	// TrustedProxies lists the peers (CIDRs or addresses) whose PROXY
	// protocol header, X-Forwarded-For or Forwarded header names the
	// client (see proxy.go); from other peers they are ignored. Empty
	// means DefaultTrustedProxies (loopback and private ranges); "none"
	// trusts no one.
	TrustedProxies []string `env:"TRUSTED_PROXIES" help:"comma-separated CIDRs or addresses of proxies whose PROXY protocol header or X-Forwarded-For/Forwarded names the client; unset: loopback and private ranges (10/8, 172.16/12, 192.168/16, fc00::/7); none: no one"`
	// PingInterval is how long a connection may stay silent before the
	// server pings it. Zero means 30s.
	PingInterval time.Duration `env:"PING_INTERVAL" help:"silence after which the server pings a connection"`
	// PongTimeout is how long the server waits for any data after a ping
	// before it closes the connection with 1001. Zero means 30s.
	PongTimeout time.Duration `env:"PONG_TIMEOUT" help:"time to answer a ping before the connection is closed with 1001"`
	// HandshakeTimeout bounds the time from accept to a complete request
	// head (then 408), and from there to the Handler's answer to a pending
	// upgrade (then 503). It is also the HTTP server's ReadHeaderTimeout.
	// Zero means 10s.
	HandshakeTimeout time.Duration `env:"HANDSHAKE_TIMEOUT" help:"time from accept to a complete HTTP request head (then 408), and for a pending join to be answered (then 503)"`
	// CloseTimeout is how long a closing connection waits for the client's
	// close frame or FIN before its socket is released. While the client
	// still reads (acknowledges bytes) what is queued before the close
	// frame, the wait is extended, up to 10×CloseTimeout in all
	// (closeWaitFactor). Zero means 2s.
	CloseTimeout time.Duration `env:"CLOSE_TIMEOUT" help:"time a closing connection waits for the client's close frame (extended up to 10x while the client still reads)"`
	// HTTPReadTimeout bounds the time to read a whole plain-HTTP request,
	// body included (http.Server.ReadTimeout). Zero means 10s.
	HTTPReadTimeout time.Duration `env:"HTTP_READ_TIMEOUT" help:"time to read a whole plain-HTTP request, body included"`
	// HTTPWriteTimeout bounds the time to write a plain-HTTP response, from
	// the end of its request head (http.Server.WriteTimeout). Zero means
	// 60s, which lets /debug/pprof/profile run its default 30 s.
	HTTPWriteTimeout time.Duration `env:"HTTP_WRITE_TIMEOUT" help:"time to write a plain-HTTP response, from the end of its request head"`
	// HTTPIdleTimeout is how long an idle keep-alive HTTP connection stays
	// open. Zero means 30s.
	HTTPIdleTimeout time.Duration `env:"HTTP_IDLE_TIMEOUT" help:"time an idle keep-alive HTTP connection stays open"`
	// MaxHeaderBytes bounds an HTTP request head, upgrade or plain HTTP;
	// a longer one gets 431. Zero means 16 KiB; 1 KiB to 1 MiB.
	MaxHeaderBytes int `env:"MAX_HEADER_BYTES" help:"largest HTTP request head (upgrade or plain HTTP); longer ones get 431"`
	// HTTPMaxBodyBytes bounds a plain-HTTP request body: a request that
	// declares a longer one gets 413 at once, one that sends more fails to
	// read past it. Zero means 64 KiB.
	HTTPMaxBodyBytes int `env:"HTTP_MAX_BODY_BYTES" help:"largest plain-HTTP request body; larger ones get 413"`
	// EventLoops is the number of epoll loops. Zero means GOMAXPROCS.
	EventLoops int `env:"EVENT_LOOPS" help:"number of epoll event loops; 0 means one per CPU"`
	// ReusePort sets SO_REUSEPORT on the listener, so several gateway
	// processes on one host can share a port.
	ReusePort bool `env:"REUSE_PORT" help:"set SO_REUSEPORT so several gateway processes can share the port"`
	// WSPrefix is the path prefix of WebSocket endpoints: requests under it
	// are upgraded (the Handler decides which paths exist), all others go
	// to HTTPHandler. Zero means "/ws/".
	WSPrefix string
	// AllowedHosts lists the Host header values (without port) accepted for
	// upgrades; "*" accepts any, ".example.com" example.com and its
	// subdomains. Empty means any.
	AllowedHosts []string
	// AllowedOrigins lists the Origin header values accepted for upgrades:
	// scheme://host[:port] (a default port may be left out), or a bare
	// host name or .domain pattern, as in AllowedHosts, matching any scheme
	// and port; "*" accepts any. A browser request with another Origin gets
	// 403. A request without an Origin header (not a browser) is always
	// accepted. Empty means any.
	AllowedOrigins []string `env:"ALLOWED_ORIGINS" help:"comma-separated Origin values accepted for upgrades (https://host[:port], a host name or .domain); others get 403; * accepts any; requests without Origin are accepted; unset: any, or the ALLOWED_HOSTS names in production"`
	// FileLimit is the process's open-file limit, as RaiseFileLimit
	// returns it: the server keeps fdlimit.Reserve descriptors of it for
	// the process and refuses (503 at once) connections past the rest, so it never
	// runs out of descriptors. Zero means the soft RLIMIT_NOFILE when
	// NewServer runs. Tests set a small value to act out exhaustion.
	FileLimit int
	// HTTPHandler serves requests that are not under WSPrefix. Nil answers
	// 404 to all of them.
	HTTPHandler http.Handler
}

// Defaults of Config: what a zero field means. Each is declared here once;
// Defaulted applies them, `gateway -h` prints them, and
// TestConfigCommentsStateDefaults holds each field's comment ("Zero
// means …") to them.
const (
	defaultMaxMessageBytes  = 64 << 10
	defaultMaxQueueBytes    = 1 << 20
	defaultMaxPartialBytes  = 64 << 20
	defaultFragmentTimeout  = 15 * time.Second
	defaultFrameRate        = 200
	defaultFrameBurst       = 1000
	defaultPingInterval     = 30 * time.Second
	defaultPongTimeout      = 30 * time.Second
	defaultHandshakeTimeout = 10 * time.Second
	defaultCloseTimeout     = 2 * time.Second
	defaultHTTPReadTimeout  = 10 * time.Second
	defaultHTTPWriteTimeout = 60 * time.Second
	defaultHTTPIdleTimeout  = 30 * time.Second
	defaultMaxHeaderBytes   = 16 << 10
	defaultHTTPMaxBodyBytes = 64 << 10
	defaultWSPrefix         = "/ws/"
	// defaultFileLimit is FileLimit when RLIMIT_NOFILE cannot be read.
	defaultFileLimit = 1024
)

// Bounds of Config values that setDefaults checks; the help tags and
// comments that state them are held to them by TestConfigHelpStatesBounds.
const (
	minQueueMessages = 2 // MaxQueueBytes is at least minQueueMessages×MaxMessageBytes
	// maxQueueBytes bounds MaxQueueBytes (and so MaxMessageBytes, at most
	// half of it): a connection counts its queued and unfinished bytes in
	// 32 bits, which keeps an idle Conn small.
	maxQueueBytes  = 1 << 30
	maxFrameRate   = 1e9     // frames per second
	maxEventLoops  = 1024    // EventLoops
	minHeaderBytes = 1 << 10 // MaxHeaderBytes
	maxHeaderBytes = 1 << 20 // MaxHeaderBytes
	// perIPMin is the least default of MaxConnectionsPerIP (perIPDefault).
	perIPMin = 1000
	// perIPShare: MaxConnectionsPerIP defaults to 1/perIPShare of
	// MaxConnections.
	perIPShare = 4
)

// Descriptor budget: what NewServer keeps of Config.FileLimit for other
// uses than client connections; fdlimit.Reserve descriptors are for
// the process (listener, epoll and eventfds, the spare descriptor, Redis,
// logs, and the dup made when a connection is handed to the HTTP server).
//
// httpReserve descriptors (at most a quarter of the rest) are kept from
// MaxConnections for handshakes and plain HTTP, so /healthz still answers
// when WebSocket connections are capped.
const httpReserve = 64

// Defaulted returns c with every zero field set to the default the
// server uses for it, without checking anything: what `gateway -h` prints.
// FileLimit is left as is (its default is the process's limit).
func (c Config) Defaulted() Config {
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, defaultMaxMessageBytes)
	c.MaxQueueBytes = cmp.Or(c.MaxQueueBytes, defaultMaxQueueBytes)
	c.MaxPartialBytes = cmp.Or(c.MaxPartialBytes, defaultMaxPartialBytes)
	c.FragmentTimeout = cmp.Or(c.FragmentTimeout, defaultFragmentTimeout)
	c.FrameRate = cmp.Or(c.FrameRate, defaultFrameRate)
	c.FrameBurst = cmp.Or(c.FrameBurst, defaultFrameBurst)
	c.EventLoops = cmp.Or(c.EventLoops, runtime.GOMAXPROCS(0))
	c.PingInterval = cmp.Or(c.PingInterval, defaultPingInterval)
	c.PongTimeout = cmp.Or(c.PongTimeout, defaultPongTimeout)
	c.HandshakeTimeout = cmp.Or(c.HandshakeTimeout, defaultHandshakeTimeout)
	c.CloseTimeout = cmp.Or(c.CloseTimeout, defaultCloseTimeout)
	c.HTTPReadTimeout = cmp.Or(c.HTTPReadTimeout, defaultHTTPReadTimeout)
	c.HTTPWriteTimeout = cmp.Or(c.HTTPWriteTimeout, defaultHTTPWriteTimeout)
	c.HTTPIdleTimeout = cmp.Or(c.HTTPIdleTimeout, defaultHTTPIdleTimeout)
	c.MaxHeaderBytes = cmp.Or(c.MaxHeaderBytes, defaultMaxHeaderBytes)
	c.HTTPMaxBodyBytes = cmp.Or(c.HTTPMaxBodyBytes, defaultHTTPMaxBodyBytes)
	c.WSPrefix = cmp.Or(c.WSPrefix, defaultWSPrefix)
	return c
}

// setDefaults fills the zero fields (FileLimit from RLIMIT_NOFILE) and
// checks every value; the error names the variable to fix.
func (c *Config) setDefaults() error {
	*c = c.Defaulted()
	if c.FileLimit == 0 {
		c.FileLimit = defaultFileLimit
		var rl unix.Rlimit
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil {
			c.FileLimit = int(min(rl.Cur, math.MaxInt32))
		}
	}
	switch {
	case c.MaxMessageBytes < 0:
		return fmt.Errorf("conn: MAX_MESSAGE_BYTES is %d; want a positive byte count", c.MaxMessageBytes)
	case c.MaxQueueBytes > maxQueueBytes:
		return fmt.Errorf("conn: MAX_QUEUE_BYTES is %d; want at most %d (1 GiB) per client", c.MaxQueueBytes, maxQueueBytes)
	case c.MaxQueueBytes < minQueueMessages*c.MaxMessageBytes:
		return fmt.Errorf("conn: MAX_QUEUE_BYTES (%d) must be at least %d× MAX_MESSAGE_BYTES (%d); raise it (at most %d) or lower MAX_MESSAGE_BYTES (at most %d)",
			c.MaxQueueBytes, minQueueMessages, c.MaxMessageBytes, maxQueueBytes, maxQueueBytes/minQueueMessages)
	case c.MaxPartialBytes < maxPartialPerConn(c.MaxMessageBytes):
		return fmt.Errorf("conn: MAX_PARTIAL_BYTES (%d) must be at least %d, what one connection may hold for a message of MAX_MESSAGE_BYTES (%d); raise it or lower MAX_MESSAGE_BYTES",
			c.MaxPartialBytes, maxPartialPerConn(c.MaxMessageBytes), c.MaxMessageBytes)
	case c.FragmentTimeout < 0:
		return fmt.Errorf("conn: FRAGMENT_TIMEOUT is %s; want a positive duration such as %s", c.FragmentTimeout, defaultFragmentTimeout)
	case c.FrameRate < -1 || c.FrameRate > maxFrameRate:
		return fmt.Errorf("conn: FRAME_RATE is %d; want 1 to %d frames per second, or -1 for no limit", c.FrameRate, int(maxFrameRate))
	case c.FrameBurst < 0:
		return fmt.Errorf("conn: FRAME_BURST is %d; want a positive number of frames", c.FrameBurst)
	case c.MaxConnections < -1:
		return fmt.Errorf("conn: MAX_CONNECTIONS is %d; want a positive number, or -1 for the open-file limit", c.MaxConnections)
	case c.MaxConnectionsPerIP < -1:
		return fmt.Errorf("conn: MAX_CONNECTIONS_PER_IP is %d; want a positive number, or -1 for no limit", c.MaxConnectionsPerIP)
	case c.EventLoops < 0 || c.EventLoops > maxEventLoops:
		return fmt.Errorf("conn: EVENT_LOOPS is %d; want 1 to %d, or 0 for one per CPU", c.EventLoops, maxEventLoops)
	case c.PingInterval < 0 || c.PongTimeout < 0 || c.HandshakeTimeout < 0 || c.CloseTimeout < 0:
		return errors.New("conn: PING_INTERVAL, PONG_TIMEOUT, HANDSHAKE_TIMEOUT and CLOSE_TIMEOUT must not be negative")
	case c.HTTPReadTimeout < 0 || c.HTTPWriteTimeout < 0 || c.HTTPIdleTimeout < 0:
		return errors.New("conn: HTTP_READ_TIMEOUT, HTTP_WRITE_TIMEOUT and HTTP_IDLE_TIMEOUT must not be negative")
	case c.MaxHeaderBytes < minHeaderBytes || c.MaxHeaderBytes > maxHeaderBytes:
		return fmt.Errorf("conn: MAX_HEADER_BYTES is %d; want %d to %d bytes", c.MaxHeaderBytes, minHeaderBytes, maxHeaderBytes)
	case c.HTTPMaxBodyBytes < 0:
		return fmt.Errorf("conn: HTTP_MAX_BODY_BYTES is %d; want a positive byte count", c.HTTPMaxBodyBytes)
	case c.FileLimit < 0:
		return fmt.Errorf("conn: FileLimit is %d; want the process's open-file limit, or 0 to read it", c.FileLimit)
	case !strings.HasPrefix(c.WSPrefix, "/"):
		return fmt.Errorf("conn: WSPrefix %q must start with /", c.WSPrefix)
	}
	if _, err := newOriginList(c.AllowedOrigins); err != nil {
		return err
	}
	if _, err := parseProxies(c.TrustedProxies); err != nil {
		return err
	}
	return nil
}

// perIPDefault is MaxConnectionsPerIP's default for a server that holds
// websockets WebSocket connections: 1/perIPShare of them, at least
// perIPMin.
func perIPDefault(websockets int) int { return max(websockets/perIPShare, perIPMin) }

// budget returns the sockets the server may hold at once (every kind)
// and the WebSocket connections it may hold, MaxConnections lowered to
// fit FileLimit. It fails when FileLimit leaves no room.
func (c *Config) budget() (sockets, websockets int, err error) {
	sockets = c.FileLimit - fdlimit.Reserve
	websockets = sockets - min(httpReserve, sockets/4)
	if sockets < 2 {
		return 0, 0, fmt.Errorf("conn: the open-file limit (%d) leaves no room for connections; raise it (ulimit -n, or docker run --ulimit nofile=N) to %d or more",
			c.FileLimit, fdlimit.Reserve+2)
	}
	if c.MaxConnections > 0 {
		websockets = min(websockets, c.MaxConnections)
	}
	return sockets, websockets, nil
}
