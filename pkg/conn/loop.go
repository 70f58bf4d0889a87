package conn

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// readBufferSize is the size of each loop's shared read buffer.
const readBufferSize = 64 << 10

// loop is one epoll event loop. It owns a share of the connections: it
// alone reads them, runs their handshake, calls the Handler for them and
// closes their file descriptors, so no lock guards the read side.
//
// Lock order: docs/architecture.md, "Lock order" (loop.mu and Conn.mu
// are never held together).
type loop struct {
	srv  *Server
	epfd int
	efd  int     // eventfd that wakes the loop for posted requests
	poll *poller // parks the loop goroutine until epfd has events (poll.go)

	byFD       [][]*Conn // owned connections by file descriptor, in chunks of fdChunk (lookup)
	conns      []*Conn   // owned connections, for the periodic scan
	buf        []byte    // read buffer shared by all connections of the loop
	now        int64     // clock at the last wake-up, unix ns
	round      uint32    // rounds since start: Conn.readRound
	again      []*Conn   // connections with data left to read, each once (Conn.inAgain)
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
	// direct counts the writes other goroutines made for this loop's
	// connections while it slept (flushSoon), since its last round.
	direct int

	// Handshake state, valid during one call of upgrade (upgrade.go).
	up         ws.Upgrader
	hsRouteKey string      // what Handler.Route returned
	hs         handshakeIO // the request head and the response
	hsCounted  bool        // the refusal was counted by the check that made it
	hsXFF      []byte      // X-Forwarded-For values of a trusted proxy's request
	hsFwd      []byte      // Forwarded values of a trusted proxy's request

	// Owned by the loop goroutine. readLim is the server's reader limits
	// with this loop's clock, for the loop's connections (frameReader.lim).
	readLim readLimits

	// held keeps the 101 response of each connection whose Handler has
	// not answered yet (stateJoining), until Conn.Complete.
	held map[*Conn][]byte

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
	l := &loop{srv: s, epfd: epfd, efd: efd, poll: p, buf: make([]byte, readBufferSize), done: make(chan struct{}), held: make(map[*Conn][]byte)}
	l.emit = l.onFrame
	l.readLim = s.readLim
	l.up = ws.Upgrader{
		OnRequest:       l.onRequest,
		OnHost:          l.onHost,
		OnHeader:        l.onHeader,
		OnBeforeUpgrade: l.onBeforeUpgrade,
	}
	return l, nil
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
		} else if timedOut, err := l.poll.wait(ready); timedOut {
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
		l.direct = 0
		l.mu.Unlock()
		again := l.startRound()
		l.serveEvents(events[:n])
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

// serveEvents handles what epoll_wait reported: it notes the eventfd
// (posted requests are served at the end of the round), writes to the
// sockets that can take more and reads those with input.
func (l *loop) serveEvents(events []unix.EpollEvent) {
	for i := range events {
		ev := &events[i]
		if int(ev.Fd) == l.efd {
			l.efdReady = true // posted requests are served by servePosts
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
}

// fdChunk is how many descriptors one chunk of loop.byFD covers. The
// table grows by chunks that never move, so growing it leaves no garbage
// (a doubled slice would copy itself at every step).
const fdChunk = 4096

// lookup returns the connection the loop owns on fd, or nil.
func (l *loop) lookup(fd int) *Conn {
	if fd < 0 || fd/fdChunk >= len(l.byFD) || l.byFD[fd/fdChunk] == nil {
		return nil
	}
	return l.byFD[fd/fdChunk][fd%fdChunk]
}

// setFD records c as the connection on its descriptor (nil clears it),
// adding the chunk it falls in.
func (l *loop) setFD(fd int, c *Conn) {
	k := fd / fdChunk
	for k >= len(l.byFD) {
		l.byFD = append(l.byFD, nil)
	}
	if l.byFD[k] == nil {
		if c == nil {
			return
		}
		l.byFD[k] = make([]*Conn, fdChunk)
	}
	l.byFD[k][fd%fdChunk] = c
}
