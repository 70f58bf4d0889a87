package conn

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// readBufferSize is the size of each loop's shared read buffer.
const readBufferSize = 64 << 10

// readsPerWake bounds how many full buffers the loop reads from one socket
// before serving the others; the rest is read on the next round.
const readsPerWake = 4

// maxRequestBytes bounds the HTTP request head read before an upgrade.
const maxRequestBytes = 16 << 10

// Internal loop requests carried by post.
var (
	errRegister = errors.New("conn: register")    // a new connection to own
	errForce    = errors.New("conn: force close") // shutdown deadline passed
	errStop     = errors.New("conn: stop reading")
	errHSExpiry = errors.New("conn: handshake timeout")
	errToHTTP   = errors.New("conn: handed to the HTTP server")
)

// posted is a request made to a loop from another goroutine.
type posted struct {
	c      *Conn // nil for requests about the whole loop
	cause  error
	accept bool // Conn.Accept: cause is its argument
}

// loop is one epoll event loop. It owns a share of the connections: it
// alone reads them, runs their handshake, calls the Handler for them and
// closes their file descriptors, so no lock guards the read side.
type loop struct {
	srv  *Server
	epfd int
	efd  int     // eventfd that wakes the loop for posted requests
	poll *poller // parks the loop goroutine until epfd has events (poll.go)

	byFD       []*Conn // owned connections by file descriptor
	conns      []*Conn // owned connections, for the periodic scan
	buf        []byte  // read buffer shared by all connections of the loop
	now        int64   // clock at the last wake-up, unix ns
	again      []*Conn // connections with data left to read
	againSpare []*Conn
	emit       emitFunc
	cur        *Conn // connection whose frames are being emitted

	stopping bool // shutdown requested: new connections are refused
	efdReady bool // epoll reported the eventfd in this round
	done     chan struct{}

	mu         sync.Mutex
	posts      []posted
	spare      []posted
	inRound    bool    // between epoll_wait's return and servePosts taking the lists
	dead       bool    // run has returned
	flushes    []*Conn // connections with frames to write
	flushSpare []*Conn
	wakeup     bool

	// Handshake state, valid during one call of upgrade.
	up     ws.Upgrader
	hsKey  string
	hsResp bytes.Buffer
}

func newLoop(s *Server) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("conn: epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("conn: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, fmt.Errorf("conn: epoll_ctl eventfd: %w", err)
	}
	p, err := newPoller(epfd)
	if err != nil {
		unix.Close(epfd)
		unix.Close(efd)
		return nil, err
	}
	l := &loop{srv: s, epfd: epfd, efd: efd, poll: p, buf: make([]byte, readBufferSize), done: make(chan struct{})}
	l.emit = l.onFrame
	l.up = ws.Upgrader{
		OnRequest:       l.onRequest,
		OnHost:          l.onHost,
		OnBeforeUpgrade: l.onBeforeUpgrade,
	}
	return l, nil
}

// post hands a request to the loop and wakes it.
func (l *loop) post(c *Conn, cause error) {
	l.mu.Lock()
	l.posts = append(l.posts, posted{c: c, cause: cause})
	l.wakeLocked()
}

// flushLater asks the loop to write c's queue at the end of its round.
// Frames queued for c until then leave in the same writev, which is what
// keeps the cost of a delivery low under load.
func (l *loop) flushLater(c *Conn) {
	l.mu.Lock()
	l.flushes = append(l.flushes, c)
	l.wakeLocked()
}

// wakeLocked unlocks l.mu and, unless a wake-up is already pending or the
// loop is in a round (it serves its lists at the end of each round), wakes
// the loop through its eventfd.
func (l *loop) wakeLocked() {
	wake := !l.wakeup && !l.inRound && !l.dead
	if wake {
		l.wakeup = true
	}
	l.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = rawWrite(l.efd, one[:])
	}
}

func (l *loop) run() {
	defer close(l.done)
	defer func() {
		l.mu.Lock()
		l.dead = true // its eventfd is closed next: never write to it again
		l.mu.Unlock()
	}()
	events := make([]unix.EpollEvent, 512)
	tick := l.srv.tick
	nextTick := time.Now().UnixNano() + int64(tick)
	if err := l.poll.setDeadline(time.Unix(0, nextTick)); err != nil {
		l.srv.log.Error("cannot set the event loop's tick; event loop stopped", "err", err)
		return
	}
	var n int
	var errno unix.Errno
	// ready runs epoll_wait without blocking; the poller parks the loop
	// while it finds nothing.
	ready := func(uintptr) bool {
		for {
			n, errno = epollWait(l.epfd, events)
			if errno != unix.EINTR {
				return n > 0 || errno != 0
			}
		}
	}
	for {
		ticked := false
		if len(l.again) > 0 {
			ready(0) // data left to read: do not wait
		} else if err := l.poll.wait(ready); err == errTick {
			ticked, n, errno = true, 0, 0
		} else if err != nil {
			l.srv.log.Error("event loop wait failed; event loop stopped", "err", err)
			return
		}
		if errno != 0 {
			l.srv.log.Error("epoll_wait failed; event loop stopped", "err", errno)
			return
		}
		l.now = time.Now().UnixNano()
		l.mu.Lock()
		l.inRound = true // posts from now on are served at the end of this round
		l.mu.Unlock()
		for i := range n {
			ev := &events[i]
			if int(ev.Fd) == l.efd {
				l.efdReady = true // posted requests are served below
				continue
			}
			c := l.lookup(int(ev.Fd))
			if c == nil {
				continue // closed earlier in this batch
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				c.mu.Lock()
				c.flushLocked()
				c.mu.Unlock()
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				l.read(c)
			}
		}
		if len(l.again) > 0 {
			again := l.again
			l.again = l.againSpare[:0]
			for i, c := range again {
				if c.state != stateClosed {
					l.read(c)
				}
				again[i] = nil
			}
			l.againSpare = again[:0]
		}
		l.servePosts()
		if ticked || l.now >= nextTick {
			l.scan()
			nextTick = l.now + int64(tick)
			if err := l.poll.setDeadline(time.Unix(0, nextTick)); err != nil {
				l.srv.log.Error("cannot set the event loop's tick; event loop stopped", "err", err)
				return
			}
		}
		if l.stopping && len(l.conns) == 0 {
			return
		}
	}
}

func (l *loop) lookup(fd int) *Conn {
	if fd < 0 || fd >= len(l.byFD) {
		return nil
	}
	return l.byFD[fd]
}

// servePosts runs the requests posted since the last round.
func (l *loop) servePosts() {
	// Drain the eventfd before taking the lists, never after: a request
	// posted in between would find wakeup set, write nothing, and wait in
	// the list with the eventfd already drained (a lost wakeup).
	if l.efdReady {
		l.efdReady = false
		var b [8]byte
		_, _ = rawRead(l.efd, b[:])
	}
	l.mu.Lock()
	posts := l.posts
	l.posts, l.spare = l.spare[:0], posts
	flushes := l.flushes
	l.flushes, l.flushSpare = l.flushSpare[:0], flushes
	// From here on a post must wake the loop: it would miss this round.
	l.wakeup, l.inRound = false, false
	l.mu.Unlock()
	for i, c := range flushes {
		c.mu.Lock()
		c.flushLocked()
		c.mu.Unlock()
		flushes[i] = nil
	}
	for i, p := range posts {
		posts[i] = posted{}
		switch {
		case p.c == nil && p.cause == errForce:
			for len(l.conns) > 0 {
				l.release(l.conns[len(l.conns)-1], ErrShutdown)
			}
		case p.c == nil: // shutdown
			l.stopping = true
			for _, c := range append([]*Conn(nil), l.conns...) {
				if c.state == stateHandshake || c.state == stateJoining {
					l.release(c, ErrShutdown)
				} else {
					c.Close(ErrShutdown)
				}
			}
		case p.accept:
			l.finishJoin(p.c, p.cause)
		case p.cause == errRegister:
			l.register(p.c)
		default:
			l.closing(p.c, p.cause)
		}
	}
}

func (l *loop) register(c *Conn) {
	if l.stopping {
		unix.Close(c.fd)
		l.srv.stats.open.Add(-1)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.srv.log.Warn("epoll_ctl add failed; connection dropped", "remote", c.remote, "err", err)
		unix.Close(c.fd)
		l.srv.stats.open.Add(-1)
		return
	}
	for c.fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*Conn, max(1024, len(l.byFD)))...)
	}
	l.byFD[c.fd] = c
	c.idx = len(l.conns)
	l.conns = append(l.conns, c)
	c.lastRead = l.now
	c.deadline = l.now + int64(l.srv.cfg.HandshakeTimeout)
}

// closing moves c into the closing state when Close was called for it, or
// releases it at once when its socket failed.
func (l *loop) closing(c *Conn, cause error) {
	if c.state == stateClosed || c.loop != l {
		return
	}
	var errno unix.Errno
	if errors.As(cause, &errno) || c.state == stateHandshake || c.state == stateJoining {
		l.release(c, cause)
		return
	}
	if c.state == stateOpen {
		c.state = stateClosing
		c.cause = cause
		c.deadline = l.now + int64(l.srv.cfg.CloseTimeout)
		l.srv.handler.OnClose(c, cause)
	}
	c.mu.Lock()
	done := c.shutWR && c.out == nil && errors.Is(cause, ErrPeerClosed)
	c.mu.Unlock()
	if done {
		l.release(c, cause)
	}
}

// release closes c's file descriptor and forgets it. OnClose is called if
// it was not yet.
func (l *loop) release(c *Conn, cause error) {
	if c.state == stateClosed {
		return
	}
	c.mu.Lock()
	c.closing, c.closed = true, true
	c.dropQueueLocked()
	c.mu.Unlock()
	if cause != errToHTTP {
		unix.Close(c.fd)
	}
	l.byFD[c.fd] = nil
	last := l.conns[len(l.conns)-1]
	l.conns[c.idx] = last
	last.idx = c.idx
	l.conns[len(l.conns)-1] = nil
	l.conns = l.conns[:len(l.conns)-1]
	c.rd.reset()
	wasOpen := c.state == stateOpen || c.state == stateJoining
	c.state = stateClosed
	c.resp = nil
	l.srv.stats.open.Add(-1)
	if wasOpen {
		l.srv.handler.OnClose(c, cause)
	}
}

// read reads what the socket holds, in at most readsPerWake buffers.
func (l *loop) read(c *Conn) {
	for range readsPerWake {
		n, err := rawRead(c.fd, l.buf)
		switch {
		case err == unix.EAGAIN:
			return
		case err == unix.EINTR:
			continue
		case err != nil:
			l.release(c, err)
			return
		case n == 0:
			l.release(c, ErrEOF)
			return
		}
		c.lastRead, c.pingSent = l.now, 0
		data := l.buf[:n]
		switch c.state {
		case stateHandshake:
			l.handshake(c, data)
		case stateJoining: // frames sent before the 101: keep for later
			if c.rd.in == nil {
				c.rd.in = getBuffer()
			}
			if len(c.rd.in.b)+len(data) > maxRequestBytes {
				l.release(c, ErrTooLarge)
				return
			}
			c.rd.in.b = append(c.rd.in.b, data...)
		case stateOpen, stateClosing:
			l.frames(c, data)
		}
		if c.state == stateClosed || n < len(l.buf) {
			return // a short read drained the socket (edge-triggered)
		}
	}
	l.again = append(l.again, c)
}

// frames parses data into messages and control frames.
func (l *loop) frames(c *Conn, data []byte) {
	l.cur = c
	err := c.rd.feed(data, l.emit)
	l.cur = nil
	switch {
	case err == nil || err == errStop:
	case c.state == stateClosing:
		l.release(c, c.cause) // garbage after our close frame
	default:
		c.Close(err)
	}
}

// onFrame handles one complete message or control frame of l.cur.
func (l *loop) onFrame(op ws.OpCode, payload []byte) error {
	c := l.cur
	if c.state == stateClosing {
		if op == ws.OpClose { // the answer to our close frame
			l.release(c, c.cause)
			return errStop
		}
		return nil // discard frames in flight
	}
	switch op {
	case ws.OpText:
		l.srv.handler.OnMessage(c, payload)
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if closing {
			return errStop
		}
	case ws.OpPing:
		f := newFrame(ws.OpPong, payload)
		c.Send(f)
		f.Release()
	case ws.OpClose:
		code := ws.StatusNormalClosure
		if len(payload) >= 2 {
			code, _ = ws.ParseCloseFrameDataUnsafe(payload)
		}
		c.Close(fmt.Errorf("%w: %w", ErrPeerClosed, &CloseError{Code: code}))
		return errStop
	}
	return nil
}

// scan runs the timers: handshake and close deadlines, pings and pong
// timeouts.
func (l *loop) scan() {
	cfg := &l.srv.cfg
	var expired []*Conn
	for _, c := range l.conns {
		switch c.state {
		case stateHandshake, stateJoining, stateClosing:
			if l.now > c.deadline {
				expired = append(expired, c)
			}
		case stateOpen:
			switch {
			case c.pingSent != 0 && l.now-c.pingSent > int64(cfg.PongTimeout):
				c.Close(ErrPingTimeout)
			case c.pingSent == 0 && l.now-c.lastRead > int64(cfg.PingInterval):
				c.pingSent = l.now
				c.Send(pingFrame)
			}
		}
	}
	for _, c := range expired {
		if c.state == stateHandshake || c.state == stateJoining {
			l.release(c, errHSExpiry)
		} else {
			l.release(c, c.cause)
		}
	}
}

var pingFrame = NewStaticFrame(ws.OpPing, nil)

// handshake collects the HTTP request head, then upgrades the connection
// or hands it to the HTTP server.
func (l *loop) handshake(c *Conn, data []byte) {
	if c.rd.in == nil {
		c.rd.in = getBuffer()
	}
	c.rd.in.b = append(c.rd.in.b, data...)
	req := c.rd.in.b
	end := bytes.Index(req, []byte("\r\n\r\n"))
	if end < 0 {
		if len(req) > maxRequestBytes {
			l.reject(c, http.StatusRequestHeaderFieldsTooLarge, "request head too large")
		}
		return
	}
	end += 4
	if !bytes.HasPrefix(requestPath(req), []byte(l.srv.cfg.WSPrefix)) {
		l.toHTTP(c)
		return
	}
	l.hsKey = ""
	l.hsResp.Reset()
	l.cur = c
	_, err := l.up.Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(req[:end]), &l.hsResp})
	l.cur = nil
	if err == nil && c.state == stateJoining {
		// The Handler answers later (Conn.Accept): hold the response, and
		// any bytes sent behind the request.
		c.resp = append([]byte(nil), l.hsResp.Bytes()...)
		c.rd.in.b = c.rd.in.b[:copy(c.rd.in.b, req[end:])]
		if len(c.rd.in.b) == 0 {
			c.rd.releaseIn()
		}
		return
	}

	c.mu.Lock()
	_, werr := unix.Write(c.fd, l.hsResp.Bytes())
	if err == nil && werr == nil {
		c.state = stateOpen
		c.deadline = 0
		c.ready = true
		c.flushLocked() // frames sent between OnOpen and now
		c.shutdownIfFlushedLocked()
	}
	c.mu.Unlock()
	if err != nil || werr != nil {
		l.srv.log.Debug("handshake refused", "remote", c.remote, "err", errors.Join(err, werr))
		l.release(c, err)
		return
	}
	l.srv.stats.upgraded.Add(1)
	rest := req[end:]
	if len(rest) == 0 {
		c.rd.releaseIn()
		return
	}
	// Frames sent right behind the request: parse them from a copy, as the
	// reader reuses c.rd.in.
	tmp := append(l.buf[:0:0], rest...)
	c.rd.releaseIn()
	l.frames(c, tmp)
}

// finishJoin completes a pending upgrade when the Handler calls Accept.
func (l *loop) finishJoin(c *Conn, err error) {
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
		l.reject(c, status, err.Error())
		return
	}
	c.mu.Lock()
	_, werr := unix.Write(c.fd, c.resp)
	if werr == nil {
		c.ready = true
		c.flushLocked() // frames sent since OnOpen
		c.shutdownIfFlushedLocked()
	}
	c.mu.Unlock()
	c.resp = nil
	if werr != nil {
		l.release(c, werr)
		return
	}
	c.state, c.deadline = stateOpen, 0
	l.srv.stats.upgraded.Add(1)
	if c.rd.in == nil {
		return
	}
	tmp := append(l.buf[:0:0], c.rd.in.b...)
	c.rd.releaseIn()
	l.frames(c, tmp)
}

// reject answers a request the loop cannot take and closes the socket.
func (l *loop) reject(c *Conn, status int, reason string) {
	resp := fmt.Sprintf("HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n",
		status, http.StatusText(status), len(reason)+1, reason)
	_, _ = unix.Write(c.fd, []byte(resp))
	l.release(c, nil)
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
	key, err := l.srv.handler.Accept(uri)
	if err != nil {
		return rejection(err, http.StatusBadRequest)
	}
	l.hsKey = key
	return nil
}

func (l *loop) onHost(host []byte) error {
	if l.srv.hostAllowed(host) {
		return nil
	}
	return ws.RejectConnectionError(ws.RejectionStatus(http.StatusBadRequest),
		ws.RejectionReason(fmt.Sprintf("host %q is not allowed (ALLOWED_HOSTS)\n", host)))
}

func (l *loop) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	c := l.cur
	c.key = l.hsKey
	// From here on OnClose must be called: mark the connection open (or
	// joining) now, while Send still only queues (the 101 is not written).
	switch err := l.srv.handler.OnOpen(c); {
	case err == nil:
		c.state = stateOpen
	case errors.Is(err, ErrPending):
		c.state = stateJoining
	default:
		return nil, rejection(err, http.StatusServiceUnavailable)
	}
	return nil, nil
}

// rejection turns a Handler error into the response of a refused
// handshake: a *HandshakeError keeps its status, others get status.
func rejection(err error, status int) error {
	var he *HandshakeError
	if errors.As(err, &he) {
		status = he.Status
	}
	return ws.RejectConnectionError(ws.RejectionStatus(status), ws.RejectionReason(err.Error()+"\n"))
}
