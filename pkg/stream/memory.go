package stream

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var _ Engine = (*Memory)(nil)

// MemoryConfig configures the Memory engine. The zero value of every field
// means its default, the same as the Redis engine's, so that both engines
// keep the same history: the gateway fills it from its RedisConfig
// (RedisConfig.MemoryConfig). NewMemoryWith rejects invalid values with an
// error naming the environment variable to fix.
type MemoryConfig struct {
	// MaxLen is how many entries each room's ring keeps for History and
	// Last; older entries are evicted. It plays the part of REDIS_MAXLEN,
	// but exactly: Redis's MAXLEN ~ keeps at least as many. Zero means
	// DefaultRedisMaxLen (1000); at most maxMemoryMaxLen.
	MaxLen int64
	// TTL drops a room's ring once nothing was published to it for this
	// long, as REDIS_TTL expires a room's stream. Zero means
	// DefaultRedisTTL (24h).
	TTL time.Duration
	// DedupeWindow is how long a Message.CID is remembered: a second
	// Publish with the same CID to the same room within it appends nothing
	// and is acknowledged with the first one's ID. Zero means
	// DefaultRedisDedupeWindow (2m).
	DedupeWindow time.Duration
}

// withDefaults returns c with zero fields set to their defaults, or an
// error naming the variable to fix.
func (c MemoryConfig) withDefaults() (MemoryConfig, error) {
	if c.MaxLen < 0 {
		return c, fmt.Errorf("stream: REDIS_MAXLEN=%d is negative: use a positive number, or unset it for the default %d", c.MaxLen, DefaultRedisMaxLen)
	}
	for _, d := range []struct {
		v    time.Duration
		name string
	}{{c.TTL, "REDIS_TTL"}, {c.DedupeWindow, "REDIS_DEDUPE_WINDOW"}} {
		if d.v < 0 {
			return c, fmt.Errorf("stream: %s=%v is negative: use a positive duration, or unset it for the default", d.name, d.v)
		}
	}
	if c.MaxLen == 0 {
		c.MaxLen = DefaultRedisMaxLen
	}
	if c.TTL == 0 {
		c.TTL = DefaultRedisTTL
	}
	if c.DedupeWindow == 0 {
		c.DedupeWindow = DefaultRedisDedupeWindow
	}
	if c.MaxLen > maxMemoryMaxLen {
		return c, fmt.Errorf("stream: REDIS_MAXLEN=%d is too large for the embedded engine: use at most %d", c.MaxLen, maxMemoryMaxLen)
	}
	return c, nil
}

// maxMemoryMaxLen caps MemoryConfig.MaxLen: each ring is a slice.
const maxMemoryMaxLen = 1 << 24

// Memory is the embedded, single-process engine. It delivers each
// published message synchronously, from the publishing goroutine, to the
// Handler. Calls for one room are serialised by a per-room lock, so every
// member sees the room's messages in ID order.
//
// History. Each room keeps a ring of its last MaxLen entries, whether
// anyone is subscribed or not, for History and Last; a room nothing was
// published to for TTL loses its ring, as a Redis stream expires. Payloads
// are copied into the ring once and shared, read-only, with History's
// callers. CIDs are remembered per room for DedupeWindow. Expiry is
// checked on every read; the memory is freed by a prune that Publish runs
// every min(TTL, DedupeWindow, 1m), at most once a second, which also
// forgets rooms left with nothing (not subscribed, no ring, no CID).
//
// Presence is local: Members returns what SetMembers recorded.
//
// It is what the gateway runs on when no Redis is configured, and behaves
// like the Redis engine on one node.
//
// Lock order: docs/architecture.md, "Lock order" (Memory.mu, then
// memoryRoom.mu; the Handler runs under the room's mu only).
type Memory struct {
	handler Handler
	cfg     MemoryConfig
	stats   counters

	mu     sync.RWMutex
	closed bool
	rooms  map[string]*memoryRoom // rooms with state: subscribed, a ring, or CIDs
	active sync.WaitGroup         // Publish calls in progress

	// clock is the last ID handed out by any room, packed as
	// ms<<seqBits | seq. One engine-wide sequence keeps each room's IDs
	// increasing even after its state was swept.
	clock atomic.Uint64
	// start is the first ID this engine could hand out: entries before it
	// belonged to an earlier process and are gone.
	start ID
	// lastPrune is when (unix ms) the last prune started.
	lastPrune  atomic.Int64
	pruneEvery int64 // ms

	pmu     sync.Mutex
	members map[string]int // room → members on this node (non-zero)
}

const seqBits = 20

// memoryRoom is the state of one room, guarded by mu.
type memoryRoom struct {
	mu         sync.Mutex // serialises append and delivery, so members see ID order
	subscribed bool
	dead       bool // swept: whoever holds it must look the room up again

	// ring holds the last entries, n of them from head, oldest first; it
	// grows up to MaxLen.
	ring    []memEntry
	head, n int
	last    ID    // newest entry ever appended, kept after expiry
	written int64 // unix ms of the last append
	// born is when (unix ms) this state was made: entries of the room
	// from before (an earlier state, swept after it expired) were gone by
	// then.
	born int64
	// trimmed is the newest entry evicted or expired: History after an ID
	// before it is truncated.
	trimmed ID
	slab    []byte // payload copies are carved from it

	cids map[string]memoryCID
}

// memEntry is one entry of a ring.
type memEntry struct {
	id      ID
	sender  uint64
	payload []byte // never written once stored: History shares it
}

// memoryCID is a remembered Message.CID.
type memoryCID struct {
	id      ID
	expires int64 // unix ms
}

// NewMemory returns a Memory engine that delivers to h, with the default
// MemoryConfig. It panics if h is nil.
func NewMemory(h Handler) *Memory {
	e, err := NewMemoryWith(h, MemoryConfig{})
	if err != nil {
		panic(err)
	}
	return e
}

// NewMemoryWith returns a Memory engine that delivers to h, configured by
// cfg (zero fields take their defaults). The error names the environment
// variable to fix.
func NewMemoryWith(h Handler, cfg MemoryConfig) (*Memory, error) {
	if h == nil {
		return nil, errors.New("stream: NewMemory needs a Handler")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	every := min(cfg.TTL, cfg.DedupeWindow, time.Minute)
	now := time.Now().UnixMilli()
	return &Memory{
		start:      ID{Ms: uint64(now)},
		handler:    h,
		cfg:        cfg,
		rooms:      make(map[string]*memoryRoom),
		members:    make(map[string]int),
		pruneEvery: max(every, time.Second).Milliseconds(),
	}, nil
}

// Publish appends m to the room's ring with the room's next ID and, when
// the room is subscribed, calls the Handler, then ack, before returning.
// A CID seen in the room within DedupeWindow is acknowledged with its
// first ID and nothing is appended.
func (e *Memory) Publish(room string, m Message, ack Ack, ref any) {
	e.mu.RLock()
	if e.closed {
		e.mu.RUnlock()
		e.stats.outcome(ErrClosed)
		ack(ref, ID{}, ErrClosed)
		return
	}
	r := e.rooms[room]
	e.active.Add(1)
	e.mu.RUnlock()
	defer e.active.Done()

	now := time.Now().UnixMilli()
	r = e.lock(room, r)
	if r == nil {
		e.stats.outcome(ErrClosed)
		ack(ref, ID{}, ErrClosed)
		return
	}
	if m.CID != "" {
		if c, ok := r.cids[m.CID]; ok && now < c.expires {
			r.mu.Unlock()
			e.stats.accepted.Add(1)
			e.stats.duplicates.Add(1)
			ack(ref, c.id, nil)
			return
		}
	}
	r.expire(now, e.cfg.TTL)
	m.ID = e.nextID(now)
	r.append(memEntry{id: m.ID, sender: m.Sender, payload: r.keep(m.Payload)}, int(e.cfg.MaxLen), now)
	if m.CID != "" {
		if r.cids == nil {
			r.cids = make(map[string]memoryCID)
		}
		r.cids[strings.Clone(m.CID)] = memoryCID{id: m.ID, expires: now + e.cfg.DedupeWindow.Milliseconds()}
	}
	// Alone is ignored: the Handler would skip the sender, but a member
	// may have joined since the publisher looked, and delivering under
	// the room's lock is what keeps the room's order.
	deliver := r.subscribed
	if deliver {
		m.CID, m.Alone = "", false
		e.handler(room, m)
	}
	r.mu.Unlock()
	e.stats.accepted.Add(1)
	if deliver {
		e.stats.delivered.Add(1)
	}
	ack(ref, m.ID, nil)
	e.maybePrune(now)
}

// lock returns room's state, locked, creating it if needed; r is what a
// lookup found (nil: none). It returns nil once the engine is closed.
func (e *Memory) lock(room string, r *memoryRoom) *memoryRoom {
	for {
		if r == nil {
			e.mu.Lock()
			if e.closed {
				e.mu.Unlock()
				return nil
			}
			if r = e.rooms[room]; r == nil {
				r = &memoryRoom{born: time.Now().UnixMilli()}
				e.rooms[room] = r
			}
			e.mu.Unlock()
		}
		r.mu.Lock()
		if !r.dead {
			return r
		}
		r.mu.Unlock() // swept meanwhile: look it up again
		r = nil
	}
}

// Stats returns the engine's counters: outcomes, duplicates and
// deliveries.
func (e *Memory) Stats() Stats { return e.stats.snapshot() }

// nextID returns an ID after every ID handed out so far, built from the
// clock (now, in unix ms) as Redis does: <ms>-<seq>.
func (e *Memory) nextID(now int64) ID {
	for {
		old := e.clock.Load()
		v := max(uint64(now)<<seqBits, old+1)
		if e.clock.CompareAndSwap(old, v) {
			return ID{Ms: v >> seqBits, Seq: v & (1<<seqBits - 1)}
		}
	}
}

// Subscribe starts delivery of room's messages and returns its newest
// entry.
func (e *Memory) Subscribe(room string) (ID, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ID{}, ErrClosed
	}
	r := e.rooms[room]
	if r == nil {
		r = &memoryRoom{born: time.Now().UnixMilli()}
		e.rooms[room] = r
	}
	r.mu.Lock()
	r.subscribed = true
	last := r.last
	r.mu.Unlock()
	return last, nil
}

// Unsubscribe stops delivery of room's messages. The room keeps its
// history.
func (e *Memory) Unsubscribe(room string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	if r := e.rooms[room]; r != nil {
		r.mu.Lock()
		r.subscribed = false
		r.mu.Unlock()
	}
	return nil
}

// History returns up to n entries of room after the entry after, from the
// room's ring (none when n ≤ 0). Page.Truncated is exact but for rooms
// the engine no longer remembers: entries after after were evicted
// (MaxLen) or expired (TTL) while the engine held the room, or after is
// older than what the engine can know of: its own start, or TTL before
// the room's state was made (an earlier state was swept once it had
// expired). The payloads are shared with the ring: read-only.
func (e *Memory) History(ctx context.Context, room string, after ID, n int) (Page, error) {
	r, err := e.lookup(ctx, room)
	if err != nil {
		return Page{}, err
	}
	now := time.Now().UnixMilli()
	if r == nil {
		return Page{Truncated: !after.IsZero() && e.beforeRecord(after, now)}, nil
	}
	defer r.mu.Unlock()
	r.expire(now, e.cfg.TTL)
	p := Page{End: r.last, Trimmed: !r.trimmed.IsZero()}
	i := sort.Search(r.n, func(i int) bool { return after.Less(r.at(i).id) })
	if n > 0 {
		p.Messages = r.messages(i, i+min(n, r.n-i))
	}
	// Every entry after after is held when after is at or past the
	// oldest entry held; else what went missing is known exactly for
	// this state's life (trimmed), and bounded before it.
	p.Truncated = !after.IsZero() && (r.n == 0 || after.Less(r.at(0).id)) &&
		(after.Less(r.trimmed) || e.beforeRecord(after, r.born))
	return p, nil
}

// beforeRecord reports whether entries after id may have existed before
// born (unix ms) and be gone: id is older than this engine, or old
// enough that a state of the room holding entries after it could have
// expired (TTL after its last entry) by then.
func (e *Memory) beforeRecord(id ID, born int64) bool {
	return id.Less(e.start) || (id.Ms < uint64(born) && uint64(born)-id.Ms >= uint64(e.cfg.TTL.Milliseconds()))
}

// Last returns the last n entries of room, oldest first, from its ring
// (nothing when n ≤ 0). The payloads are shared with the ring: read-only.
func (e *Memory) Last(ctx context.Context, room string, n int) ([]Message, error) {
	if n <= 0 {
		return nil, e.readable(ctx, room)
	}
	r, err := e.lookup(ctx, room)
	if err != nil || r == nil {
		return nil, err
	}
	defer r.mu.Unlock()
	r.expire(time.Now().UnixMilli(), e.cfg.TTL)
	return r.messages(max(0, r.n-n), r.n), nil
}

// readable returns the error History or Last would return: ctx ended,
// or the engine is closed.
func (e *Memory) readable(ctx context.Context, room string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stream: history of room %q: %w", room, err)
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	return nil
}

// lookup returns room's state, locked, or nil when there is none.
func (e *Memory) lookup(ctx context.Context, room string) (*memoryRoom, error) {
	if err := e.readable(ctx, room); err != nil {
		return nil, err
	}
	for {
		e.mu.RLock()
		r := e.rooms[room] // nil once closed
		e.mu.RUnlock()
		if r == nil {
			return nil, nil
		}
		r.mu.Lock()
		if !r.dead {
			return r, nil
		}
		r.mu.Unlock()
	}
}

// SetMembers records that this node has n members in room.
func (e *Memory) SetMembers(room string, n int) {
	e.pmu.Lock()
	defer e.pmu.Unlock()
	if e.members == nil {
		return // closed
	}
	if n > 0 {
		e.members[room] = n
	} else {
		delete(e.members, room)
	}
}

// Members returns what SetMembers recorded for room: there are no other
// nodes.
func (e *Memory) Members(_ context.Context, room string) (int, error) {
	e.pmu.Lock()
	defer e.pmu.Unlock()
	if e.members == nil {
		return 0, ErrClosed
	}
	return e.members[room], nil
}

// Health always returns nil until the engine is closed.
func (e *Memory) Health() error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if e.closed {
		return ErrClosed
	}
	return nil
}

// Close stops delivery, forgets every room and waits for Publish calls in
// progress.
func (e *Memory) Close(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	e.rooms = nil
	e.mu.Unlock()
	e.pmu.Lock()
	e.members = nil
	e.pmu.Unlock()
	done := make(chan struct{})
	go func() { e.active.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stream: close memory engine: %w", ctx.Err())
	}
}

// maybePrune prunes when the last prune is older than pruneEvery; one
// caller wins, the others go on.
func (e *Memory) maybePrune(now int64) {
	last := e.lastPrune.Load()
	if now-last < e.pruneEvery || !e.lastPrune.CompareAndSwap(last, now) {
		return
	}
	e.prune(now)
}

// prune frees what expired: rings idle for TTL, CIDs older than their
// window, and rooms left with nothing.
func (e *Memory) prune(now int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, r := range e.rooms {
		r.mu.Lock()
		r.expire(now, e.cfg.TTL)
		for cid, c := range r.cids {
			if now >= c.expires {
				delete(r.cids, cid)
			}
		}
		if !r.subscribed && r.n == 0 && len(r.cids) == 0 {
			r.dead = true
			delete(e.rooms, name)
		}
		r.mu.Unlock()
	}
}

// at returns the i-th entry of the ring, oldest first.
func (r *memoryRoom) at(i int) *memEntry {
	return &r.ring[(r.head+i)%len(r.ring)]
}

// messages returns entries [from, to) of the ring as Messages.
func (r *memoryRoom) messages(from, to int) []Message {
	if from >= to {
		return nil
	}
	ms := make([]Message, 0, to-from)
	for i := from; i < to; i++ {
		en := r.at(i)
		ms = append(ms, Message{ID: en.id, Sender: en.sender, Payload: en.payload})
	}
	return ms
}

// append adds en to the ring, evicting the oldest entry when it holds
// maxLen.
func (r *memoryRoom) append(en memEntry, maxLen int, now int64) {
	if r.n == len(r.ring) {
		if len(r.ring) < maxLen {
			grown := make([]memEntry, min(max(2*len(r.ring), 8), maxLen))
			for i := range r.n {
				grown[i] = *r.at(i)
			}
			r.ring, r.head = grown, 0
		} else {
			old := r.at(0)
			r.trimmed = old.id
			*old = memEntry{}
			r.head = (r.head + 1) % len(r.ring)
			r.n--
		}
	}
	*r.at(r.n) = en
	r.n++
	r.last, r.written = en.id, now
}

// expire empties the ring when nothing was appended for ttl.
func (r *memoryRoom) expire(now int64, ttl time.Duration) {
	if r.n == 0 || now-r.written < ttl.Milliseconds() {
		return
	}
	r.trimmed = r.last
	r.ring, r.head, r.n, r.slab = nil, 0, 0, nil
}

// Payload copies are carved from slabs of up to slabMax bytes, so that a
// busy room allocates about once per slabMax bytes of payload; larger
// payloads get an allocation of their own.
const (
	slabMin = 256
	slabMax = 4096
)

// keep returns a copy of p that the ring may share: the bytes are never
// written again.
func (r *memoryRoom) keep(p []byte) []byte {
	if len(p) == 0 {
		return nil
	}
	if len(p) > slabMax/2 {
		return append([]byte(nil), p...)
	}
	if len(p) > cap(r.slab)-len(r.slab) {
		size := min(max(2*cap(r.slab), slabMin), slabMax)
		if size < len(p) {
			size = slabMax
		}
		r.slab = make([]byte, 0, size)
	}
	off := len(r.slab)
	r.slab = append(r.slab, p...)
	return r.slab[off:len(r.slab):len(r.slab)]
}
