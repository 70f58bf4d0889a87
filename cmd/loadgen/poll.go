package main

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The receive side without a goroutine or a buffer per connection, as in
// the gateway: once its handshake is done, a connection's socket is handed
// to one of a few epoll loops, which read every readable socket into one
// buffer per loop and account for the frames in place. A connection keeps
// bytes of its own only while a frame is incomplete. So an idle connection
// costs the load tool its client struct and its trackers (a few hundred
// bytes: "load tool RSS per held connection" in the summary), and a
// million fit in a few processes.

// pollBufSize is the read buffer of one loop, shared by its connections.
const pollBufSize = 64 << 10

// pollWait bounds one epoll_wait, so that a loop notices that it must stop.
const pollWait = 100 * time.Millisecond

// pollSet is the loops of one run. Connections are spread over them by
// index.
type pollSet struct {
	loops []*pollLoop
	stop  atomic.Bool
	wg    sync.WaitGroup
}

// pollLoop is one epoll loop and the connections it reads.
type pollLoop struct {
	r    *runner
	epfd int
	buf  []byte
	mu   sync.Mutex
	byFD []*client // by descriptor; guarded by mu (the dialers add to it)
}

// newPollSet starts n loops for r.
func newPollSet(r *runner, n int) (*pollSet, error) {
	ps := &pollSet{}
	for range n {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			ps.close()
			return nil, errors.New("loadgen: epoll_create1: " + err.Error())
		}
		l := &pollLoop{r: r, epfd: epfd, buf: make([]byte, pollBufSize)}
		ps.loops = append(ps.loops, l)
		ps.wg.Add(1)
		go l.run(ps)
	}
	return ps, nil
}

// add hands c, whose handshake is done, to its loop. The caller has
// processed what came with the handshake (c.partial).
func (ps *pollSet) add(c *client) error {
	l := ps.loops[c.id%len(ps.loops)]
	l.mu.Lock()
	if c.fd >= len(l.byFD) {
		l.byFD = append(l.byFD, make([]*client, c.fd+1-len(l.byFD)+len(l.byFD)/2)...)
	}
	l.byFD[c.fd] = c
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		l.forget(c)
		return err
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

func (l *pollLoop) run(ps *pollSet) {
	defer ps.wg.Done()
	events := make([]unix.EpollEvent, 256)
	for !ps.stop.Load() {
		n, err := unix.EpollWait(l.epfd, events, int(pollWait/time.Millisecond))
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			l.r.live.errs.add("epoll_wait (" + err.Error() + ")")
			return
		}
		for i := range n {
			l.mu.Lock()
			c := l.byFD[events[i].Fd]
			l.mu.Unlock()
			if c != nil {
				l.readable(c)
			}
		}
	}
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
