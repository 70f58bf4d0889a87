package main

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/chatgw/gateway/pkg/stream"
)

// The checker of TestModel (model_test.go). It reads the recorded
// history, once the system is quiet, and checks what the protocol
// promises:
//
//	R1 per-sender order: a sender's messages are stored (and delivered to
//	   every receiver) in the order it sent them, and acknowledged in that
//	   order on each connection.
//	R2 nothing before a member's start: since=X never gets an entry <= X;
//	   a join without since/history never gets an entry <= the newest one
//	   a client of the same node had observed before it dialed; history=N
//	   starts no earlier than the N-th newest entry known when it dialed.
//	R3 no gap and no duplicate after the start: IDs strictly increase; from
//	   the start to the last entry received (to the room's newest for a
//	   member still open at the end) every stored entry arrives, except the
//	   member's own and what a truncated frame announced lost; a truncated
//	   frame announces a real loss and is followed by its "from".
//	R4 every acknowledged message is stored once, at the ID it was acked
//	   with (a resent cid gets the first ID), and is still held unless older
//	   than the oldest entry held.
//	R5 "unavailable" means not stored.
//	R6 presence frames at most once a second; no unexpected error frame,
//	   close or unanswered message.
//
// The stored entries are what the model knows: acked IDs, IDs delivered
// to ids=1 members, and the final read of each stream. Plain members get
// no IDs: their deliveries are mapped to IDs by their unique texts.
//
// Where the protocol promises less, the rules say so:
//   - since=0 replays "all that is kept" and is never truncated: such a
//     member starts at its first delivery, as a join without since does.
//   - A plain member cannot be told that entries were lost: with
//     REDIS_MAXLEN, a gap of entries that MAXLEN newer ones may have
//     trimmed before its node read them is excused (trimExposed); an ids=1
//     member must get a truncated frame instead.
//   - A truncated frame without "from" after a room expired may announce
//     nothing lost: the engine no longer knows what the room held.
//   - A truncated frame may announce nothing lost when the entry before
//     its since was trimmed: Redis does not record the ID of the entry it
//     trimmed last, so a since between that entry and the oldest one held
//     cannot be decided (decidable).

// entry is a stored entry of the gateway the model knows of.
type entry struct {
	id  stream.ID
	msg *mmsg
}

// delivery is a chat frame a member received, with its entry's ID when
// known (from the frame for ids=1, else from the text).
type delivery struct {
	f     *mframe
	id    stream.ID
	known bool
	msg   *mmsg
}

type checker struct {
	m      *model
	open   map[*mconn]bool               // connections open once quiet
	final  map[string][]finalEntry       // the streams at the end; nil while quiet() polls
	views  map[*mconn][]mframe           // the frames of each connection
	dels   map[*mconn][]delivery         // the chat frames of each connection
	trunc  map[*mconn][]*mframe          // the truncated frames of each connection
	ans    map[*attempt]*mframe          // the ack or error frame answering an attempt
	sure   map[*attempt]bool             // the answer is certainly this attempt's
	idOf   map[string]stream.ID          // text → entry ID
	rooms  map[string][]entry            // room → known gateway entries, by ID
	isID   map[string]map[stream.ID]bool // room → IDs of known entries, foreign ones too
	unsure map[string]int                // room → messages maybe stored whose ID is unknown

	viol  []string
	kinds map[string]int
	// firsts holds the first violation of each kind, others the first of
	// each kind and connection (or sender) after those: for a readable
	// report.
	firsts, others []string
	seen           map[string]bool
	tail           int // R3 entries still missing at the end of open members (quiet polls this)
}

func cmpID(a, b stream.ID) int {
	switch {
	case a.Less(b):
		return -1
	case b.Less(a):
		return 1
	}
	return 0
}

// padding matches the padding of long messages (flushStorm), shortened
// in reports.
var padding = regexp.MustCompile(`-x{8,}`)

func (k *checker) fail(kind, format string, args ...any) {
	k.kinds[kind]++
	msg := padding.ReplaceAllString(kind+": "+fmt.Sprintf(format, args...), "-x…")
	if len(k.viol) < 200 {
		k.viol = append(k.viol, msg)
	}
	key := kind + " " + strings.SplitN(fmt.Sprintf(format, args...), " ", 2)[0]
	switch {
	case !k.seen[kind]:
		k.seen[kind], k.seen[key] = true, true
		k.firsts = append(k.firsts, msg)
	case !k.seen[key]:
		k.seen[key] = true
		k.others = append(k.others, msg)
	}
}

// examples returns the first violation of each kind, then the first of
// each kind and connection (or sender), at most n in all.
func (k *checker) examples(n int) []string {
	out := append(slices.Clone(k.firsts), k.others...)
	return out[:min(n, len(out))]
}

// summary counts the violations by kind.
func (k *checker) summary() string {
	if len(k.kinds) == 0 {
		return "no violation"
	}
	var parts []string
	for kind, n := range k.kinds {
		parts = append(parts, fmt.Sprintf("%s×%d", kind, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// newChecker snapshots the model's records and builds the tables every
// rule uses.
func newChecker(m *model, open map[*mconn]bool, final map[string][]finalEntry) *checker {
	k := &checker{m: m, open: open, final: final, views: map[*mconn][]mframe{}, dels: map[*mconn][]delivery{},
		trunc: map[*mconn][]*mframe{}, ans: map[*attempt]*mframe{}, sure: map[*attempt]bool{}, idOf: map[string]stream.ID{},
		rooms: map[string][]entry{}, isID: map[string]map[stream.ID]bool{}, unsure: map[string]int{}, kinds: map[string]int{}, seen: map[string]bool{}}
	for _, c := range m.conns {
		k.views[c] = c.snapshotFrames()
	}
	k.matchAnswers()
	k.learnIDs()
	return k
}

// notStored reports whether an error code means "not stored".
func notStored(code string) bool { return code != "unconfirmed" }

// matchAnswers pairs each ack and error frame with the attempt it
// answers: by cid, else the oldest attempt without cid not answered yet.
// The engine answers in send order, except a refusal at Publish (queue
// full, Redis known down), which may overtake earlier messages' answers:
// so answers without cid are certain only on a connection that got no
// "unavailable" frame without cid.
func (k *checker) matchAnswers() {
	for _, c := range k.m.conns {
		byCID := map[string][]*attempt{}
		var plain []*attempt
		for _, at := range c.attempts {
			if at.msg.cid != "" {
				byCID[at.msg.cid] = append(byCID[at.msg.cid], at)
			} else {
				plain = append(plain, at)
			}
		}
		frames := k.views[c]
		ambiguous := slices.ContainsFunc(frames, func(f mframe) bool { return f.kind == kError && f.cid == "" && f.code != "unconfirmed" })
		for i := range frames {
			f := &frames[i]
			if f.kind != kAck && f.kind != kError {
				continue
			}
			var at *attempt
			if f.cid != "" {
				q := byCID[f.cid]
				if len(q) == 0 {
					k.fail("R6-answer", "%s got %s for cid %q it did not send (or more answers than sends)", c.name(), f.raw, f.cid)
					continue
				}
				at, byCID[f.cid] = q[0], q[1:]
			} else {
				if len(plain) == 0 {
					k.fail("R6-answer", "%s got %s with no message waiting for an answer", c.name(), f.raw)
					continue
				}
				at, plain = plain[0], plain[1:]
			}
			k.ans[at] = f
			k.sure[at] = f.cid != "" || !ambiguous
		}
	}
}

// candidate reports whether at may have stored its message: it was not
// certainly refused.
func (k *checker) candidate(at *attempt) bool {
	f := k.ans[at]
	return f == nil || !k.sure[at] || f.kind != kError || !notStored(f.code)
}

// candidates returns the first and last attempt numbers of msg that may
// have stored it, and the time of the first; ok is false when none may.
func (k *checker) candidates(msg *mmsg) (first, last int, t time.Time, ok bool) {
	for _, at := range msg.attempts {
		if !k.candidate(at) {
			continue
		}
		if !ok {
			first, t, ok = at.seq, at.t, true
		}
		last = at.seq
	}
	return first, last, t, ok
}

// learnIDs maps texts to entry IDs (certain acks, ids=1 deliveries, the
// final read) and lists each room's known entries.
func (k *checker) learnIDs() {
	learn := func(text string, id stream.ID, how string) {
		if old, ok := k.idOf[text]; ok && old != id {
			k.fail("R4-twice", "message %q has two IDs: %s and %s (%s): stored twice, or acked with another ID", text, old, id, how)
			return
		}
		k.idOf[text] = id
	}
	for _, c := range k.m.conns {
		for _, at := range c.attempts {
			if f := k.ans[at]; f != nil && k.sure[at] && f.kind == kAck && f.hasID {
				learn(at.msg.text, f.id, "ack on "+c.name())
			}
		}
	}
	for _, c := range k.m.conns {
		frames := k.views[c]
		for i := range frames {
			f := &frames[i]
			switch f.kind {
			case kDeliver:
				if f.hasID {
					learn(f.text, f.id, "delivered to "+c.name())
				}
			case kTrunc:
				k.trunc[c] = append(k.trunc[c], f)
			}
		}
	}
	for room, es := range k.final {
		for _, e := range es {
			if !e.foreign {
				learn(e.text, e.id, "final read of "+room)
			}
		}
	}
	for _, room := range k.m.rooms {
		k.isID[room] = map[stream.ID]bool{}
	}
	for text, id := range k.idOf {
		msg := k.m.texts[text]
		if msg == nil {
			continue // reported by the delivery checks
		}
		k.rooms[msg.room] = append(k.rooms[msg.room], entry{id: id, msg: msg})
		k.isID[msg.room][id] = true
	}
	for room := range k.rooms {
		slices.SortFunc(k.rooms[room], func(a, b entry) int { return cmpID(a.id, b.id) })
	}
	k.m.mu.Lock()
	for _, f := range k.m.foreign {
		k.isID[f.room][f.id] = true
	}
	k.m.mu.Unlock()
	for _, msg := range k.m.texts {
		if _, ok := k.idOf[msg.text]; ok {
			continue
		}
		if _, _, _, ok := k.candidates(msg); ok {
			k.unsure[msg.room]++
		}
	}
	for _, c := range k.m.conns {
		frames := k.views[c]
		for i := range frames {
			f := &frames[i]
			if f.kind != kDeliver {
				continue
			}
			d := delivery{f: f, msg: k.m.texts[f.text]}
			if f.hasID {
				d.id, d.known = f.id, true
			} else if id, ok := k.idOf[f.text]; ok {
				d.id, d.known = id, true
			}
			k.dels[c] = append(k.dels[c], d)
		}
	}
}

// run checks every rule.
func (k *checker) run() {
	k.checkFrames()
	k.checkOrder()
	k.checkStart()
	k.checkGaps()
	k.checkStored()
	k.checkPresence()
}

// tailMissing returns the number of entries that open members still lack
// after their last delivery: quiet() waits for it to reach zero.
func (k *checker) tailMissing() int {
	k.checkGaps()
	return k.tail
}

// own reports whether msg was sent on c, and whether only on c.
func own(msg *mmsg, c *mconn) (on, only bool) {
	only = true
	for _, at := range msg.attempts {
		if at.conn == c {
			on = true
		} else {
			only = false
		}
	}
	return on, on && only
}

// checkFrames: every frame is one of the protocol's, every error frame
// is unavailable or unconfirmed, every close is explained, every message
// on an open connection is answered, no member gets its own message or an
// unknown one.
func (k *checker) checkFrames() {
	for _, c := range k.m.conns {
		c.mu.Lock()
		joined, closeCode, endWhy, byUs, ended := !c.joinDone.IsZero(), c.closeCode, c.endWhy, c.closedByUs, !c.ended.IsZero()
		c.mu.Unlock()
		if !joined {
			continue
		}
		for _, f := range k.views[c] {
			switch {
			case f.kind == kOther:
				k.fail("R6-frame", "%s got a frame that is not the protocol's: %s", c.name(), f.raw)
			case f.kind == kError && f.code != "unavailable" && f.code != "unconfirmed":
				k.fail("R6-error", "%s got %s", c.name(), f.raw)
			case f.kind == kDeliver && k.m.texts[f.text] == nil:
				k.fail("R6-frame", "%s got a message nobody sent: %s", c.name(), f.raw)
			case f.kind == kDeliver && f.user != k.m.texts[f.text].actor.name:
				k.fail("R6-frame", "%s got %s with username %q", c.name(), f.raw, f.user)
			case f.kind == kDeliver:
				if _, only := own(k.m.texts[f.text], c); only {
					k.fail("R3-echo", "%s received its own message %s", c.name(), f.raw)
				}
			}
		}
		if ended && !byUs {
			switch {
			case closeCode == 1001 && !c.node.alive:
			case closeCode == 1013 && k.m.engine == "redis": // replay failed while Redis was down
			default:
				k.fail("R6-close", "%s ended (%s) while its node n%d was alive=%t", c.name(), endWhy, c.node.idx, c.node.alive)
			}
		}
		if k.open[c] {
			for _, at := range c.attempts {
				if k.ans[at] == nil {
					k.fail("R6-unanswered", "%s never got an answer for %s (sent at %dms)", c.name(), at.msg.text, at.t.Sub(k.m.start).Milliseconds())
				}
			}
		}
	}
}

// checkOrder is R1 and R5.
func (k *checker) checkOrder() {
	type span struct {
		first, last int
		id          stream.ID
		msg         *mmsg
	}
	for _, a := range k.m.actors {
		var spans []span
		for _, msg := range a.msgs {
			id, stored := k.idOf[msg.text]
			first, last, _, ok := k.candidates(msg)
			if stored && !ok {
				k.fail("R5-unavailable", "%s was answered unavailable on every send but is stored as %s", msg.text, id)
				continue
			}
			if stored {
				spans = append(spans, span{first, last, id, msg})
			}
		}
		// R1: a message all of whose possible sends precede all of
		// another's is stored before it.
		for i := range spans {
			for j := range spans {
				if spans[i].last < spans[j].first && !spans[i].id.Less(spans[j].id) {
					k.fail("R1-stored", "%s sent %s (send #%d) before %s (send #%d), stored as %s and %s", a.name,
						spans[i].msg.text, spans[i].last, spans[j].msg.text, spans[j].first, spans[i].id, spans[j].id)
				}
			}
		}
	}
	// Acknowledgements arrive in send order on each connection.
	for _, c := range k.m.conns {
		prev := 0
		var prevText string
		for i := range k.views[c] {
			f := &k.views[c][i]
			if f.kind != kAck {
				continue
			}
			for _, at := range c.attempts {
				if k.ans[at] == f && k.sure[at] {
					if at.seq < prev {
						k.fail("R1-ack", "%s got the ack of %s (send #%d) after that of %s (send #%d)", c.name(), at.msg.text, at.seq, prevText, prev)
					}
					prev, prevText = at.seq, at.msg.text
				}
			}
		}
	}
	// Every receiver gets a sender's messages in send order.
	for _, c := range k.m.conns {
		type seen struct {
			first int
			text  string
		}
		maxFirst := map[*actor]seen{}
		for _, d := range k.dels[c] {
			if d.msg == nil {
				continue
			}
			first, last, _, ok := k.candidates(d.msg)
			if !ok {
				continue
			}
			if p, had := maxFirst[d.msg.actor]; had && last < p.first {
				k.fail("R1-received", "%s received %s (send #%d) after %s (send #%d) of %s", c.name(), d.msg.text, last, p.text, p.first, d.msg.actor.name)
			}
			if p := maxFirst[d.msg.actor]; first > p.first {
				maxFirst[d.msg.actor] = seen{first, d.msg.text}
			}
		}
	}
}

// observation is an entry ID a client saw, how and when.
type observation struct {
	id  stream.ID
	t   time.Time
	how string
}

// observed returns what the clients of room saw before t: on node n
// only, or on every node when n is nil.
func (k *checker) observed(room string, n *mnode, before time.Time) []observation {
	var out []observation
	for _, c := range k.m.conns {
		if c.room != room || (n != nil && c.node != n) {
			continue
		}
		for _, at := range c.attempts {
			if f := k.ans[at]; f != nil && k.sure[at] && f.kind == kAck && f.hasID && f.t.Before(before) {
				out = append(out, observation{f.id, f.t, "acked to " + c.name()})
			}
		}
		replays := c.since != nil || c.history > 0
		for _, d := range k.dels[c] {
			if !d.known || !d.f.t.Before(before) {
				continue
			}
			if replays && d.msg != nil {
				// A replay reads the stream itself, ahead of what the node
				// delivered: only what came live says what the node read.
				if _, _, sent, ok := k.candidates(d.msg); !ok || !sent.After(c.joinDone) {
					continue
				}
			}
			out = append(out, observation{d.id, d.f.t, "delivered to " + c.name()})
		}
	}
	return out
}

// aloneNote says whether msg's sender was the only open connection of
// its room on its node when it sent msg (any of its sends): the case of
// the Message.Alone shortcut.
func (k *checker) aloneNote(msg *mmsg) string {
	if msg == nil || len(msg.attempts) == 0 {
		return ""
	}
	for _, at := range msg.attempts {
		alone := true
		for _, c := range k.m.conns {
			if c == at.conn || c.room != msg.room || c.node != at.conn.node {
				continue
			}
			c.mu.Lock()
			open := !c.joinDone.IsZero() && c.joinDone.Before(at.t) && (c.ended.IsZero() || c.ended.After(at.t))
			c.mu.Unlock()
			if open {
				alone = false
				break
			}
		}
		if alone {
			return ", sent while its sender was alone on its node"
		}
	}
	return ", sent while another client was on its node"
}

// checkStart is R2.
func (k *checker) checkStart() {
	for _, c := range k.m.conns {
		dels := k.dels[c]
		if len(dels) == 0 {
			continue
		}
		switch {
		case c.since != nil && !c.future:
			for _, d := range dels {
				if d.known && !c.since.Less(d.id) {
					k.fail("R2-since", "%s joined with since=%s and received %s (%s)", c.name(), c.since, d.id, d.f.text)
				}
			}
		case c.history > 0:
			var known []stream.ID
			for _, o := range k.observed(c.room, nil, c.dialStart) {
				known = append(known, o.id)
			}
			slices.SortFunc(known, func(a, b stream.ID) int { return cmpID(b, a) })
			known = slices.Compact(known)
			if len(known) < c.history {
				continue
			}
			nth := known[c.history-1]
			for _, d := range dels {
				if d.known {
					if d.id.Less(nth) {
						k.fail("R2-history", "%s joined with history=%d and first received %s (%s), older than the %d-th newest %s",
							c.name(), c.history, d.id, d.f.text, c.history, nth)
					}
					break
				}
			}
		default:
			// No since (or one in the future: then nothing before what was
			// known when it dialed either): nothing older than what a
			// client of the same node had seen before it dialed.
			node := c.node
			if c.future {
				node = nil
			}
			var bound observation
			for _, o := range k.observed(c.room, node, c.dialStart) {
				if bound.id.Less(o.id) {
					bound = o
				}
			}
			if bound.id.IsZero() {
				continue
			}
			for _, d := range dels {
				if d.known && !bound.id.Less(d.id) {
					what := "a client of node n" + fmt.Sprint(c.node.idx)
					if c.future {
						what = "any client (since= in the future: " + c.since.String() + ")"
					}
					k.fail("R2-early", "%s (joined %q at %dms) received %s (%s%s), but %s had seen %s before it dialed (%s %v before)",
						c.name(), c.query, c.dialStart.Sub(k.m.start).Milliseconds(), d.id, d.f.text, k.aloneNote(d.msg), what, bound.id,
						bound.how, c.dialStart.Sub(bound.t).Round(100*time.Microsecond))
					break
				}
			}
		}
	}
}

// covered reports whether a truncated frame c received announced id
// lost: after its since, before its from (or, without from, before the
// next entry c received).
func (k *checker) covered(c *mconn, id stream.ID) bool {
	for _, t := range k.trunc[c] {
		if !t.since.Less(id) {
			continue
		}
		if t.hasFrom {
			if id.Less(t.from) {
				return true
			}
			continue
		}
		next, found := stream.ID{}, false
		for _, d := range k.dels[c] {
			if d.f.t.After(t.t) && d.known {
				next, found = d.id, true
				break
			}
		}
		if !found || id.Less(next) {
			return true
		}
	}
	return false
}

// checkGaps is R3: increasing IDs, no duplicate, no gap, truncated
// frames that tell the truth.
func (k *checker) checkGaps() {
	k.tail = 0
	for _, c := range k.m.conns {
		c.mu.Lock()
		joinDone := c.joinDone
		c.mu.Unlock()
		if joinDone.IsZero() {
			continue
		}
		dels := k.dels[c]
		recv := map[stream.ID]bool{}
		texts := map[string]bool{}
		var first, last stream.ID
		hasFirst := false
		for _, d := range dels {
			if texts[d.f.text] {
				k.fail("R3-duplicate", "%s received %q twice", c.name(), d.f.text)
			}
			texts[d.f.text] = true
			if !d.known {
				continue
			}
			if hasFirst && !last.Less(d.id) {
				k.fail("R3-order", "%s received %s (%s) after %s", c.name(), d.id, d.f.text, last)
			}
			if !hasFirst {
				first, hasFirst = d.id, true
			}
			if last.Less(d.id) {
				last = d.id
			}
			recv[d.id] = true
		}
		for _, e := range k.rooms[c.room] {
			if on, _ := own(e.msg, c); on || recv[e.id] {
				continue
			}
			// Required: after since=X; else from the first delivery on, and
			// whatever was published after c's 101 (since=0 replays "all
			// that is kept", never truncated: it starts like a join
			// without since; a since= in the future has no start but its
			// join).
			_, _, sent, ok := k.candidates(e.msg)
			var required bool
			switch {
			case c.since != nil && !c.future && !c.since.IsZero():
				required = c.since.Less(e.id)
			default:
				required = hasFirst && !e.id.Less(first) || ok && sent.After(joinDone)
			}
			if !required {
				continue
			}
			tail := !hasFirst || last.Less(e.id)
			if tail && !k.open[c] {
				continue // after its last delivery, and it left
			}
			if k.covered(c, e.id) || (!c.ids && k.trimExposed(c, e)) {
				continue
			}
			if tail {
				k.tail++
			}
			if k.final == nil {
				continue
			}
			where := "between its deliveries"
			if tail {
				where = "after its last delivery " + last.String() + ", still open at the end"
			}
			start := "its first delivery " + first.String()
			if c.since != nil {
				start = "since=" + c.since.String()
			}
			if c.future {
				where += " [since= in the future]"
			}
			k.fail("R3-gap", "%s (%q at %dms on n%d, start %s) missed %s (%s, sent at %dms%s), %s",
				c.name(), c.query, c.dialStart.Sub(k.m.start).Milliseconds(), c.node.idx, start, e.id, e.msg.text,
				sent.Sub(k.m.start).Milliseconds(), k.aloneNote(e.msg), where)
		}
		if k.final != nil {
			k.checkTruncated(c)
		}
	}
}

// trimExposed: a plain member cannot be told that entries were lost.
// With REDIS_MAXLEN, an entry its node had not read before MAXLEN newer
// ones were stored may have been trimmed away: such a gap is excused for
// a plain member (ids=1 members must get a truncated frame). The node
// read the room at the latest when c got its next entry after e (or at
// the end); fewer than MAXLEN newer entries stored by then means e was
// still held, and a miss is a bug.
func (k *checker) trimExposed(c *mconn, e entry) bool {
	if k.m.profile != profTrim {
		return false
	}
	var by time.Time
	for _, d := range k.dels[c] {
		if d.known && e.id.Less(d.id) {
			by = d.f.t
			break
		}
	}
	newer := 0
	for _, o := range k.rooms[c.room] {
		if !e.id.Less(o.id) {
			continue
		}
		if _, _, sent, ok := k.candidates(o.msg); ok && (by.IsZero() || sent.Before(by)) {
			newer++
		}
	}
	return newer >= modelMaxLen
}

// checkTruncated: a truncated frame has from after since, is followed by
// from (or later), and announces a real loss: some entry after since and
// before from was stored, or since is itself an entry (Redis cannot tell
// the entry trimmed last from the one before what it holds; documented).
// The last check needs every stored message known: it is skipped in a
// room with messages that may be stored under an unknown ID.
func (k *checker) checkTruncated(c *mconn) {
	for _, t := range k.trunc[c] {
		if t.hasFrom && !t.since.Less(t.from) {
			k.fail("R3-truncated", "%s got %s: from is not after since", c.name(), t.raw)
		}
		for _, d := range k.dels[c] {
			if d.f.t.After(t.t) {
				if d.known && t.hasFrom && d.id.Less(t.from) {
					k.fail("R3-truncated", "%s got %s, then %s before from", c.name(), t.raw, d.id)
				}
				break
			}
			if d.known && t.since.Less(d.id) && (!t.hasFrom || d.id.Less(t.from)) {
				k.fail("R3-truncated", "%s got %s, announcing lost %s (%s), which it had received before", c.name(), t.raw, d.id, d.f.text)
				break
			}
		}
		if k.unsure[c.room] > 0 || !k.decidable(c.room, t.since) {
			continue
		}
		if k.m.profile == profExpire && (!t.hasFrom || t.from.Ms-t.since.Ms >= uint64(modelTTL.Milliseconds())*15/16) {
			// The room may have expired (or been pruned) in between: the
			// engine cannot tell whether anything after since was in it.
			continue
		}
		lost := false
		for _, e := range k.rooms[c.room] {
			_, _, sent, _ := k.candidates(e.msg)
			if t.since.Less(e.id) && (t.hasFrom && e.id.Less(t.from) || !t.hasFrom && sent.Before(t.t)) {
				lost = true
				break
			}
		}
		k.m.mu.Lock()
		for _, f := range k.m.foreign {
			if f.room == c.room && t.since.Less(f.id) && (t.hasFrom && f.id.Less(t.from) || !t.hasFrom && f.t.Before(t.t)) {
				lost = true
			}
		}
		k.m.mu.Unlock()
		if !lost {
			k.fail("R3-false-truncated", "%s (%q) got %s, but no entry after %s %s was ever stored", c.name(), c.query, t.raw, t.since,
				map[bool]string{true: "and before " + t.from.String(), false: "before it"}[t.hasFrom])
		}
	}
}

// decidable reports whether an engine can know that nothing after since
// was lost: the newest entry at or before since is still held at the end
// (trimming removes the oldest entries, so it was held all along), or,
// with no entry before since, the room never lost an entry. Otherwise
// since may fall between the entry trimmed last and the oldest one held,
// and Redis does not record the ID of the entry it trimmed last: a
// truncated frame there may be needless.
func (k *checker) decidable(room string, since stream.ID) bool {
	held := map[stream.ID]bool{}
	for _, e := range k.final[room] {
		held[e.id] = true
	}
	var before, oldest stream.ID
	found := false
	for id := range k.isID[room] {
		if !since.Less(id) && before.Less(id) {
			before, found = id, true
		}
		if oldest.IsZero() || id.Less(oldest) {
			oldest = id
		}
	}
	if found {
		return held[before]
	}
	return held[oldest]
}

// checkStored is R4: the final streams hold each message once, at the ID
// it was acknowledged with, and every acknowledged message newer than the
// oldest entry held.
func (k *checker) checkStored() {
	for _, room := range k.m.rooms {
		es := k.final[room]
		held := map[stream.ID]string{}
		count := map[string]int{}
		for _, e := range es {
			if e.foreign {
				held[e.id] = ""
				continue
			}
			held[e.id] = e.text
			if count[e.text]++; count[e.text] == 2 {
				k.fail("R4-twice", "room %s holds %q more than once", room, e.text)
			}
			if k.m.texts[e.text] == nil {
				k.fail("R4-unknown", "room %s holds %q, which nobody sent", room, e.text)
			}
		}
		if len(es) == 0 {
			continue // expired: nothing held
		}
		oldest := es[0].id
		for _, c := range k.m.conns {
			if c.room != room {
				continue
			}
			for _, at := range c.attempts {
				f := k.ans[at]
				if f == nil || !k.sure[at] || f.kind != kAck || f.id.Less(oldest) {
					continue
				}
				if text, ok := held[f.id]; !ok || text != at.msg.text {
					k.fail("R4-lost", "%s was acked to %s as %s, not older than the oldest entry held (%s), but the stream holds %q there",
						at.msg.text, c.name(), f.id, oldest, text)
				}
			}
		}
	}
}

// checkPresence is R6 for presence=1: at most one frame a second.
func (k *checker) checkPresence() {
	const slack = 150 * time.Millisecond // delivery jitter between two frames
	for _, c := range k.m.conns {
		var prev *mframe
		n := 0
		for i := range k.views[c] {
			f := &k.views[c][i]
			if f.kind != kPresence {
				continue
			}
			n++
			if prev != nil && f.t.Sub(prev.t) < time.Second-slack {
				k.fail("R6-presence", "%s got presence frames #%d %s and #%d %s %v apart", c.name(), n-1, prev.raw, n, f.raw,
					f.t.Sub(prev.t).Round(time.Millisecond))
			}
			prev = f
		}
	}
}
