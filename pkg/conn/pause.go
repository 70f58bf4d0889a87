package conn

import "time"

// Paused reads: how a loop slows a client down instead of dropping what it
// sends. When a connection's reader stops at a frame it may not take yet
// (over FRAME_RATE, or a message the Handler declined for now by
// returning a wait from OnMessage), the loop keeps the bytes from that
// frame on (frameReader.pause), stops reading the socket and notes when
// to go on: the connection's deadline, which an open connection does not
// use otherwise, and an entry in the loop's pauses. Unread bytes stay in
// the kernel, the client's TCP window closes, and its writes block or
// fail with EAGAIN: the client is slowed down, nothing is lost, order is
// kept. When the time comes the loop feeds the kept bytes again and reads
// on. The pauses of a connection sending at its rate are a fraction of a
// second, so pings and timeouts are unaffected.

// pauseEntry is a paused connection and when to resume it.
type pauseEntry struct {
	c  *Conn
	at int64 // loop clock, unix ns
}

// pauses is a min-heap of paused connections by resume time. An entry
// whose connection was resumed, closed or paused again since (its deadline
// is another) is dropped when it comes up.
type pauses []pauseEntry

// push adds e.
func (h *pauses) push(e pauseEntry) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if q[p].at <= q[i].at {
			break
		}
		q[p], q[i] = q[i], q[p]
		i = p
	}
}

// pop removes and returns the earliest entry; h must not be empty.
func (h *pauses) pop() pauseEntry {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = pauseEntry{}
	q = q[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(q) && q[l].at < q[m].at {
			m = l
		}
		if r < len(q) && q[r].at < q[m].at {
			m = r
		}
		if m == i {
			break
		}
		q[m], q[i] = q[i], q[m]
		i = m
	}
	*h = q
	return top
}

// next returns when the earliest pause ends, or the largest time when
// there is none.
func (h pauses) next() int64 {
	if len(h) == 0 {
		return 1<<63 - 1
	}
	return h[0].at
}

// minPause is the shortest pause: a wait below it is rounded up, so that a
// client sending just over its rate is read in a few larger steps.
const minPause = int64(100 * time.Microsecond)

// pause notes that c's reader paused: at the wait the Handler asked for,
// or, over the frame rate, until the next frame fits.
func (l *loop) pause(c *Conn) {
	wait := l.wait
	l.wait = 0
	if wait == 0 {
		wait = c.rd.frameWait()
	}
	c.deadline = l.now + max(wait, minPause)
	l.paused.push(pauseEntry{c, c.deadline})
	l.srv.stats.paused.Add(1)
}

// resumeDue resumes the connections whose pause has ended: the bytes the
// pause kept are fed again (they may pause it again), then the socket is
// read on.
func (l *loop) resumeDue() {
	for len(l.paused) > 0 && l.paused[0].at <= l.now {
		e := l.paused.pop()
		c := e.c
		if c.state != stateOpen || !c.rd.paused || c.deadline != e.at {
			continue // closed, or paused again since
		}
		c.deadline = 0
		l.cur = c
		l.readLim.now = l.now
		res, err := c.rd.resume(l.emit)
		l.fed(c, res, err)
		if c.state == stateOpen && !c.rd.paused {
			l.read(c) // edge-triggered: what arrived meanwhile raised no event
		}
	}
}

// arm sets the poller's deadline to t (unix ns) unless it is set there.
func (l *loop) arm(t int64) error {
	if t == l.armed {
		return nil
	}
	l.armed = t
	return l.poll.setDeadline(time.Unix(0, t))
}
