package stream

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// This file holds how a pump learns that other nodes wrote to its rooms.
// Two ways, by load:
//
//   - Idle (chat rates): Redis tells it. The pump's connection runs CLIENT
//     TRACKING ON REDIRECT <listener> OPTIN NOLOOP, and each of its reads
//     follows a CLIENT CACHING YES, so Redis remembers the rooms it read,
//     and the first later write to one by another connection sends one
//     invalidation naming it to the pump's listener connection
//     (redis.io/docs: client-side caching). A message so wakes exactly the
//     nodes that hold its room, once each, an idle node reads nothing, and
//     the pump's own writes wake nobody (NOLOOP).
//   - Busy (its round trips keep finding work, so they run on the pacing
//     grid anyway): it polls. Every publishing round trip of every node
//     appends one entry naming its rooms to the signal stream
//     (redis_signal.go); a busy pump reads the entries after its cursor in
//     each round trip, and its reads are not tracked, so that it is not
//     sent one invalidation per message and node: at 12 busy nodes those
//     cost Redis a third more per message than the polling
//     (BENCHMARKS.md section 13).
//
// Switching. A pump that turns busy asks for the signal stream's last ID
// in a round trip whose reads are still tracked: what was written before
// is read or wakes it, what comes after is in the signals. One that turns
// idle reads (tracked) every room it read while polling, from its
// cursors: their tracking, which those reads did not re-arm, is armed
// again, and what came meanwhile is read.
//
// Tracking is armed by reads and disarmed by writes, whoever wrote: an
// idle pump that writes to a room it holds reads it again in the same
// pipeline, after the write (buildPublishes reads it back, or arms it with
// an XREAD from "$", which reads nothing, when the sender is alone on this
// node). A listener connection that closes takes the tracking with it:
// rueidis closes the channel that connect kept, and the pump reconnects
// and reads every room again. REDIS_SWEEP reads every room now and then
// all the same.

// onInvalidations handles the invalidation messages of any connection of
// the engine (rueidis calls it on the connection's reader goroutine: it
// only marks rooms and wakes pumps). keys nil means "everything": the
// connection closed, or Redis flushed its tracking table.
func (e *Redis) onInvalidations(keys []rueidis.RedisMessage) {
	if keys == nil {
		e.invalidateAll()
		return
	}
	for i := range keys {
		if key, err := keys[i].ToString(); err == nil {
			e.invalidate(key)
		}
	}
}

// invalidate marks the room whose stream key is key, if this node holds
// it, and wakes its pump. Other keys (epoch, dedupe, presence) are
// ignored.
func (e *Redis) invalidate(key string) {
	s := e.shardOfKey(key)
	if s == nil {
		return
	}
	s.mu.Lock()
	r := s.rooms[key]
	if r != nil && !r.stuck {
		s.markDirty(r)
	}
	s.mu.Unlock()
	if r != nil {
		// s.pump is set before any room exists: Subscribe comes after
		// NewRedis returns.
		e.stats.wakes.Add(1)
		s.pump.poke()
	}
}

// invalidateAll marks every room of every shard to be read.
func (e *Redis) invalidateAll() {
	for _, s := range e.shards {
		s.mu.Lock()
		n := len(s.rooms)
		for _, r := range s.rooms {
			if !r.stuck {
				s.markDirty(r)
			}
		}
		s.mu.Unlock()
		if n > 0 {
			s.pump.poke()
		}
	}
}

// shardOfKey returns the shard of a room's stream key
// ("<prefix>:{<shard>}:<room>"), or nil when key is not one.
func (e *Redis) shardOfKey(key string) *redisShard {
	rest, ok := strings.CutPrefix(key, e.cfg.Prefix)
	if !ok {
		return nil
	}
	rest, ok = strings.CutPrefix(rest, ":{")
	if !ok {
		return nil
	}
	num, _, ok := strings.Cut(rest, "}")
	i, err := strconv.Atoi(num)
	if !ok || err != nil || i < 0 || i >= len(e.shards) {
		return nil
	}
	s := e.shards[i]
	if !strings.HasPrefix(key, s.keyPre) {
		return nil // "<prefix>:{<shard>}#…": not a room
	}
	return s
}

// poke makes the pump look at its dirty rooms soon.
func (p *pump) poke() { p.w.wake() }

// trackingLost handles the end of the listener connection, with its
// error (nil when rueidis gave none): the pump's tracking is void, so it
// reconnects and reads every room again (fail).
func (p *pump) trackingLost(err error) {
	if err == nil {
		err = errors.New("closed")
	}
	p.fail(fmt.Errorf("the connection that receives Redis's invalidations stopped: %w", err))
}

// startPolling starts polling the signal stream after the ID that rr, the
// answer to XREVRANGE <sigKey> + - COUNT 1, gives (none: from the start).
// The round trip that asked read its rooms tracked, so whatever was
// written before that ID was read or will wake the pump, and what comes
// after it is in the signals.
func (p *pump) startPolling(rr rueidis.RedisResult) {
	entries, err := rr.ToArray()
	if err != nil {
		return // stays idle-style: every read tracked
	}
	p.sigLast = ID{}
	if len(entries) > 0 {
		if id, ok := entryID(&entries[0]); ok {
			p.sigLast = id
		}
	}
	p.polling, p.sigFull = true, false
}

// stopPolling ends polling: the rooms read while polling, whose tracking
// those reads did not re-arm, are marked to be read (tracked) in this
// round trip.
func (p *pump) stopPolling() {
	p.polling = false
	for r, s := range p.unarmed {
		s.mu.Lock()
		if s.rooms[r.key] == r && !r.stuck {
			s.markDirty(r)
		}
		s.mu.Unlock()
	}
	clear(p.unarmed)
}

// notArmed notes that r's room was written and not read back while
// polling: its tracking is re-armed when polling ends.
func (p *pump) notArmed(r *pubReq) {
	if rm := p.roomOf(r); rm != nil {
		p.unarmed[rm] = r.shard
	}
}
