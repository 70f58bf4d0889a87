package conn

import (
	"fmt"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// readsPerWake bounds how many full buffers the loop reads from one socket
// in one round before serving the others; the rest is read in the next
// round.
const readsPerWake = 4

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
			return // a short read emptied the socket (edge-triggered)
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
	l.readLim.now = l.now
	res, err := c.rd.feed(data, l.emit)
	l.fed(c, res, err)
}

// fed handles the outcome of feeding c's reader, l.cur: res, or the
// protocol violation err.
func (l *loop) fed(c *Conn, res readResult, err error) {
	l.cur = nil
	if c.state == stateClosed {
		return // the client answered our close frame
	}
	if res == readPause {
		l.pause(c)
	}
	over := l.account(c)
	switch {
	case err == nil:
		if over && c.state == stateOpen {
			l.limit(c, ErrServerBusy)
		}
	case c.state == stateClosing:
		l.release(c, c.closer.cause) // garbage after our close frame
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
	if held > c.rd.lim.max+maxFrameHeader {
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
	d := held - int(c.partial)
	if d == 0 {
		return false
	}
	c.partial = int32(held) // at most maxPartialPerConn(MaxMessageBytes ≤ 512 MiB) and a read: under 2 GiB
	total := l.srv.stats.partial.Add(int64(d))
	return d > 0 && total > int64(l.srv.cfg.MaxPartialBytes)
}

// onFrame handles one complete message or control frame of l.cur.
func (l *loop) onFrame(op ws.OpCode, payload []byte) readResult {
	c := l.cur
	if c.state == stateClosing {
		if op == ws.OpClose { // the answer to our close frame
			l.release(c, c.closer.cause)
			return readStop
		}
		return readOn // discard frames in flight
	}
	switch op {
	case ws.OpText:
		if wait := l.srv.handler.OnMessage(c, payload); wait > 0 {
			l.wait = int64(wait)
			return readPause
		}
		c.mu.Lock()
		closing := c.closing
		c.mu.Unlock()
		if closing {
			return readStop
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
		return readStop
	}
	return readOn
}
