package stream

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"
)

// This file is the pump: the goroutine that carries a node's publishes to
// Redis and reads back what the rooms got, sharing round trips between
// messages. The Redis type's comment describes what it does; the comments
// here say how.

// A room's TTL (REDIS_TTL) is refreshed by a node when it last did so
// more than min(TTL/ttlRefreshDivisor, maxTTLRefresh) ago.
const (
	ttlRefreshDivisor = 16
	maxTTLRefresh     = time.Hour
)

// maxBatch bounds the messages of one round trip.
const maxBatch = 1024

// doer is what a pump sends its round trips through: its dedicated
// connection (redis_conn.go).
type doer interface {
	DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult
}

// pubReq is one message waiting for its pump: b holds the stream key (up
// to nk), the sender in decimal (up to ns), the payload (up to np) and,
// for a message with a CID, its dedupe key.
type pubReq struct {
	b          []byte
	nk, ns, np int
	room       string
	shard      *redisShard
	ack        Ack
	ref        any
	deadline   time.Time // answer by then; send by then or refuse
	alone      bool      // Message.Alone: no need to read it back on this node
	dedupe     bool      // it has a CID: published by the script, with its dedupe key
	scripted   bool      // sent in its room's script call in the current round trip
	cmd        int       // index of its XADD or script call in the round trip
	slot       int       // its place in its script call
}

func (r *pubReq) key() string { return unsafe.String(&r.b[0], r.nk) }

func (r *pubReq) sender() string { return unsafe.String(&r.b[r.nk], r.ns-r.nk) }

func (r *pubReq) payload() string { return unsafe.String(unsafe.SliceData(r.b[r.ns:]), r.np-r.ns) }

func (r *pubReq) dedupeKey() string {
	return unsafe.String(unsafe.SliceData(r.b[r.np:]), len(r.b)-r.np)
}

// pump carries the traffic of a set of shards. Fields without a comment
// are owned by its goroutine.
type pump struct {
	e      *Redis
	shards []*redisShard
	name   string // "shard <n>" or "shards 0-<n>", for logs
	sigKey string // the signal stream it writes, and reads while polling

	reqs  chan *pubReq  // Publish → pump; buffered, PublishQueue
	joins chan *joinReq // Subscribe → pump; buffered, PublishQueue
	// w wakes the pump: after a publish or a join is queued, rooms were
	// marked dirty (Subscribe, invalidations), the listener was lost, or
	// Close (redis_waker.go).
	w    *waker
	conn doer // nil until connected
	// lost is closed (after at most one error) when the listener that
	// receives the invalidations of conn's keys stops: conn's tracking is
	// then void, and the pump reconnects.
	lost     <-chan error
	lostDone chan struct{} // closed by disconnect: ends watchLost
	release  func()        // gives a dedicated connection back
	// clientID and clientAddr name the dedicated connection as Redis
	// sees it (CLIENT INFO's id= and addr=); sealID and sealAddr the one
	// to kill before sending again (sealID 0: none). Both are given to
	// CLIENT KILL: after a restart or a failover Redis hands the same IDs
	// to new clients, and the address keeps another one from being killed.
	clientID   int64
	clientAddr string
	sealID     int64
	sealAddr   string
	// server is the address of the Redis server the connection reaches
	// (CLIENT INFO's laddr=), and primarySeen the engine's record of the
	// primary when it connected: behind Sentinel, a pump whose server is
	// no longer the primary reconnects (redis_watch.go).
	server      string
	primarySeen *string
	// retryNow, set by the engine's watch (the primary moved, or the
	// shard answers again), ends a wait before a retry (waitRetry);
	// waiting says that the pump is in such a wait (redis_watch.go).
	retryNow atomic.Bool
	waiting  atomic.Bool
	// moved: the pump's connection reaches another server than the one
	// before (a failover); the next full read raises every room ahead
	// (redis_rollback.go).
	moved    bool
	pending  []*pubReq  // taken from reqs, not sent yet
	joining  []*joinReq // taken from joins, not sent yet
	joined   []*joinReq // sent in the current round trip
	sent     []*pubReq  // in the current round trip
	cmds     []rueidis.Completed
	sigRooms map[string]struct{} // rooms named by this round trip's signal
	sigNames []string
	sigBuf   []byte // the signal's room list, space-separated
	// owed are the rooms of signals that failed to be written: the next
	// round trip's signal names them again (at most maxOwed; beyond that
	// the next full read finds them, within REDIS_SWEEP). owedAt is when
	// they go out with a round trip of their own if no publish carries
	// them first; owedFailures counts the failed signal writes in a row.
	owed          []string
	owedAt        time.Time
	owedFailures  int
	sigFailLogged time.Time // when a failed signal write was last logged
	// polling: the pump is under load and learns of other nodes' entries
	// from the signal stream, read from sigLast in each round trip; its
	// reads do not re-arm tracking, and unarmed lists the rooms they read,
	// to re-arm when polling ends (redis_wake.go).
	polling bool
	sigLast ID
	sigFull bool // the last signal read returned a full batch: read every room
	unarmed map[*redisRoom]*redisShard
	// scripts are the script calls of this round trip, one per room
	// (redis_dedupe.go); scriptRooms maps their rooms to them: later
	// messages to those rooms join the call.
	scripts     []scriptCall
	scriptRooms map[string]int
	scriptKeys  []string
	scriptArgs  []string
	// evalText sends the script's text (EVAL) instead of its SHA: the
	// last round trip found it missing from the server's cache.
	evalText bool
	requeue  []*pubReq // NOSCRIPT: not run, to send first in the next round trip
	// arms are the rooms of this round trip's publishes that it does not
	// read back (the sender is alone here): one XREAD of them from "$"
	// after the publishes keeps their keys tracked (redis_wake.go);
	// armed lists them once, dollars holds the "$"s.
	arms    []string
	armed   map[*redisRoom]struct{}
	dollars []string
	out     []redisDelivery
	expires map[string]time.Time // room key → when its TTL was last refreshed
	keys    []string
	ids     []string
	// starts are the rooms of the current read that are read from their
	// start (nothing read yet): their XINFO STREAM goes in the pipeline
	// right before the XREADs (prepareRead, applyStarts).
	starts []startCheck

	lastActive   time.Time // start of the last round trip that published or found something
	closing      bool      // Close stopped the pump: publish, do not read
	lastTick     time.Time // start of the last round trip
	lastSent     time.Time // end of the last round trip sent: an idle pump PINGs Block after it
	busy         bool      // round trips found work within a few windows: pace them
	lastFull     time.Time // when every room was last read
	verifyAll    bool      // check every room for trimmed entries next read
	epochDue     bool      // write the shards' epoch keys (SET NX) with the next publishes
	failures     int       // consecutive failed round trips
	readFailures int       // consecutive reads refused by Redis
	readRetry    time.Time // no read before then (after a refused read)
	epoch        int       // counts failures: results of reads started before one are stale
	lastPrune    time.Time // when expires was last pruned
	refreshTTL   time.Duration

	hmu     sync.Mutex
	lastOK  time.Time // end of the last successful round trip
	lastErr error     // error of the last round trip, nil after success
}

func newPump(e *Redis, shards []*redisShard) (*pump, error) {
	w, err := newWaker()
	if err != nil {
		return nil, err
	}
	sig := 0 // one signal stream for all shards on a single server
	if e.cluster {
		sig = shards[0].idx
	}
	name := "shard " + strconv.Itoa(shards[0].idx)
	if len(shards) > 1 {
		name = "shards " + strconv.Itoa(shards[0].idx) + "-" + strconv.Itoa(shards[len(shards)-1].idx)
	}
	return &pump{
		w:           w,
		e:           e,
		shards:      shards,
		name:        name,
		reqs:        make(chan *pubReq, e.cfg.PublishQueue),
		joins:       make(chan *joinReq, e.cfg.PublishQueue),
		sigKey:      shardKey(e.cfg.Prefix, sig, "#signal"),
		sigRooms:    make(map[string]struct{}),
		unarmed:     make(map[*redisRoom]*redisShard),
		scriptRooms: make(map[string]int),
		armed:       make(map[*redisRoom]struct{}),
		expires:     make(map[string]time.Time),
		refreshTTL:  min(e.cfg.TTL/ttlRefreshDivisor, maxTTLRefresh),
		lastOK:      time.Now(),
		verifyAll:   true,
		epochDue:    true,
	}, nil
}

// run is the pump's loop. It returns once Close stopped it and every
// queued message has had its answer.
func (p *pump) run(ctx context.Context) {
	defer p.e.running.Done()
	defer p.w.close()
	defer p.disconnect()
	for {
		// The first retry after a failure is immediate: a connection that
		// broke while idle (Redis restarted) fails once and is replaced.
		// Only a second failure in a row means Redis is down.
		if p.failures > 1 && !p.waitRetry(ctx) {
			p.flushQueue(ctx)
			return
		}
		select {
		case err := <-p.lost:
			p.trackingLost(err)
			continue
		default:
		}
		now := time.Now()
		owedDue := len(p.owed) > 0 && !now.Before(p.owedAt)
		if len(p.pending) == 0 && len(p.reqs) == 0 && len(p.joining) == 0 && len(p.joins) == 0 && !owedDue && !p.readDue(now) && !p.pingDue(now) {
			// Nothing to send now: wait for work.
			if !p.idle(ctx, now) {
				return
			}
			continue
		}
		// Under load, start round trips that read at most every window,
		// so that each carries more, on a grid shared by all nodes.
		if w := p.window(); w > 0 && p.busy {
			// The grid is wall-clock time: never wait more than a window,
			// even when the clock was set back.
			if d := min(time.Until(nextTick(p.lastTick, w)), w); d > 0 {
				p.w.pause(time.Now().Add(d), p.stopped)
			}
		}
		p.take()
		if err := p.stalePrimary(); err != nil {
			p.fail(err)
			continue
		}
		if err := p.roundTrip(ctx, p.readDue(time.Now())); err != nil {
			p.fail(err)
		}
	}
}

// idle waits for work: a message, a join, rooms marked dirty, or
// the time of the next PING, full read (REDIS_SWEEP) or retry of refused
// reads (readRetry). It reports false once Close stopped the pump, after
// flushing its queue.
func (p *pump) idle(ctx context.Context, now time.Time) bool {
	at := p.lastSent.Add(p.e.cfg.Block)
	if now.Before(p.readRetry) {
		at = p.readRetry // reads are refused by Redis: meanwhile keep publishing
	} else if full := p.lastFull.Add(p.e.cfg.Sweep); full.Before(at) {
		at = full
	}
	if len(p.owed) > 0 && p.owedAt.Before(at) {
		at = p.owedAt
	}
	p.w.sleep(at)
	if p.stopped() {
		p.flushQueue(ctx)
		return false
	}
	select {
	case err := <-p.lost:
		p.trackingLost(err)
	default:
	}
	p.take()
	return true
}

// stopped reports whether Close stopped the engine.
func (p *pump) stopped() bool {
	select {
	case <-p.e.stop:
		return true
	default:
		return false
	}
}

// take moves queued messages to pending, up to maxBatch.
func (p *pump) take() {
	for len(p.pending) < maxBatch {
		select {
		case r := <-p.reqs:
			p.pending = append(p.pending, r)
		default:
			return
		}
	}
}

// readDue reports whether the next round trip must read: rooms are dirty,
// the pump polls the signals, a full read is due, or it is recovering.
func (p *pump) readDue(now time.Time) bool {
	if now.Before(p.readRetry) {
		return false
	}
	if p.polling || p.verifyAll || p.sweepDue(now) {
		return true
	}
	for _, s := range p.shards {
		s.mu.Lock()
		n := len(s.dirty)
		s.mu.Unlock()
		if n > 0 {
			return true
		}
	}
	return false
}

// pingDue reports whether an idle pump checks its connection: nothing
// was sent for Block. That keeps Health's view of the pump fresh and finds
// a connection that broke (and with it what it tracked) while idle.
func (p *pump) pingDue(now time.Time) bool { return now.Sub(p.lastSent) >= p.e.cfg.Block }

// sweepDue reports whether the pump's next read must read every room:
// Sweep has passed since it last did.
func (p *pump) sweepDue(now time.Time) bool { return now.Sub(p.lastFull) >= p.e.cfg.Sweep }

// flushQueue publishes what is queued once Close stopped the pump,
// without reading, and answers the rest when Redis does not take it.
func (p *pump) flushQueue(ctx context.Context) {
	p.closing = true
	p.refuseJoins(ErrClosed)
	for {
		p.take()
		if len(p.pending) == 0 {
			return
		}
		if p.failures > 0 {
			p.refuse(ErrClosed)
			return
		}
		if err := p.roundTrip(ctx, false); err != nil {
			p.fail(err)
		}
	}
}
