package conn

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Requests that are not under Config.WSPrefix go to an ordinary
// http.Server with the bytes the loop already read. It is bounded like
// the rest: ReadHeaderTimeout (HANDSHAKE_TIMEOUT), ReadTimeout,
// WriteTimeout, IdleTimeout, MaxHeaderBytes and a body limit; its
// connections are counted in Stats.HTTP and in the per-address and
// descriptor caps until they close, and one cut by a timeout in the
// middle of a request in Stats.TimedOut.

// newHTTPServer returns the server of plain-HTTP requests.
func (s *Server) newHTTPServer() *http.Server {
	h := s.cfg.HTTPHandler
	if h == nil {
		h = http.NotFoundHandler()
	}
	return &http.Server{
		Handler:           closeAfterChunked(limitBody(h, int64(s.cfg.HTTPMaxBodyBytes))),
		ReadHeaderTimeout: s.cfg.HandshakeTimeout,
		ReadTimeout:       s.cfg.HTTPReadTimeout,
		WriteTimeout:      s.cfg.HTTPWriteTimeout,
		IdleTimeout:       s.cfg.HTTPIdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ConnState: func(nc net.Conn, st http.ConnState) {
			if hc, ok := nc.(*httpConn); ok {
				hc.idle.Store(st == http.StateIdle)
			}
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// limitBody answers 413 at once to a request that declares a body longer
// than limit, and makes reading past limit fail for one that does not
// declare it (chunked).
func limitBody(h http.Handler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			w.Header().Set("Connection", "close")
			http.Error(w, "request body too large (HTTP_MAX_BODY_BYTES)", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h.ServeHTTP(w, r)
	})
}

// closeAfterChunked closes the connection after answering a request with
// a chunked body, or an HTTP/1.0 one. The loop checks the first request
// of a connection (checkHead refuses a Transfer-Encoding with a
// Content-Length); net/http parses the later ones alone, and when both
// are present takes the chunked body and drops the Content-Length, so
// that the handler cannot tell. RFC 9112 section 6.1 requires closing
// after such a request; as only chunked requests can be one, all of them
// close. net/http also drops the Transfer-Encoding of HTTP/1.0 requests,
// whose framing is then faulty (same section).
func closeAfterChunked(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TransferEncoding) > 0 || !r.ProtoAtLeast(1, 1) {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// toHTTP hands a connection whose request is not an upgrade to the HTTP
// server, with the bytes already read.
func (l *loop) toHTTP(c *Conn) {
	prefix := append([]byte(nil), c.rd.in.b...)
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	fd, perIP := c.fd, c.perIP
	c.perIP = false // the HTTP connection holds the count from now on
	l.detach(c)
	f := os.NewFile(uintptr(fd), "http")
	nc, err := net.FileConn(f) // a dup
	f.Close()
	hc := &httpConn{srv: l.srv, addr: c.remote.Addr(), perIP: perIP, prefix: prefix}
	l.srv.stats.http.Add(1)
	if err != nil {
		l.srv.log.Warn("cannot hand connection to the HTTP server", "remote", c.remote, "err", err)
		hc.release()
		return
	}
	hc.Conn = nc
	if !l.srv.httpLn.push(hc) {
		hc.Close()
	}
}

// httpConn is a connection served by the HTTP server. It replays the
// bytes the event loop already read, counts itself out of the caps when
// closed, and counts a timeout that cuts a request.
type httpConn struct {
	net.Conn
	srv    *Server
	addr   netip.Addr
	perIP  bool   // counted in Server.perIP
	prefix []byte // read by the loop, not yet by the HTTP server

	idle     atomic.Bool  // between requests (http.StateIdle)
	deadline atomic.Int64 // the last read or write deadline set, unix ns; 0 for none
	timedOut atomic.Bool
	once     sync.Once
}

func (c *httpConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	c.check(err)
	return n, err
}

func (c *httpConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.check(err)
	return n, err
}

func (c *httpConn) SetDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *httpConn) SetReadDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *httpConn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *httpConn) setDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	c.deadline.Store(ns)
}

// check counts a timeout in the middle of a request. The HTTP server also
// uses a deadline in the past to stop a read of its own (then the
// deadline is far from now) and lets idle connections time out; neither
// counts.
func (c *httpConn) check(err error) {
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || c.idle.Load() {
		return
	}
	if dl := c.deadline.Load(); dl == 0 || time.Now().UnixNano()-dl > int64(time.Minute) {
		return
	}
	if c.timedOut.CompareAndSwap(false, true) {
		c.srv.stats.timedOut.Add(1)
	}
}

// Close closes the connection and counts it out.
func (c *httpConn) Close() error {
	c.release()
	return c.Conn.Close()
}

func (c *httpConn) release() {
	c.once.Do(func() {
		c.srv.stats.http.Add(-1)
		if c.perIP {
			c.srv.perIP.release(c.addr)
		}
	})
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
