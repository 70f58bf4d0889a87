package conn

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("conn: server closed")

// ErrPending, returned by Handler.OnOpen, defers the decision: the 101
// response waits until the Handler calls Conn.Accept, so OnOpen never has
// to block the event loop (for example on a Redis round trip).
var ErrPending = errors.New("conn: open pending")

// Config sets the limits of the WebSocket server. A zero field takes its
// default; the env tags give the variables cmd/gateway reads them from.
type Config struct {
	// MaxMessageBytes is the largest message a client may send; a longer one
	// closes the connection with 1009. Zero means 64 KiB.
	MaxMessageBytes int `env:"MAX_MESSAGE_BYTES" help:"largest client message in bytes; longer ones close with 1009"`
	// MaxQueueBytes bounds the bytes queued for one client that does not
	// read; past it the connection is closed with 1008. Zero means 1 MiB.
	// It must be at least 2×MaxMessageBytes.
	MaxQueueBytes int `env:"MAX_QUEUE_BYTES" help:"bytes queued for a client that does not read before it is closed with 1008 (at least 2x MAX_MESSAGE_BYTES)"`
	// PingInterval is how long a connection may stay silent before the
	// server pings it. Zero means 30s.
	PingInterval time.Duration `env:"PING_INTERVAL" help:"silence after which the server pings a connection"`
	// PongTimeout is how long the server waits for any data after a ping
	// before it closes the connection with 1001. Zero means 30s.
	PongTimeout time.Duration `env:"PONG_TIMEOUT" help:"time to answer a ping before the connection is closed with 1001"`
	// HandshakeTimeout bounds the time from accept to a complete request
	// head. Zero means 10s.
	HandshakeTimeout time.Duration `env:"HANDSHAKE_TIMEOUT" help:"time from accept to a complete HTTP request head"`
	// CloseTimeout is how long a closing connection waits for the client's
	// close frame or FIN before its socket is released. Zero means 2s.
	CloseTimeout time.Duration `env:"CLOSE_TIMEOUT" help:"time a closing connection waits for the client's close frame"`
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
	// AllowedOrigins lists the Origin header values (scheme://host[:port],
	// or a bare host name matching any scheme and port) accepted for
	// upgrades; "*" accepts any. A request without an Origin header (not a
	// browser) is always accepted. Empty means any.
	AllowedOrigins []string
	// HTTPHandler serves requests that are not under WSPrefix. Nil answers
	// 404 to all of them.
	HTTPHandler http.Handler
}

// Defaulted returns c with every zero field set to the default the
// server uses for it, without checking anything: what `gateway -h` prints.
func (c Config) Defaulted() Config {
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, 64<<10)
	c.MaxQueueBytes = cmp.Or(c.MaxQueueBytes, 1<<20)
	c.EventLoops = cmp.Or(c.EventLoops, runtime.GOMAXPROCS(0))
	c.PingInterval = cmp.Or(c.PingInterval, 30*time.Second)
	c.PongTimeout = cmp.Or(c.PongTimeout, 30*time.Second)
	c.HandshakeTimeout = cmp.Or(c.HandshakeTimeout, 10*time.Second)
	c.CloseTimeout = cmp.Or(c.CloseTimeout, 2*time.Second)
	c.WSPrefix = cmp.Or(c.WSPrefix, "/ws/")
	return c
}

func (c *Config) setDefaults() error {
	*c = c.Defaulted()
	switch {
	case c.MaxMessageBytes < 0:
		return fmt.Errorf("conn: MAX_MESSAGE_BYTES is %d; want a positive byte count", c.MaxMessageBytes)
	case c.MaxQueueBytes < 2*c.MaxMessageBytes:
		return fmt.Errorf("conn: MAX_QUEUE_BYTES (%d) must be at least twice MAX_MESSAGE_BYTES (%d)", c.MaxQueueBytes, c.MaxMessageBytes)
	case c.EventLoops < 0 || c.EventLoops > 1024:
		return fmt.Errorf("conn: EVENT_LOOPS is %d; want 1 to 1024, or 0 for one per CPU", c.EventLoops)
	case c.PingInterval < 0 || c.PongTimeout < 0 || c.HandshakeTimeout < 0 || c.CloseTimeout < 0:
		return errors.New("conn: PING_INTERVAL, PONG_TIMEOUT, HANDSHAKE_TIMEOUT and CLOSE_TIMEOUT must not be negative")
	case !strings.HasPrefix(c.WSPrefix, "/"):
		return fmt.Errorf("conn: WSPrefix %q must start with /", c.WSPrefix)
	}
	return nil
}

// Handler is what the server calls about connections. All calls for one
// connection come from its event loop, one at a time, and must not block:
// a slow Handler delays every connection of that loop.
type Handler interface {
	// Accept is called with the request URI of an upgrade request under
	// Config.WSPrefix. It returns the key the connection will carry
	// (Conn.Key), or an error that refuses the upgrade: a *HandshakeError
	// chooses the HTTP status, any other error answers 400.
	Accept(uri []byte) (key string, err error)
	// OnOpen is called once the request is valid, before the 101 response
	// is written: frames sent to c from now on reach the client after the
	// response. An error refuses the upgrade (503 unless it is a
	// *HandshakeError). ErrPending defers the answer to Conn.Accept; from
	// then on OnClose is called if the client goes away first.
	OnOpen(c *Conn) error
	// OnMessage is called with each complete text message, valid UTF-8 of
	// at most Config.MaxMessageBytes. msg is only valid during the call.
	OnMessage(c *Conn, msg []byte)
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
	Open     int64 `json:"open"`     // sockets held, in handshake, open or closing
	Accepted int64 `json:"accepted"` // TCP connections accepted since start
	Upgraded int64 `json:"upgraded"` // WebSocket upgrades completed since start
}

type stats struct {
	open, accepted, upgraded atomic.Int64
}

// Server accepts TCP connections, upgrades WebSocket requests on epoll
// event loops and hands other HTTP requests to Config.HTTPHandler, all on
// one port.
type Server struct {
	cfg     Config
	handler Handler
	log     *slog.Logger
	loops   []*loop
	tick    time.Duration
	hosts   map[string]bool // nil: any host
	idBase  uint64
	nextID  atomic.Uint64
	stats   stats

	lfd      int
	addr     net.Addr
	stopping atomic.Bool
	httpSrv  *http.Server
	httpLn   *chanListener
	serving  sync.WaitGroup
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
	s := &Server{cfg: cfg, handler: h, log: logger, lfd: -1}
	s.tick = min(time.Second, cfg.PingInterval/2, cfg.PongTimeout/2, cfg.CloseTimeout/2, cfg.HandshakeTimeout/2)
	s.tick = max(s.tick, 10*time.Millisecond)
	for _, h := range cfg.AllowedHosts {
		if h == "*" {
			s.hosts = nil
			break
		}
		if s.hosts == nil {
			s.hosts = make(map[string]bool)
		}
		s.hosts[strings.Trim(strings.ToLower(strings.TrimSpace(h)), "[]")] = true
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	s.idBase = binary.LittleEndian.Uint64(b[:])

	handler := cfg.HTTPHandler
	if handler == nil {
		handler = http.NotFoundHandler()
	}
	s.httpLn = newChanListener()
	s.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.HandshakeTimeout,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
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
	return nil
}

// Config returns the configuration in force, defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// Addr returns the address Listen bound.
func (s *Server) Addr() net.Addr { return s.addr }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{Open: s.stats.open.Load(), Accepted: s.stats.accepted.Load(), Upgraded: s.stats.upgraded.Load()}
}

// Serve accepts connections until Shutdown, then returns ErrServerClosed.
func (s *Server) Serve() error {
	if s.lfd < 0 {
		return errors.New("conn: Serve before Listen")
	}
	s.serving.Add(1)
	defer s.serving.Done()
	var backoff time.Duration
	next := 0
	for {
		fd, sa, err := unix.Accept4(s.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if s.stopping.Load() {
			if err == nil {
				unix.Close(fd)
			}
			return ErrServerClosed
		}
		switch err {
		case nil:
			backoff = 0
		case unix.EINTR, unix.ECONNABORTED, unix.EAGAIN:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of file descriptors or memory: wait for connections to
			// close rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff, "open", s.stats.open.Load())
			time.Sleep(backoff)
			continue
		default:
			return fmt.Errorf("conn: accept: %w", err)
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c := &Conn{
			id:     s.idBase + s.nextID.Add(1),
			fd:     fd,
			remote: sockaddrToAddrPort(sa),
			slot:   -1,
		}
		c.rd.max = s.cfg.MaxMessageBytes
		c.loop = s.loops[next]
		next = (next + 1) % len(s.loops)
		s.stats.open.Add(1)
		s.stats.accepted.Add(1)
		c.loop.post(c, errRegister)
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
		s.serving.Wait()
		unix.Close(s.lfd)
	}
	for _, l := range s.loops {
		l.post(nil, ErrShutdown)
	}
	var err error
	for _, l := range s.loops {
		select {
		case <-l.done:
		case <-ctx.Done():
			l.post(nil, errForce)
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

func (s *Server) closeLoops() {
	for _, l := range s.loops {
		_ = l.poll.close() // and l.epfd
		unix.Close(l.efd)
	}
}

// hostAllowed checks a Host header against Config.AllowedHosts.
func (s *Server) hostAllowed(host []byte) bool {
	if s.hosts == nil {
		return true
	}
	h := string(bytes.ToLower(host))
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	h = strings.TrimSuffix(strings.Trim(h, "[]"), ".")
	if s.hosts[h] {
		return true
	}
	// ".example.com" allows example.com and its subdomains, as Django's
	// ALLOWED_HOSTS did.
	for {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			return false
		}
		if s.hosts[h[i:]] || s.hosts["."+h] {
			return true
		}
		h = h[i+1:]
	}
}

// toHTTP hands a connection whose request is not an upgrade to the HTTP
// server, with the bytes already read.
func (l *loop) toHTTP(c *Conn) {
	prefix := append([]byte(nil), c.rd.in.b...)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	f := os.NewFile(uintptr(c.fd), "http")
	nc, err := net.FileConn(f) // a dup: the original is closed below
	l.release(c, errToHTTP)
	f.Close()
	if err != nil {
		l.srv.log.Warn("cannot hand connection to the HTTP server", "remote", c.remote, "err", err)
		return
	}
	if !l.srv.httpLn.push(&prefixConn{Conn: nc, prefix: prefix}) {
		nc.Close()
	}
}

// chanListener is a net.Listener fed by the event loops with the
// connections whose requests are plain HTTP.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn, 64), closed: make(chan struct{})}
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

// Accept returns the next connection handed over by a loop.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops Accept.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

// Addr returns the server's address.
func (l *chanListener) Addr() net.Addr { return l.addr }

// prefixConn replays bytes the event loop already read before reading the
// socket.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
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
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("conn: getrlimit: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("conn: raise open-file limit to %d: %w", rl.Max, err)
		}
	}
	return rl.Cur, nil
}
