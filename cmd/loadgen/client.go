package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// client is one WebSocket connection. Its epoll loop (poll.go) owns the
// counters, trackers and partial; its sender goroutine (if any) owns
// sent; both write frames under wmu. The runner reads everything only
// after the loops and senders have finished.
type client struct {
	id        int
	room      int
	sender    int // global sender ID, or -1 if this connection only receives
	fd        int // the socket, non-blocking
	wmu       sync.Mutex
	peers     []seqTracker // one per sender of the room, by index in room
	partial   []byte       // an incomplete frame, read so far; nil between frames
	frag      []byte       // a fragmented message being reassembled
	sent      uint32
	dropped   bool // closed by the gateway or broken before the end
	received  int64
	dup       int64
	late      int64
	misrouted int64
	echoed    int64
	foreign   int64
	unparsed  int64
	errFrames int64
	acks      int64 // {"ack":...} frames
	info      int64 // presence and truncated-history frames
}

// feed accounts for the complete frames at the start of b and returns
// what is left of an incomplete one, and whether the connection is done
// (it got a close frame). Payloads are handled in place.
func (c *client) feed(r *runner, b []byte) (rest []byte, done bool, err error) {
	for len(b) > 0 {
		f, n, err := parseFrame(b)
		if err != nil {
			return nil, false, err
		}
		if n == 0 {
			return b, false, nil
		}
		if c.handle(r, f) {
			return nil, true, nil
		}
		b = b[n:]
	}
	return nil, false, nil
}

// handle processes one frame and reports whether the connection is done.
func (c *client) handle(r *runner, f frame) bool {
	switch f.op {
	case ws.OpText, ws.OpBinary:
		if !f.fin {
			c.frag = append(c.frag[:0], f.payload...) // payloads alias the read buffer
			return false
		}
		c.onMessage(r, f.payload)
	case ws.OpContinuation:
		c.frag = append(c.frag, f.payload...)
		if f.fin {
			c.onMessage(r, c.frag)
			c.frag = nil
		}
	case ws.OpPing:
		c.writeControl(r, ws.OpPong, f.payload)
	case ws.OpClose:
		code := ws.StatusNoStatusRcvd
		if len(f.payload) >= 2 {
			code = ws.StatusCode(binary.BigEndian.Uint16(f.payload))
		}
		if !r.closing.Load() {
			c.dropped = true
			r.live.errs.add("close_" + strconv.Itoa(int(code)))
		}
		var body [2]byte
		binary.BigEndian.PutUint16(body[:], uint16(code))
		if code == ws.StatusNoStatusRcvd {
			c.writeControl(r, ws.OpClose, nil)
		} else {
			c.writeControl(r, ws.OpClose, body[:])
		}
		return true
	}
	return false
}

// onMessage accounts for one complete text message.
func (c *client) onMessage(r *runner, p []byte) {
	if sb, ok := findStamp(p); ok {
		if st, ok := parseStamp(sb); ok {
			c.onStamp(r, st)
			return
		}
	}
	switch {
	case bytes.HasPrefix(p, []byte(`{"ack":`)):
		c.acks++
		return
	case bytes.HasPrefix(p, []byte(`{"presence":`)), bytes.HasPrefix(p, []byte(`{"truncated":`)):
		c.info++
		return
	}
	if bytes.Contains(p, []byte(`"error"`)) {
		c.errFrames++
		r.live.errs.add("error_frame_" + errorKind(p))
		return
	}
	c.unparsed++
	r.live.errs.add("unparsed_frame")
}

// errorKind returns the "error" value of an error frame, shortened.
func errorKind(p []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(p, &e) != nil || e.Error == "" {
		return "unknown"
	}
	return e.Error[:min(len(e.Error), 40)]
}

// onStamp accounts for one received stamped message.
func (c *client) onStamp(r *runner, st stamp) {
	if st.run != r.run || int(st.sender) >= r.numSenders() {
		c.foreign++
		r.live.errs.add("foreign_message")
		return
	}
	c.received++
	r.live.received.Add(1)
	r.live.latency.record(c.id, time.Duration(time.Now().UnixNano()-st.nanos))
	switch {
	case int(st.sender) == c.sender:
		c.echoed++
		r.live.errs.add("echoed_own_message")
	case int(st.sender)/r.cfg.senders != c.room:
		c.misrouted++
		r.live.errs.add("misrouted_message")
	default:
		switch c.peers[int(st.sender)%r.cfg.senders].record(st.seq) {
		case seqDuplicate:
			c.dup++
		case seqLate, seqTooOld:
			c.late++
		}
	}
}

// writeControl writes a control frame, ignoring errors: the loop will
// see the connection fail.
func (c *client) writeControl(r *runner, op ws.OpCode, payload []byte) {
	var b [14 + 125]byte
	buf := appendClientFrame(b[:0], op, payload, randomMask())
	c.wmu.Lock()
	_ = writeFull(c.fd, buf, r.cfg.writeTimeout)
	c.wmu.Unlock()
}

// randomMask returns a fresh masking key (RFC 6455 section 5.3).
func randomMask() [4]byte {
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], rand.Uint32())
	return m
}

// sendLoop sends stamped messages at the configured rate from start until
// end. Messages due while a write blocked are sent in a burst, so the
// average rate holds. It stops at the first write error.
func (c *client) sendLoop(r *runner, start, end time.Time) {
	defer r.senders.Done()
	rate := r.cfg.rate
	msg := make([]byte, 0, 96+r.cfg.pad)
	buf := make([]byte, 0, 120+r.cfg.pad)
	timer := time.NewTimer(time.Until(start))
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-r.stopSend:
			return
		}
		now := time.Now()
		if !now.Before(end) {
			return
		}
		due := uint32(now.Sub(start).Seconds()*rate) + 1
		for c.sent < due {
			st := stamp{run: r.run, sender: uint32(c.sender), seq: c.sent, nanos: time.Now().UnixNano()}
			msg = appendChatMessage(msg[:0], st, r.cfg.pad, r.cfg.cid)
			buf = appendClientFrame(buf[:0], ws.OpText, msg, randomMask())
			if err := c.write(r, buf); err != nil {
				r.live.errs.add("write")
				return
			}
			c.sent++
			r.live.sent.Add(1)
		}
		next := start.Add(time.Duration(float64(c.sent) / rate * float64(time.Second)))
		timer.Reset(min(time.Until(next), time.Until(end)))
	}
}

// write writes one data frame.
func (c *client) write(r *runner, b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return writeFull(c.fd, b, r.cfg.writeTimeout)
}

// close sends a normal closure and closes the socket; its loop has
// stopped (closeAll).
func (c *client) close() {
	var body [2]byte
	binary.BigEndian.PutUint16(body[:], uint16(ws.StatusNormalClosure))
	var b [8]byte
	c.wmu.Lock()
	// No waiting: a socket the gateway does not drain gets no close frame
	// (a million closes waiting 100 ms each would take hours).
	_ = writeFull(c.fd, appendClientFrame(b[:0], ws.OpClose, body[:], randomMask()), 0)
	c.wmu.Unlock()
	unix.Close(c.fd)
}

// errWriteTimeout: the socket took nothing for the write's timeout.
var errWriteTimeout = errors.New("write timed out: the gateway does not read")

// writeFull writes all of b to the non-blocking socket fd, waiting (poll)
// for room at most timeout in all (0: not at all).
func writeFull(fd int, b []byte, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			left := time.Until(deadline)
			if left <= 0 {
				return errWriteTimeout
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, int(left/time.Millisecond)+1); err != nil && err != unix.EINTR {
				return err
			}
			continue
		case err != nil:
			return err
		}
		b = b[n:]
	}
	return nil
}
