package room

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// Replay (since=, history=) and the switch to live delivery.
//
// A joiner that replays is a member from the moment it joins, so that
// nothing delivered after that is lost, but its session is "replaying":
// Deliver holds what arrives for it (session.hold) instead of sending it.
// A goroutine (Hub.start, never an event loop) reads the stored entries
// page by page (engine.Last, engine.History) and sends them, paced so that
// the connection's queue stays under 1/replayShare of MAX_QUEUE_BYTES.
// When a page comes back short (the end of the stream), it takes room.mu,
// so that no Deliver runs, sends the held messages newer than the last one replayed,
// sets the session's floor to that ID and makes the session live: the
// next delivery goes straight out. Deliveries of a room come in ID order,
// and both sources are filtered by the last ID sent (the replay's cursor,
// then the floor, which also drops a delivery that a faster History had
// already returned), so the client gets each entry once, in order, with
// no gap at the switch.
//
// Held messages are bounded (1/replayShare of MAX_QUEUE_BYTES): past that
// they are dropped and the session marked overflowed; as they are in the stream,
// the replay reads on and tries the switch again. In a room busier than
// that, the member keeps receiving everything, from History, until a
// switch succeeds; a member that does not read is closed as a slow
// consumer (replayStall).

const (
	// replayPage is the number of entries read per History call.
	replayPage = 100
	// replayStall is how long a replay waits for the client to read
	// before it closes it as a slow consumer (1008).
	replayStall = 10 * time.Second
	// engineTimeout bounds one History, Last or Members call of the Hub.
	engineTimeout = 5 * time.Second
	// heldOverhead is counted per held message on top of its payload:
	// its frame header and "id".
	heldOverhead = 64
	// replayShare: a replay keeps its member's queue under 1/replayShare
	// of MAX_QUEUE_BYTES, and holds at most as much of live deliveries.
	replayShare = 2
	// switchShare: the switch to live waits until the queue is under
	// 1/switchShare of MAX_QUEUE_BYTES, so that the held messages fit on
	// top.
	switchShare = 4
)

// session is what the Hub keeps about a member that set query options
// (options.go). Members without options have none (member.sess is nil),
// so the delivery path of the original protocol is unchanged.
type session struct {
	opts   options
	ctx    context.Context    // ends when the member leaves; nil without background work
	cancel context.CancelFunc // nil without background work

	// replaying is guarded by room.mu: written under Lock, read by
	// Deliver under RLock. While it is set Deliver holds messages instead
	// of sending them.
	replaying bool

	mu sync.Mutex // a leaf: guards the fields below
	// presence is the member count last sent (presence=1), -1 before
	// the first; presenceAt when (unix ns) it was sent.
	presence   int
	presenceAt int64
	held       []stream.Message
	heldBytes  int
	holdLimit  int  // 1/replayShare of MAX_QUEUE_BYTES
	overflow   bool // held messages were dropped since the last switch attempt
}

// newSession returns the session of a joining connection, nil when it
// set no option.
func newSession(c *conn.Conn) *session {
	o := connKeyOptions(c.Key())
	if o.flags == 0 {
		return nil
	}
	s := &session{opts: o, replaying: o.replays(), presence: -1}
	if s.async() {
		s.ctx, s.cancel = context.WithCancel(context.Background())
	}
	if s.replaying {
		_, limit := c.Queued()
		s.holdLimit = limit / replayShare
	}
	return s
}

// async reports whether the member needs work off the event loop on
// joining (Hub.start): a replay or a presence frame.
func (s *session) async() bool { return s.opts.replays() || s.opts.flags&optPresence != 0 }

// followsIDs reports whether the member follows entry IDs (ids=1,
// since=, history=) and so gets the truncated frame of a loss.
func (s *session) followsIDs() bool {
	return s.opts.flags&optIDs != 0 || s.opts.replays()
}

// stop ends the session's background work.
func (s *session) stop() {
	if s.cancel != nil {
		s.cancel()
	}
}

// hold keeps a delivery for a replaying member (Deliver, under
// room.mu.RLock). The payload is copied: Deliver's is only lent.
func (s *session) hold(m stream.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.overflow {
		return
	}
	size := len(m.Payload) + heldOverhead
	// One message is always held, so that a room of large messages
	// (up to MAX_MESSAGE_BYTES, at most half the queue) can switch.
	if len(s.held) > 0 && s.heldBytes+size > s.holdLimit {
		s.overflow = true
		clear(s.held)
		s.held, s.heldBytes = nil, 0
		return
	}
	m.Payload = bytes.Clone(m.Payload)
	s.held = append(s.held, m)
	s.heldBytes += size
}

// replayClose closes a member whose replay failed after its join was
// answered: the engine did not return its history.
var replayClose = &conn.CloseError{Code: conn.StatusTryAgainLater,
	Reason: "history unavailable: the message store did not answer; reconnect with since=<last id>"}

// errReplayRefused answers a replaying join whose first page could not be
// read.
var errReplayRefused = &conn.HandshakeError{Status: http.StatusServiceUnavailable,
	Reason: "the message store is unavailable (history); retry later"}

// start runs, off the event loop, what a member with options gets on
// joining: its first presence frame, then its replay. With complete set
// the join is pending (conn.OpenPending) and start answers it: once the
// first page of the replay is read, or with 503 when it cannot be.
func (h *Hub) start(name string, r *room, c *conn.Conn, s *session, complete bool) {
	defer s.stop()
	if s.opts.flags&optPresence != 0 {
		ctx, cancel := context.WithTimeout(s.ctx, engineTimeout)
		n, err := h.engine.Members(ctx, name)
		cancel()
		if err == nil { // else the presence poller sends it
			if f := sendPresence(c, s, n, nil); f != nil {
				f.Release()
			}
		}
	}
	if s.opts.replays() {
		h.replay(name, r, c, s, complete)
	}
}

// history reads the page of room after cursor.
func (h *Hub) history(ctx context.Context, name string, after stream.ID) (stream.Page, error) {
	ctx, cancel := context.WithTimeout(ctx, engineTimeout)
	defer cancel()
	return h.engine.History(ctx, name, after, replayPage)
}

// replayRead is where a replay stands after a read of the engine.
type replayRead struct {
	msgs      []stream.Message // the entries read
	page      stream.Page      // the History page they came from (zero for Last)
	err       error            // of the read
	cursor    stream.ID        // the last entry sent, or skipped as the member's own
	fromLast  bool             // msgs came from Last (history=N): what follows them is read next
	fromStart bool             // the room had no entry at the join: all of it is the member's
}

// replay sends c the stored entries its options ask for, then makes its
// session live (goLive).
func (h *Hub) replay(name string, r *room, c *conn.Conn, s *session, complete bool) {
	rd := h.firstRead(name, s)
	if complete {
		if rd.err != nil {
			h.replayFailed(name, c, s, rd.err)
			h.leave(c)
			c.Complete(errReplayRefused)
			return
		}
		c.Complete(nil)
	}
	for {
		if rd.err != nil {
			if s.ctx.Err() == nil {
				h.replayFailed(name, c, s, rd.err)
				c.Close(replayClose)
			}
			return
		}
		if !h.sendRead(c, s, &rd) {
			return
		}
		// Last's entries are followed by what came after them; a short
		// page of History is the end of the stream: try the switch.
		if !rd.fromLast && entries(rd.msgs) < replayPage {
			live, ok := h.goLive(r, c, s, rd.cursor)
			if live || !ok {
				return
			}
		}
		if !rd.fromLast {
			rd.fromStart = false // only the first page after the join can tell
		}
		rd.fromLast = false
		rd.page, rd.err = h.history(s.ctx, name, rd.cursor)
		rd.msgs = rd.page.Messages
	}
}

// firstRead reads what a replay starts with: the last N entries
// (history=N), or the page after since=.
func (h *Hub) firstRead(name string, s *session) (rd replayRead) {
	rd.cursor = s.opts.since
	rd.fromLast = s.opts.flags&optHistory != 0
	if !rd.fromLast {
		rd.page, rd.err = h.history(s.ctx, name, rd.cursor)
		rd.msgs = rd.page.Messages
		if rd.page.End.Less(rd.cursor) {
			// since= beyond the room's newest entry (an ID from the
			// future): resume from the end, or nothing would ever pass.
			rd.cursor = rd.page.End
		}
		return rd
	}
	ctx, cancel := context.WithTimeout(s.ctx, engineTimeout)
	var end stream.Page
	if end, rd.err = h.engine.History(ctx, name, stream.ID{}, 0); rd.err == nil {
		rd.msgs, rd.err = h.engine.Last(ctx, name, s.opts.history)
	}
	cancel()
	if rd.err == nil && len(rd.msgs) == 0 {
		// The room held nothing: the member follows from its end, or
		// from its first entry when it had none; what is trimmed
		// before the next read is announced (truncated), not skipped.
		rd.cursor, rd.fromStart = end.End, end.End.IsZero()
	}
	return rd
}

// sendRead sends c what rd read, paced: the truncated frame when entries
// after the cursor were trimmed, then the entries after the cursor but
// c's own, moving the cursor. It reports false when the replay must stop
// (the member left, or does not read).
func (h *Hub) sendRead(c *conn.Conn, s *session, rd *replayRead) bool {
	if rd.page.Truncated || rd.fromStart && !rd.fromLast && rd.page.Trimmed {
		var from stream.ID
		if len(rd.msgs) > 0 {
			from = rd.msgs[0].ID
		}
		since, held := rd.cursor, len(rd.msgs) > 0
		if !sendPaced(s.ctx, c, textFrame(func(b []byte) []byte { return appendTruncated(b, since, from, held) })) {
			return false
		}
	}
	for _, m := range rd.msgs {
		if m.Lost {
			// Entries recorded gone between two held ones (a Redis
			// rollback): the frame a live member gets for a loss.
			since, from := rd.cursor, m.ID
			if !sendPaced(s.ctx, c, textFrame(func(b []byte) []byte { return appendTruncated(b, since, from, !from.IsZero()) })) {
				return false
			}
			continue
		}
		if !rd.cursor.Less(m.ID) {
			continue
		}
		rd.cursor = m.ID
		if m.Sender == c.ID() {
			continue // sent by c during its replay
		}
		if !sendPaced(s.ctx, c, entryFrame(s, m)) {
			return false
		}
		h.stats.replayed.Add(1)
	}
	return true
}

// entries counts the entries of msgs, leaving out loss notices.
func entries(msgs []stream.Message) int {
	n := 0
	for i := range msgs {
		if !msgs[i].Lost {
			n++
		}
	}
	return n
}

// sendPaced sends fr to c once c's queue has room for it (pace, within
// 1/replayShare of MAX_QUEUE_BYTES) and releases it. It reports false, sending
// nothing, when the member left or does not read.
func sendPaced(ctx context.Context, c *conn.Conn, fr *conn.Frame) bool {
	ok := pace(ctx, c, fr.Len(), replayShare)
	if ok {
		c.Send(fr)
	}
	fr.Release()
	return ok
}

// goLive switches a replaying member to live delivery once its replay
// has sent everything up to cursor: it sends the held messages after
// cursor and makes the session live, under room.mu so that no delivery
// comes in between. It reports false live when held messages overflowed
// meanwhile (the replay must read on), and false ok when the replay must
// stop (the member left, or does not read).
func (h *Hub) goLive(r *room, c *conn.Conn, s *session, cursor stream.ID) (live, ok bool) {
	// Room for the held messages (at most 1/replayShare of the queue) on
	// top of 1/switchShare.
	if !pace(s.ctx, c, 0, switchShare) {
		return false, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	mb := r.member(c)
	if mb == nil {
		return false, false
	}
	s.mu.Lock()
	if s.overflow {
		s.overflow = false
		s.mu.Unlock()
		return false, true
	}
	held := s.held
	s.held, s.heldBytes = nil, 0
	s.mu.Unlock()
	for _, m := range held {
		if !cursor.Less(m.ID) {
			continue // replayed already
		}
		var fr *conn.Frame
		if m.Lost {
			// Lost before this node delivered it, after the replay: from
			// the last entry replayed on.
			fr = lostFrame(m, cursor)
		} else {
			cursor = m.ID
			fr = entryFrame(s, m)
		}
		c.Send(fr)
		fr.Release()
	}
	if mb.floor.Less(cursor) {
		mb.floor = cursor
	}
	s.replaying = false
	return true, true
}

// entryFrame encodes m as s's member receives it: with its ID for ids=1.
func entryFrame(s *session, m stream.Message) *conn.Frame {
	if s.opts.flags&optIDs != 0 {
		return textFrame(func(b []byte) []byte { return appendWithID(b, m.Payload, m.ID) })
	}
	return conn.NewTextFrame(m.Payload)
}

// pace waits until c's queue can take size more bytes and stay within
// 1/div of MAX_QUEUE_BYTES (an empty queue takes anything). It reports
// false when the member left (ctx ended) or the queue did not empty
// within replayStall: the client does not read, and is closed as a slow
// consumer.
func pace(ctx context.Context, c *conn.Conn, size, div int) bool {
	deadline := time.Now().Add(replayStall)
	wait := time.Millisecond
	for {
		if ctx.Err() != nil {
			return false
		}
		n, limit := c.Queued()
		if n == 0 || n+size <= limit/div {
			return true
		}
		if time.Now().After(deadline) {
			c.Close(conn.ErrSlowConsumer)
			return false
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// replayFailed logs a replay the engine could not serve.
func (h *Hub) replayFailed(name string, c *conn.Conn, s *session, err error) {
	if s.ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return // the member left
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		h.log.Debug("history replay failed", "room", name, "conn_id", c.ID(), "err", err)
	}
}
