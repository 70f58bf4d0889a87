package conn

import (
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The loop's timers. Each loop scans its connections every tick (at most
// a second, and at most half of the shortest timeout): handshake, pending
// join, unfinished message (FRAGMENT_TIMEOUT) and closing deadlines,
// pings after PING_INTERVAL of silence and their PONG_TIMEOUT (past it the
// connection is freed at once: no close handshake with a silent peer).

// scan runs the timers: handshake, unfinished-message and close
// deadlines, pings and pong timeouts.
func (l *loop) scan() {
	cfg := &l.srv.cfg
	expired := l.expired[:0]
	for _, c := range l.conns {
		switch c.state {
		case stateHandshake, stateJoining:
			if l.now > c.deadline {
				expired = append(expired, c)
			}
		case stateClosing:
			if l.now > c.deadline && !l.extendClose(c) {
				expired = append(expired, c)
			}
		case stateOpen:
			switch {
			case c.partialSince != 0 && l.now-c.partialSince > int64(cfg.FragmentTimeout):
				l.srv.stats.timedOut.Add(1)
				c.Close(ErrFragmentTimeout)
			case c.pingSent != 0 && l.now-c.pingSent > int64(cfg.PongTimeout):
				expired = append(expired, c) // freed below
			case c.pingSent == 0 && l.now-c.lastRead > int64(cfg.PingInterval):
				c.pingSent = l.now
				c.Send(pingFrame)
			}
		}
	}
	for i, c := range expired {
		expired[i] = nil
		switch c.state {
		case stateHandshake:
			l.srv.stats.timedOut.Add(1)
			l.reject(c, 408, "request head not received in time (HANDSHAKE_TIMEOUT)", errHandshakeTimeout)
		case stateJoining:
			l.srv.stats.timedOut.Add(1)
			l.reject(c, 503, "joining took too long; retry later", errHandshakeTimeout)
		case stateClosing:
			l.release(c, c.closer.cause)
		case stateOpen:
			// Silent through PING_INTERVAL and PONG_TIMEOUT: the client's
			// host is gone or stuck (a half-open connection) and will not
			// answer a close frame either. The frame goes if the socket
			// takes it; the connection is freed now, not CLOSE_TIMEOUT
			// later.
			c.Close(ErrPingTimeout)
			l.release(c, ErrPingTimeout)
		}
	}
	l.expired = expired[:0]
}

// extendClose gives a closing connection whose deadline passed more time
// while the client still reads what was sent before the close frame: it
// acknowledged bytes since the last look and some are still on their
// way. It reports whether the deadline moved; never past closer.closeBy.
func (l *loop) extendClose(c *Conn) bool {
	if l.now >= c.closer.closeBy {
		return false
	}
	info, err := unix.GetsockoptTCPInfo(c.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return false
	}
	progressed := info.Bytes_acked > c.closer.acked
	c.closer.acked = info.Bytes_acked
	c.mu.Lock()
	queued := c.out != nil
	c.mu.Unlock()
	if !progressed || !queued && info.Notsent_bytes == 0 && info.Unacked == 0 {
		return false
	}
	c.deadline = min(l.now+int64(l.srv.cfg.CloseTimeout), c.closer.closeBy)
	return true
}

// bytesAcked returns the bytes the client acknowledged on fd so far.
func bytesAcked(fd int) uint64 {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0
	}
	return info.Bytes_acked
}

var pingFrame = NewStaticFrame(ws.OpPing, nil)
