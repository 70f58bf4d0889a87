package stream

import (
	"strconv"
	"sync"
	"time"
)

// This file holds the state a Redis shard keeps: which rooms it reads, from
// which ID, and the keys of its hash tag. redis_read.go reads it.
//
// Lock order: docs/architecture.md, "Lock order" (redisShard.mu is taken
// holding nothing else, never around the Handler).

// redisShard is the read state of the rooms whose keys share one hash tag
// ("<prefix>:{<shard>}:"). One pump reads it. Fields are guarded by mu
// unless marked otherwise.
type redisShard struct {
	idx    int
	keyPre string // "<prefix>:{<shard>}:", the start of its rooms' keys
	cidPre string // "<prefix>:{<shard>}#cid:", the start of its dedupe keys
	// epochKey, "<prefix>:{<shard>}#epoch", holds when (unix ms) Redis
	// started to hold the shard's data (redis_history.go).
	epochKey string
	pump     *pump // the pump that reads and writes the shard; set once

	mu      sync.Mutex
	scratch []byte                // for building keys in roomByName
	rooms   map[string]*redisRoom // by stream key
	// dirty lists rooms to read in the next round: woken by Redis, just
	// subscribed or unsubscribed, or left with more entries than one read
	// returned. A room is listed once (redisRoom.dirty).
	dirty []*redisRoom
	// stuck counts rooms whose cursor cannot move (see redisRoom.stuck).
	stuck int

	// Owned by the pump goroutine.
	// Malformed entries seen since the last warning, and when it was
	// logged: they are logged at most once per badLogEvery per shard.
	bad       int
	badLogged time.Time
}

// badLogEvery is how often a shard logs the malformed entries it skipped.
const badLogEvery = 10 * time.Second

// redisRoom is the read state of one room in a shard, guarded by the
// shard's mu.
type redisRoom struct {
	name string
	key  string

	last ID // last entry read, delivered or skipped
	// seq counts the entries of the stream up to last, as Redis's
	// entries-added does: XINFO STREAM sets it, each entry read adds one.
	// When Redis counts more, the difference was trimmed unread.
	seq       int64
	seqKnown  bool
	lastStr   string // last as a string, cached for XREAD
	lastStrOf ID     // the ID lastStr was made from

	subscribed bool
	// joining: a placeholder while its Subscribe waits for the pump's
	// XINFO (redis_join.go): not read yet, but marked by wakes.
	joining bool
	// gen counts the Subscribe and Unsubscribe calls that changed the room,
	// so that verify ignores an XINFO answer older than the last change.
	gen uint64
	// stop, once unsubscribed, is the last ID to deliver: entries up to it
	// were published while the room was subscribed. An unsubscribed room
	// is leaving until the reader reaches stop; then it is dropped.
	stop ID
	// skips are ranges (from, to] published while the room was not
	// subscribed, between an Unsubscribe and a Subscribe that came before
	// the reader reached stop.
	skips []idRange
	// check asks the reader to look for trimmed entries before its next
	// read: set after a read that returned as many entries as a trim
	// leaves (the reader may be behind), and after errors; it stays set
	// until the count can tell (verify).
	check bool
	// accounted is the last entry up to which every entry was read or
	// counted as lost: a loss found later lies after it.
	accounted ID
	// noticed is the cursor of the last loss notice (noticedSet), so that
	// a loss is announced once; lossAhead says that verify found entries
	// after the cursor gone, to announce at the next read.
	noticed    ID
	noticedSet bool
	lossAhead  bool
	// heldFrom, for a room read from the start (cursor 0-0), is the
	// oldest entry verify saw held: a read that begins after it finds
	// that entries were trimmed in between.
	heldFrom ID
	// high is the greatest entry read (last, before a rollback moved
	// it back). gone, when set, is a record in the stream that entries up
	// to it were deleted (max-deleted-entry-id: a rollback recorded by
	// some node), above high: the members here may have missed some, and
	// are told when the read passes it (collectStream). raise, when set,
	// is the ID a rollback found here asks to raise the stream to
	// (redis_rollback.go).
	high, gone, raise ID
	// ahead asks verify to raise the stream's last ID ahead of the
	// server's clock (a failover: redis_rollback.go).
	ahead bool
	// dirty: the room is listed in its shard's dirty list.
	dirty bool
	// stuck: the last read returned an entry whose ID could not be
	// decoded, so the cursor cannot move past it. Health fails while any
	// room is stuck; the room is read again on every full read.
	stuck bool
}

// noticedAt reports whether a loss after cursor was announced already.
func (r *redisRoom) noticedAt(cursor ID) bool { return r.noticedSet && r.noticed == cursor }

// idRange is the range of IDs (from, to].
type idRange struct{ from, to ID }

// redisDelivery is one Handler call collected under the shard lock.
type redisDelivery struct {
	room string
	msg  Message
}

// roomByName returns the subscribed or leaving room of this shard named
// name, or nil. s.mu must be held.
func (s *redisShard) roomByName(name string) *redisRoom {
	s.scratch = append(append(s.scratch[:0], s.keyPre...), name...)
	return s.rooms[string(s.scratch)]
}

// markDirty lists r to be read in the next round. s.mu must be held.
func (s *redisShard) markDirty(r *redisRoom) {
	if !r.dirty {
		r.dirty = true
		s.dirty = append(s.dirty, r)
	}
}

// drop forgets r. s.mu must be held.
func (s *redisShard) drop(r *redisRoom) {
	if r.stuck {
		s.stuck--
	}
	delete(s.rooms, r.key)
}

// shardKey returns "<prefix>:{<shard>}" + suffix.
func shardKey(prefix string, shard int, suffix string) string {
	return prefix + ":{" + strconv.Itoa(shard) + "}" + suffix
}
