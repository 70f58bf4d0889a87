package conn

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/backoff"
	"github.com/chatgw/gateway/internal/fdlimit"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("conn: server closed")

// Opening is how Handler.OnOpen lets an upgrade it does not refuse go on:
// now, or once the Handler calls Conn.Complete.
type Opening uint8

const (
	// OpenNow writes the 101 response at once: the connection is open.
	OpenNow Opening = iota
	// OpenPending defers the answer: the 101 response waits until the
	// Handler calls Conn.Complete, so OnOpen never has to block the event
	// loop (for example on a Redis round trip). From then on OnClose is
	// called if the client goes away first.
	OpenPending
)

// Handler is what the server calls about connections. All calls for one
// connection come from its event loop, one at a time, and must not block:
// a slow Handler delays every connection of that loop.
type Handler interface {
	// Route is called with the request URI of an upgrade request under
	// Config.WSPrefix. It returns the route key the connection will
	// carry (Conn.Key), such as the room it joins, or an error that refuses the
	// upgrade: a *HandshakeError chooses the HTTP status, any other error
	// answers 400.
	Route(uri []byte) (routeKey string, err error)
	// OnOpen is called once the request is valid, before the 101 response
	// is written: frames sent to c from now on reach the client after the
	// response. A non-nil error refuses the upgrade (503 unless it is a
	// *HandshakeError), whatever the Opening; otherwise OpenNow opens the
	// connection and OpenPending defers the answer to Conn.Complete.
	OnOpen(c *Conn) (Opening, error)
	// OnMessage is called with each complete text message, valid UTF-8 of
	// at most Config.MaxMessageBytes. msg is only valid during the call.
	// It returns zero once it has taken msg. A positive wait declines msg
	// for now: the server reads nothing more from c for that long, then
	// calls OnMessage again with the same message. So a Handler slows a
	// client down (its TCP window closes) without dropping anything.
	OnMessage(c *Conn, msg []byte) (wait time.Duration)
	// OnClose is called once when an open connection starts closing, with
	// the cause (one of the errors in close.go, or an I/O error). No
	// message of c is delivered to OnMessage after it.
	OnClose(c *Conn, cause error)
}

// HandshakeError refuses an upgrade with an HTTP status and a one-line
// reason, the response body.
type HandshakeError struct {
	Status int
	Reason string
}

// Error returns the reason.
func (e *HandshakeError) Error() string { return e.Reason }

// Stats are the server's counters, safe to read at any time.
type Stats struct {
	Open       int64 `json:"open"`       // sockets held by the event loops: in handshake, open or closing
	Accepted   int64 `json:"accepted"`   // TCP connections accepted since start
	Upgraded   int64 `json:"upgraded"`   // WebSocket upgrades completed since start
	WebSockets int64 `json:"websockets"` // WebSocket connections held (joining, open or closing); MAX_CONNECTIONS bounds it
	HTTP       int64 `json:"http"`       // connections held by the plain-HTTP server
	Refused    int64 `json:"refused"`    // connections and upgrades refused with an HTTP error, since start
	// RefusedBy splits Refused by reason: bad_request (400), unauthorized
	// (401), forbidden (403), not_found (404), timeout (408), too_large
	// (431), per_ip, capacity, draining and unavailable (503s), other.
	RefusedBy map[string]int64 `json:"refused_by"`
	// Closes counts the close frames sent since start by who started the
	// close and code: "server 1008", "client 1000" (an echo); "other" for
	// an unusual code.
	Closes        map[string]int64 `json:"closes"`
	SlowConsumers int64            `json:"slow_consumers"` // connections closed for MAX_QUEUE_BYTES, since start
	QueuedBytes   int64            `json:"queued_bytes"`   // bytes queued for clients, not yet written
	TimedOut      int64            `json:"timed_out"`      // handshakes, HTTP requests and unfinished messages cut by their timeout, since start
	Limited       int64            `json:"limited"`        // connections closed for MAX_PARTIAL_BYTES, since start
	// Paused counts the times a connection's reads were paused because it
	// sent faster than its rate (FRAME_RATE, or a message rate of the
	// Handler's): slowed down, nothing dropped.
	Paused int64 `json:"paused"`
	// Evicted counts the connections closed with 503 before they finished
	// their request head, to make room at the connection cap.
	Evicted      int64 `json:"evicted"`
	PartialBytes int64 `json:"partial_bytes"` // buffer held for unfinished messages and frames; MAX_PARTIAL_BYTES bounds it
}

type stats struct {
	open, accepted, upgraded, websockets, http atomic.Int64
	timedOut, limited, partial, slow, paused   atomic.Int64
	evicted                                    atomic.Int64
	refusedBy                                  [numRefuseReasons]atomic.Int64
	closes                                     closeCounters
}

// refuse counts a refused connection or upgrade.
func (s *stats) refuse(r refuseReason) { s.refusedBy[r].Add(1) }

// Server accepts TCP connections, upgrades WebSocket requests on epoll
// event loops and hands other HTTP requests to Config.HTTPHandler, all on
// one port.
type Server struct {
	cfg     Config
	handler Handler
	log     *slog.Logger
	loops   []*loop
	tick    time.Duration
	hosts   HostList    // Config.AllowedHosts
	readLim readLimits  // every reader's limits (Config.MaxMessageBytes, FrameRate, FrameBurst), copied by each loop
	origins *originList // Config.AllowedOrigins; nil: any origin
	perIP   ipLimit     // connections per client address
	proxies proxyList   // Config.TrustedProxies
	sockets int64       // sockets held at once, of every kind (Config.FileLimit less the reserve)
	idBase  uint64
	nextID  atomic.Uint64
	stats   stats

	lfd      int
	addr     net.Addr
	stopping atomic.Bool
	draining atomic.Bool // Drain started: upgrades are refused
	httpSrv  *http.Server
	httpLn   *chanListener
	serveMu  sync.Mutex
	served   chan struct{} // closed when Serve returns; nil before Serve

	// Owned by the Serve goroutine (and Listen and Shutdown before and
	// after it).
	accept     func(lfd int) (int, netip.AddrPort, error) // accept4; tests replace it
	spare      int                                        // a descriptor to free when accept fails with EMFILE; -1 when none
	failures   int                                        // accept failures since the last warning
	lastWarned time.Time
}

// NewServer validates cfg and starts the event loops. Call Listen, then
// Serve.
func NewServer(cfg Config, h Handler, logger *slog.Logger) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if h == nil || logger == nil {
		return nil, errors.New("conn: NewServer needs a Handler and a logger")
	}
	sockets, websockets, err := cfg.budget()
	if err != nil {
		return nil, err
	}
	if cfg.MaxConnections > websockets {
		logger.Warn("MAX_CONNECTIONS lowered to fit the open-file limit", "max_connections", websockets, "open_file_limit", cfg.FileLimit)
	}
	cfg.MaxConnections = websockets
	if cfg.MaxConnectionsPerIP == 0 {
		cfg.MaxConnectionsPerIP = perIPDefault(websockets)
	}
	proxies, _ := parseProxies(cfg.TrustedProxies) // checked by setDefaults
	s := &Server{cfg: cfg, handler: h, log: logger, lfd: -1, spare: -1, sockets: int64(sockets), accept: accept4, proxies: proxies}
	s.tick = min(time.Second, cfg.PingInterval/2, cfg.PongTimeout/2, cfg.CloseTimeout/2, cfg.HandshakeTimeout/2, cfg.FragmentTimeout/2)
	s.tick = max(s.tick, 10*time.Millisecond)
	s.hosts = NewHostList(cfg.AllowedHosts)
	s.origins, _ = newOriginList(cfg.AllowedOrigins) // checked by setDefaults
	s.perIP.max = max(cfg.MaxConnectionsPerIP, 0)
	s.readLim.max = cfg.MaxMessageBytes
	s.readLim.setRate(cfg.FrameRate, cfg.FrameBurst)
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.idBase = binary.LittleEndian.Uint64(b[:])

	s.httpLn = newChanListener()
	s.httpSrv = s.newHTTPServer()
	for range cfg.EventLoops {
		l, err := newLoop(s)
		if err != nil {
			s.closeLoops()
			return nil, err
		}
		s.loops = append(s.loops, l)
	}
	for _, l := range s.loops {
		go l.run()
	}
	go func() { _ = s.httpSrv.Serve(s.httpLn) }()
	return s, nil
}

// Listen binds the TCP address addr ("host:port"; port 0 picks a free one).
func (s *Server) Listen(addr string) error {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return fmt.Errorf("conn: listen address %q: %w", addr, err)
	}
	ap := ta.AddrPort()
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	if ap.Addr().Is4() || ta.IP == nil {
		if ta.IP == nil {
			ap = netip.AddrPortFrom(netip.IPv4Unspecified(), ap.Port())
		}
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("conn: socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if s.cfg.ReusePort {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return fmt.Errorf("conn: bind %s: %w (is another process using the port? set PORT)", addr, err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return fmt.Errorf("conn: listen %s: %w", addr, err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("conn: getsockname: %w", err)
	}
	s.lfd = fd
	s.addr = net.TCPAddrFromAddrPort(sockaddrToAddrPort(bound))
	s.httpLn.addr = s.addr
	s.spare = openSpare()
	return nil
}

// Config returns the configuration in force, defaults filled in;
// MaxConnections is the cap in force, lowered to fit FileLimit.
func (s *Server) Config() Config { return s.cfg }

// Addr returns the address Listen bound.
func (s *Server) Addr() net.Addr { return s.addr }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Open:          s.stats.open.Load(),
		Accepted:      s.stats.accepted.Load(),
		Upgraded:      s.stats.upgraded.Load(),
		WebSockets:    s.stats.websockets.Load(),
		HTTP:          s.stats.http.Load(),
		TimedOut:      s.stats.timedOut.Load(),
		Limited:       s.stats.limited.Load(),
		Paused:        s.stats.paused.Load(),
		Evicted:       s.stats.evicted.Load(),
		PartialBytes:  s.stats.partial.Load(),
		SlowConsumers: s.stats.slow.Load(),
		RefusedBy:     map[string]int64{},
		Closes:        s.stats.closes.snapshot(),
	}
	for r := range numRefuseReasons {
		if n := s.stats.refusedBy[r].Load(); n > 0 {
			st.RefusedBy[refuseReasonNames[r]] = n
			st.Refused += n
		}
	}
	for _, l := range s.loops {
		st.QueuedBytes += l.queued.Load()
	}
	return st
}

// acceptBackoff is how long Serve waits after an accept failure it cannot
// answer (out of memory, or out of descriptors without a spare one): Min
// after the first, doubling up to Max while failures go on.
var acceptBackoff = backoff.Policy{Min: 5 * time.Millisecond, Max: time.Second}

// Serve accepts connections until Shutdown, then returns ErrServerClosed.
func (s *Server) Serve() error {
	if s.lfd < 0 {
		return errors.New("conn: Serve before Listen")
	}
	s.serveMu.Lock()
	if s.stopping.Load() || s.served != nil {
		s.serveMu.Unlock()
		return ErrServerClosed
	}
	done := make(chan struct{})
	s.served = done
	s.serveMu.Unlock()
	defer close(done)
	failed := 0 // accept failures in a row that Serve waited after
	next := 0
	for {
		fd, remote, err := s.accept(s.lfd)
		if s.stopping.Load() {
			if err == nil {
				unix.Close(fd)
			}
			return ErrServerClosed
		}
		switch err {
		case nil:
			failed = 0
		case unix.EINTR, unix.ECONNABORTED, unix.EAGAIN:
			continue
		case unix.EMFILE, unix.ENFILE:
			// Out of descriptors: free the spare one to answer the waiting
			// client 503, so it learns why and the backlog empties instead
			// of the loop spinning on EMFILE.
			if s.refuseWithSpare() {
				failed = 0
				continue
			}
			fallthrough
		case unix.ENOBUFS, unix.ENOMEM:
			failed++
			wait := acceptBackoff.Wait(failed)
			s.warnAccept("accept failed; retrying", err, wait)
			time.Sleep(wait)
			continue
		default:
			return fmt.Errorf("conn: accept: %w", err)
		}
		s.stats.accepted.Add(1)
		proxy := s.proxies.trusts(remote.Addr())
		perIP, reason := s.admit(remote.Addr(), proxy)
		if reason != "" {
			refuse(fd, reason)
			continue
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &Conn{
			id:        s.idBase + s.nextID.Add(1),
			fd:        fd,
			remote:    remote,
			slot:      -1,
			perIP:     perIP,
			fromProxy: proxy,
			anonymous: proxy,
		}
		c.loop = s.loops[next]
		c.rd.lim = &c.loop.readLim
		next = (next + 1) % len(s.loops)
		s.stats.open.Add(1)
		c.loop.post(reqRegister, c, nil)
	}
}

// Shutdown stops accepting, closes every connection with 1001 and waits
// for clients to answer, at most until ctx ends; then it releases the
// sockets left. Handler.OnClose is called for every open connection.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.stopping.Swap(true) {
		return ErrServerClosed
	}
	if s.lfd >= 0 {
		_ = unix.Shutdown(s.lfd, unix.SHUT_RDWR) // wakes a blocked accept
		s.serveMu.Lock()
		served := s.served
		s.serveMu.Unlock()
		if served != nil {
			<-served
		}
		unix.Close(s.lfd)
		if s.spare >= 0 {
			unix.Close(s.spare)
			s.spare = -1
		}
	}
	for _, l := range s.loops {
		l.post(reqShutdown, nil, nil)
	}
	var err error
	for _, l := range s.loops {
		select {
		case <-l.done:
		case <-ctx.Done():
			l.post(reqForce, nil, nil)
			<-l.done
			err = fmt.Errorf("conn: shutdown: clients did not close in time: %w", ctx.Err())
		}
	}
	s.closeLoops()
	if herr := s.httpSrv.Shutdown(ctx); herr != nil && err == nil {
		err = fmt.Errorf("conn: shutdown HTTP: %w", herr)
	}
	return err
}

// drainStep is the interval between two batches of Drain.
const drainStep = 100 * time.Millisecond

// Drain starts a graceful stop without stopping the listener: from now on
// upgrades are refused with 503 and Retry-After, plain HTTP is still
// served, and the open WebSocket connections are closed with 1001 in
// batches spread evenly over window (one every drainStep), so that their clients
// do not all reconnect elsewhere at the same instant. It returns when
// every connection open at the start has been asked to close, or when ctx
// ends. Shutdown then stops the listener and releases what is left. A
// window of zero only refuses upgrades.
func (s *Server) Drain(ctx context.Context, window time.Duration) error {
	s.draining.Store(true)
	steps := int(window / drainStep)
	if steps < 1 {
		return nil
	}
	t := time.NewTicker(drainStep)
	defer t.Stop()
	for i := range steps {
		// Recount each time: clients also leave by themselves.
		left := int(s.stats.websockets.Load())
		if left == 0 {
			return nil
		}
		batch := (left + steps - i - 1) / (steps - i)
		per := (batch + len(s.loops) - 1) / len(s.loops)
		for _, l := range s.loops {
			l.postReq(posted{kind: reqDrain, n: per})
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("conn: drain: %w", ctx.Err())
		}
	}
	return nil
}

func (s *Server) closeLoops() {
	for _, l := range s.loops {
		_ = l.poll.close() // and l.epfd
		unix.Close(l.efd)
	}
}

// hostAllowed checks a Host header against Config.AllowedHosts.
func (s *Server) hostAllowed(host []byte) bool {
	if s.hosts.Any() {
		return true // no copy of the header to check
	}
	return s.hosts.Allows(string(host))
}

func sockaddrToAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// RaiseFileLimit raises the soft limit of open files to the hard limit and
// returns the new soft limit: roughly the most connections one process can
// hold, one file descriptor each.
func RaiseFileLimit() (uint64, error) {
	n, err := fdlimit.Raise()
	if err != nil {
		return 0, fmt.Errorf("conn: %w", err)
	}
	return n, nil
}
