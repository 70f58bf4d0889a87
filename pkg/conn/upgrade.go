package conn

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The upgrade, run by the event loop that owns the connection: collect
// the request head (HANDSHAKE_TIMEOUT, MAX_HEADER_BYTES, CRLF line ends),
// check it (head.go), hand plain-HTTP requests over (http.go), and run
// gobwas/ws's Upgrader on the head with the checks below, in this order:
// the Handler's Route
// (400/404), Host (ALLOWED_HOSTS, 400), Origin (ALLOWED_ORIGINS, 403), the
// WebSocket cap (MAX_CONNECTIONS, 503) and the Handler's OnOpen, which may
// defer its answer to Conn.Complete.

var crlfcrlf = []byte("\r\n\r\n")

// retryAfter is the Retry-After header of the 503s of an upgrade.
var retryAfter = ws.HandshakeHeaderString("Retry-After: " + strconv.Itoa(retryAfterSeconds) + "\r\n")

// handshake collects the HTTP request head, then upgrades the connection
// or hands it to the HTTP server.
func (l *loop) handshake(c *Conn, data []byte) {
	old := 0
	if c.rd.in != nil {
		old = len(c.rd.in.b)
	}
	// The head is not counted in Stats.PartialBytes: MaxHeaderBytes and
	// HandshakeTimeout bound it.
	c.rd.in = appendBuffer(c.rd.in, data)
	if c.fromProxy && !c.proxyRead {
		var done bool
		if old, done = l.readProxyHeader(c, old); done {
			return
		}
	}
	req := c.rd.in.b
	// Look at the new bytes only, and the three before them, where the
	// blank line may begin.
	from := max(0, old-3)
	head, end := req, bytes.Index(req[from:], crlfcrlf)
	if end >= 0 {
		end += from + len(crlfcrlf)
		head = req[:end]
	}
	if bareLF(head, from) {
		l.reject(c, headBareLF.status, headBareLF.reason, nil)
		return
	}
	if end < 0 && len(req) > l.srv.cfg.MaxHeaderBytes || end > l.srv.cfg.MaxHeaderBytes {
		l.reject(c, http.StatusRequestHeaderFieldsTooLarge, "request head too large (MAX_HEADER_BYTES)", nil)
		return
	}
	if end < 0 {
		return
	}
	if bad := checkHead(head); bad != nil {
		l.reject(c, bad.status, bad.reason, nil)
		return
	}
	if !bytes.HasPrefix(requestPath(req), []byte(l.srv.cfg.WSPrefix)) {
		l.toHTTP(c)
		return
	}
	l.upgrade(c, head, req[end:])
}

// readProxyHeader takes off the bytes c holds the PROXY protocol header a
// trusted proxy may start with, naming the client (proxy.go). old is how
// many of those bytes were held before this read; it returns that count
// after the header is gone, and done when this read needs nothing more:
// the header is incomplete, the connection was refused, or nothing
// follows the header yet.
func (l *loop) readProxyHeader(c *Conn, old int) (int, bool) {
	n, client, need, err := parseProxyHeader(c.rd.in.b)
	switch {
	case err != nil:
		l.reject(c, http.StatusBadRequest, "malformed PROXY protocol header", nil)
		return old, true
	case need && len(c.rd.in.b) <= l.srv.cfg.MaxHeaderBytes:
		return old, true
	}
	c.proxyRead = true
	if n == 0 {
		return old, false
	}
	c.rd.in.b = c.rd.in.b[:copy(c.rd.in.b, c.rd.in.b[n:])]
	if client.IsValid() {
		if reason := l.srv.setClient(c, client); reason != "" {
			l.srv.stats.refuse(refusedPerIP)
			_, _ = unix.Write(c.fd, errorResponse(http.StatusServiceUnavailable, reason))
			l.release(c, nil)
			return 0, true
		}
	}
	return 0, len(c.rd.in.b) == 0
}

// upgrade runs the WebSocket handshake on a complete request head under
// WSPrefix (gobwas/ws calls onRequest, onHost, onHeader and
// onBeforeUpgrade, where the Handler answers), then writes the response,
// or holds it while the Handler's answer is pending. rest is what the
// client sent behind the head, inside c.rd.in.
func (l *loop) upgrade(c *Conn, head, rest []byte) {
	l.hsRouteKey, l.hsCounted = "", false
	l.hsXFF, l.hsFwd = l.hsXFF[:0], l.hsFwd[:0]
	l.hs.resp.Reset()
	l.hs.head.Reset(head)
	l.cur = c
	_, err := l.up.Upgrade(&l.hs)
	l.cur = nil
	l.hs.head.Reset(nil)
	if err == nil && c.state == stateJoining {
		// The Handler answers later (Conn.Complete): hold the response,
		// and any bytes sent behind the request.
		l.held[c] = append([]byte(nil), l.hs.resp.Bytes()...)
		c.rd.in.b = c.rd.in.b[:copy(c.rd.in.b, rest)]
		if len(c.rd.in.b) == 0 {
			c.rd.releaseIn()
		}
		l.account(c)
		return
	}

	c.mu.Lock()
	_, werr := unix.Write(c.fd, l.hs.resp.Bytes())
	if err == nil && werr == nil {
		c.state = stateOpen
		c.deadline = 0
		c.ready = true
		c.flushLocked() // frames sent between OnOpen and now
		c.shutdownIfFlushedLocked()
	}
	c.mu.Unlock()
	if err != nil && !l.hsCounted {
		l.srv.stats.refuse(refuseReasonOf(refusalStatus(err)))
	}
	if err != nil || werr != nil {
		l.srv.log.Debug("handshake refused", "remote", c.remote, "err", errors.Join(err, werr))
		l.release(c, cmp.Or(err, werr))
		return
	}
	l.srv.stats.upgraded.Add(1)
	if len(rest) == 0 {
		c.rd.releaseIn()
		return
	}
	// Frames sent right behind the request: parse them from a copy, as the
	// reader reuses c.rd.in.
	tmp := append([]byte(nil), rest...)
	c.rd.releaseIn()
	l.frames(c, tmp)
}

// handshakeIO is what gobwas/ws upgrades over: the request head in hand
// and the response being written. Each loop has one, so an upgrade
// allocates neither.
type handshakeIO struct {
	head bytes.Reader
	resp bytes.Buffer
}

// Read reads the request head.
func (h *handshakeIO) Read(p []byte) (int, error) { return h.head.Read(p) }

// Write writes to the response.
func (h *handshakeIO) Write(p []byte) (int, error) { return h.resp.Write(p) }

// bareLF reports whether head has a LF not preceded by CR at or after
// from.
func bareLF(head []byte, from int) bool {
	for i := from; i < len(head); {
		j := bytes.IndexByte(head[i:], '\n')
		if j < 0 {
			return false
		}
		i += j
		if i == 0 || head[i-1] != '\r' {
			return true
		}
		i++
	}
	return false
}

// complete finishes a pending upgrade when the Handler calls
// Conn.Complete.
func (l *loop) complete(c *Conn, err error) {
	if c.state != stateJoining || c.loop != l {
		return // closed meanwhile
	}
	if err != nil {
		status := http.StatusServiceUnavailable
		var he *HandshakeError
		if errors.As(err, &he) {
			status = he.Status
		}
		c.state = stateHandshake // refused by the Handler: no OnClose
		l.reject(c, status, err.Error(), nil)
		return
	}
	c.mu.Lock()
	_, werr := unix.Write(c.fd, l.held[c])
	if werr == nil {
		c.ready = true
		c.flushLocked() // frames sent since OnOpen
		c.shutdownIfFlushedLocked()
	}
	c.mu.Unlock()
	delete(l.held, c)
	if werr != nil {
		l.release(c, werr)
		return
	}
	c.state, c.deadline = stateOpen, 0
	l.srv.stats.upgraded.Add(1)
	if c.rd.in == nil {
		return
	}
	tmp := append([]byte(nil), c.rd.in.b...)
	c.rd.releaseIn()
	c.partialSince = 0 // FRAGMENT_TIMEOUT runs from now
	l.frames(c, tmp)
}

// reject answers a request the loop will not serve with an HTTP error
// and releases the socket; cause goes to OnClose if the connection was
// joining.
func (l *loop) reject(c *Conn, status int, reason string, cause error) {
	l.srv.stats.refuse(refuseReasonOf(status))
	_, _ = unix.Write(c.fd, errorResponse(status, reason))
	l.release(c, cause)
}

// requestPath returns the path of the request line "GET /path?q HTTP/1.1".
func requestPath(req []byte) []byte {
	_, rest, ok := bytes.Cut(req, []byte(" "))
	if !ok {
		return nil
	}
	uri, _, _ := bytes.Cut(rest, []byte(" "))
	if i := bytes.IndexAny(uri, "?#"); i >= 0 {
		uri = uri[:i]
	}
	return uri
}

func (l *loop) onRequest(uri []byte) error {
	routeKey, err := l.srv.handler.Route(uri)
	if err != nil {
		return rejection(err, http.StatusBadRequest)
	}
	l.hsRouteKey = routeKey
	return nil
}

func (l *loop) onHost(host []byte) error {
	if l.srv.hostAllowed(host) {
		return nil
	}
	return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest),
		ws.RejectionReason(fmt.Sprintf("host %q is not allowed (ALLOWED_HOSTS)\n", host)))
}

// onHeader checks the Origin header, which browsers send (RFC 6454, RFC
// 6455 section 4.2.1 item 8): a page of another site must not open a
// connection with its visitor's browser. From a trusted proxy that has
// not named the client yet it keeps the forwarding headers
// (onBeforeUpgrade reads them).
func (l *loop) onHeader(name, value []byte) error {
	if c := l.cur; c.anonymous {
		switch {
		case bytes.EqualFold(name, []byte("X-Forwarded-For")):
			l.hsXFF = appendList(l.hsXFF, value)
		case bytes.EqualFold(name, []byte("Forwarded")):
			l.hsFwd = appendList(l.hsFwd, value)
		}
	}
	if l.srv.origins == nil || string(name) != "Origin" || l.srv.origins.allow(string(value)) {
		return nil
	}
	return ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden),
		ws.RejectionReason(fmt.Sprintf("origin %q is not allowed (ALLOWED_ORIGINS)\n", value)))
}

// appendList appends a header value to the comma-separated list b, as
// repeated headers combine (RFC 9110 section 5.3).
func appendList(b, value []byte) []byte {
	if len(b) > 0 {
		b = append(b, ',')
	}
	return append(b, value...)
}

func (l *loop) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	c := l.cur
	c.routeKey = l.hsRouteKey
	s := l.srv
	if c.anonymous && (len(l.hsXFF) > 0 || len(l.hsFwd) > 0) {
		if a, ok := s.proxies.forwardedClient(string(l.hsXFF), string(l.hsFwd)); ok {
			if reason := s.setClient(c, netip.AddrPortFrom(a, 0)); reason != "" {
				s.stats.refuse(refusedPerIP)
				l.hsCounted = true
				return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionHeader(retryAfter),
					ws.RejectionReason(reason+"\n"))
			}
		}
	}
	if s.draining.Load() {
		s.stats.refuse(refusedDraining)
		l.hsCounted = true
		return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionHeader(retryAfter),
			ws.RejectionReason("server shutting down; connect again (to another node)\n"))
	}
	if s.stats.websockets.Add(1) > int64(s.cfg.MaxConnections) {
		s.stats.websockets.Add(-1)
		s.stats.refuse(refusedCapacity)
		l.hsCounted = true
		return nil, ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionHeader(retryAfter),
			ws.RejectionReason("server full: too many connections (MAX_CONNECTIONS); retry later\n"))
	}
	c.websocket = true
	// From here on OnClose must be called: mark the connection open (or
	// joining) now, while Send still only queues (the 101 is not written).
	switch opening, err := s.handler.OnOpen(c); {
	case err != nil:
		c.websocket = false
		s.stats.websockets.Add(-1)
		return nil, rejection(err, http.StatusServiceUnavailable)
	case opening == OpenPending:
		c.state = stateJoining
	default:
		c.state = stateOpen
	}
	return nil, nil
}

// rejection turns a Handler error into the response of a refused
// handshake: a *HandshakeError keeps its status, others get status; a 503
// carries Retry-After.
func rejection(err error, status int) error {
	var he *HandshakeError
	if errors.As(err, &he) {
		status = he.Status
	}
	opts := []ws.RejectOption{ws.RejectionStatus(status), ws.RejectionReason(err.Error() + "\n")}
	if status == http.StatusServiceUnavailable {
		opts = append(opts, ws.RejectionHeader(retryAfter))
	}
	return ws.RejectConnectionError(opts...)
}
