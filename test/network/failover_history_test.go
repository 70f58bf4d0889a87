//go:build network

package network

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is the record of a failover test, Jepsen-style, as history
// (history_test.go) is for one sender and one member, widened to many
// senders, rooms and members: per message, when it was sent and the
// answers its sender got; per live member, every frame it got, in order;
// per room, what the store holds after the run (a since=0 replay). The
// checker (failoverRecord.check) judges the record once the run is over,
// and lists the resumes (resumePlan) that must announce each loss.

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
// message with its ID, or a truncated notice (trunc set).
type roomFrame struct {
	key   msgKey
	id    streamID
	trunc *truncation
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
	bad           []string // frames it could not decode
	closedEarly   bool     // its connection ended before the test closed it
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

// addFrame records a frame member m got.
func (r *failoverRecord) addFrame(m *foMember, text string) {
	f, err := parseRoomFrame(text)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		m.bad = append(m.bad, err.Error())
		return
	}
	m.frames = append(m.frames, f)
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

// failoverCounts are what check found, for the scenario's log line.
type failoverCounts struct {
	sent, acked, ackedLost, unavailable, unconfirmed, unconfirmedStored int
	// ackedLostLate counts the acked messages lost that were sent after
	// the promotion: acked by the old primary although a new one existed.
	ackedLostLate                                              int
	stored, storedTruncated                                    int
	delivered, deliveredLost, storedUndelivered, liveTruncated int
	idReuse, twoIDs                                            int
	resumes, silentResumes                                     int
	// ackGap is the longest time any sender went without an ack: from
	// the send of one acked message to the send of its next acked one.
	ackGap time.Duration
}

// reporter is what the checker reports violations to: the test, or in
// the checker's own test a recorder of them.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// errLimit reports the first few errors of each kind and counts the
// rest, so that a run with thousands of violations stays readable. Each
// error starts with its kind.
type errLimit struct {
	t reporter
	n map[string]int
}

// errorf reports an error of kind (the first 5 of each kind are shown).
func (e *errLimit) errorf(kind, format string, args ...any) {
	e.t.Helper()
	e.n[kind]++
	if e.n[kind] <= 5 {
		e.t.Errorf(kind+": "+format, args...)
	}
}

// summary reports how many errors of each kind were not shown.
func (e *errLimit) summary() {
	e.t.Helper()
	for _, kind := range slices.Sorted(maps.Keys(e.n)) {
		if n := e.n[kind]; n > 5 {
			e.t.Errorf("%s: %d more like these", kind, n-5)
		}
	}
}

// check checks the record against the promised properties and returns
// the counts:
//   - every message sent gets exactly one answer: ack, unavailable or
//     unconfirmed; no answer names a message that was not sent;
//   - unavailable ⇒ never stored, never delivered live;
//   - acked ⇒ stored once with the acked ID, or lost (counted; with
//     noAckedLoss, as when the gateways wait for a replica, an error);
//   - nothing stored twice, nor anything not sent; each room's store in
//     each of its senders' send order;
//   - each member gets each sender's messages in send order, none twice,
//     and every stored message of its room, unless a truncated notice it
//     got covers the message's ID;
//   - no stream ID of a room is ever seen (acks, live, store, resumes)
//     for two messages, nor a message under two IDs;
//   - every resume of resumePlans got a truncated notice in time (judge).
func (r *failoverRecord) check(t reporter, noAckedLoss bool) failoverCounts {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	e := &errLimit{t: t, n: map[string]int{}}
	defer e.summary()
	var c failoverCounts

	// Who owns each ID of each room, and the IDs of each message.
	owner := make([]map[streamID]msgKey, r.rooms)
	for i := range owner {
		owner[i] = map[streamID]msgKey{}
	}
	idsOf := map[msgKey]map[streamID]bool{}
	see := func(k msgKey, id streamID, where string) {
		room := r.roomOf[k.sender]
		if o, ok := owner[room][id]; ok && o != k {
			c.idReuse++
			e.errorf("ID reuse", "room %d: ID %s is message %s (%s) and message %s", room, id, k, where, o)
			return
		}
		owner[room][id] = k
		if idsOf[k] == nil {
			idsOf[k] = map[streamID]bool{}
		}
		idsOf[k][id] = true
	}
	validKey := func(k msgKey) bool {
		return k.sender >= 0 && k.sender < len(r.sentAt) && k.n >= 1 && k.n <= len(r.sentAt[k.sender])
	}

	// The store, per room.
	storedIDs := map[msgKey][]streamID{}
	inStore := make([]map[streamID]msgKey, r.rooms)
	for room, frames := range r.stored {
		inStore[room] = map[streamID]msgKey{}
		last := map[int]int{} // sender → last n stored
		for _, f := range frames {
			if f.trunc != nil {
				c.storedTruncated++
				continue
			}
			c.stored++
			if !validKey(f.key) || r.roomOf[f.key.sender] != room {
				e.errorf("stored, never sent", "room %d holds message %s (%s)", room, f.key, f.id)
				continue
			}
			see(f.key, f.id, "stored")
			storedIDs[f.key] = append(storedIDs[f.key], f.id)
			inStore[room][f.id] = f.key
			if n := last[f.key.sender]; f.key.n <= n {
				e.errorf("store out of send order", "room %d holds sender %d's message %d after its message %d", room, f.key.sender, f.key.n, n)
			}
			last[f.key.sender] = f.key.n
		}
	}
	for k, ids := range storedIDs {
		if len(ids) > 1 {
			e.errorf("stored twice", "message %s stored %d times: %v", k, len(ids), ids)
		}
	}

	// What the live members got.
	delivered := map[msgKey]int{} // to any member
	for _, m := range r.members {
		if m.closedEarly {
			e.errorf("member closed", "the %s was disconnected during the run", m.name)
		}
		for _, b := range m.bad {
			e.errorf("member frame", "the %s got %s", m.name, b)
		}
		got := map[msgKey]int{}
		last := map[int]int{}
		var truncs []truncation
		for _, f := range m.frames {
			if f.trunc != nil {
				c.liveTruncated++
				truncs = append(truncs, *f.trunc)
				continue
			}
			c.delivered++
			if !validKey(f.key) || r.roomOf[f.key.sender] != m.room {
				e.errorf("delivered, never sent", "the %s got message %s (%s), not sent to its room", m.name, f.key, f.id)
				continue
			}
			if f.key.sender == m.self {
				e.errorf("own message delivered", "the %s got its own message %s (%s)", m.name, f.key, f.id)
			}
			see(f.key, f.id, "delivered live to the "+m.name)
			got[f.key]++
			delivered[f.key]++
			if got[f.key] > 1 {
				e.errorf("delivered twice", "the %s got message %s %d times", m.name, f.key, got[f.key])
			} else if n := last[f.key.sender]; f.key.n < n {
				e.errorf("delivered out of order", "the %s got sender %d's message %d after its message %d", m.name, f.key.sender, f.key.n, n)
			}
			last[f.key.sender] = max(last[f.key.sender], f.key.n)
			if inStore[m.room][f.id] != f.key {
				c.deliveredLost++
			}
		}
		for _, sf := range r.stored[m.room] {
			if sf.trunc != nil || got[sf.key] > 0 || !validKey(sf.key) || sf.key.sender == m.self {
				continue
			}
			if !slices.ContainsFunc(truncs, func(tr truncation) bool { return tr.covers(sf.id) }) {
				c.storedUndelivered++
				e.errorf("stored, never delivered", "the %s never got message %s (%s), which the store holds, and no truncated notice covers it", m.name, sf.key, sf.id)
			}
		}
	}
	// The resumes that must announce a loss.
	for _, res := range r.resumes {
		c.resumes++
		why := ""
		if res.err != nil {
			why = res.err.Error()
		} else {
			for _, f := range res.frames {
				if f.trunc == nil && validKey(f.key) && r.roomOf[f.key.sender] == res.plan.member.room {
					see(f.key, f.id, "replayed to a resume")
				}
			}
			why = res.plan.judge(res.frames)
		}
		if why != "" {
			c.silentResumes++
			e.errorf("silent loss", "%s: %s", res.plan, why)
		}
	}
	// Each message's answer.
	for _, s := range r.strays {
		e.errorf("stray answer", "%s: names no message sent", s)
	}
	for k, sent := range r.sentAt {
		var lastAck time.Time
		for i, at := range sent {
			key := msgKey{k, i + 1}
			c.sent++
			as, ids := r.answers[key], storedIDs[key]
			if len(as) != 1 {
				e.errorf("answers", "message %s got %d answers %v, want exactly one", key, len(as), as)
				if len(as) == 0 {
					continue
				}
			}
			switch a := as[0]; a.kind {
			case "ack":
				c.acked++
				see(key, a.id, "acked")
				if !lastAck.IsZero() {
					c.ackGap = max(c.ackGap, at.Sub(lastAck))
				}
				lastAck = at
				switch {
				case len(ids) == 0:
					c.ackedLost++
					if !r.promoted.IsZero() && at.After(r.promoted) {
						c.ackedLostLate++
					}
					if noAckedLoss {
						e.errorf("acked, lost", "message %s acked as %s is not in the store after the failover", key, a.id)
					}
				case ids[0] != a.id:
					e.errorf("acked, stored under another ID", "message %s acked as %s is stored as %v", key, a.id, ids)
				}
			case "unavailable":
				c.unavailable++
				if len(ids) > 0 || delivered[key] > 0 {
					e.errorf("unavailable, yet stored or delivered", "message %s answered unavailable is stored as %v and was delivered live %d times", key, ids, delivered[key])
				}
			case "unconfirmed":
				c.unconfirmed++
				if len(ids) > 0 {
					c.unconfirmedStored++
				}
			default:
				e.errorf("answers", "message %s answered %q, want ack, unavailable or unconfirmed", key, a.kind)
			}
		}
	}
	for k, ids := range idsOf {
		if len(ids) > 1 {
			c.twoIDs++
			e.errorf("one message, two IDs", "message %s was seen under IDs %v", k, slices.SortedFunc(maps.Keys(ids), streamID.compare))
		}
	}
	return c
}

// resumePlan is a resume that must announce a loss: a client joining
// the room with since= gets a truncated notice before any replayed entry
// at or after gap (with first set: before any entry at all).
type resumePlan struct {
	member *foMember
	since  streamID
	gap    streamID // the first lost entry the member got live
	first  bool     // since is itself a lost entry: the notice comes first
}

// String describes the plan, for messages.
func (p resumePlan) String() string {
	if p.first {
		return fmt.Sprintf("resume of the %s with since=%s (its last ID, lost)", p.member.name, p.since)
	}
	return fmt.Sprintf("resume of the %s with since=%s (before the lost %s)", p.member.name, p.since, p.gap)
}

// resumePlans returns, for each member that got live entries the store
// no longer holds, a resume from the last ID it got before each run of
// them (at most maxGaps runs per member), and one from the last ID it got
// when that one is lost.
func (r *failoverRecord) resumePlans(maxGaps int) []resumePlan {
	r.mu.Lock()
	defer r.mu.Unlock()
	var plans []resumePlan
	for _, m := range r.members {
		held := map[streamID]msgKey{}
		for _, f := range r.stored[m.room] {
			if f.trunc == nil {
				held[f.id] = f.key
			}
		}
		var prev *streamID
		inGap, gaps := false, 0
		var lastID streamID
		lastLost := false
		for _, f := range m.frames {
			if f.trunc != nil {
				continue
			}
			k, ok := held[f.id]
			lost := !ok || k != f.key
			if lost && !inGap && gaps < maxGaps {
				since := f.id.pred()
				if prev != nil {
					since = *prev
				}
				plans = append(plans, resumePlan{member: m, since: since, gap: f.id})
				gaps++
			}
			inGap = lost
			if !lost {
				id := f.id
				prev = &id
			}
			lastID, lastLost = f.id, lost
		}
		if lastLost {
			plans = append(plans, resumePlan{member: m, since: lastID, gap: lastID, first: true})
		}
	}
	return plans
}

// judge returns what is wrong with the frames a resume got ("" when the
// loss was announced in time).
func (p resumePlan) judge(frames []roomFrame) string {
	for i, f := range frames {
		if f.trunc != nil {
			return ""
		}
		if p.first || !f.id.less(p.gap) {
			return fmt.Sprintf("replayed entry %d (message %s, %s) came before any truncated notice", i+1, f.key, f.id)
		}
	}
	return fmt.Sprintf("no truncated notice among the %d frames replayed", len(frames))
}
