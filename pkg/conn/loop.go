package conn

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// readBufferSize is the size of each loop's shared read buffer.
const readBufferSize = 64 << 10

// readsPerWake bounds how many full buffers the loop reads from one socket
// in one round before serving the others; the rest is read in the next
// round.
const readsPerWake = 4

// closeWaitFactor bounds how long a closing connection that still reads
// is waited for: closeWaitFactor×Config.CloseTimeout in all.
const closeWaitFactor = 10

// request is the kind of a request posted to a loop by another goroutine.
type request uint8

const (
	reqRegister request = iota + 1 // own c, a socket Serve just accepted
	reqClose                       // Conn.Close, or a failed write: close c for err
	reqComplete                    // Conn.Complete: finish c's pending upgrade, or refuse it with err
	reqDrain                       // close n open connections with 1001 (Server.Drain)
	reqShutdown                    // close every connection with 1001, stop once none is left
	reqForce                       // the shutdown deadline passed: release every connection now
	reqEvict                       // the server is at its cap: evict the oldest unfinished head (evictHead)
)

// posted is a request made to a loop from another goroutine.
type posted struct {
	kind request
	c    *Conn // nil for requests about the whole loop
	err  error
	n    int // reqDrain: how many connections to close
}

// Internal causes of a stop or a release.
var (
	errStop             = errors.New("conn: stop reading")
	errHandshakeTimeout = errors.New("conn: handshake timeout")
)

// loop is one epoll event loop. It owns a share of the connections: it
// alone reads them, runs their handshake, calls the Handler for them and
// closes their file descriptors, so no lock guards the read side.
//
// Lock order: loop.mu and Conn.mu are never held together, except that
// Conn.Send and Conn.Close take loop.mu (flushLater, post) after
// releasing Conn.mu.
type loop struct {
	srv  *Server
	epfd int
	efd  int     // eventfd that wakes the loop for posted requests
	poll *poller // parks the loop goroutine until epfd has events (poll.go)

	byFD       []*Conn // owned connections by file descriptor
	conns      []*Conn // owned connections, for the periodic scan
	buf        []byte  // read buffer shared by all connections of the loop
	now        int64   // clock at the last wake-up, unix ns
	round      uint32  // rounds since start: Conn.readRound
	again      []*Conn // connections with data left to read, each once (Conn.inAgain)
	againSpare []*Conn
	expired    []*Conn // scan's list, kept for reuse
	emit       emitFunc
	cur        *Conn // connection whose frames are being emitted

	stopping bool // shutdown requested: new connections are refused
	efdReady bool // epoll reported the eventfd in this round
	done     chan struct{}

	// Paused reads (pause.go): connections whose reader waits for its
	// rate, by when to read them again; wait is the pause a Handler asked
	// for while its message is emitted; armed is when the poller's
	// deadline is set.
	paused pauses
	wait   int64
	armed  int64

	mu         sync.Mutex
	posts      []posted
	spare      []posted
	inRound    bool    // between epoll_wait's return and servePosts taking the lists
	dead       bool    // run has returned
	flushes    []*Conn // connections with frames to write
	flushSpare []*Conn
	wakeup     bool

	// Handshake state, valid during one call of upgrade (upgrade.go).
	up        ws.Upgrader
	hsKey     string
	hsResp    bytes.Buffer
	hsCounted bool   // the refusal was counted by the check that made it
	hsXFF     []byte // X-Forwarded-For values of a trusted proxy's request
	hsFwd     []byte // Forwarded values of a trusted proxy's request

	queued atomic.Int64 // bytes queued for the loop's connections (Stats.QueuedBytes)
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
		OnHeader:        l.onHeader,
		OnBeforeUpgrade: l.onBeforeUpgrade,
	}
	return l, nil
}

// post hands a request to the loop and wakes it: the one way other
// goroutines act on the loop's connections.
func (l *loop) post(kind request, c *Conn, err error) {
	l.postReq(posted{kind: kind, c: c, err: err})
}

// postReq is post with every field of the request.
func (l *loop) postReq(p posted) {
	l.mu.Lock()
	l.posts = append(l.posts, p)
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
	if err := l.arm(nextTick); err != nil {
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
		if len(l.again) > 0 {
			ready(0) // data left to read: do not wait
		} else if err := l.poll.wait(ready); err == errTick {
			n, errno = 0, 0
			l.armed = 0 // passed: set it again below
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
		again := l.startRound()
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
			if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				c.hup = true // read to EOF: no event will tell of it again
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
				l.read(c)
			}
		}
		l.readAgain(again)
		l.resumeDue()
		l.servePosts()
		if l.now >= nextTick {
			l.scan()
			nextTick = l.now + int64(tick)
		}
		if err := l.arm(min(nextTick, l.paused.next())); err != nil {
			l.srv.log.Error("cannot set the event loop's tick; event loop stopped", "err", err)
			return
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
		switch p.kind {
		case reqRegister:
			l.register(p.c)
		case reqClose:
			l.closing(p.c, p.err)
		case reqComplete:
			l.complete(p.c, p.err)
		case reqDrain:
			l.drain(p.n)
		case reqShutdown:
			l.stopping = true
			for _, c := range append([]*Conn(nil), l.conns...) {
				if c.state == stateHandshake || c.state == stateJoining {
					l.release(c, ErrShutdown)
				} else {
					c.Close(ErrShutdown)
				}
			}
		case reqEvict:
			l.now = time.Now().UnixNano()
			l.evictHead()
		case reqForce:
			for len(l.conns) > 0 {
				l.release(l.conns[len(l.conns)-1], ErrShutdown)
			}
		}
	}
}

// drain starts the close of up to n open WebSocket connections, newest
// first, with 1001.
func (l *loop) drain(n int) {
	for i := len(l.conns) - 1; i >= 0 && n > 0; i-- {
		if c := l.conns[i]; c.websocket && c.state == stateOpen {
			c.Close(ErrShutdown)
			n--
		}
	}
}

func (l *loop) register(c *Conn) {
	if l.stopping {
		l.drop(c)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.srv.log.Warn("epoll_ctl add failed; connection dropped", "remote", c.remote, "err", err)
		l.drop(c)
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

// drop closes the socket of a connection the loop never owned.
func (l *loop) drop(c *Conn) {
	unix.Close(c.fd)
	c.state = stateClosed
	l.srv.stats.open.Add(-1)
	l.srv.releaseIP(c)
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
		c.deadline = l.now + int64(l.srv.cfg.CloseTimeout) // no longer a pause
		c.closeBy = l.now + closeWaitFactor*int64(l.srv.cfg.CloseTimeout)
		c.acked = bytesAcked(c.fd)
		c.rd.discardData() // its messages are not delivered any more
		if c.rd.paused {
			// What the pause kept is dropped; read on for the close frame.
			c.rd.dropPaused()
			l.readNext(c)
		}
		l.account(c)
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
	var errno unix.Errno
	if !errors.As(cause, &errno) && cause != ErrEOF {
		c.mu.Lock()
		c.flushLocked() // what can still go, such as the close frame, goes
		c.mu.Unlock()
		drain(c.fd, l.buf) // FIN after what the client still has to read, not RST
	}
	fd := c.fd
	wasOpen := l.detach(c)
	unix.Close(fd)
	l.srv.releaseIP(c)
	if wasOpen {
		l.srv.handler.OnClose(c, cause)
	}
}

// detach forgets c and counts it out, without closing its descriptor (the
// caller closes it, or hands it to the HTTP server). It reports whether
// OnClose is still to be called.
func (l *loop) detach(c *Conn) (wasOpen bool) {
	c.mu.Lock()
	c.closing, c.closed = true, true
	c.dropQueueLocked()
	c.mu.Unlock()
	l.byFD[c.fd] = nil
	last := l.conns[len(l.conns)-1]
	l.conns[c.idx] = last
	last.idx = c.idx
	l.conns[len(l.conns)-1] = nil
	l.conns = l.conns[:len(l.conns)-1]
	c.rd.reset()
	l.account(c)
	if c.websocket {
		c.websocket = false
		l.srv.stats.websockets.Add(-1)
	}
	wasOpen = c.state == stateOpen || c.state == stateJoining
	c.state = stateClosed
	c.resp = nil
	l.srv.stats.open.Add(-1)
	return wasOpen
}

// startRound starts a round of reads: it returns the connections left
// with data last round, to be read after this round's events with what
// is left of their readsPerWake (readAgain). A socket never gets more
// than that in one round, however often it shows up.
func (l *loop) startRound() (again []*Conn) {
	l.round++
	again = l.again
	l.again = l.againSpare[:0]
	return again
}

// readAgain reads the connections startRound returned.
func (l *loop) readAgain(again []*Conn) {
	for i, c := range again {
		again[i] = nil
		c.inAgain = false
		if c.state != stateClosed {
			l.read(c)
		}
	}
	l.againSpare = again[:0]
}

// read reads what the socket holds, in what is left of its readsPerWake
// buffers for this round; if it may hold more, c is read again next round.
// A paused connection is not read (pause.go).
func (l *loop) read(c *Conn) {
	if c.rd.paused {
		return
	}
	if c.readRound != l.round {
		c.readRound, c.readsLeft = l.round, readsPerWake
	}
	for c.readsLeft > 0 {
		c.readsLeft--
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
		case stateJoining:
			l.early(c, data)
		case stateOpen, stateClosing:
			l.frames(c, data)
		}
		if c.state == stateClosed || c.rd.paused || n < len(l.buf) && !c.hup {
			return // a short read drained the socket (edge-triggered)
		}
	}
	l.readNext(c)
}

// readNext has c read again next round: it may have data left.
func (l *loop) readNext(c *Conn) {
	if !c.inAgain {
		c.inAgain = true
		l.again = append(l.again, c)
	}
}

// frames parses data into messages and control frames.
func (l *loop) frames(c *Conn, data []byte) {
	l.cur = c
	c.rd.now = l.now
	l.fed(c, c.rd.feed(data, l.emit))
}

// fed handles the outcome of feeding c's reader, l.cur.
func (l *loop) fed(c *Conn, err error) {
	l.cur = nil
	if c.state == stateClosed {
		return // the client answered our close frame
	}
	if err == errPause {
		l.pause(c)
		err = nil
	}
	over := l.account(c)
	switch {
	case err == nil || err == errStop:
		if over && c.state == stateOpen {
			l.limit(c, ErrServerBusy)
		}
	case c.state == stateClosing:
		l.release(c, c.cause) // garbage after our close frame
	default:
		c.Close(err)
		l.closing(c, err)
	}
}

// limit closes c for passing a limit (MAX_PARTIAL_BYTES).
func (l *loop) limit(c *Conn, cause error) {
	l.srv.stats.limited.Add(1)
	c.Close(cause)
	l.closing(c, cause) // now: no more of its frames are parsed for nothing
}

// early keeps the frames a client sends behind its upgrade request while
// the Handler has not answered (joining): one message's worth at most.
func (l *loop) early(c *Conn, data []byte) {
	held := len(data)
	if c.rd.in != nil {
		held += len(c.rd.in.b)
	}
	if held > c.rd.max+maxFrameHeader {
		l.release(c, ErrTooLarge)
		return
	}
	c.rd.in = appendBuffer(c.rd.in, data)
	if l.account(c) {
		l.srv.stats.limited.Add(1)
		l.release(c, ErrServerBusy)
	}
}

// account counts what c's reader holds in Stats.PartialBytes and runs the
// clock of c's unfinished message (Config.FragmentTimeout), which starts
// when the reader begins to hold bytes and again when a message ends with
// bytes of the next one held. It reports whether c made the server's
// total pass Config.MaxPartialBytes.
func (l *loop) account(c *Conn) bool {
	held := c.rd.held()
	switch {
	case held == 0:
		c.partialSince = 0
	case c.partialSince == 0 || c.rd.completed:
		c.partialSince = l.now
	}
	d := held - c.partial
	if d == 0 {
		return false
	}
	c.partial = held
	total := l.srv.stats.partial.Add(int64(d))
	return d > 0 && total > int64(l.srv.cfg.MaxPartialBytes)
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
		if wait := l.srv.handler.OnMessage(c, payload); wait > 0 {
			l.wait = int64(wait)
			return errPause
		}
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
