package stream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/rueidis"
)

// This file is one round trip of a pump: build the commands (publishes,
// read), send them in one pipeline, apply the answers (ack the senders,
// deliver what was read).

// trip is what one round trip keeps between building its commands and
// applying their answers: where each part starts in p.cmds. It lives on
// the stack of roundTrip.
type trip struct {
	now      time.Time
	epochCmd int // first SET NX of the epoch keys; -1: none
	waitCmd  int // the WAIT after the publishes (REDIS_WAIT_REPLICAS); -1: none
	sigCmd   int // the signal's XADD; -1: none
	joinCmd  int // first command of the joins; -1: none
	readCmd  int // first command of the read (when read)
	// sigInit: the read starts with the XREVRANGE that gives the signal
	// stream's last ID, where polling starts (redis_wake.go).
	sigInit bool
	// tracked: each XREAD of the read follows a CLIENT CACHING YES, so
	// that Redis tracks what it reads (the pump is not polling).
	tracked     bool
	read        bool // the round trip reads
	readRefused bool // Redis refused what the read needs first
	evalText    bool // its script calls carry the script's text (EVAL)
}

// roundTrip sends what is pending and, when read is set, the read, in one
// pipelined round trip, then answers the senders and delivers what was
// read. A nil error means every command got an answer from Redis.
//
// Its steps, in order: buildPublishes (the epoch keys, the messages and
// their TTLs, the read that keeps unread rooms tracked), buildSignal,
// buildRead, send, then applyPublishes, applySignal and applyRead on the
// answers. With nothing to send
// it sends a PING when one is due (pingDue).
func (p *pump) roundTrip(ctx context.Context, read bool) error {
	if err := p.connect(ctx); err != nil {
		p.refuse(fmt.Errorf("%w: %w", ErrUnavailable, err))
		return err
	}
	t := trip{now: time.Now(), read: read, epochCmd: -1, waitCmd: -1, sigCmd: -1, joinCmd: -1}
	p.lastTick = t.now // the pacing grid counts every round trip, reading or not
	p.cmds, p.sent = p.cmds[:0], p.sent[:0]
	p.buildPublishes(&t)
	p.buildWait(&t)
	p.buildSignal(&t)
	p.buildJoins(&t)
	if err := p.buildRead(ctx, &t); err != nil {
		p.flushSent(err)
		p.refuseJoins(fmt.Errorf("%w: %w", ErrUnavailable, err))
		return err
	}
	if len(p.cmds) == 0 {
		if !p.pingDue(t.now) {
			return nil
		}
		p.cmds = append(p.cmds, p.e.client.B().Ping().Build())
		t.readCmd = 1 // nothing read
	}
	res, broken := p.send(ctx)
	if t.epochCmd >= 0 && firstError(res[t.epochCmd:t.epochCmd+len(p.shards)]) == nil {
		p.epochDue = false
	}
	published, failed := p.applyPublishes(res, broken, t.evalText, p.waitOutcome(res, t.waitCmd))
	if t.joinCmd >= 0 {
		if broken {
			p.refuseJoins(fmt.Errorf("%w: %w", ErrUnavailable, firstBroken(res)))
		} else {
			p.applyJoins(res[t.joinCmd:])
		}
	}
	if t.sigCmd >= 0 {
		if err := p.applySignal(res[t.sigCmd]); err != nil && failed == nil {
			failed = err
		}
	}
	if failed == nil && broken {
		failed = firstBroken(res)
	}
	if failed != nil {
		return fmt.Errorf("round trip: %w", failed)
	}
	return p.applyRead(ctx, &t, res[t.readCmd:], published)
}

// buildPublishes appends to p.cmds the epoch keys when due, then each
// pending message (an XADD, or its room's script call) with its TTL
// refresh, moving the messages from pending to sent. A message past its
// deadline is refused instead. It sets t.read when a message's room has
// members on this node to read it back to.
func (p *pump) buildPublishes(t *trip) {
	e := p.e
	if p.epochDue {
		// The epoch keys before anything is published on a new
		// connection: if Redis lost the shards' data, they say since when
		// (redis_history.go).
		t.epochCmd = len(p.cmds)
		p.cmds = append(p.cmds, p.epochCmds()...)
	}
	clear(p.scriptRooms)
	clear(p.sigRooms)
	p.sigNames = p.sigNames[:0]
	for _, name := range p.owed {
		p.signal(name)
	}
	clear(p.owed)
	p.owed = p.owed[:0]
	clear(p.arms)
	clear(p.armed)
	p.arms = p.arms[:0]
	p.scripts = p.scripts[:0]
	for _, r := range p.pending {
		if t.now.After(r.deadline) {
			p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w: not sent within REDIS_TIMEOUT (%v)", r.room, ErrUnavailable, e.cfg.Timeout))
			continue
		}
		p.buildPublish(r, t.now)
		p.sent = append(p.sent, r)
		p.signal(r.room)
		// Read the room in this round trip too when it has members here
		// besides the sender: the XREAD runs after the XADD on the same
		// connection, and also re-arms the tracking of its key, which the
		// write disarmed (redis_wake.go). A room not read back is armed
		// by an XREAD from "$" instead, which reads nothing; while polling
		// it is noted to be armed when polling ends.
		switch {
		case p.closing:
		case r.alone && p.polling:
			p.notArmed(r)
		case r.alone:
			if rm := p.roomOf(r); rm != nil {
				if _, ok := p.armed[rm]; !ok {
					p.armed[rm] = struct{}{}
					p.arms = append(p.arms, rm.key)
				}
			}
		case p.markRoom(r):
			t.read = true
		}
	}
	clear(p.pending)
	p.pending = p.pending[:0]
	t.evalText = p.evalText && len(p.scripts) > 0
	p.buildScripts()
	if len(p.arms) > 0 {
		for len(p.dollars) < len(p.arms) {
			p.dollars = append(p.dollars, "$")
		}
		p.cmds = append(p.cmds, e.client.B().ClientCaching().Yes().Build(),
			e.client.B().Xread().Count(1).Streams().Key(p.arms...).Id(p.dollars[:len(p.arms)]...).Build())
	}
}

// buildPublish appends the command that publishes r (an XADD, or a place
// in its room's script call) and, when its key's TTL is due for a
// refresh, a PEXPIRE.
func (p *pump) buildPublish(r *pubReq, now time.Time) {
	e := p.e
	r.scripted = false
	if _, open := p.scriptRooms[r.room]; open || r.dedupe {
		// A CID, or a room that had one earlier in this round trip:
		// see redis_dedupe.go.
		p.script(r)
	} else {
		r.cmd = len(p.cmds)
		p.cmds = append(p.cmds, e.client.B().Xadd().Key(r.key()).Maxlen().Almost().Threshold(e.maxLen).Id("*").
			FieldValue().FieldValue(fieldSender, r.sender()).FieldValue(fieldPayload, r.payload()).Build())
	}
	if t, ok := p.expires[r.key()]; !ok || now.Sub(t) >= p.refreshTTL {
		p.cmds = append(p.cmds, e.client.B().Arbitrary("PEXPIRE").Keys(r.key()).Args(e.ttlMs).Build())
		p.expires[strings.Clone(r.key())] = now // r.key() points into a buffer that is reused
	}
}

// roomOf returns the room r publishes to as this node holds it, or nil.
func (p *pump) roomOf(r *pubReq) *redisRoom {
	s := r.shard
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rooms[r.key()]
}

// markRoom lists r's room to be read in the next read, and reports
// whether this node reads it (it is subscribed and not stuck).
func (p *pump) markRoom(r *pubReq) bool {
	s := r.shard
	s.mu.Lock()
	defer s.mu.Unlock()
	rm := s.rooms[r.key()]
	if rm == nil || rm.stuck {
		return false
	}
	s.markDirty(rm)
	return true
}

// buildRead appends the read to p.cmds when t.read is set (prepareRead).
// When Redis refuses what the read needs first (XINFO of a key of the
// wrong type), the publishes go out anyway and reads back off, as when
// the XREAD itself is refused. Any other error means no answer: nothing
// is sent.
func (p *pump) buildRead(ctx context.Context, t *trip) error {
	t.readCmd = len(p.cmds)
	if !t.read {
		return nil
	}
	switch err := p.prepareRead(ctx, t); {
	case err == nil:
	case isRedisErr(err):
		p.cmds = p.cmds[:t.readCmd]
		p.readRefused(err)
		t.read, t.readRefused = false, true
	default:
		return err
	}
	return nil
}

// send sends p.cmds in one pipeline and returns the answers. broken
// reports an answer that is no answer (a network error or a timeout):
// rueidis may then still be writing the commands, which point into the
// requests' buffers, so those and p.cmds are left to the garbage
// collector.
func (p *pump) send(ctx context.Context) (res []rueidis.RedisResult, broken bool) {
	e := p.e
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	start := time.Now()
	res = p.conn.DoMulti(rctx, p.cmds...)
	cancel()
	p.lastSent = time.Now()
	e.stats.roundTrips.Add(1)
	e.stats.roundTripLatency.Observe(time.Since(start))
	for _, rr := range res {
		if err := rr.Error(); err != nil && !isRedisErr(err) && !rueidis.IsRedisNil(err) {
			broken = true
			break
		}
	}
	if broken {
		p.cmds = nil // rueidis may still read the old slice
	}
	return res, broken
}

// buildWait appends, when REDIS_WAIT_REPLICAS is set and the round trip
// publishes, the WAIT that makes the primary answer once that many
// replicas have every write of this connection so far: the messages of
// this round trip, and (through the publish script's write on a hit) the
// first copy of a resent CID. What follows it in the pipeline, the
// read among it, runs after it.
func (p *pump) buildWait(t *trip) {
	e := p.e
	if e.cfg.WaitReplicas == 0 || len(p.sent) == 0 {
		return
	}
	t.waitCmd = len(p.cmds)
	p.cmds = append(p.cmds, e.client.B().Wait().Numreplicas(int64(e.cfg.WaitReplicas)).Timeout(e.cfg.WaitTimeout.Milliseconds()).Build())
}

// waitOutcome returns nil when the round trip had no WAIT or enough
// replicas confirmed it, and otherwise why its stored messages are not
// acknowledged: they are answered ErrUnconfirmed (applyPublishes).
func (p *pump) waitOutcome(res []rueidis.RedisResult, waitCmd int) error {
	if waitCmd < 0 {
		return nil
	}
	want := p.e.cfg.WaitReplicas
	n, err := res[waitCmd].AsInt64()
	switch {
	case err != nil:
		return fmt.Errorf("%w: stored on the primary, but WAIT for %d replicas (REDIS_WAIT_REPLICAS) failed: %w; it may be lost if Redis fails over", ErrUnconfirmed, want, err)
	case n < int64(want):
		p.e.stats.waitShort.Add(1)
		return fmt.Errorf("%w: stored on the primary, but only %d of REDIS_WAIT_REPLICAS=%d replicas confirmed it within REDIS_WAIT_TIMEOUT (%v); it may be lost if Redis fails over",
			ErrUnconfirmed, n, want, p.e.cfg.WaitTimeout)
	}
	return nil
}

// applyPublishes answers the senders of p.sent, in order, from res.
// Messages whose script call Redis did not run (NOSCRIPT) go back to
// pending, first, to be sent again with the script's text. A stored
// message is answered unreplicated instead of its ID when the round
// trip's WAIT fell short (waitOutcome). It returns how many messages
// were published, and the error of a message that got no answer (it may
// be stored), if any.
func (p *pump) applyPublishes(res []rueidis.RedisResult, broken, evalText bool, unreplicated error) (published int, failed error) {
	e := p.e
	published = len(p.sent)
	p.requeue = p.requeue[:0]
	for _, r := range p.sent {
		var id ID
		var dup bool
		var err error
		if r.scripted {
			id, dup, err = parseScriptReply(res[r.cmd], r.slot)
		} else {
			id, err = parseXaddReply(res[r.cmd])
		}
		switch {
		case err == nil && unreplicated != nil:
			err, id, dup = unreplicated, ID{}, false
		case err == nil:
		case !broken && isNoScript(err):
			// Not run: send it again, first thing, with the script's text.
			delete(p.expires, r.key()) // its PEXPIRE may have found no key
			p.requeue = append(p.requeue, r)
			continue
		case !broken && wrongNode(err):
			// Not run: send it again, first thing, on a new connection.
			delete(p.expires, r.key())
			p.requeue = append(p.requeue, r)
			failed = fmt.Errorf("the pump's connection no longer serves its slot: %w", err)
			continue
		case errors.Is(err, ErrUnconfirmed):
			// Answered with something that is not an ID.
		case isRedisErr(err):
			err = fmt.Errorf("%w: Redis refused: %w", ErrUnavailable, err)
		default:
			// Sent, and no answer: it may be stored.
			err = fmt.Errorf("%w: %w", ErrUnconfirmed, err)
			failed = err
		}
		if err != nil || dup {
			// Refresh the TTL next time: the PEXPIRE may have found no
			// key (a duplicate appends nothing).
			delete(p.expires, r.key())
		}
		if err != nil {
			err = fmt.Errorf("stream: publish to room %q: %w", r.room, err)
		} else if dup {
			e.stats.duplicates.Add(1)
		}
		if broken {
			e.outcome(r, err)
			p.ack(r, id, err)
		} else {
			p.answer(r, id, err)
		}
	}
	p.sent = p.sent[:0]
	switch {
	case len(p.requeue) > 0:
		// p.pending is empty: the messages taken since come after these.
		p.pending = append(p.pending, p.requeue...)
		published -= len(p.requeue)
		p.evalText = true
		clear(p.requeue)
		p.requeue = p.requeue[:0]
	case evalText && !broken:
		p.evalText = false // EVAL loaded the script
	}
	return published, failed
}

// applyRead delivers what the read found (res holds its answers) and
// notes whether the round trip found work: that decides whether the next
// one reads at once and is paced (activity). A read Redis refused (a key
// of the wrong type, an ACL) is retried later: the publishes went
// through.
func (p *pump) applyRead(ctx context.Context, t *trip, res []rueidis.RedisResult, published int) error {
	found := 0
	if t.read {
		if t.sigInit {
			p.startPolling(res[0])
			res = res[1:]
		}
		err := p.e.applyStarts(p.starts, res)
		if err == nil {
			found, err = p.deliver(ctx, res[len(p.starts):], t.tracked)
		}
		if err != nil {
			if isRedisErr(err) && !wrongNode(err) {
				p.readRefused(err)
				return nil
			}
			return err
		}
		if p.readFailures > 0 {
			p.e.log.Info("stream: Redis reads work again", "pump", p.name, "refused", p.readFailures)
			p.readFailures = 0
		}
	} else if !t.readRefused {
		p.healthy()
	}
	if published > 0 {
		p.e.lastPublish.Store(t.now.UnixMilli())
	}
	switch {
	case published > 0 || found > 0:
		p.activity(t.now)
	case t.read:
		// A read that found nothing ends the pacing only once activity
		// stopped: under load a wake often names an entry that the read
		// already in flight brought (Redis sent it before that read ran).
		p.busy = p.busy && t.now.Sub(p.lastActive) < 4*p.window()
	}
	return nil
}

// firstBroken returns the first error of res that is no answer from
// Redis (send reported the round trip broken).
func firstBroken(res []rueidis.RedisResult) error {
	for _, rr := range res {
		if err := rr.Error(); err != nil && !isRedisErr(err) && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	return nil
}

// parseXaddReply decodes XADD's answer: the new entry's ID.
func parseXaddReply(rr rueidis.RedisResult) (ID, error) {
	raw, err := rr.ToString()
	if err != nil {
		return ID{}, err
	}
	id, err := ParseID(raw)
	if err != nil {
		return ID{}, fmt.Errorf("%w: Redis answered XADD with %q", ErrUnconfirmed, raw)
	}
	return id, nil
}

// answer tells r's sender the outcome and recycles r.
func (p *pump) answer(r *pubReq, id ID, err error) {
	p.e.outcome(r, err)
	p.ack(r, id, err)
	p.e.putReq(r)
}

// ack calls r's Ack. A stored message that was not read back because
// its sender was alone on this node (Message.Alone) is read back after
// all when the Ack says a member joined meanwhile: the room is read in
// the next round trip.
func (p *pump) ack(r *pubReq, id ID, err error) {
	if !r.ack(r.ref, id, err) || err != nil || !r.alone {
		return
	}
	s := r.shard
	s.mu.Lock()
	if rm := s.rooms[r.key()]; rm != nil && !rm.stuck {
		s.markDirty(rm)
	}
	s.mu.Unlock()
}

// flushSent answers the messages of a round trip that was not sent.
func (p *pump) flushSent(err error) {
	for _, r := range p.sent {
		p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w: %w", r.room, ErrUnavailable, err))
	}
	p.sent = p.sent[:0]
}

// refuse answers every pending and queued message, and every join, with
// err: they were never sent.
func (p *pump) refuse(err error) {
	p.refuseJoins(err)
	p.take()
	for len(p.pending) > 0 {
		for _, r := range p.pending {
			p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w", r.room, err))
		}
		clear(p.pending)
		p.pending = p.pending[:0]
		p.take()
	}
}
