package stream

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/rueidis"
)

// This file holds the read side of the Redis engine: from which ID a
// shard reads a room (redis_shard.go holds the state), and what an XREAD
// reply means for it.

// cursor returns the ID to read r from, as a string (cached): the ID just
// before the last entry read, so that a read returns that entry first
// while Redis still holds it. When it does not, entries after it may have
// been trimmed before this node read them (collectStream).
func (r *redisRoom) cursor() string {
	if r.lastStrOf != r.last || r.lastStr == "" {
		r.lastStr, r.lastStrOf = r.last.pred().String(), r.last
	}
	return r.lastStr
}

// collectStream handles the entries of one room stream of an XREAD reply,
// appending what to deliver to out. Entries that cannot be decoded are
// skipped (the cursor moves past them) and counted for a rate-limited
// warning; an entry whose very ID cannot be read marks the room stuck.
//
// A read that returns readCount entries leaves more to read; one that
// returns at least as many as a trim leaves (maxLen, or readCount when
// smaller) may follow a trim past the cursor: when MAXLEN ~ trimmed
// entries the reader had not read, every entry left is newer than the
// cursor and there are at least maxLen of them. verify counts.
func (s *redisShard) collectStream(key string, v rueidis.RedisMessage, readCount int, maxLen int64, out []redisDelivery) []redisDelivery {
	entries, err := v.ToArray()
	if err != nil {
		return out
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rooms[key]
	if r == nil {
		return out // dropped since the read started
	}
	if int64(len(entries)) >= min(int64(readCount), maxLen) {
		r.check = true
	}
	if len(entries) > readCount {
		s.markDirty(r) // more to read (a read returns ReadCount new entries at most, after the last one read)
	}
	for i := range entries {
		id, ok := entryID(&entries[i])
		if !ok {
			if !r.stuck {
				r.stuck = true
				s.stuck++
			}
			s.bad++
			return out
		}
		notice := false
		if i == 0 && r.last.Less(id) && !r.noticedAt(r.last) &&
			(r.lossAhead || !r.last.IsZero() && !id.follows(r.last) || r.last.IsZero() && !r.heldFrom.IsZero() && r.heldFrom.Less(id)) {
			// Entries after the last one read are gone: verify counted
			// them (lossAhead); or the read, which begins just before the
			// last entry read, did not return it, so it was trimmed and
			// entries after it may have been too; or, for a room read
			// from the start, the oldest entry verify saw held is gone.
			// Tell the members right before the first entry after the gap
			// (verify counts).
			r.noticed, r.noticedSet, r.check = r.last, true, true
			notice = true
		}
		r.lossAhead, r.heldFrom = false, ID{}
		if !r.last.Less(id) {
			continue // already read
		}
		if !r.gone.IsZero() && r.gone.Less(id) {
			// Entries up to gone were deleted (a rollback another node
			// recorded) before this node read them: tell the members
			// before the first entry past the record.
			notice = notice || r.last.Less(r.gone) && r.high.Less(r.gone)
			r.gone = ID{}
		}
		if notice && r.subscribed {
			out = append(out, redisDelivery{room: r.name, msg: Message{ID: id, Lost: true, LostAfter: r.last}})
		}
		if r.stuck {
			r.stuck = false
			s.stuck--
		}
		r.last = id
		if r.high.Less(id) {
			r.high = id
		}
		r.seq++
		sender, payload, ok := decodeFields(&entries[i])
		if !ok {
			s.bad++
			continue
		}
		if !r.subscribed && r.stop.Less(id) {
			continue // published after Unsubscribe; the next round drops the room
		}
		if skipped(r, id) {
			continue
		}
		out = append(out, redisDelivery{room: r.name, msg: Message{ID: id, Sender: sender, Payload: payload}})
	}
	if !r.subscribed && !r.last.Less(r.stop) {
		s.drop(r) // left: read up to its stop
	}
	return out
}

// logBad logs the malformed entries counted since the last warning, at
// most once per badLogEvery.
func (s *redisShard) logBad(log *slog.Logger, now time.Time) {
	if s.bad == 0 || now.Sub(s.badLogged) < badLogEvery {
		return
	}
	s.mu.Lock()
	stuck := s.stuck
	s.mu.Unlock()
	log.Warn("stream: skipped malformed stream entries (not written by this gateway?); check what else writes to the keys",
		"shard", s.idx, "entries", s.bad, "stuck_rooms", stuck, "since", s.badLogged.Format(time.RFC3339))
	s.bad, s.badLogged = 0, now
}

// skipped reports whether id falls in one of r's skipped ranges, and
// forgets the ranges that end before id. Ranges are disjoint and sorted,
// and ids arrive in increasing order, so only the first range matters.
func skipped(r *redisRoom, id ID) bool {
	for len(r.skips) > 0 && r.skips[0].to.Less(id) {
		r.skips = r.skips[1:]
	}
	return len(r.skips) > 0 && r.skips[0].from.Less(id)
}

// verify checks, with XINFO STREAM, the rooms in checks for entries the
// reader can no longer read: trimmed (MAXLEN) before it read them, or lost
// by Redis (a restart without persistence, a failover that lost
// unreplicated writes). Losses are logged; when the stream went back in
// time or vanished the cursor follows it, so that new entries are read.
//
// Trimming is found by counting: Redis numbers entries (entries-added),
// the room counts the entries it read (seq). With length entries left,
// the first one is number added-length+1; if that is beyond seq+1, the
// entries in between were trimmed before the reader got to them.
//
// A loss is logged and counted (Stats.Lost); one ahead of the cursor is
// announced by the next read (collectStream). While the count cannot tell
// (the reader is between the oldest and the newest entry held), the room
// stays checked.
//
// verify also reads the greatest entry held up to the last one read: when
// that is not the last one read, Redis lost entries the node had read (a
// rollback, redis_rollback.go). With moved (the pump's connection reaches
// another server than before: a failover), every room is raised ahead of
// the new server's clock (raiseScript), then any rollback found recorded.
func (e *Redis) verify(ctx context.Context, do doer, s *redisShard, checks []*redisRoom, moved bool) error {
	cmds := make([]rueidis.Completed, 0, 2*len(checks))
	gens := make([]uint64, len(checks))
	lasts := make([]ID, len(checks))
	s.mu.Lock()
	for i, r := range checks {
		// XINFO STREAM, and whether the last entry read is still held
		// (a rollback, rolledBack).
		cmds = append(cmds, e.client.B().XinfoStream().Key(r.key).Build())
		gens[i], lasts[i] = r.gen, r.last
		if !r.last.IsZero() {
			// The greatest entry held up to it.
			cmds = append(cmds, e.client.B().Xrevrange().Key(r.key).End(r.last.String()).Start("-").Count(1).Build())
		}
	}
	s.mu.Unlock()
	vctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	res := do.DoMulti(vctx, cmds...)
	cancel()
	infos := make([]streamInfo, len(checks))
	below := make([]ID, len(checks))
	k := 0
	for i := range checks {
		var err error
		if infos[i], err = parseStreamInfo(res[k]); err != nil {
			return fmt.Errorf("XINFO STREAM: %w", err)
		}
		k++
		if !lasts[i].IsZero() {
			entries, err := res[k].ToArray()
			if err != nil {
				return fmt.Errorf("XREVRANGE: %w", err)
			}
			if len(entries) > 0 {
				below[i], _ = entryID(&entries[0])
			}
			k++
		}
	}
	s.mu.Lock()
	for i, r := range checks {
		if s.rooms[r.key] != r {
			continue
		}
		r.check = false
		if r.gen != gens[i] || r.last != lasts[i] {
			// Subscribe or Unsubscribe changed the room, or its cursor
			// moved, after XINFO ran: the answer may predate them. Check
			// again later.
			r.check = true
			continue
		}
		e.applyStreamInfo(s, r, infos[i], below[i])
		if moved {
			r.ahead = true
		}
	}
	s.mu.Unlock()
	return e.raise(ctx, do, s, checks)
}

// applyStreamInfo updates r from in, its XINFO STREAM: a leaving room
// whose stop is gone is dropped, a stream that vanished or went back in
// time moves the cursor with it, and entries trimmed unread are counted
// (countTrimmed). s.mu must be held.
func (e *Redis) applyStreamInfo(s *redisShard, r *redisRoom, in streamInfo, below ID) {
	lastHeld := below == r.last
	if !r.subscribed && (in.missing || in.lastGen.Less(r.stop)) {
		// Leaving toward a stop that no longer exists: nothing left
		// to deliver.
		s.drop(r)
		return
	}
	if r.high.Less(r.last) {
		r.high = r.last
	}
	switch {
	case r.last.Less(in.maxDeleted) && r.high.Less(in.maxDeleted):
		r.gone = in.maxDeleted // deleted entries ahead, none read here
	case !lastHeld && !r.last.IsZero() && !in.maxDeleted.Less(r.last) && !r.high.Less(in.maxDeleted):
		// The last entry read is gone, recorded deleted (a rollback that
		// another node recorded), and this node read every entry up to
		// the record: that the next read does not begin with it is no
		// news here.
		r.noticed, r.noticedSet = r.last, true
	}
	switch {
	case rolledBack(r, in, lastHeld):
		e.rollback(r, in, below)
	case in.missing:
		r.last, r.seq, r.seqKnown, r.skips, r.accounted = ID{}, 0, true, nil, ID{}
	case in.lastGen.Less(r.last):
		// A stream that went back under a cursor that read nothing of it.
		r.last, r.seq, r.seqKnown, r.skips, r.accounted = in.lastGen, in.added, in.hasAdded, nil, in.lastGen
	case !in.hasAdded:
		r.seqKnown = false
	case r.seqKnown && in.added < r.seq:
		// The key was deleted and recreated since: the count restarted.
		r.seqKnown = false
	default:
		e.countTrimmed(r, in)
	}
	if r.last == in.lastGen && in.hasAdded {
		r.seq, r.seqKnown = in.added, true // caught up: count afresh
	}
}

// countTrimmed counts, logs and announces the entries after r's cursor
// that Redis no longer has, when in (its XINFO STREAM) can tell: all of
// them when r caught up, those before the first entry left when r's
// last entry is older than it; otherwise r stays checked. s.mu must be
// held.
func (e *Redis) countTrimmed(r *redisRoom, in streamInfo) {
	var lost int64
	from := r.last // the range of a loss ends before it
	if r.last.IsZero() {
		r.heldFrom = in.first
	}
	switch {
	case !r.seqKnown:
	case r.last == in.lastGen:
		lost = in.added - r.seq
	case in.length == 0 || r.last.Less(in.first):
		lost = in.added - in.length - r.seq
		from = in.first
	default:
		r.check = true // the count cannot tell yet: at the next read
	}
	if lost > 0 {
		e.stats.lost.Add(lost)
		e.log.Warn("stream: messages of the room were trimmed before this node read them: raise REDIS_MAXLEN or make the Handler faster",
			"room", r.name, "lost", lost, "after_id", r.accounted.String(), "before_id", from.String())
		r.seq += lost
		if from != r.last {
			// Lost ahead of the cursor: the next read tells the
			// members, before what follows the gap.
			r.lossAhead = true
		}
	}
	if !r.check {
		r.accounted = r.last
	}
}

// prepareRead appends the read of the round trip to p.cmds: the dirty
// rooms (every room when a full read is due), in XREADs of at most
// scanChunk keys, and the signal stream while polling. Unless polling, each
// XREAD follows a CLIENT CACHING YES, so that Redis tracks the rooms it
// reads; a pump that starts polling first asks for the signal stream's
// last ID, and one that stops reads (and so arms) the rooms it read while
// polling (redis_wake.go). First it checks, with XINFO
// STREAM, the rooms that may have lost entries (verify, a round trip of
// its own); the rooms read from their start get their XINFO STREAM in the
// pipeline too, right before the XREADs (applyStarts).
func (p *pump) prepareRead(ctx context.Context, t *trip) error {
	e := p.e
	now := t.now
	full := p.verifyAll || p.sigFull || p.sweepDue(now)
	if p.polling && !p.busy {
		p.stopPolling()
	}
	t.sigInit = !p.polling && p.busy && !p.closing
	t.tracked = !p.polling
	p.keys, p.ids = p.keys[:0], p.ids[:0]
	clear(p.starts)
	p.starts = p.starts[:0]
	if p.polling {
		p.keys, p.ids = append(p.keys, p.sigKey), append(p.ids, p.sigLast.String())
	}
	for _, s := range p.shards {
		var checks []*redisRoom
		s.mu.Lock()
		var joining []*redisRoom
		add := func(r *redisRoom) {
			if r.joining {
				// No cursor until its join's answer: read it after.
				if r.dirty {
					joining = append(joining, r)
				}
				return
			}
			if !r.subscribed && !r.last.Less(r.stop) {
				s.drop(r) // unsubscribed and read up to its stop
				return
			}
			p.keys = append(p.keys, r.key)
			p.ids = append(p.ids, r.cursor())
			if p.polling {
				p.unarmed[r] = s
			}
			if r.last.IsZero() {
				p.starts = append(p.starts, startCheck{s, r, r.gen})
			}
			// A room read from its start is checked in the pipeline
			// instead (startCheck), after the publishes.
			if p.verifyAll || r.check {
				checks = append(checks, r)
			}
		}
		if full {
			for _, r := range s.rooms {
				add(r)
			}
		} else {
			for _, r := range s.dirty {
				if s.rooms[r.key] == r {
					add(r)
				}
			}
		}
		for _, r := range s.dirty {
			r.dirty = false
		}
		clear(s.dirty)
		s.dirty = s.dirty[:0]
		for _, r := range joining {
			s.markDirty(r)
		}
		s.mu.Unlock()
		if len(checks) > 0 {
			if err := e.verify(ctx, p.conn, s, checks, p.moved && full); err != nil {
				return err
			}
			// verify may have moved cursors: take them again.
			s.mu.Lock()
			for i := range p.keys {
				if r := s.rooms[p.keys[i]]; r != nil {
					p.ids[i] = r.cursor()
				}
			}
			s.mu.Unlock()
		}
	}
	if full {
		p.lastFull, p.verifyAll, p.sigFull, p.moved = now, false, false, false
	}
	if t.sigInit {
		p.cmds = append(p.cmds, e.client.B().Xrevrange().Key(p.sigKey).End("+").Start("-").Count(1).Build())
	}
	for _, sc := range p.starts {
		p.cmds = append(p.cmds, e.client.B().XinfoStream().Key(sc.r.key).Build())
	}
	count := int64(max(e.cfg.ReadCount, 1)) + 1 // the last entry read comes first again (redisRoom.cursor)
	for start := 0; start < len(p.keys); start += scanChunk {
		end := min(start+scanChunk, len(p.keys))
		if t.tracked {
			p.cmds = append(p.cmds, e.client.B().ClientCaching().Yes().Build())
		}
		p.cmds = append(p.cmds, e.client.B().Xread().Count(count).Streams().Key(p.keys[start:end]...).Id(p.ids[start:end]...).Build())
	}
	return nil
}

// startCheck is a room read from its start in the current read, with
// its shard and its gen when the read was built.
type startCheck struct {
	s   *redisShard
	r   *redisRoom
	gen uint64
}

// applyStarts applies the XINFO STREAM answers (res, one per starts)
// that the pipeline carried right before the read. A room read from its
// start has nothing read to compare the first entry it gets with: entries
// trimmed before it, even by the publishes of the same round trip, show
// only in the counts, which this takes after those publishes (verify,
// which runs before the round trip, cannot see them). Losses found here
// are announced before the first entry read (lossAhead, collectStream).
func (e *Redis) applyStarts(starts []startCheck, res []rueidis.RedisResult) error {
	for i, sc := range starts {
		in, err := parseStreamInfo(res[i])
		if err != nil {
			return fmt.Errorf("XINFO STREAM: %w", err)
		}
		sc.s.mu.Lock()
		if sc.s.rooms[sc.r.key] == sc.r && sc.r.gen == sc.gen && sc.r.last.IsZero() {
			e.applyStreamInfo(sc.s, sc.r, in, sc.r.last)
		}
		sc.s.mu.Unlock()
	}
	return nil
}

// deliver decodes the replies of the read and calls the Handler. With
// tracked, every other reply is a CLIENT CACHING YES's OK. It returns how
// many entries (and other nodes' signals) the read found.
func (p *pump) deliver(ctx context.Context, res []rueidis.RedisResult, tracked bool) (found int, err error) {
	e := p.e
	for i, rr := range res {
		if tracked && i%2 == 0 {
			continue
		}
		reply, err := rr.ToMessage()
		if err != nil {
			if rueidis.IsRedisNil(err) {
				continue
			}
			return 0, fmt.Errorf("XREAD: %w", err)
		}
		err = forEachStream(reply, func(key string, v rueidis.RedisMessage) {
			if key == p.sigKey {
				found += p.collectSignals(v)
				return
			}
			s := p.shardOfKey(key)
			if s == nil {
				return
			}
			n, bad := len(p.out), s.bad
			p.out = s.collectStream(key, v, e.cfg.ReadCount, e.cfg.MaxLen, p.out)
			e.stats.malformed.Add(int64(s.bad - bad))
			found += len(p.out) - n
		})
		if err != nil {
			return 0, err
		}
	}
	p.healthy()
	start := time.Now()
	for i := range p.out {
		if ctx.Err() != nil {
			break
		}
		d := &p.out[i]
		if !d.msg.Lost {
			e.stats.delivered.Add(1) // first: a Handler's caller may read Stats at once
		}
		e.handler(d.room, d.msg)
	}
	if len(p.out) > 0 && time.Since(start) >= slowDelivery {
		p.verifyAll = true
	}
	clear(p.out)
	p.out = p.out[:0]
	for _, s := range p.shards {
		s.logBad(e.log, start)
	}
	return found, nil
}

// shardOfKey returns the shard of a room key of this pump, or nil.
func (p *pump) shardOfKey(key string) *redisShard {
	if len(p.shards) == 1 {
		return p.shards[0]
	}
	if s := p.e.shardOfKey(key); s != nil && s.pump == p {
		return s
	}
	return nil
}
