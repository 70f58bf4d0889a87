package conn

import "time"

// The mailbox: how other goroutines hand work to a loop. They append a
// request (post) or a connection to flush (flushLater) to the loop's lists
// under loop.mu and wake it through its eventfd; the loop serves both at
// the end of its round (servePosts).

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

// maxDirectWrites is how many connections of a sleeping loop other
// goroutines write themselves (flushSoon) before they wake it: a chat
// message to a room of ordinary size, not a big room's fan-out.
const maxDirectWrites = 16

// flushSoon gets c's queue written soon: at the end of the loop's round
// when the loop is in one or already woken for one, so that frames queued
// close together leave in one writev; otherwise now, on the caller's
// goroutine. Waking a sleeping loop costs more than the write itself (the
// eventfd, a thread woken, a round of epoll_wait): at chat rates, where
// loops sleep between messages, that wake-up was most of what a delivery
// from another goroutine (the Redis engine's pump, another loop) cost.
// Past maxDirectWrites such writes the loop is woken after all, so that a
// big room's fan-out, or a loop that just went to sleep under load, still
// shares the writes among the loops (without that bound, the fan-out
// benchmark's p99 went from 50 to 120–540 ms). Under load loops are in
// rounds or woken, and their writes stay theirs.
func (l *loop) flushSoon(c *Conn) {
	l.mu.Lock()
	if l.inRound || l.wakeup || l.dead || l.direct >= maxDirectWrites {
		l.flushes = append(l.flushes, c) // served by the round in progress or due
		l.wakeLocked()
		return
	}
	l.direct++
	l.mu.Unlock()
	c.mu.Lock()
	c.flushLocked() // EAGAIN leaves the rest to the loop's EPOLLOUT
	c.mu.Unlock()
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

// servePosts runs the requests posted since the last round.
func (l *loop) servePosts() {
	// Clear the eventfd before taking the lists, never after: a request
	// posted in between would find wakeup set, write nothing, and wait in
	// the list with the eventfd already cleared (a lost wakeup).
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
	flush(flushes)
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
			l.closeNewest(p.n)
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

// flush writes the queues of conns, the connections that asked for it
// (flushLater), and clears the list for its reuse.
func flush(conns []*Conn) {
	for i, c := range conns {
		c.mu.Lock()
		c.flushLocked()
		c.mu.Unlock()
		conns[i] = nil
	}
}

// closeNewest starts the close of up to n open WebSocket connections,
// newest first, with 1001: one batch of Server.Drain.
func (l *loop) closeNewest(n int) {
	for i := len(l.conns) - 1; i >= 0 && n > 0; i-- {
		if c := l.conns[i]; c.websocket && c.state == stateOpen {
			c.Close(ErrShutdown)
			n--
		}
	}
}
