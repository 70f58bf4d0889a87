//go:build network

package network

import (
	"fmt"
	"maps"
	"slices"
	"time"
)

// This file is the checker of a failoverRecord (failover_history_test.go):
// what a run promises (promises), the counts it prints, and check, which
// judges the record once the run is over and lists the resumes
// (resumePlan) that must announce each loss.

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
	// undelivered counts, with promises.allDelivered, the messages a
	// member never got (per member); late, with promises.within, the
	// live deliveries that came later than that; slowest is the longest
	// time from a send to a live delivery of the message.
	undelivered, late int
	slowest           time.Duration
}

// live formats the counts of a run without faults in the store: its
// answers and live deliveries.
func (c failoverCounts) live() string {
	return fmt.Sprintf("sent %d: acked %d, unavailable %d, unconfirmed %d; delivered live %d (never delivered %d, late %d), slowest %v",
		c.sent, c.acked, c.unavailable, c.unconfirmed, c.delivered, c.undelivered, c.late, c.slowest.Round(time.Millisecond))
}

// withStore formats the counts of a run that reads the store back and
// loses nothing from it (promises.storeIntact): its answers, what the
// store holds, the live deliveries and the longest wait for an ack.
func (c failoverCounts) withStore() string {
	return fmt.Sprintf("sent %d: acked %d, unavailable %d, unconfirmed %d (stored %d of them); stored %d; delivered live %d, slowest %v; longest ack gap %v",
		c.sent, c.acked, c.unavailable, c.unconfirmed, c.unconfirmedStored, c.stored, c.delivered,
		c.slowest.Round(time.Millisecond), c.ackGap.Round(time.Millisecond))
}

// promises are what a run promises beyond what check always checks. The
// zero value promises nothing more.
type promises struct {
	// noAckedLoss: no acked message is lost from the store (the gateways
	// wait for a replica before they ack). It needs the store: a liveOnly
	// record ignores it.
	noAckedLoss bool
	// allAcked: every message is acked (nothing fails in the engine).
	allAcked bool
	// allDelivered: every live member gets every message sent to its
	// room but its own, whatever truncated notices it got.
	allDelivered bool
	// within bounds each live delivery: it comes at most this long after
	// its message was sent. Zero means no bound.
	within time.Duration
	// storeIntact: the store loses nothing it took (one Redis, never
	// restarted, no stream trimmed): no acked message is lost (as
	// noAckedLoss), every live delivery is of a message the store holds,
	// and no truncated notice comes, live or replayed, so none excuses a
	// stored message a member missed. Acked or unconfirmed, a stored
	// message then reaches every member once, and only a stored one
	// does. A liveOnly record is checked for the notices only.
	storeIntact bool
	// lastAcked: each sender's last message is acked: the engine
	// recovered from the fault before the traffic ended.
	lastAcked bool
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
//     unconfirmed (with p.allAcked: ack); no answer names a message that
//     was not sent;
//   - unavailable ⇒ never stored, never delivered live;
//   - acked ⇒ stored once with the acked ID, or lost (counted; with
//     p.noAckedLoss, as when the gateways wait for a replica, or
//     p.storeIntact, an error);
//   - with p.storeIntact: every live delivery is of a stored message, and
//     no truncated notice comes, live or replayed;
//   - with p.lastAcked: each sender's last message is acked;
//   - nothing stored twice, nor anything not sent; each room's store in
//     each of its senders' send order;
//   - each member gets each sender's messages in send order, none twice,
//     never its own, and every stored message of its room, unless a
//     truncated notice it got covers the message's ID (with
//     p.allDelivered: every message sent to its room by another, notice
//     or not; with p.within: each within that time of its send);
//   - no stream ID of a room is ever seen (acks, live, store, resumes)
//     for two messages, nor a message under two IDs;
//   - every resume of resumePlans got a truncated notice in time (judge).
//
// With r.liveOnly the store was not read: what needs it is skipped.
func (r *failoverRecord) check(t reporter, p promises) failoverCounts {
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
				if p.storeIntact {
					e.errorf("truncated notice", "the replay of room %d got a notice %s, yet the store lost nothing", room, f.trunc)
				}
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
				if p.storeIntact {
					e.errorf("truncated notice", "the %s got a notice %s, yet the store lost nothing", m.name, f.trunc)
				}
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
			if !r.liveOnly && inStore[m.room][f.id] != f.key {
				c.deliveredLost++
				if p.storeIntact {
					e.errorf("delivered, not stored", "the %s got message %s (%s), which the store does not hold", m.name, f.key, f.id)
				}
			}
			if !f.at.IsZero() {
				took := f.at.Sub(r.sentAt[f.key.sender][f.key.n-1])
				c.slowest = max(c.slowest, took)
				if p.within > 0 && took > p.within {
					c.late++
					e.errorf("late delivery", "the %s got message %s %v after its send, want within %v", m.name, f.key, took, p.within)
				}
			}
		}
		if p.allDelivered {
			for k, sent := range r.sentAt {
				if r.roomOf[k] != m.room || k == m.self {
					continue
				}
				for n := 1; n <= len(sent); n++ {
					if key := (msgKey{k, n}); got[key] == 0 {
						c.undelivered++
						e.errorf("sent, never delivered", "the %s never got message %s", m.name, key)
					}
				}
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
			if a := as[0]; p.allAcked && a.kind != "ack" {
				e.errorf("not acked", "message %s answered %q, want ack", key, a.kind)
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
				case r.liveOnly: // the store was not read
				case len(ids) == 0:
					c.ackedLost++
					if !r.promoted.IsZero() && at.After(r.promoted) {
						c.ackedLostLate++
					}
					if p.noAckedLoss || p.storeIntact {
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
	if p.lastAcked {
		for k, sent := range r.sentAt {
			key := msgKey{k, len(sent)}
			if as := r.answers[key]; len(sent) > 0 && (len(as) == 0 || as[0].kind != "ack") {
				e.errorf("last not acked", "message %s, sender %d's last, answered %v, want ack: the engine did not recover", key, k, as)
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
