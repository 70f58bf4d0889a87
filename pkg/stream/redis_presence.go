package stream

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// This file is presence on Redis: how many members each room has across
// the nodes, pushed by Redis rather than polled.
//
// Keys:
//
//	<prefix>:{<shard>}#members:<room>  hash: node → its members in room, non-zero only (PEXPIRE REDIS_TTL)
//	<prefix>:{presence}:live:<node>    string, PEXPIRE 3 × PresenceInterval: the node is alive
//	<prefix>:{presence}:nodes          sorted set: node → its last heartbeat (unix ms, its clock)
//	<prefix>:{presence}:active         sorted set: node → when it last published (unix ms, its clock)
//
// SetMembers only records the count. A goroutine per engine, every
// PresenceInterval, sends one pipelined round trip: this node's live key
// (SET PX … GET: no old value means Redis lost it, and every count is
// written again), heartbeat and activity, the counts that changed (HSET
// or HDEL in each room's hash, with a PEXPIRE), the deletion of dead
// nodes' fields found meanwhile, and the reads of the node list (ZRANGE),
// of which listed nodes are alive (MGET of their live keys) and of how
// many published lately (ZCOUNT, for the pumps' pacing).
//
// Members reads a room's hash through rueidis's client-side cache
// (DoCache: CLIENT TRACKING, OPTIN): Redis sends an invalidation when any
// node changes its count there, and until then Members answers from
// memory. Watching a room costs Redis nothing while its count holds and
// one HGETALL per change: the cost follows the changes, not the number of
// rooms watched (the Hub asks every second for each room it watches).
//
// Liveness rests on the live key's expiry, which Redis's clock enforces:
// a node that dies (or loses Redis) stops being counted once its key
// expired, 3 × PresenceInterval after its last refresh, and another
// node's next round trip saw it gone: within 4 × PresenceInterval of its
// death (4 s by default). Close deletes its counts and keys at once. The
// sorted set's scores, from the nodes' own clocks, only decide when a
// long-dead node is forgotten. A new node, or a new count, is seen by the
// other nodes within about two intervals.

// presenceLapse is how many presence intervals a node's live key
// outlives its last refresh (REDIS_PRESENCE_INTERVAL).
const presenceLapse = 3

// presenceForget is how long a node stays listed in the sorted set after
// its last heartbeat; it stops being counted long before, with its live
// key.
const presenceForget = time.Minute

// presenceCacheTTL bounds how long Members answers a room's hash from
// memory between invalidations.
const presenceCacheTTL = time.Minute

// presence is a Redis engine's member counts and what it knows of the
// other nodes.
type presence struct {
	prefix    string
	liveKey   string // this node's live key
	nodesKey  string // the sorted set of nodes
	activeKey string // the sorted set of when nodes last published
	liveMs    int64  // PEXPIRE of the live key: 3 × PresenceInterval
	refresh   time.Duration

	mu     sync.Mutex
	counts map[string]int      // room → members here, non-zero only
	dirty  map[string]struct{} // rooms whose count changed since the last write
	// written are the rooms whose hash this node wrote a count to (and
	// set its TTL) since its last full write: a new count there is an
	// HSET alone, the TTL being refreshed by the next full write.
	written map[string]struct{}
	// full asks the next write for every count: Redis may have lost them,
	// or their hashes' TTL is due for a refresh (every refresh).
	full     bool
	lastFull time.Time
	closed   bool
	// stale are the fields of dead nodes that Members found: room's hash
	// key → nodes, deleted by the next write.
	stale map[string][]string

	// peers is what the last round trip found of the other nodes.
	peers atomic.Pointer[presencePeers]

	// Owned by the presence goroutine.
	failures int
}

// presencePeers is what a presence round trip found of the other nodes.
type presencePeers struct {
	listed []string            // every other node in the sorted set, to check next time
	live   map[string]struct{} // those whose live key exists
	dead   map[string]struct{} // those whose live key is gone
}

func newPresence(cfg RedisConfig, node string) *presence {
	p := &presence{
		prefix:    cfg.Prefix,
		liveKey:   cfg.Prefix + ":{presence}:live:" + node,
		nodesKey:  cfg.Prefix + ":{presence}:nodes",
		activeKey: cfg.Prefix + ":{presence}:active",
		liveMs:    presenceLapse * cfg.PresenceInterval.Milliseconds(),
		refresh:   min(cfg.TTL/ttlRefreshDivisor, maxTTLRefresh),
		counts:    make(map[string]int),
		dirty:     make(map[string]struct{}),
		written:   make(map[string]struct{}),
		stale:     make(map[string][]string),
		full:      true,
	}
	p.peers.Store(&presencePeers{})
	return p
}

// membersKey returns the key of room's presence hash.
func (e *Redis) membersKey(room string) string {
	return shardKey(e.cfg.Prefix, e.shardOf(room), "#members:"+room)
}

// SetMembers records that this node has n members in room; the presence
// goroutine publishes it within PresenceInterval. It never blocks on
// Redis.
func (e *Redis) SetMembers(room string, n int) {
	p := e.presence
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.counts[room] == max(n, 0) {
		return
	}
	if n > 0 {
		p.counts[room] = n
	} else {
		delete(p.counts, room)
	}
	p.dirty[room] = struct{}{}
}

// Members returns the members of room on every live node: this node's
// count as SetMembers last set it, plus the other nodes' as they last
// published them (at most PresenceInterval old). Nodes that died stop
// being counted within 4 × PresenceInterval. It reads the room's hash
// (HGETALL) only when Redis said it changed since the last read, bounded
// by Timeout; errors wrap ErrUnavailable, or are ErrClosed.
func (e *Redis) Members(ctx context.Context, room string) (int, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	p := e.presence
	p.mu.Lock()
	n := p.counts[room]
	p.mu.Unlock()
	peers := p.peers.Load()
	if len(peers.listed) == 0 {
		return n, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	key := e.membersKey(room)
	counts, err := e.client.DoCache(ctx, e.client.B().Hgetall().Key(key).Cache(), presenceCacheTTL).AsIntMap()
	if err != nil && !rueidis.IsRedisNil(err) {
		return 0, e.readError("count the members of", room, err)
	}
	var dead []string
	for node, c := range counts {
		if _, ok := peers.live[node]; ok {
			n += int(c)
		} else if _, ok := peers.dead[node]; ok {
			dead = append(dead, node)
		}
		// Not listed: a node newer than the last presence round trip
		// (counted from the next), or long forgotten.
	}
	if len(dead) > 0 {
		p.mu.Lock()
		p.stale[key] = dead
		p.mu.Unlock()
	}
	return n, nil
}

// runPresence publishes this node's counts and heartbeat every
// PresenceInterval until Close.
func (e *Redis) runPresence(ctx context.Context) {
	defer e.running.Done()
	t := time.NewTicker(e.cfg.PresenceInterval)
	defer t.Stop()
	for {
		e.publishPresence(ctx)
		select {
		case <-t.C:
		case <-e.stop:
			return
		case <-ctx.Done():
			return
		}
	}
}

// publishPresence does one presence round trip (two when it finds that
// Redis lost this node's keys) and records the other nodes.
func (e *Redis) publishPresence(ctx context.Context) {
	p := e.presence
	for range 2 {
		ch := p.takeChanges()
		cmds, peersAt := e.presenceCmds(ch)
		rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		res := e.client.DoMulti(rctx, cmds...)
		cancel()

		var err error
		for _, rr := range res {
			if err = rr.Error(); err != nil && !rueidis.IsRedisNil(err) {
				break
			}
			err = nil
		}
		if err != nil {
			p.putBack(ch)
			if p.failures++; p.failures == 1 && !e.closed.Load() {
				e.log.Warn("stream: presence write failed; other nodes stop counting this node's members until it works again",
					"err", err)
			}
			return
		}
		if p.failures > 0 {
			e.log.Info("stream: presence writes work again", "failures", p.failures)
			p.failures = 0
		}
		e.notePeers(res, peersAt, ch.checked)
		if _, err := res[0].ToString(); err == nil || ch.full {
			return
		}
		// The live key was gone (a first start is a full write already):
		// Redis lost this node's keys, or this node was cut off long
		// enough for them to expire. Write every count now.
		p.mu.Lock()
		p.full = true
		p.mu.Unlock()
	}
}

// notePeers records what a presence round trip read: from peersAt on,
// the MGET of the live keys of checked (when any), then the ZCOUNT of
// active nodes and the ZRANGE of the listed nodes.
func (e *Redis) notePeers(res []rueidis.RedisResult, peersAt int, checked []string) {
	next := &presencePeers{live: make(map[string]struct{}), dead: make(map[string]struct{})}
	if len(checked) > 0 {
		vals, _ := res[peersAt].ToArray()
		for i, node := range checked {
			if i < len(vals) && !vals[i].IsNil() {
				next.live[node] = struct{}{}
			} else {
				next.dead[node] = struct{}{}
			}
		}
		peersAt++
	}
	if active, err := res[peersAt].AsInt64(); err == nil {
		if time.Now().UnixMilli()-e.lastPublish.Load() <= peerActive.Milliseconds() {
			active-- // this node
		}
		e.activePeers.Store(int32(max(active, 0)))
	}
	nodes, _ := res[peersAt+1].AsStrSlice()
	for _, n := range nodes {
		if n != e.node {
			next.listed = append(next.listed, n)
		}
	}
	e.presence.peers.Store(next)
}

// presenceChanges is what one presence write sends.
type presenceChanges struct {
	set     []string            // room, count pairs to write
	ttl     []bool              // per pair of set: the hash's TTL is set too
	del     []string            // rooms to delete: no members left
	dirty   map[string]struct{} // the changes taken, to put back if the write fails
	stale   map[string][]string // dead nodes' fields to delete
	full    bool                // set holds every count
	checked []string            // the listed nodes whose live keys the write reads
}

// takeChanges takes the counts changed since the last write (every count
// when a full write is due) and starts a new dirty set.
func (p *presence) takeChanges() presenceChanges {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.lastFull) >= p.refresh {
		p.full = true // the rooms' hashes need their TTL refreshed
	}
	ch := presenceChanges{dirty: p.dirty, stale: p.stale, full: p.full, checked: p.peers.Load().listed}
	if ch.full {
		clear(p.written)
		for room, n := range p.counts {
			ch.set = append(ch.set, room, strconv.Itoa(n))
			ch.ttl = append(ch.ttl, true)
			p.written[room] = struct{}{}
		}
		for room := range p.dirty {
			if _, ok := p.counts[room]; !ok {
				ch.del = append(ch.del, room)
			}
		}
		p.lastFull = time.Now()
	} else {
		for room := range p.dirty {
			n, ok := p.counts[room]
			if !ok {
				ch.del = append(ch.del, room)
				delete(p.written, room)
				continue
			}
			_, had := p.written[room]
			ch.set = append(ch.set, room, strconv.Itoa(n))
			ch.ttl = append(ch.ttl, !had)
			p.written[room] = struct{}{}
		}
	}
	p.dirty, p.stale, p.full = make(map[string]struct{}), make(map[string][]string), false
	return ch
}

// putBack returns the changes of a failed write for the next one.
func (p *presence) putBack(ch presenceChanges) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for room := range ch.dirty {
		p.dirty[room] = struct{}{}
	}
	p.full = p.full || ch.full
	if len(ch.set) > 0 {
		// The TTLs of this write may not be set: write everything again.
		p.full = true
	}
}

// presenceCmds are the commands of one presence write, and where the
// reads of the other nodes start (notePeers).
func (e *Redis) presenceCmds(ch presenceChanges) (cmds rueidis.Commands, peersAt int) {
	p, c := e.presence, e.client
	now := time.Now().UnixMilli()
	forget := "(" + strconv.FormatInt(now-presenceForget.Milliseconds(), 10)
	// First: the live key, before any count, so that a node whose count
	// another node reads is already alive to it.
	cmds = rueidis.Commands{
		c.B().Set().Key(p.liveKey).Value("1").Get().PxMilliseconds(p.liveMs).Build(),
		c.B().Zadd().Key(p.nodesKey).ScoreMember().ScoreMember(float64(now), e.node).Build(),
		c.B().Zremrangebyscore().Key(p.nodesKey).Min("-inf").Max(forget).Build(),
	}
	if last := e.lastPublish.Load(); last > 0 {
		cmds = append(cmds,
			c.B().Zadd().Key(p.activeKey).ScoreMember().ScoreMember(float64(last), e.node).Build(),
			c.B().Zremrangebyscore().Key(p.activeKey).Min("-inf").Max(forget).Build())
	}
	ttl := e.ttlMs
	for i := 0; i < len(ch.set); i += 2 {
		key := e.membersKey(ch.set[i])
		cmds = append(cmds, c.B().Hset().Key(key).FieldValue().FieldValue(e.node, ch.set[i+1]).Build())
		if ch.ttl[i/2] {
			cmds = append(cmds, c.B().Arbitrary("PEXPIRE").Keys(key).Args(ttl).Build())
		}
	}
	for _, room := range ch.del {
		cmds = append(cmds, c.B().Hdel().Key(e.membersKey(room)).Field(e.node).Build())
	}
	for key, nodes := range ch.stale {
		cmds = append(cmds, c.B().Hdel().Key(key).Field(nodes...).Build())
	}
	peersAt = len(cmds)
	if len(ch.checked) > 0 {
		keys := make([]string, len(ch.checked))
		for i, n := range ch.checked {
			keys[i] = p.prefix + ":{presence}:live:" + n
		}
		cmds = append(cmds, c.B().Mget().Key(keys...).Build())
	}
	return append(cmds,
		c.B().Zcount().Key(p.activeKey).Min(strconv.FormatInt(now-peerActive.Milliseconds(), 10)).Max("+inf").Build(),
		c.B().Zrange().Key(p.nodesKey).Min("0").Max("-1").Build(),
	), peersAt
}

// closePresence stops recording counts and returns the commands that
// remove this node from presence: its fields in the rooms' hashes and its
// keys.
func (e *Redis) closePresence() []rueidis.Completed {
	p := e.presence
	p.mu.Lock()
	p.closed = true
	rooms := make([]string, 0, len(p.counts))
	for room := range p.counts {
		rooms = append(rooms, room)
	}
	p.mu.Unlock()
	c := e.client
	cmds := make([]rueidis.Completed, 0, len(rooms)+3)
	for _, room := range rooms {
		cmds = append(cmds, c.B().Hdel().Key(e.membersKey(room)).Field(e.node).Build())
	}
	return append(cmds,
		c.B().Del().Key(p.liveKey).Build(),
		c.B().Zrem().Key(p.nodesKey).Member(e.node).Build(),
		c.B().Zrem().Key(p.activeKey).Member(e.node).Build(),
	)
}
