package main

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The receive side without a goroutine or a buffer per connection, as in
// the gateway: a few epoll loops open the connections (dial.go) and then
// read every readable socket into one buffer per loop and account for the
// frames in place. A connection keeps bytes of its own only while a frame
// is incomplete. So an idle connection costs the load tool its client
// struct and its trackers (a few hundred bytes: "load tool RSS per held
// connection" in the summary), and a million fit in a few processes.

// pollBufSize is the read buffer of one loop, shared by its connections.
const pollBufSize = 64 << 10

// pollWait bounds one epoll_wait, so that a loop notices that it must stop.
const pollWait = 100 * time.Millisecond

// pollSet is the loops of one run. Each holds the connections it opened
// (dial.go spreads them by index).
type pollSet struct {
	loops []*pollLoop
	stop  atomic.Bool
	wg    sync.WaitGroup
}

// pollLoop is one epoll loop, the connections it opens and those it reads.
type pollLoop struct {
	r    *runner
	epfd int
	buf  []byte
	dl   *dialer // its share of the connect phase; nil when over. Only the loop uses it
	mu   sync.Mutex
	byFD []*client // the connections it reads, by descriptor; guarded by mu (open reads it)
}

// newPollSet starts n loops for r, which open the connections of job.
func newPollSet(r *runner, n int, job *dialJob) (*pollSet, error) {
	ps := &pollSet{}
	for range n {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			for _, l := range ps.loops {
				unix.Close(l.epfd)
			}
			return nil, errors.New("loadgen: epoll_create1: " + err.Error() + " (raise ulimit -n?)")
		}
		ps.loops = append(ps.loops, &pollLoop{r: r, epfd: epfd, buf: make([]byte, pollBufSize)})
	}
	job.assign(ps.loops)
	for _, l := range ps.loops {
		ps.wg.Add(1)
		go l.run(ps)
	}
	return ps, nil
}

// hold makes c, whose handshake is done and whose socket is registered
// with l's epoll, one of the connections l reads. The caller has
// processed what came with the handshake (c.partial).
func (l *pollLoop) hold(c *client) {
	l.mu.Lock()
	if c.fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*client, c.fd+1-len(l.byFD)+len(l.byFD)/2)...)
	}
	l.byFD[c.fd] = c
	l.mu.Unlock()
}

// held returns the connection l reads on fd, or nil.
func (l *pollLoop) held(fd int32) *client {
	l.mu.Lock()
	defer l.mu.Unlock()
	if int(fd) < len(l.byFD) {
		return l.byFD[fd]
	}
	return nil
}

// close stops the loops and waits for them. Connections still open stay
// open: the runner closes them (closeAll).
func (ps *pollSet) close() {
	ps.stop.Store(true)
	ps.wg.Wait()
	for _, l := range ps.loops {
		unix.Close(l.epfd)
	}
}

// open returns the connections the loops still hold.
func (ps *pollSet) open() []*client {
	var out []*client
	for _, l := range ps.loops {
		l.mu.Lock()
		for _, c := range l.byFD {
			if c != nil {
				out = append(out, c)
			}
		}
		l.mu.Unlock()
	}
	return out
}

// run is the loop: it opens its share of the connections, then reads
// until ps stops.
func (l *pollLoop) run(ps *pollSet) {
	defer ps.wg.Done()
	defer func() {
		if l.dl != nil { // stopped while dialling
			l.dl.abort(errLoopStopped)
			l.endDialing()
		}
	}()
	events := make([]unix.EpollEvent, 256)
	for !ps.stop.Load() {
		wait := pollWait
		if l.dl != nil {
			var done bool
			if wait, done = l.dl.step(); done {
				l.endDialing()
				wait = pollWait
			}
		}
		n, err := unix.EpollWait(l.epfd, events, int((wait+time.Millisecond-1)/time.Millisecond))
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			l.r.live.errs.add("epoll_wait (" + err.Error() + ")")
			return
		}
		for i := range n {
			if c := l.held(events[i].Fd); c != nil {
				l.readable(c)
			} else if l.dl != nil {
				l.dl.event(events[i].Fd, events[i].Events)
			}
		}
	}
}

// errLoopStopped: an epoll loop stopped before its dials ended.
var errLoopStopped = errors.New("loadgen: the epoll loop stopped during the connect phase")

// endDialing tells the job that l's share of the connect phase is over.
func (l *pollLoop) endDialing() {
	l.dl.job.wg.Done()
	l.dl = nil
}

// readable reads c until the socket is empty and accounts for its frames.
func (l *pollLoop) readable(c *client) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			l.end(c, "read_error ("+err.Error()+")")
			return
		case n == 0:
			l.end(c, "read_eof") // connection ended without a close frame
			return
		}
		data := l.buf[:n]
		if len(c.partial) > 0 {
			c.partial = append(c.partial, data...)
			data = c.partial
		}
		rest, done, err := c.feed(l.r, data)
		if err != nil {
			l.end(c, "read_frame_too_large")
			return
		}
		if done {
			l.end(c, "")
			return
		}
		if len(rest) == 0 {
			c.partial = nil
		} else if len(c.partial) > 0 {
			c.partial = append(c.partial[:0], rest...) // rest aliases partial: copy moves it down
		} else {
			c.partial = append([]byte(nil), rest...)
		}
		if n < len(l.buf) {
			return // the socket is empty: epoll tells of more
		}
	}
}

// end closes c: after its close frame (kind ""), or because it broke
// (kind names how, counted unless the run is closing).
func (l *pollLoop) end(c *client, kind string) {
	if kind != "" && !l.r.closing.Load() {
		c.dropped = true
		l.r.live.errs.add(kind)
	}
	l.forget(c)
	unix.Close(c.fd)
	c.partial = nil
	l.r.live.connected.Add(-1)
}

// forget removes c from the loop's table (closing its descriptor removes it
// from epoll).
func (l *pollLoop) forget(c *client) {
	l.mu.Lock()
	if c.fd < len(l.byFD) && l.byFD[c.fd] == c {
		l.byFD[c.fd] = nil
	}
	l.mu.Unlock()
}
