package stream

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/rueidis"
)

// This file holds how a pump learns that other nodes wrote to its rooms:
// Redis tells it. Every connection of the engine runs CLIENT TRACKING ON
// NOLOOP, so a key the connection read (XREAD, XINFO) is remembered by
// Redis, and the first later write to it by another connection sends one
// invalidation message naming the key (redis.io/docs: client-side
// caching, default mode). The pump's own writes send none (NOLOOP).
//
// A message therefore reaches exactly the nodes that read its room since
// the room's last write: a node wakes only for rooms it holds, an idle
// node costs Redis nothing, and there is no signal stream, no blocking
// read and no per-node wake key.
//
// Tracking is armed by reads and disarmed by writes, whoever wrote: a
// pump that writes to a room it holds must read the room again in the same
// pipeline, after the write, or it would not hear of the next one
// (buildPublishes reads it back, or arms it with an XREAD from "$",
// which reads nothing, when the sender is alone on this node). A connection that closes has lost what it
// tracked: rueidis then reports a nil invalidation, and every room is read
// again. REDIS_SWEEP reads every room now and then all the same.

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
func (p *pump) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

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
	s := r.shard
	s.mu.Lock()
	rm := s.rooms[r.key()]
	s.mu.Unlock()
	if rm != nil {
		p.unarmed[rm] = s
	}
}
