package conn

import (
	"errors"

	"golang.org/x/sys/unix"
)

// The lifecycle of a connection in its loop: register takes a socket
// Serve accepted, closing starts a close, release and detach forget it.

// closeWaitFactor bounds how long a closing connection that still reads
// is waited for: closeWaitFactor×Config.CloseTimeout in all.
const closeWaitFactor = 10

// errHandshakeTimeout is the cause of a release for a request head or a
// join that took too long (timers.go).
var errHandshakeTimeout = errors.New("conn: handshake timeout")

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
	l.setFD(c.fd, c)
	c.idx = int32(len(l.conns))
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
		c.deadline = l.now + int64(l.srv.cfg.CloseTimeout) // no longer a pause
		c.closer = &closer{
			cause:   cause,
			closeBy: l.now + closeWaitFactor*int64(l.srv.cfg.CloseTimeout),
			acked:   bytesAcked(c.fd),
		}
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
		discardInput(c.fd, l.buf) // FIN after what the client still has to read, not RST
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
	l.setFD(c.fd, nil)
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
	delete(l.held, c)
	c.closer = nil
	l.srv.stats.open.Add(-1)
	return wasOpen
}
