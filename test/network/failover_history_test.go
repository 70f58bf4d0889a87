//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is the record of a network test, Jepsen-style, for any
// number of senders, rooms and members: per message, when it was sent and
// the answers its sender got; per live member, every frame it got, in
// order, with its arrival time; per room, what the store holds after the
// run (a since=0 replay). The checker (failoverRecord.check,
// failover_check_test.go) judges the record once the run is over, and
// lists the resumes (resumePlan) that must announce each loss. The
// failover scenarios record two gateways' traffic (failoverRun); the
// other tests one room's (liveRun, liverun_test.go), with the replay or,
// when their faults spare the store, without it (liveOnly).

// streamID is a Redis stream ID, <ms>-<seq>.
type streamID struct{ ms, seq uint64 }

// parseStreamID parses "<ms>-<seq>".
func parseStreamID(s string) (streamID, bool) {
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return streamID{ms, seq}, ok && err1 == nil && err2 == nil
}

// less reports whether a comes before b.
func (a streamID) less(b streamID) bool { return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq }

// compare returns -1, 0 or 1 as a is before, equal to or after b.
func (a streamID) compare(b streamID) int {
	switch {
	case a.less(b):
		return -1
	case b.less(a):
		return 1
	}
	return 0
}

// String formats a as Redis does.
func (a streamID) String() string { return fmt.Sprintf("%d-%d", a.ms, a.seq) }

// pred returns the greatest ID before a: a since= that resumes right
// before a.
func (a streamID) pred() streamID {
	if a.seq > 0 {
		return streamID{a.ms, a.seq - 1}
	}
	return streamID{a.ms - 1, 1<<64 - 1}
}

// msgKey names a message: its sender and its number, from 1 in the
// sender's send order. Its text and its cid are both "<sender>:<n>".
type msgKey struct{ sender, n int }

// String returns the message's text.
func (k msgKey) String() string { return fmt.Sprintf("%d:%d", k.sender, k.n) }

// parseMsgKey parses a message's text or cid.
func parseMsgKey(s string) (msgKey, bool) {
	a, b, ok := strings.Cut(s, ":")
	k, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	return msgKey{k, n}, ok && err1 == nil && err2 == nil && n >= 1
}

// foAnswer is one frame a sender got about a message: kind is "ack" or
// the error code ("unavailable", "unconfirmed", ...); id is the ack's.
type foAnswer struct {
	kind string
	id   streamID
}

// truncation is a {"truncated":{"since":…,"from":…}} frame: entries after
// since and before from (or, without from, all after since) may be lost.
type truncation struct {
	since, from streamID
	hasFrom     bool
}

// covers reports whether id lies in the range the frame announces.
func (tr truncation) covers(id streamID) bool {
	return tr.since.less(id) && (!tr.hasFrom || id.less(tr.from))
}

// String formats the frame's range.
func (tr truncation) String() string {
	if !tr.hasFrom {
		return fmt.Sprintf("truncated since %s", tr.since)
	}
	return fmt.Sprintf("truncated since %s from %s", tr.since, tr.from)
}

// roomFrame is a frame a member or a replaying client got: a chat
// message with its ID, or a truncated notice (trunc set); at is when a
// live member got it (zero in a replay).
type roomFrame struct {
	key   msgKey
	id    streamID
	trunc *truncation
	at    time.Time
}

// parseRoomFrame decodes a frame of an ids=1 member.
func parseRoomFrame(text string) (roomFrame, error) {
	var f struct {
		Message   string `json:"message"`
		ID        string `json:"id"`
		Truncated *struct {
			Since string `json:"since"`
			From  string `json:"from"`
		} `json:"truncated"`
	}
	if err := json.Unmarshal([]byte(text), &f); err != nil {
		return roomFrame{}, fmt.Errorf("frame %s: %v", text, err)
	}
	if tr := f.Truncated; tr != nil {
		since, ok := parseStreamID(tr.Since)
		from, okFrom := parseStreamID(tr.From)
		if !ok || tr.From != "" && !okFrom {
			return roomFrame{}, fmt.Errorf("truncated frame with bad IDs: %s", text)
		}
		return roomFrame{trunc: &truncation{since: since, from: from, hasFrom: tr.From != ""}}, nil
	}
	key, ok := parseMsgKey(f.Message)
	id, okID := parseStreamID(f.ID)
	if !ok || !okID {
		return roomFrame{}, fmt.Errorf("frame %s: want a chat message the test sent, with its id", text)
	}
	return roomFrame{key: key, id: id}, nil
}

// foMember is what one live member (ids=1) got, in order.
type foMember struct {
	name          string // for messages
	room, gateway int
	self          int // the sender it is, or -1
	frames        []roomFrame
	presence      []presenceFrame // with presence=1: the counts it got
	bad           []string        // frames it could not decode
	closedEarly   bool            // its connection ended before the test closed it
}

// presenceFrame is a {"presence":{"members":N}} frame a live member got,
// with its arrival time.
type presenceFrame struct {
	members int
	at      time.Time
}

// failoverRecord is the record of one failover run. Senders are numbered
// from 0; roomOf gives each one's room. The methods that record are safe
// for concurrent use; check and resumePlans run once recording is over.
type failoverRecord struct {
	roomOf []int
	rooms  int

	mu          sync.Mutex
	sentAt      [][]time.Time // per sender, per message (n-1)
	answers     map[msgKey][]foAnswer
	lastAckSent []time.Time // per sender: when its newest acked message was sent
	strays      []string    // frames to senders that name no message sent
	members     []*foMember
	// stored is, per room, what a since=0 replay after the run got.
	stored [][]roomFrame
	// resumes are the resumes that must announce a loss, run after the
	// traffic, with what they got.
	resumes []resumeResult
	// promoted is when the replica was promoted (zero: not recorded):
	// acked messages sent later and lost are counted apart.
	promoted time.Time
	// liveOnly says the run does not read the store back (stored stays
	// empty): check skips what needs it (acked ⇒ stored, delivered ⇒
	// stored).
	liveOnly bool
}

// resumeResult is a resume of a resumePlan and what it got, or why it
// could not run.
type resumeResult struct {
	plan   resumePlan
	frames []roomFrame
	err    error
}

// newFailoverRecord returns an empty record for senders whose rooms are
// roomOf.
func newFailoverRecord(roomOf []int, rooms int) *failoverRecord {
	return &failoverRecord{roomOf: roomOf, rooms: rooms, sentAt: make([][]time.Time, len(roomOf)),
		answers: map[msgKey][]foAnswer{}, lastAckSent: make([]time.Time, len(roomOf)), stored: make([][]roomFrame, rooms)}
}

// sent records that sender k sends its message n (the next one) now,
// and returns its frame.
func (r *failoverRecord) sent(k, n int) string {
	r.mu.Lock()
	r.sentAt[k] = append(r.sentAt[k], time.Now())
	r.mu.Unlock()
	key := msgKey{k, n}
	return fmt.Sprintf(`{"username":"s%d","message":"%s","cid":"%s"}`, k, key, key)
}

// readAnswers records sender k's acks and error frames until its
// connection ends. The sender is a member of its room too: what it gets
// of the other senders' messages is recorded in as, as readMember does.
func (r *failoverRecord) readAnswers(k int, w *wsClient, as *foMember, closed func() bool) {
	for m := range w.msgs {
		var f struct {
			Ack   string `json:"ack"`
			Error string `json:"error"`
			CID   string `json:"cid"`
		}
		_ = json.Unmarshal([]byte(m), &f)
		if f.Ack == "" && f.Error == "" {
			r.addFrame(as, m)
			continue
		}
		key, ok := parseMsgKey(f.CID)
		a := foAnswer{kind: f.Error}
		if f.Ack != "" {
			var okID bool
			a.kind = "ack"
			a.id, okID = parseStreamID(f.Ack)
			ok = ok && okID
		}
		r.mu.Lock()
		switch {
		case !ok || a.kind == "" || key.sender != k || key.n > len(r.sentAt[k]):
			r.strays = append(r.strays, fmt.Sprintf("sender %d: %s", k, m))
		default:
			r.answers[key] = append(r.answers[key], a)
			if at := r.sentAt[k][key.n-1]; a.kind == "ack" && at.After(r.lastAckSent[k]) {
				r.lastAckSent[k] = at
			}
		}
		r.mu.Unlock()
	}
	r.ended(as, closed)
}

// addMember adds a live member of room on gateway gw and returns it, for
// readMember; self is the member's sender number when it is a sender
// (which never gets its own messages), else -1.
func (r *failoverRecord) addMember(room, gw, self int) *foMember {
	m := &foMember{name: fmt.Sprintf("member of room %d on gateway %d", room, gw+1), room: room, gateway: gw, self: self}
	if self >= 0 {
		m.name = fmt.Sprintf("sender %d (room %d, gateway %d)", self, room, gw+1)
	}
	r.mu.Lock()
	r.members = append(r.members, m)
	r.mu.Unlock()
	return m
}

// readMember records what member m gets until its connection ends;
// closed reports whether the test closed it (else it ended early).
func (r *failoverRecord) readMember(m *foMember, w *wsClient, closed func() bool) {
	for text := range w.msgs {
		r.addFrame(m, text)
	}
	r.ended(m, closed)
}

// addFrame records a frame member m got now: a chat message, a
// truncated notice or a presence count.
func (r *failoverRecord) addFrame(m *foMember, text string) {
	now := time.Now()
	if strings.HasPrefix(text, `{"presence":`) {
		if n, ok := parsePresence(text); ok {
			r.mu.Lock()
			m.presence = append(m.presence, presenceFrame{members: n, at: now})
			r.mu.Unlock()
			return
		}
	}
	f, err := parseRoomFrame(text)
	f.at = now
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		m.bad = append(m.bad, err.Error())
		return
	}
	m.frames = append(m.frames, f)
}

// presenceAt returns when member m first got a presence count of n
// members after since (zero: not yet).
func (r *failoverRecord) presenceAt(m *foMember, n int, since time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range m.presence {
		if p.members == n && p.at.After(since) {
			return p.at
		}
	}
	return time.Time{}
}

// ended records that m's connection ended, early unless closed says the
// test closed it.
func (r *failoverRecord) ended(m *foMember, closed func() bool) {
	if !closed() {
		r.mu.Lock()
		m.closedEarly = true
		r.mu.Unlock()
	}
}

// hasFirst reports whether every sender's first message was acked and
// every member got the first message of each sender of its room.
func (r *failoverRecord) hasFirst() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.roomOf {
		if as := r.answers[msgKey{k, 1}]; len(as) == 0 || as[0].kind != "ack" {
			return false
		}
	}
	for _, m := range r.members {
		got, want := 0, len(r.roomOf)/r.rooms
		if m.self >= 0 {
			want--
		}
		for _, f := range m.frames {
			if f.trunc == nil && f.key.n == 1 {
				got++
			}
		}
		if got < want {
			return false
		}
	}
	return true
}

// ackedSince reports whether every sender has an ack for a message it
// sent at t or later.
func (r *failoverRecord) ackedSince(t time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, at := range r.lastAckSent {
		if at.Before(t) {
			return false
		}
	}
	return true
}

// unanswered returns how many messages sent have no answer yet.
func (r *failoverRecord) unanswered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, sent := range r.sentAt {
		for i := range sent {
			if len(r.answers[msgKey{k, i + 1}]) == 0 {
				n++
			}
		}
	}
	return n
}

// complete reports whether every message sent has an answer and every
// live member got what it must: every message of its room but its own
// that the store holds, or, in a liveOnly record, as many chat messages
// as were sent to its room by the others. It is all a liveRun waits for
// before check.
func (r *failoverRecord) complete() bool {
	if r.unanswered() > 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.liveOnly {
		for _, m := range r.members {
			got := map[msgKey]bool{}
			for _, f := range m.frames {
				if f.trunc == nil {
					got[f.key] = true
				}
			}
			for _, f := range r.stored[m.room] {
				if f.trunc == nil && f.key.sender != m.self && !got[f.key] {
					return false
				}
			}
		}
		return true
	}
	for _, m := range r.members {
		want := 0
		for k, sent := range r.sentAt {
			if r.roomOf[k] == m.room && k != m.self {
				want += len(sent)
			}
		}
		for _, f := range m.frames {
			if f.trunc == nil {
				want--
			}
		}
		if want > 0 {
			return false
		}
	}
	return true
}

// deliveries returns how many frames the live members got.
func (r *failoverRecord) deliveries() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.members {
		n += len(m.frames)
	}
	return n
}

// answerSummary says, per sender, how many messages it sent and the kinds
// of its last few answers: what a failed wait shows.
func (r *failoverRecord) answerSummary() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for k, sent := range r.sentAt {
		var last []string
		for n := max(1, len(sent)-4); n <= len(sent); n++ {
			kind := "none"
			if as := r.answers[msgKey{k, n}]; len(as) > 0 {
				kind = as[0].kind
			}
			last = append(last, kind)
		}
		fmt.Fprintf(&b, "\n  sender %d (room %d): sent %d, last answers %v", k, r.roomOf[k], len(sent), last)
	}
	return b.String()
}
