package conn

import (
	"errors"
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is one upgraded WebSocket connection. It holds no goroutine and no
// read buffer while idle: its event loop reads it when the socket is
// readable.
//
// Send, Close, ID, Key and Remote may be called from any goroutine. The
// Handler's callbacks for one Conn are all made from its event loop, one
// at a time.
type Conn struct {
	// An idle connection costs mostly this struct: the fields are ordered
	// to pack it into the 208-byte size class (TestConnSize).
	id       uint64
	fd       int
	loop     *loop
	routeKey string // Handler.Route's answer: Key
	remote   netip.AddrPort
	slot     int32 // Handler's bookkeeping, see SetSlot

	// Owned by the event loop.
	idx          int32 // position in loop.conns
	rd           frameReader
	lastRead     int64   // loop clock (unix ns) of the last read
	pingSent     int64   // loop clock of the unanswered ping; 0 when none
	deadline     int64   // handshake or close deadline; 0 when none
	closer       *closer // stateClosing: why, and how long it may take
	partialSince int64   // loop clock when the unfinished message began; 0 when none
	partial      int32   // bytes of rd counted in Stats.PartialBytes
	readRound    uint32  // loop round of readsLeft
	state        connState
	readsLeft    uint8 // reads left to this connection in readRound
	inAgain      bool  // in loop.again: has data left to read next round
	hup          bool  // the peer shut its side down: read until EOF, not a short read
	perIP        bool  // counted in Server.perIP (MaxConnectionsPerIP)
	websocket    bool  // counted in Stats.WebSockets (MaxConnections)
	fromProxy    bool  // the peer is a trusted proxy (proxy.go)
	proxyRead    bool  // the start of the stream was checked for a PROXY header
	anonymous    bool  // from a trusted proxy that named no client (yet)

	// Write side, guarded by mu.
	ready    bool // the 101 response is written; frames may follow
	closing  bool // no more frames but the close frame are queued
	shutWR   bool // close frame flushed and write side shut down
	closed   bool // fd released; nothing may touch it
	mu       sync.Mutex
	out      *queue // pending frames; nil when empty
	outOff   int32  // bytes of out.frames[0] already written
	outBytes int32  // bytes pending in out (at most MAX_QUEUE_BYTES, 1 GiB, and a frame)
}

// closer is what a closing connection (stateClosing) keeps besides its
// deadline. It is allocated when the close starts, so that open
// connections do not carry it.
type closer struct {
	cause   error  // why the connection is closing
	closeBy int64  // the deadline may be extended up to here
	acked   uint64 // bytes the client had acknowledged (TCP_INFO)
}

type connState uint8

const (
	stateHandshake connState = iota
	stateJoining             // upgrade valid, waiting for Conn.Complete (OpenPending)
	stateOpen
	stateClosing // close frame queued; waiting for it to flush and for EOF
	stateClosed
)

// ID returns the connection's ID, unique across gateway nodes (a random
// per-process base plus a counter).
func (c *Conn) ID() uint64 { return c.id }

// Key returns the route key of the connection: what Handler.Route
// returned for its request, such as the room it joined.
func (c *Conn) Key() string { return c.routeKey }

// Remote returns the client's address: the peer's, or the client a
// trusted proxy named (proxy.go).
func (c *Conn) Remote() netip.AddrPort { return c.remote }

// ClientKnown reports whether Remote is a client's own address: false for
// a connection from a trusted proxy that did not say whom it forwards, so
// that per-address limits do not count it (they would count every client
// of the proxy as one).
func (c *Conn) ClientKnown() bool { return !c.anonymous }

// SetSlot stores an integer for the Handler's bookkeeping (such as the
// connection's index in a member list). It must only be used from the
// Handler's own synchronisation domain; conn never reads it. It is kept
// in 32 bits: i must lie within ±2^31.
func (c *Conn) SetSlot(i int) { c.slot = int32(i) }

// Slot returns the integer stored by SetSlot.
func (c *Conn) Slot() int { return int(c.slot) }

// Complete completes an upgrade for which Handler.OnOpen returned
// OpenPending. With a nil err the 101 response is written, frames sent to c
// since OnOpen follow it, and the connection is open. Otherwise the client
// gets an HTTP error response (the status of a *HandshakeError, else 503
// with Retry-After) and the socket is closed, without OnClose. It may be
// called from any goroutine, once; it does nothing for a connection that
// closed meanwhile (OnClose was then called).
func (c *Conn) Complete(err error) {
	c.loop.post(reqComplete, c, err)
}

// queue holds the frames waiting to be written to one connection. Queues
// are pooled: an idle connection holds none.
type queue struct{ frames []*Frame }

var queuePool = sync.Pool{New: func() any { return &queue{frames: make([]*Frame, 0, 8)} }}

// Send queues f for the connection. When its event loop is in a round, or
// already woken for one, the loop writes the queue at the end of it, so
// frames sent close together leave in one writev; when the loop sleeps,
// Send writes on the caller's goroutine, which costs less than waking the
// loop (flushSoon). Send never blocks on the client: when the queue passes
// Config.MaxQueueBytes the connection is closed with 1008 "slow consumer".
// Frames sent to a closing or closed connection are dropped. Send takes its
// own reference to f; the caller keeps its own.
func (c *Conn) Send(f *Frame) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	if int(c.outBytes)+len(f.buf) > c.loop.srv.cfg.MaxQueueBytes {
		c.mu.Unlock()
		c.Close(ErrSlowConsumer)
		return
	}
	schedule := c.enqueueLocked(f)
	c.mu.Unlock()
	if schedule {
		c.loop.flushSoon(c)
	}
}

// Queued returns the bytes waiting in c's write queue and the most it may
// hold (Config.MaxQueueBytes) before Send closes c as a slow consumer, so
// that a sender of many frames (a history replay) can wait for the client
// to read. It may be called from any goroutine.
func (c *Conn) Queued() (n, limit int) {
	c.mu.Lock()
	n = int(c.outBytes)
	c.mu.Unlock()
	return n, c.loop.srv.cfg.MaxQueueBytes
}

// enqueueLocked appends f. It reports whether the queue was empty and may
// be written, so the caller must ask the loop to flush it. Otherwise a
// flush is already due: scheduled, waiting for EPOLLOUT, or waiting for
// the 101 response.
func (c *Conn) enqueueLocked(f *Frame) bool {
	f.retain()
	if c.out == nil {
		c.out = queuePool.Get().(*queue)
	}
	c.out.frames = append(c.out.frames, f)
	c.outBytes += int32(len(f.buf))
	c.loop.queued.Add(int64(len(f.buf)))
	return len(c.out.frames) == 1 && c.ready && !c.shutWR && !c.closed
}

// Close starts the closing handshake: the close frame that closeFor maps
// cause to is queued (after pending frames, except for a slow consumer,
// whose queue is dropped), and the event loop releases the socket once the
// client answers or Config.CloseTimeout passes. It may be called from any
// goroutine; calls after the first do nothing.
func (c *Conn) Close(cause error) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.closing = true
	if errors.Is(cause, ErrSlowConsumer) {
		c.dropUnsentLocked()
		c.loop.srv.stats.slow.Add(1)
	}
	schedule := false
	if ce := closeFor(cause); ce != nil && !c.closed {
		c.loop.srv.stats.closes.count(ce.Code, cause)
		f := closeFrame(ce)
		schedule = c.enqueueLocked(f)
		f.Release()
	}
	c.shutdownIfFlushedLocked()
	c.mu.Unlock()
	if schedule {
		c.loop.flushLater(c)
	}
	c.loop.post(reqClose, c, cause)
}

// flushLocked writes the queue with one writev per round until it is empty
// or the socket would block; the loop calls it again on EPOLLOUT.
func (c *Conn) flushLocked() {
	if c.closed || c.shutWR || !c.ready {
		return
	}
	for c.out != nil {
		var iov [64]unix.Iovec
		frames := c.out.frames
		n := min(len(frames), len(iov))
		for i := range n {
			b := frames[i].buf
			if i == 0 {
				b = b[c.outOff:]
			}
			iov[i].Base = unsafe.SliceData(b)
			iov[i].SetLen(len(b))
		}
		w, errno := rawWritev(c.fd, iov[:n])
		switch errno {
		case 0:
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return // EPOLLOUT (edge-triggered) resumes the flush
		default:
			c.dropQueueLocked()
			c.closing = true
			c.shutWR = true
			c.loop.post(reqClose, c, errno) // the loop releases the socket
			return
		}
		c.advanceLocked(w)
	}
	c.shutdownIfFlushedLocked()
}

// advanceLocked drops the first n written bytes from the queue.
func (c *Conn) advanceLocked(n int) {
	c.outBytes -= int32(n)
	c.loop.queued.Add(int64(-n))
	frames := c.out.frames
	i := 0
	for ; i < len(frames) && n > 0; i++ {
		rest := len(frames[i].buf) - int(c.outOff)
		if n < rest {
			c.outOff += int32(n)
			break
		}
		n -= rest
		c.outOff = 0
		frames[i].Release()
		frames[i] = nil
	}
	if i == len(frames) {
		c.releaseQueueLocked()
		return
	}
	if i > 0 {
		k := copy(frames, frames[i:])
		clear(frames[k:])
		c.out.frames = frames[:k]
	}
}

// shutdownIfFlushedLocked half-closes the socket once a closing
// connection's close frame has been written, so the client sees it followed
// by FIN.
func (c *Conn) shutdownIfFlushedLocked() {
	if c.closing && c.out == nil && !c.shutWR && !c.closed && c.ready {
		c.shutWR = true
		_ = unix.Shutdown(c.fd, unix.SHUT_WR)
	}
}

// dropUnsentLocked drops the queued frames, except one already partly
// written: its rest must go out before any other frame can.
func (c *Conn) dropUnsentLocked() {
	if c.out == nil || c.outOff == 0 {
		c.dropQueueLocked()
		return
	}
	frames := c.out.frames
	for i := 1; i < len(frames); i++ {
		c.outBytes -= int32(len(frames[i].buf))
		c.loop.queued.Add(int64(-len(frames[i].buf)))
		frames[i].Release()
		frames[i] = nil
	}
	c.out.frames = frames[:1]
}

func (c *Conn) dropQueueLocked() {
	if c.out == nil {
		return
	}
	for i, f := range c.out.frames {
		f.Release()
		c.out.frames[i] = nil
	}
	c.releaseQueueLocked()
}

func (c *Conn) releaseQueueLocked() {
	c.out.frames = c.out.frames[:0]
	queuePool.Put(c.out)
	c.out = nil
	c.loop.queued.Add(int64(-c.outBytes))
	c.outOff, c.outBytes = 0, 0
}
