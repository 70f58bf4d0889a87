package stream

import (
	"fmt"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// This file is Subscribe's part of a pump's round trip: a room joins in
// the next round trip, with the publishes and reads of the moment, as one
// CLIENT CACHING YES and one XINFO STREAM on the pump's connection. The
// XINFO gives the ID the room is read from, and arms the room's tracking
// (redis_wake.go) at that same point: whatever comes after it wakes the
// pump or, while it polls, is named by a signal. No read of the room
// follows. Until the answer the room is in its shard as a placeholder
// (redisRoom.joining), so that a wake that arrives before the answer is
// not lost: it marks the placeholder, which the next read then takes.

// joinReq is one Subscribe waiting for its pump.
type joinReq struct {
	s     *redisShard
	room  string
	key   string
	state atomic.Int32 // joinWaiting, then joinApplied (by the pump) or joinAbandoned (by Subscribe)
	done  chan joinResult
}

const (
	joinWaiting int32 = iota
	joinApplied
	joinAbandoned
)

// joinResult is the answer to a joinReq: the room's last ID, or why not.
type joinResult struct {
	last ID
	err  error
}

// join asks the pump of room's shard to subscribe it and waits for the
// answer, at most twice Timeout.
func (e *Redis) join(s *redisShard, room, key string) (ID, error) {
	j := &joinReq{s: s, room: room, key: key, done: make(chan joinResult, 1)}
	s.mu.Lock()
	if s.rooms[key] == nil {
		s.rooms[key] = &redisRoom{name: room, key: key, joining: true}
	}
	s.mu.Unlock()
	select {
	case s.pump.joins <- j:
	default:
		e.abandon(j)
		return ID{}, fmt.Errorf("stream: subscribe to room %q: %w: too many joins waiting for Redis", room, ErrUnavailable)
	}
	s.pump.poke()
	t := time.NewTimer(2 * e.cfg.Timeout)
	defer t.Stop()
	select {
	case r := <-j.done:
		return r.last, r.err
	case <-t.C:
	}
	if j.state.CompareAndSwap(joinWaiting, joinAbandoned) {
		e.abandon(j)
		return ID{}, fmt.Errorf("stream: subscribe to room %q: %w: no answer within twice REDIS_TIMEOUT (%v)", room, ErrUnavailable, e.cfg.Timeout)
	}
	r := <-j.done // the pump is applying it
	return r.last, r.err
}

// abandon drops j's placeholder, if it is still one.
func (e *Redis) abandon(j *joinReq) {
	j.s.mu.Lock()
	if r := j.s.rooms[j.key]; r != nil && r.joining {
		j.s.drop(r)
	}
	j.s.mu.Unlock()
}

// takeJoins moves the joins waiting for the pump to p.joining.
func (p *pump) takeJoins() {
	for {
		select {
		case j := <-p.joins:
			p.joining = append(p.joining, j)
		default:
			return
		}
	}
}

// buildJoins appends, for each join taken, a CLIENT CACHING YES and the
// room's XINFO STREAM, and moves the joins to p.joined.
func (p *pump) buildJoins(t *trip) {
	p.takeJoins()
	if len(p.joining) == 0 {
		return
	}
	t.joinCmd = len(p.cmds)
	c := p.e.client
	for _, j := range p.joining {
		p.cmds = append(p.cmds, c.B().ClientCaching().Yes().Build(), c.B().XinfoStream().Key(j.key).Build())
	}
	p.joined = append(p.joined[:0], p.joining...)
	clear(p.joining)
	p.joining = p.joining[:0]
}

// applyJoins answers the joins of the round trip from res (two answers
// each, from t.joinCmd).
func (p *pump) applyJoins(res []rueidis.RedisResult) {
	for i, j := range p.joined {
		in, err := parseStreamInfo(res[2*i+1])
		if err == nil {
			err = res[2*i].Error()
		}
		p.answerJoin(j, in, err)
	}
	clear(p.joined)
	p.joined = p.joined[:0]
}

// refuseJoins answers every join taken or waiting with err.
func (p *pump) refuseJoins(err error) {
	p.takeJoins()
	for _, list := range [][]*joinReq{p.joined, p.joining} {
		for _, j := range list {
			p.answerJoin(j, streamInfo{}, err)
		}
	}
	clear(p.joined)
	clear(p.joining)
	p.joined, p.joining = p.joined[:0], p.joining[:0]
}

// answerJoin applies a join's XINFO answer (in, or err) to its room, as
// Subscribe's comment describes, and answers the caller, unless it gave
// up waiting.
func (p *pump) answerJoin(j *joinReq, in streamInfo, err error) {
	if !j.state.CompareAndSwap(joinWaiting, joinApplied) {
		return // abandoned: Subscribe dropped the placeholder
	}
	if err != nil {
		p.e.abandon(j)
		j.done <- joinResult{err: p.e.opError("subscribe to", j.room, err)}
		return
	}
	last := in.lastGen
	s := j.s
	s.mu.Lock()
	switch r := s.rooms[j.key]; {
	case p.e.closed.Load():
		s.mu.Unlock()
		j.done <- joinResult{err: ErrClosed}
		return
	case r == nil || r.joining:
		if r == nil {
			r = &redisRoom{name: j.room, key: j.key}
			s.rooms[j.key] = r
		}
		r.joining, r.subscribed = false, true
		r.last, r.accounted = last, last
		r.seq, r.seqKnown = in.added, in.hasAdded || in.missing
		// r may be dirty already: a wake that came before this answer.
	case r.subscribed:
		// Subscribed already (a concurrent Subscribe won).
	default:
		// Unsubscribed, but the reader has not reached its stop yet: keep
		// the cursor, skip what was published in between. Entries up to
		// stop are still delivered: the caller drops them (up to last).
		r.subscribed = true
		r.gen++
		if r.stop.Less(last) {
			r.skips = append(r.skips, idRange{r.stop, last})
		}
		s.markDirty(r)
	}
	s.mu.Unlock()
	j.done <- joinResult{last: last}
}
