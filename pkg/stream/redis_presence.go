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
// the nodes.
//
// Keys, all under one hash tag so that every command works on a Cluster
// (they then live on one master: the traffic is a few commands per node
// per second, plus Members):
//
//	<prefix>:{presence}:node:<node>  hash: room → this node's members, non-zero only
//	<prefix>:{presence}:nodes        sorted set: node → its last heartbeat (unix ms, its clock)
//	<prefix>:{presence}:active       sorted set: node → when it last published (unix ms, its clock)
//
// SetMembers only records the count. A goroutine per engine, every
// PresenceInterval, writes the counts that changed (HSET, HDEL), renews
// the node's hash (PEXPIRE 3 × PresenceInterval) and heartbeat (ZADD),
// forgets nodes silent for presenceForget (ZREMRANGEBYSCORE), reads the
// others (ZRANGE) and counts those that published within peerActive
// (ZCOUNT: the pumps' pacing window grows with it), all in one pipelined
// round trip. Members adds this
// node's own count to the other nodes' (one HGET each, pipelined).
//
// Liveness rests on the hash's expiry, which Redis's clock enforces: a
// node that dies (or loses Redis) stops being counted 3 × PresenceInterval
// after its last renewal at the latest, so within 3 × PresenceInterval of
// its death (3 s by default). Close deletes the node's keys at once. The
// sorted set only tells nodes which hashes to read; its scores, from the
// nodes' own clocks, only decide when a long-dead node is forgotten, with
// a margin far above any sane clock skew. A new node, or a new count, is
// seen by the other nodes within about two intervals.

// presenceLapse is how many presence intervals a node's counts outlive
// its last refresh (REDIS_PRESENCE_INTERVAL): a node that died stops
// being counted within this many intervals.
const presenceLapse = 3

// presenceForget is how long a node stays listed in the sorted set after
// its last heartbeat; its counts vanish long before, with its hash.
const presenceForget = time.Minute

// presence is a Redis engine's member counts and what it knows of the
// other nodes.
type presence struct {
	prefix    string
	hashKey   string // this node's hash
	nodesKey  string // the sorted set of nodes
	activeKey string // the sorted set of when nodes last published
	ttlMs     int64  // PEXPIRE of the hash: 3 × PresenceInterval

	mu     sync.Mutex
	counts map[string]int      // room → members here, non-zero only
	dirty  map[string]struct{} // rooms whose count changed since the last write
	// full asks the next write for every count: the hash may have expired
	// (a failed write, a long pause) or been lost.
	full   bool
	closed bool

	// peers are the hash keys of the other nodes listed at the last
	// refresh.
	peers atomic.Pointer[[]string]

	// Owned by the presence goroutine.
	failures int
}

func newPresence(prefix, node string, interval time.Duration) *presence {
	p := &presence{
		prefix:    prefix,
		hashKey:   presenceKey(prefix, node),
		nodesKey:  prefix + ":{presence}:nodes",
		activeKey: prefix + ":{presence}:active",
		ttlMs:     presenceLapse * interval.Milliseconds(),
		counts:    make(map[string]int),
		dirty:     make(map[string]struct{}),
	}
	p.peers.Store(new([]string))
	return p
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
// being counted within 3 × PresenceInterval. One pipelined round trip
// (one HGET per other node) bounded by Timeout; errors wrap
// ErrUnavailable, or are ErrClosed.
func (e *Redis) Members(ctx context.Context, room string) (int, error) {
	if e.closed.Load() {
		return 0, ErrClosed
	}
	p := e.presence
	p.mu.Lock()
	n := p.counts[room]
	p.mu.Unlock()
	peers := *p.peers.Load()
	if len(peers) == 0 {
		return n, nil
	}
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	cmds := make(rueidis.Commands, len(peers))
	for i, k := range peers {
		cmds[i] = e.client.B().Hget().Key(k).Field(room).Build()
	}
	for _, rr := range e.client.DoMulti(ctx, cmds...) {
		v, err := rr.AsInt64()
		switch {
		case err == nil:
			n += int(v)
		case rueidis.IsRedisNil(err):
			// That node has nobody here, or is gone.
		default:
			return 0, e.readError("count the members of", room, err)
		}
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

// publishPresence does one presence round trip (two when it finds its
// hash expired) and records the other nodes.
func (e *Redis) publishPresence(ctx context.Context) {
	p := e.presence
	for range 2 {
		ch := p.takeChanges()
		rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		res := e.client.DoMulti(rctx, e.presenceCmds(ch)...)
		cancel()

		var err error
		for _, rr := range res {
			if err = rr.Error(); err != nil {
				break
			}
		}
		if err != nil {
			p.mu.Lock()
			for room := range ch.dirty {
				p.dirty[room] = struct{}{}
			}
			p.full = true // the hash may expire before the next write
			p.mu.Unlock()
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
		if active, err := res[len(res)-2].AsInt64(); err == nil {
			if time.Now().UnixMilli()-e.lastPublish.Load() <= peerActive.Milliseconds() {
				active-- // this node
			}
			e.activePeers.Store(int32(max(active, 0)))
		}
		nodes, _ := res[len(res)-1].AsStrSlice()
		peers := make([]string, 0, len(nodes))
		for _, n := range nodes {
			if n != e.node {
				peers = append(peers, presenceKey(p.prefix, n))
			}
		}
		p.peers.Store(&peers)
		if existed, _ := res[0].AsInt64(); existed == 1 || ch.full || ch.held == len(ch.set)/2 {
			return
		}
		// The hash had expired: this write restored only what changed.
		// Write every count now.
		p.mu.Lock()
		p.full = true
		p.mu.Unlock()
	}
}

// presenceChanges is what one presence write sends.
type presenceChanges struct {
	set   []string            // room, count pairs to write
	del   []string            // rooms to delete: no members left
	dirty map[string]struct{} // the changes taken, to put back if the write fails
	full  bool                // set holds every count
	held  int                 // the counts held when taken
}

// takeChanges takes the counts changed since the last write (every count
// when a full write is due) and starts a new dirty set.
func (p *presence) takeChanges() presenceChanges {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := presenceChanges{dirty: p.dirty, full: p.full, held: len(p.counts)}
	for room := range p.dirty {
		if n, ok := p.counts[room]; ok {
			ch.set = append(ch.set, room, strconv.Itoa(n))
		} else {
			ch.del = append(ch.del, room)
		}
	}
	if ch.full {
		ch.set = ch.set[:0]
		for room, n := range p.counts {
			ch.set = append(ch.set, room, strconv.Itoa(n))
		}
	}
	p.dirty, p.full = make(map[string]struct{}), false
	return ch
}

// presenceCmds are the commands of one presence write: the counts of ch,
// this node's heartbeat and activity, the count of active nodes (next to
// last) and the read of the live nodes (last).
func (e *Redis) presenceCmds(ch presenceChanges) rueidis.Commands {
	p, c := e.presence, e.client
	now := time.Now().UnixMilli()
	// The first PEXPIRE tells whether the hash still existed before
	// this write: 0 with counts to keep means it expired meanwhile.
	cmds := rueidis.Commands{c.B().Pexpire().Key(p.hashKey).Milliseconds(p.ttlMs).Build()}
	if len(ch.set) > 0 {
		hset := c.B().Hset().Key(p.hashKey).FieldValue()
		for i := 0; i < len(ch.set); i += 2 {
			hset = hset.FieldValue(ch.set[i], ch.set[i+1])
		}
		cmds = append(cmds, hset.Build())
	}
	if len(ch.del) > 0 {
		cmds = append(cmds, c.B().Hdel().Key(p.hashKey).Field(ch.del...).Build())
	}
	forget := "(" + strconv.FormatInt(now-presenceForget.Milliseconds(), 10)
	cmds = append(cmds,
		c.B().Pexpire().Key(p.hashKey).Milliseconds(p.ttlMs).Build(),
		c.B().Zadd().Key(p.nodesKey).ScoreMember().ScoreMember(float64(now), e.node).Build(),
		c.B().Zremrangebyscore().Key(p.nodesKey).Min("-inf").Max(forget).Build(),
	)
	if last := e.lastPublish.Load(); last > 0 {
		cmds = append(cmds,
			c.B().Zadd().Key(p.activeKey).ScoreMember().ScoreMember(float64(last), e.node).Build(),
			c.B().Zremrangebyscore().Key(p.activeKey).Min("-inf").Max(forget).Build())
	}
	return append(cmds,
		c.B().Zcount().Key(p.activeKey).Min(strconv.FormatInt(now-peerActive.Milliseconds(), 10)).Max("+inf").Build(),
		c.B().Zrange().Key(p.nodesKey).Min("0").Max("-1").Build(),
	)
}

// presenceKey returns the hash key of node.
func presenceKey(prefix, node string) string {
	return prefix + ":{presence}:node:" + node
}

// closePresence stops recording counts and returns the commands that
// remove this node from presence.
func (e *Redis) closePresence() []rueidis.Completed {
	p := e.presence
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	return []rueidis.Completed{
		e.client.B().Del().Key(p.hashKey).Build(),
		e.client.B().Zrem().Key(p.nodesKey).Member(e.node).Build(),
		e.client.B().Zrem().Key(p.activeKey).Member(e.node).Build(),
	}
}
