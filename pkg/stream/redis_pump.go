package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
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

// maxBatch bounds the messages of one round trip.
const maxBatch = 1024

// doer is what a pump sends its round trips through: the shared client on
// a Cluster, a dedicated connection otherwise.
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

func (r *pubReq) key() string     { return unsafe.String(&r.b[0], r.nk) }
func (r *pubReq) sender() string  { return unsafe.String(&r.b[r.nk], r.ns-r.nk) }
func (r *pubReq) payload() string { return unsafe.String(unsafe.SliceData(r.b[r.ns:]), r.np-r.ns) }
func (r *pubReq) dedupeKey() string {
	return unsafe.String(unsafe.SliceData(r.b[r.np:]), len(r.b)-r.np)
}

// blockResult is the outcome of a blocking read of the signal streams.
type blockResult struct {
	reply rueidis.RedisMessage
	err   error
	epoch int // the pump's epoch when the read started
}

// pump carries the traffic of a set of shards. Fields without a comment
// are owned by its goroutine.
type pump struct {
	e       *Redis
	shards  []*redisShard
	sigKey  string // the signal stream it reads and writes
	wakeKey string // this node's wake stream for the pump

	reqs     chan *pubReq     // Publish → pump; buffered, PublishQueue
	kick     chan struct{}    // Subscribe/Unsubscribe → pump; buffered 1
	blockRes chan blockResult // blocking read → pump; buffered 1
	blocking atomic.Bool      // a blocking read is in flight
	wakeSent atomic.Bool      // a wake was sent for the current blocking read
	conn     doer             // nil until connected
	release  func()           // gives a dedicated connection back
	clientID int64            // CLIENT ID of the dedicated connection
	sealID   int64            // connection to kill before sending again; 0: none
	pending  []*pubReq        // taken from reqs, not sent yet
	sent     []*pubReq        // in the current round trip
	cmds     []rueidis.Completed
	sigRooms map[string]struct{} // rooms named by this round trip's signal
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
	sigNames []string
	// owed are the rooms of signals that failed to be written: the next
	// round trip's signal names them again (at most maxOwed; beyond that
	// the sweep finds them).
	owed    []string
	sigBuf  []byte // the signal's room list, space-separated
	out     []redisDelivery
	expires map[string]time.Time // room key → when its TTL was last refreshed
	keys    []string
	ids     []string

	sigLast  ID   // last signal read
	sigInit  bool // sigLast was set from the signal stream
	sigFull  bool // the last signal read returned a full batch
	wakeLast ID

	foreign    int       // signals of other nodes seen, a counter
	lastActive time.Time // start of the last round trip that published or found something
	closing    bool      // Close stopped the pump: publish, do not read
	lastTick   time.Time // start of the last round trip that read
	// peers maps the other nodes seen in signals to the Redis time (ms)
	// of their last signal; peersActive counts those seen within
	// peerActive of the newest signal.
	peers         map[string]uint64
	peersActive   int
	peersNewest   uint64
	busy          bool      // the last read returned entries or signals
	readAgain     bool      // read without blocking in the next round trip
	lastFull      time.Time // when every room was last read
	verifyAll     bool      // check every room for trimmed entries next read
	epochDue      bool      // write the shards' epoch keys (SET NX) with the next publishes
	failures      int       // consecutive failed round trips
	readFailures  int       // consecutive reads refused by Redis
	sigFailLogged time.Time // when a failed signal write was last logged
	readRetry     time.Time // no read before then (after a refused read)
	epoch         int       // counts failures: results of reads started before one are stale
	lastSweep     time.Time // of expires
	refreshTTL    time.Duration

	hmu     sync.Mutex
	lastOK  time.Time // end of the last successful round trip
	lastErr error     // error of the last round trip, nil after success
}

func newPump(e *Redis, shards []*redisShard) *pump {
	sig := 0 // one signal stream for all shards on a single server
	if e.cluster {
		sig = shards[0].idx
	}
	depth := e.cfg.PublishQueue
	return &pump{
		e:           e,
		shards:      shards,
		sigKey:      shardKey(e.cfg.Prefix, sig, "#signal"),
		wakeKey:     shardKey(e.cfg.Prefix, shards[0].idx, "#wake:"+e.node),
		reqs:        make(chan *pubReq, depth),
		kick:        make(chan struct{}, 1),
		blockRes:    make(chan blockResult, 1),
		sigRooms:    make(map[string]struct{}),
		scriptRooms: make(map[string]int),
		expires:     make(map[string]time.Time),
		refreshTTL:  min(e.cfg.TTL/16, time.Hour),
		peers:       make(map[string]uint64),
		lastOK:      time.Now(),
		verifyAll:   true,
		epochDue:    true,
	}
}

// poke makes the pump read its dirty rooms soon: it wakes the pump's
// goroutine and, if the pump is blocked on its signal streams, the
// blocking read (through the wake stream). Called after marking rooms
// dirty, so that either the pump sees them before it blocks or the wake
// ends its block.
func (p *pump) poke(ctx context.Context) {
	select {
	case p.kick <- struct{}{}:
	default:
	}
	if !p.blocking.Load() || !p.wakeSent.CompareAndSwap(false, true) {
		return
	}
	e := p.e
	res := e.client.DoMulti(ctx,
		e.client.B().Xadd().Key(p.wakeKey).Maxlen().Threshold("1").Id("*").FieldValue().FieldValue("w", "1").Build(),
		e.client.B().Arbitrary("PEXPIRE").Keys(p.wakeKey).Args(e.ttlMs).Build(),
	)
	if err := res[0].Error(); err != nil && e.log.Enabled(ctx, slog.LevelDebug) {
		e.log.Debug("stream: wake pump", "err", err)
	}
}

// run is the pump's loop. It returns once Close stopped it and every
// queued message has had its answer.
func (p *pump) run(ctx context.Context) {
	defer p.e.running.Done()
	defer p.disconnect()
	for {
		// The first retry after a failure is immediate: a connection that
		// broke while idle (Redis restarted) fails once and is replaced.
		// Only a second failure in a row means Redis is down.
		if p.failures > 1 && !p.backoff(ctx) {
			p.drain(ctx)
			return
		}
		if len(p.pending) == 0 && (p.blocking.Load() || !p.readDue(time.Now())) {
			// Nothing to send now: block on the signals (unless a blocking
			// read is in flight already) and wait for work.
			var retry <-chan time.Time
			if d := time.Until(p.readRetry); d > 0 {
				// Reads are refused by Redis: wait to try again, and
				// meanwhile keep publishing.
				t := time.NewTimer(d)
				defer t.Stop()
				retry = t.C
			} else {
				p.startBlock(ctx)
			}
			select {
			case r := <-p.reqs:
				p.pending = append(p.pending, r)
			case <-p.kick:
			case <-retry:
			case br := <-p.blockRes:
				p.onBlock(br)
			case <-p.e.stop:
				p.drain(ctx)
				return
			}
			continue
		}
		// Under load, start round trips that read at most every window,
		// so that each carries more, on a grid shared by all nodes.
		if w := p.window(); w > 0 && p.busy && !p.blocking.Load() {
			// The grid is wall-clock time: never wait more than a window,
			// even when the clock was set back.
			if d := min(time.Until(nextTick(p.lastTick, w)), w); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-p.e.stop:
					t.Stop()
				}
			}
		}
		p.take()
		if err := p.roundTrip(ctx, !p.blocking.Load() && p.readDue(time.Now())); err != nil {
			p.fail(err)
		}
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
// the last read found something, a full read is due, or the pump is
// recovering.
func (p *pump) readDue(now time.Time) bool {
	if now.Before(p.readRetry) {
		return false
	}
	if p.readAgain || p.verifyAll || p.sweepDue(now) {
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

// startBlock starts a blocking read of the signal and wake streams unless
// one is in flight or a room became dirty meanwhile. Its result arrives on
// blockRes.
func (p *pump) startBlock(ctx context.Context) {
	if p.blocking.Load() {
		return
	}
	p.wakeSent.Store(false)
	p.blocking.Store(true)
	if p.readDue(time.Now()) {
		// Subscribe marked a room after the caller looked: read it now.
		p.blocking.Store(false)
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return
	}
	e := p.e
	p.busy = false
	cmd := e.client.B().Xread().Count(signalCount).Block(e.block).Streams().
		Key(p.sigKey, p.wakeKey).Id(p.sigLast.String(), p.wakeLast.String()).Build().UnblockOnCancel()
	epoch := p.epoch
	go func() {
		rctx, cancel := context.WithTimeout(ctx, e.readDeadline)
		msg, err := e.client.Do(rctx, cmd).ToMessage()
		cancel()
		p.blockRes <- blockResult{msg, err, epoch}
	}()
}

// onBlock handles the end of a blocking read.
func (p *pump) onBlock(br blockResult) {
	p.blocking.Store(false)
	p.e.stats.blockingReads.Add(1)
	if br.epoch != p.epoch {
		// Started before a failure the pump has recovered from: its
		// connection may have broken with the old one. The next read
		// re-reads everything anyway (verifyAll).
		return
	}
	if br.err != nil {
		if rueidis.IsRedisNil(br.err) {
			p.healthy()
			return // BLOCK expired: readDue now asks for a full read
		}
		if p.e.closed.Load() {
			return
		}
		if isRedisErr(br.err) {
			p.readRefused(fmt.Errorf("XREAD BLOCK %s: %w", p.sigKey, br.err))
			return
		}
		p.fail(fmt.Errorf("XREAD BLOCK signals: %w", br.err))
		return
	}
	p.healthy()
	before, wake := p.foreign, p.wakeLast
	if err := forEachStream(br.reply, p.collectSignals); err != nil {
		p.fail(err)
		return
	}
	// Only this node's own signals: nothing to read (its rooms are marked
	// already); block again. Another node's signal or a wake: read.
	if p.foreign != before || p.wakeLast != wake {
		p.readAgain = true
	}
}

// collectSignals marks the rooms named by the entries of the signal
// stream in an XREAD reply, and notes the last signal and wake IDs.
func (p *pump) collectSignals(key string, v rueidis.RedisMessage) {
	entries, err := v.ToArray()
	if err != nil || len(entries) == 0 {
		return
	}
	if key == p.wakeKey {
		if id, ok := entryID(&entries[len(entries)-1]); ok {
			p.wakeLast = id
		}
		return
	}
	// A full batch: the pump is far behind, and the stream may have been
	// trimmed past what it read; read every room next time.
	p.sigFull = len(entries) >= min(signalCount, max(p.e.cfg.ReadCount, 1))
	for i := range entries {
		id, ok := entryID(&entries[i])
		if !ok {
			continue
		}
		p.sigLast = id
		kv, _ := entries[i].ToArray()
		fields, _ := kv[1].ToArray()
		if len(fields) >= 2 {
			// This node's own signals name rooms it marked itself when it
			// published to them.
			if f, _ := fields[0].ToString(); f == fieldNode {
				n, _ := fields[1].ToString()
				if n == p.e.node {
					continue
				}
				p.sawNode(n, id)
			}
		}
		p.foreign++
		for j := 0; j+1 < len(fields); j += 2 {
			if f, _ := fields[j].ToString(); f != fieldRoom {
				continue
			}
			names, _ := fields[j+1].ToString()
			for name := range strings.SplitSeq(names, " ") {
				s := p.e.shards[p.e.shardOf(name)]
				if s.pump != p {
					continue
				}
				s.mu.Lock()
				if r := s.roomByName(name); r != nil && !r.stuck {
					s.markDirty(r)
				}
				s.mu.Unlock()
			}
		}
	}
}

// roundTrip sends what is pending and, when read is set, the read, in one
// pipelined round trip, then answers the senders and delivers what was
// read. A nil error means every command got an answer from Redis.
func (p *pump) roundTrip(ctx context.Context, read bool) error {
	e := p.e
	if err := p.connect(ctx); err != nil {
		p.refuse(fmt.Errorf("%w: %w", ErrUnavailable, err))
		return err
	}
	now := time.Now()
	p.cmds, p.sent = p.cmds[:0], p.sent[:0]
	epochCmd := -1
	if p.epochDue {
		// The epoch keys before anything is published on a new
		// connection: if Redis lost the shards' data, they say since when
		// (redis_history.go).
		epochCmd = len(p.cmds)
		p.cmds = append(p.cmds, p.epochCmds()...)
	}
	clear(p.sigRooms)
	clear(p.scriptRooms)
	p.sigNames = p.sigNames[:0]
	for _, name := range p.owed {
		p.signal(name)
	}
	clear(p.owed)
	p.owed = p.owed[:0]
	p.scripts = p.scripts[:0]
	for _, r := range p.pending {
		if now.After(r.deadline) {
			p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w: not sent within REDIS_TIMEOUT (%v)", r.room, ErrUnavailable, e.cfg.Timeout))
			continue
		}
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
		p.sent = append(p.sent, r)
		p.signal(r.room)
		// Read the room in this round trip too when it has members here
		// besides the sender: the XREAD runs after the XADD on the same
		// connection.
		if r.alone {
			continue
		}
		s := r.shard
		s.mu.Lock()
		if rm := s.rooms[r.key()]; rm != nil && !rm.stuck {
			s.markDirty(rm)
			read = read || (!p.blocking.Load() && !p.closing)
		}
		s.mu.Unlock()
	}
	clear(p.pending)
	p.pending = p.pending[:0]
	evalText := p.evalText && len(p.scripts) > 0
	p.buildScripts()
	sigCmd := -1
	if len(p.sigNames) > 0 {
		sigCmd = len(p.cmds)
		// Every signal entry has the same two fields, so Redis stores them
		// once per stream node: cheaper to append and to read.
		p.sigBuf = p.sigBuf[:0]
		for i, name := range p.sigNames {
			if i > 0 {
				p.sigBuf = append(p.sigBuf, ' ') // room names never hold a space
			}
			p.sigBuf = append(p.sigBuf, name...)
		}
		p.cmds = append(p.cmds, e.client.B().Xadd().Key(p.sigKey).Maxlen().Almost().Threshold(signalMaxLen).Id("*").FieldValue().
			FieldValue(fieldNode, e.node).FieldValue(fieldRoom, string(p.sigBuf)).Build())
	}
	readCmd := len(p.cmds)
	readRefused := false
	if read {
		switch err := p.prepareRead(ctx, now); {
		case err == nil:
			p.lastTick = now
		case isRedisErr(err):
			// Redis refused what the read needs first (XINFO of a key of
			// the wrong type): the publishes go out anyway, reads back
			// off, as when the XREAD itself is refused.
			p.cmds = p.cmds[:readCmd]
			p.readRefused(err)
			read, readRefused = false, true
		default:
			p.flushSent(err)
			return err
		}
	}
	if len(p.cmds) == 0 {
		return nil
	}

	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	tripStart := time.Now()
	res := p.conn.DoMulti(rctx, p.cmds...)
	cancel()
	e.stats.roundTrips.Add(1)
	e.stats.roundTripLatency.Observe(time.Since(tripStart))

	// Answer the senders, in order. After a network error or a timeout
	// rueidis may still be writing the commands, which point into the
	// requests' buffers: those are then left to the garbage collector.
	broken := false
	for _, rr := range res {
		if err := rr.Error(); err != nil && !isRedisErr(err) && !rueidis.IsRedisNil(err) {
			broken = true
			break
		}
	}
	if broken {
		p.cmds = nil // rueidis may still read the old slice
	}
	if epochCmd >= 0 && firstError(res[epochCmd:epochCmd+len(p.shards)]) == nil {
		p.epochDue = false
	}
	var failed error
	published := len(p.sent)
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
		case err == nil:
		case !broken && isNoScript(err):
			// Not run: send it again, first thing, with the script's text.
			delete(p.expires, r.key()) // its PEXPIRE may have found no key
			p.requeue = append(p.requeue, r)
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
	if sigCmd >= 0 {
		if err := res[sigCmd].Error(); err != nil {
			// The messages are stored; other nodes find them on their next
			// full read (within REDIS_BLOCK); this node reads them anyway.
			if !isRedisErr(err) {
				failed = err
			}
			// Name the rooms again in the next round trip's signal.
			for _, name := range p.sigNames[:min(len(p.sigNames), maxOwed)] {
				p.owed = append(p.owed, strings.Clone(name))
			}
			if time.Since(p.sigFailLogged) >= badLogEvery {
				e.log.Warn("stream: signal write failed; it is sent again with the next round trip, and other nodes deliver these messages within REDIS_SWEEP at worst",
					"rooms", len(p.sigNames), "err", err)
				p.sigFailLogged = time.Now()
			}
		}
	}
	if failed != nil {
		return fmt.Errorf("round trip: %w", failed)
	}
	found := 0
	if read {
		var err error
		if found, err = p.deliver(ctx, res[readCmd:]); err != nil {
			if isRedisErr(err) {
				// Redis refused the read (a key of the wrong type, an ACL):
				// the publishes went through; retry the read later.
				p.readRefused(err)
				return nil
			}
			return err
		}
		if p.readFailures > 0 {
			p.e.log.Info("stream: Redis reads work again", "pump", p.wakeKey, "refused", p.readFailures)
			p.readFailures = 0
		}
	} else if !readRefused {
		p.healthy()
	}
	switch {
	case published > 0 || found > 0:
		p.activity(now)
	case read:
		p.readAgain, p.busy = false, false
	}
	return nil
}

// signal names room in this round trip's signal, once.
func (p *pump) signal(room string) {
	if _, ok := p.sigRooms[room]; !ok {
		p.sigRooms[room] = struct{}{}
		p.sigNames = append(p.sigNames, room)
	}
}

// sweepDue reports whether the pump's next read must read every room:
// Sweep has passed since it last did.
func (p *pump) sweepDue(now time.Time) bool { return now.Sub(p.lastFull) >= p.e.cfg.Sweep }

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

// peerActive is how recently (by signal IDs, Redis time) another node
// must have published to count as active for pacing.
const peerActive = 2000 // ms

// maxOwed bounds the rooms a pump keeps to name again after failed
// signal writes.
const maxOwed = 4096

// maxWindowFactor caps the pacing window at this many BatchWindows.
const maxWindowFactor = 8

// sawNode notes a signal of another node, with the signal's ID, and
// recounts the active nodes at most every 100 ms of Redis time.
func (p *pump) sawNode(node string, id ID) {
	if t, ok := p.peers[node]; !ok {
		p.peers[strings.Clone(node)] = id.Ms
	} else if id.Ms > t {
		p.peers[node] = id.Ms
	}
	if id.Ms < p.peersNewest+100 {
		return
	}
	p.peersNewest = id.Ms
	p.peersActive = 0
	for n, t := range p.peers {
		switch {
		case t+peerActive >= id.Ms:
			p.peersActive++
		case t+10*peerActive < id.Ms:
			delete(p.peers, n) // gone
		}
	}
}

// window is the pacing of round trips under load: BatchWindow with two
// active nodes (this one and one other), and proportionally longer with
// more, up to maxWindowFactor times, so that all nodes together start
// about the same number of round trips per second however many there
// are: Redis's cost per message then does not grow with the nodes.
func (p *pump) window() time.Duration {
	w := p.e.cfg.BatchWindow
	nodes := p.peersActive + 1
	if w <= 0 || nodes <= 2 {
		return w
	}
	return w * time.Duration(min(nodes, 2*maxWindowFactor)) / 2
}

// nextTick is when a busy pump whose last reading round trip started at
// last starts the next one: the first multiple of w since the zero time
// (wall clock) that is at least w/2 after last. Every node paces on the
// same grid, so under load their round trips reach Redis at about the
// same moment and Redis wakes once for several of them instead of once
// each: on the six-node benchmark that cut Redis's CPU per message by
// about a tenth (BENCHMARKS.md section 6). Once on the grid a pump keeps
// exactly one window between round trips.
func nextTick(last time.Time, w time.Duration) time.Time {
	t := last.Add(w / 2)
	n := t.Truncate(w)
	if n.Before(t) {
		n = n.Add(w)
	}
	return n
}

// activity notes a round trip, started at t, that published or read
// something. Two within a few windows mean load: the pump keeps reading
// without blocking (a blocking read would be woken by the next signal at
// once) and paces its round trips. A lone message leaves it idle.
func (p *pump) activity(t time.Time) {
	w := p.e.cfg.BatchWindow
	p.readAgain = w <= 0 || t.Sub(p.lastActive) < 4*w
	p.busy = p.readAgain
	p.lastActive = t
}

// readRefused records a read that Redis answered with an error: reads
// pause (backoff) while publishes go on, and Health reports the error
// until a read succeeds.
func (p *pump) readRefused(err error) {
	p.e.stats.readsRefused.Add(1)
	p.readFailures++
	cfg := p.e.cfg
	d := cfg.BackoffMax
	if p.readFailures < 30 {
		d = min(cfg.BackoffMin<<(p.readFailures-1), cfg.BackoffMax)
	}
	p.readRetry = time.Now().Add(d)
	p.hmu.Lock()
	p.lastErr = err
	p.hmu.Unlock()
	if p.readFailures == 1 {
		p.e.log.Warn("stream: Redis refused a read; messages are still stored, delivery waits", "pump", p.wakeKey, "err", err)
	}
}

// isRedisErr reports whether err is (or wraps) an error reply from Redis,
// as opposed to a failure to get one.
func isRedisErr(err error) bool {
	var re *rueidis.RedisError
	return errors.As(err, &re) && re != rueidis.Nil
}

// prepareRead appends the read of the round trip to p.cmds: the signal
// stream and the dirty rooms (every room when a full read is due), in
// XREADs of at most scanChunk keys. First it checks, with XINFO STREAM,
// the rooms that may have lost entries.
func (p *pump) prepareRead(ctx context.Context, now time.Time) error {
	e := p.e
	full := p.verifyAll || p.sigFull || p.sweepDue(now)
	if !p.sigInit {
		// Start from the signal stream's end as it is before the first full
		// read: later publishes signal after it, earlier ones are found by
		// that read. (Never "$", which loses what comes in between.)
		ictx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		in, err := parseStreamInfo(p.conn.DoMulti(ictx, e.client.B().XinfoStream().Key(p.sigKey).Build())[0])
		cancel()
		if err != nil {
			return fmt.Errorf("XINFO STREAM %s: %w", p.sigKey, err)
		}
		p.sigLast, p.sigInit, full = in.lastGen, true, true
	}
	p.keys, p.ids = append(p.keys[:0], p.sigKey), append(p.ids[:0], p.sigLast.String())
	for _, s := range p.shards {
		var checks []*redisRoom
		s.mu.Lock()
		add := func(r *redisRoom) {
			if !r.subscribed && !r.last.Less(r.stop) {
				s.drop(r) // unsubscribed and drained
				return
			}
			p.keys = append(p.keys, r.key)
			p.ids = append(p.ids, r.cursor())
			if p.verifyAll || r.check || r.fresh() {
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
		s.mu.Unlock()
		if len(checks) > 0 {
			if err := e.verify(ctx, p.conn, s, checks); err != nil {
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
		p.lastFull, p.verifyAll, p.sigFull = now, false, false
	}
	count := int64(max(e.cfg.ReadCount, 1)) + 1 // the last entry read comes first again (redisRoom.cursor)
	for start := 0; start < len(p.keys); start += scanChunk {
		end := min(start+scanChunk, len(p.keys))
		p.cmds = append(p.cmds, e.client.B().Xread().Count(count).Streams().Key(p.keys[start:end]...).Id(p.ids[start:end]...).Build())
	}
	return nil
}

// deliver decodes the replies of the read and calls the Handler.
// It returns how many entries and foreign signals the read found.
func (p *pump) deliver(ctx context.Context, res []rueidis.RedisResult) (found int, err error) {
	e := p.e
	for _, rr := range res {
		reply, err := rr.ToMessage()
		if err != nil {
			if rueidis.IsRedisNil(err) {
				continue
			}
			return 0, fmt.Errorf("XREAD: %w", err)
		}
		err = forEachStream(reply, func(key string, v rueidis.RedisMessage) {
			if key == p.sigKey || key == p.wakeKey {
				before := p.foreign
				p.collectSignals(key, v)
				found += p.foreign - before
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
	_, rest, ok := strings.Cut(key, ":{")
	if !ok {
		return nil
	}
	num, _, ok := strings.Cut(rest, "}")
	i, err := strconv.Atoi(num)
	if !ok || err != nil || i < 0 || i >= len(p.e.shards) {
		return nil
	}
	if s := p.e.shards[i]; s.pump == p {
		return s
	}
	return nil
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

// refuse answers every pending and queued message with err: they were
// never sent.
func (p *pump) refuse(err error) {
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

// connect makes sure the pump has a connection. On a single server or
// behind Sentinel that is a dedicated one; when the previous one failed
// with a round trip in doubt, it is killed from the new one first, so that
// nothing sent later can overtake what it carried.
func (p *pump) connect(ctx context.Context) error {
	if p.conn != nil {
		return nil
	}
	e := p.e
	cctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	if e.cluster {
		p.conn = e.client // the epoch keys go first in the next round trip
		return nil
	}
	var err error
	// A pooled connection may have broken while idle (Redis restarted):
	// rueidis drops it when it is given back, so try a few.
	for range 4 {
		dc, release := e.client.Dedicate()
		cmds := []rueidis.Completed{e.client.B().ClientId().Build()}
		if p.sealID != 0 {
			cmds = append(cmds, e.client.B().ClientKill().Id(p.sealID).Build())
		}
		res := dc.DoMulti(cctx, cmds...)
		var id int64
		id, err = res[0].AsInt64()
		if err == nil && len(res) > 1 {
			// "No such client" is fine: the old connection is gone.
			if kerr := res[1].Error(); kerr != nil && !isRedisErr(kerr) {
				err = kerr
			}
		}
		if err == nil {
			p.conn, p.release, p.clientID, p.sealID = dc, release, id, 0
			return nil
		}
		go release()
		if isRedisErr(err) || cctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("connect pump: %w", err)
}

// epochCmds writes the epoch key of each of the pump's shards unless it
// exists (SET NX).
func (p *pump) epochCmds() []rueidis.Completed {
	cmds := make([]rueidis.Completed, len(p.shards))
	v := nowMs()
	for i, s := range p.shards {
		cmds[i] = p.e.client.B().Set().Key(s.epochKey).Value(v).Nx().Build()
	}
	return cmds
}

// firstError returns the first error of res other than a nil reply.
func firstError(res []rueidis.RedisResult) error {
	for _, rr := range res {
		if err := rr.Error(); err != nil && !rueidis.IsRedisNil(err) {
			return err
		}
	}
	return nil
}

// disconnect gives the dedicated connection back, if any. A broken one
// is closed in the background: closing a connection to a silent server
// takes rueidis a second or more.
func (p *pump) disconnect() {
	if p.release != nil {
		go p.release()
	}
	p.conn, p.release = nil, nil
}

// fail records a failed round trip: the connection is dropped (and, if
// dedicated, killed before the next is used), every room is read and
// checked again once Redis answers.
func (p *pump) fail(err error) {
	if p.e.closed.Load() && errors.Is(err, rueidis.ErrClosing) {
		return
	}
	p.e.stats.roundTripErrors.Add(1)
	if p.release != nil {
		p.sealID = p.clientID
	}
	p.disconnect()
	p.verifyAll, p.epochDue = true, true
	p.epoch++
	p.hmu.Lock()
	p.lastErr = err
	p.hmu.Unlock()
	if p.failures == 0 {
		p.e.failing.Add(1)
		p.e.log.Warn("stream: Redis round trip failed; backing off", "pump", p.wakeKey, "err", err)
	}
	p.failures++
}

// healthy records a successful round trip.
func (p *pump) healthy() {
	now := time.Now()
	p.hmu.Lock()
	p.lastOK, p.lastErr = now, nil
	p.hmu.Unlock()
	if p.failures > 0 {
		p.e.failing.Add(-1)
		p.e.log.Info("stream: Redis round trips work again", "pump", p.wakeKey, "failures", p.failures)
		p.failures = 0
	}
	if now.Sub(p.lastSweep) > p.refreshTTL {
		for k, t := range p.expires {
			if now.Sub(t) >= p.refreshTTL {
				delete(p.expires, k)
			}
		}
		p.lastSweep = now
	}
}

// backoff waits before the next attempt after repeated failures:
// BackoffMin doubled per failure up to BackoffMax, with "equal jitter" (a random
// point in its upper half) so that nodes do not reconnect in lockstep.
// Messages published meanwhile are refused at once: Redis is known to be
// down. It reports false when the engine is closing.
func (p *pump) backoff(ctx context.Context) bool {
	cfg := p.e.cfg
	d := cfg.BackoffMax
	if p.failures < 30 {
		d = min(cfg.BackoffMin<<(p.failures-2), cfg.BackoffMax)
	}
	d = d/2 + rand.N(d/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	down := fmt.Errorf("%w: Redis does not answer; retrying", ErrUnavailable)
	p.refuse(down)
	for {
		select {
		case <-t.C:
			return true
		case r := <-p.reqs:
			p.answer(r, ID{}, fmt.Errorf("stream: publish to room %q: %w", r.room, down))
		case <-p.kick:
		case br := <-p.blockRes:
			p.blocking.Store(false)
			_ = br
		case <-p.e.stop:
			return false
		case <-ctx.Done():
			return false
		}
	}
}

// drain publishes what is queued once Close stopped the pump, without
// reading, and answers the rest when Redis does not take it.
func (p *pump) drain(ctx context.Context) {
	p.closing = true
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
