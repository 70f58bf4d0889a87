package stream

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

var _ Engine = (*Redis)(nil)

// Entry fields of a room's stream: XADD <key> MAXLEN ~ <n> * s <sender> p <payload>.
const (
	fieldSender  = "s" // the sender's connection ID, in decimal
	fieldPayload = "p" // the opaque payload
)

const (
	// scanChunk bounds the rooms of one XREAD.
	scanChunk = 512
)

// maxPooledBuf is the largest publish buffer kept for reuse.
const maxPooledBuf = 64 << 10

// slowDelivery is how long delivering one reply may take before the reader
// suspects that Redis trimmed entries meanwhile, and checks every room of
// its shard before reading on.
const slowDelivery = 50 * time.Millisecond

// Redis is the engine that shares rooms between gateway nodes through
// Redis Streams, one stream per room.
//
// Keys. A room lives in the stream "<prefix>:{<shard>}:<room>", where
// shard = FNV-1a(room) mod ReadShards. The hash tag puts each shard in one
// Redis Cluster slot. A
// CID lives for DedupeWindow in "<prefix>:{<shard>}#cid:<len(room)>:<room>:<cid>";
// presence in "<prefix>:{<shard>}#members:<room>" and under
// "<prefix>:{presence}:" (redis_presence.go).
//
// Pumps. All Redis traffic of the hot path goes through pumps: one per node
// on a single server or behind Sentinel, one per shard on a Cluster. A
// pump is one goroutine that sends, in one pipelined round trip, every
// message published since its last one (XADD MAXLEN ~ to each room, a
// PEXPIRE when a room's TTL is due for a refresh) together with its read:
// one XREAD of the rooms that got entries, from the last ID it read of
// each (never "$"). It keeps one round trip in flight, so batches grow with the
// load and a sender's messages are stored in the order sent. Under load
// (the last round trip carried entries), round trips start at most every
// BatchWindow, on multiples of it (wall clock), so that the round trips
// of all nodes reach Redis together; when idle there is no wait. Which
// rooms got entries from other nodes Redis itself tells the pump: its
// connections track the keys they read (CLIENT TRACKING ON NOLOOP), and a
// write by another node sends one invalidation naming the room
// (redis_wake.go). An idle pump sends nothing but a PING every Block.
// Every Sweep it reads all its rooms all the same.
//
// Publish outcomes. Publish never blocks: the message waits in its pump's
// queue (PublishQueue; when full it is refused at once with
// ErrUnavailable). A message is acknowledged with its ID once Redis
// answered the XADD. It fails with ErrUnavailable when it was never sent
// (Redis down, or not sent within Timeout) or Redis refused it, and with
// ErrUnconfirmed when it was sent but Redis did not answer in time: it
// may then be stored. A sender waits at most twice Timeout. On a single
// server or behind Sentinel the pump uses a dedicated connection and,
// after a round trip fails, kills that connection from its next one
// before sending anything else (CLIENT KILL ID <id> ADDR <addr>: after a
// restart or failover the ID alone may name another client), so a message in doubt is
// stored before the sender's later messages or never.
//
// Delivery. The Handler is called from the pump's goroutine, in stream
// order per room, one room at a time: a slow Handler delays the pump and
// makes Health fail. The Payload points into the reply and is valid,
// read-only, during the call only.
//
// Subscribe reads the room's last ID (XINFO STREAM's last-generated-id,
// 0-0 when the key does not exist), adds the room to its shard from that
// ID and makes the pump read it, so every message published after Subscribe returns is
// delivered. Unsubscribe reads the last ID again: messages up to it,
// published while the room was subscribed, are still delivered, later
// ones are not.
//
// Deduplication. A message with a CID goes through the same pump, in
// order with the others, as a Lua script call instead of the XADD: it
// appends the entry unless the CID's dedupe key holds the ID of an earlier
// one (within DedupeWindow, from any node), which it then acknowledges
// instead. Messages without CID keep the plain XADD. See redis_dedupe.go.
//
// History and Last read the room's stream (XRANGE, XREVRANGE) on the
// shared client, bounded by Timeout; History's truncated flag is worked
// out from the entries themselves (redis_history.go). Presence is a hash
// per room (node → members), read through the client-side cache, and a
// live key per node (redis_presence.go).
//
// Failures. A pump that fails backs off (exponential, with jitter),
// reconnects, checks each room's stream (XINFO STREAM) and resumes from
// its last IDs, so accepted messages are delivered exactly once and in
// order, unless Redis trimmed or lost them: that is logged as a warning.
// Trimming is detected by counting entries against Redis's entries-added
// (Redis 7 and later), checked after failures, after a full batch and
// after a slow delivery. Entries the engine cannot decode are skipped and
// logged (rate-limited).
type Redis struct {
	cfg     RedisConfig
	handler Handler
	log     *slog.Logger
	client  rueidis.Client
	node    string // random ID of this engine, names its presence keys
	shards  []*redisShard
	pumps   []*pump
	// presence holds the member counts; its goroutine publishes them.
	presence *presence
	cluster  bool // Redis Cluster: one pump per shard

	maxLen   string // MAXLEN ~ argument
	ttlMs    string // PEXPIRE argument
	dedupeMs string // DedupeWindow in milliseconds, the script's SET PX
	// readDeadline is how old a pump's last round trip may be before
	// Health calls it stuck: Block (an idle pump's PING) plus Timeout.
	readDeadline time.Duration
	// activePeers is how many other nodes published within peerActive,
	// as presence last read it: it sets the pacing window.
	activePeers atomic.Int32
	// primary, behind Sentinel, is the address of the server the shared
	// client reaches: the primary (redis_watch.go). Nil until known.
	primary atomic.Pointer[string]
	// lastPublish is when (unix ms) a pump of this node last published:
	// presence tells the other nodes whether this one is active.
	lastPublish atomic.Int64

	reqs sync.Pool // *pubReq

	// pubMu orders Publish against Close: Publish enqueues under RLock
	// after checking closed; Close sets closed under Lock, so once it has,
	// no request can reach a pump's queue.
	pubMu   sync.RWMutex
	closed  atomic.Bool
	failing atomic.Int32 // pumps whose last round trip failed
	stats   counters
	stop    chan struct{}
	cancel  context.CancelFunc // ends the pumps' and presence's round trips in flight
	running sync.WaitGroup
}

// NewRedis validates cfg, connects to Redis and starts the pumps. The
// error names the environment variable to fix, or wraps ErrUnavailable
// when Redis cannot be reached. h receives the messages of subscribed
// rooms, as the Redis type describes. logger must not be nil.
func NewRedis(cfg RedisConfig, h Handler, logger *slog.Logger) (*Redis, error) {
	if h == nil {
		return nil, errors.New("stream: NewRedis needs a Handler")
	}
	if logger == nil {
		return nil, errors.New("stream: NewRedis needs a logger")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	var nodeID [8]byte
	_, _ = crand.Read(nodeID[:])
	e := &Redis{
		cfg:          cfg,
		handler:      h,
		log:          logger,
		node:         hex.EncodeToString(nodeID[:]),
		maxLen:       strconv.FormatInt(cfg.MaxLen, 10),
		ttlMs:        strconv.FormatInt(cfg.TTL.Milliseconds(), 10),
		dedupeMs:     strconv.FormatInt(cfg.DedupeWindow.Milliseconds(), 10),
		readDeadline: cfg.Block + cfg.Timeout,
		stop:         make(chan struct{}),
	}
	e.reqs.New = func() any { return &pubReq{b: make([]byte, 0, 512)} }

	// The shards exist before the client and the pumps, whose listener
	// connections report invalidations (redis_wake.go).
	e.shards = make([]*redisShard, cfg.ReadShards)
	for i := range e.shards {
		e.shards[i] = &redisShard{idx: i, keyPre: shardKey(cfg.Prefix, i, ":"), cidPre: shardKey(cfg.Prefix, i, "#cid:"),
			epochKey: shardKey(cfg.Prefix, i, "#epoch"), rooms: make(map[string]*redisRoom)}
	}
	e.client, err = rueidis.NewClient(clientOption(cfg, tlsCfg, e.node))
	if err != nil {
		return nil, fmt.Errorf("stream: connect to Redis at %s: %w: %w (check IP_REDIS/PORT_REDIS or REDIS_ADDRS, that Redis runs, and that it is Redis 7 or later)",
			strings.Join(cfg.Addrs, ","), ErrUnavailable, err)
	}
	e.cluster = e.client.Mode() == rueidis.ClientModeCluster

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.writeEpochs()
	if err := e.startPumps(ctx); err != nil {
		cancel()
		e.client.Close()
		return nil, err
	}
	e.presence = newPresence(cfg, e.node)
	e.running.Add(1)
	go e.runPresence(ctx)
	e.running.Add(1)
	go e.watch(ctx)
	return e, nil
}

// clientOption is the rueidis configuration of cfg, for the node named
// node.
func clientOption(cfg RedisConfig, tlsCfg *tls.Config, node string) rueidis.ClientOption {
	dialer := net.Dialer{Timeout: cfg.Timeout, KeepAlive: time.Second}
	opt := rueidis.ClientOption{
		InitAddress:      cfg.Addrs,
		ShuffleInit:      true,
		Username:         cfg.Username,
		Password:         cfg.Password,
		SelectDB:         cfg.DB,
		TLSConfig:        tlsCfg,
		Dialer:           dialer,
		DialCtxFn:        dialRedis,
		ClientName:       "chatgw-" + node,
		ConnWriteTimeout: cfg.Timeout,
		MaxFlushDelay:    cfg.FlushDelay,
		// One pipelined connection per Redis node: commands sent in order
		// from one goroutine arrive in order.
		PipelineMultiplex: 0,
		// Client tracking stays on (rueidis's default, OPTIN: the shared
		// connections track nothing, as the engine makes no DoCache call),
		// so that the pumps' connections can switch to tracking what they
		// read (redis_wake.go). rueidis retries read-only commands (XINFO,
		// XREAD) after a network error, which also replaces a connection
		// broken while idle; it never retries a write: a failed Publish is
		// the caller's to retry.
	}
	if cfg.SentinelMaster != "" {
		opt.Sentinel = rueidis.SentinelOption{
			MasterSet:               cfg.SentinelMaster,
			Username:                cfg.SentinelUsername,
			Password:                cfg.SentinelPassword,
			TLSConfig:               tlsCfg,
			Dialer:                  dialer,
			TopologyRefreshInterval: 5 * time.Second,
		}
	}
	return opt
}

// startPumps starts the pumps: one per shard on a Cluster (each shard is
// one slot), one for every shard otherwise.
func (e *Redis) startPumps(ctx context.Context) error {
	groups := [][]*redisShard{e.shards}
	if e.cluster {
		groups = groups[:0]
		for _, s := range e.shards {
			groups = append(groups, []*redisShard{s})
		}
	}
	for _, g := range groups {
		p, err := newPump(e, g)
		if err != nil {
			for _, p := range e.pumps {
				p.w.close()
			}
			e.pumps = nil
			return err
		}
		e.pumps = append(e.pumps, p)
	}
	for _, p := range e.pumps {
		for _, s := range p.shards {
			s.pump = p
		}
		e.running.Add(1)
		go p.run(ctx)
	}
	return nil
}

// writeEpochs writes every shard's epoch key that does not exist (SET
// NX), once, before the engine accepts anything: from then on Redis is
// known to hold the shards' data (see redis_history.go), whichever shards
// the node's rooms use. A failure is only logged: each pump writes its
// shards' keys again before it publishes, and History before it reads.
func (e *Redis) writeEpochs() {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	defer cancel()
	v := nowMs()
	cmds := make(rueidis.Commands, len(e.shards))
	for i, s := range e.shards {
		cmds[i] = e.client.B().Set().Key(s.epochKey).Value(v).Nx().Build()
	}
	if err := firstError(e.client.DoMulti(ctx, cmds...)); err != nil {
		e.log.Warn("stream: could not write the shards' epoch keys at start; the pumps will", "err", err)
	}
}

// shardOf returns the shard of room: FNV-1a of its name modulo the shard
// count. Every node must compute the same, so this never changes.
func (e *Redis) shardOf(room string) int {
	h := uint32(2166136261)
	for i := 0; i < len(room); i++ {
		h ^= uint32(room[i])
		h *= 16777619
	}
	return int(h % uint32(len(e.shards)))
}

// key returns the stream key of room.
func (e *Redis) key(room string) string {
	return e.shards[e.shardOf(room)].keyPre + room
}

// Publish queues m for its room's pump and returns at once; ack is called
// from the pump's goroutine once Redis answered (or from Publish itself
// when the message is refused at once: engine closed, queue full, Redis
// known to be down). See the Redis type for what each outcome means.
// Publish is safe for concurrent use; one caller's messages are stored in
// the order of its calls, with or without CID. A message whose CID was
// published to the room within DedupeWindow, by any node, is acknowledged
// with the first one's ID and appends nothing.
func (e *Redis) Publish(room string, m Message, ack Ack, ref any) {
	s := e.shards[e.shardOf(room)]
	r := e.reqs.Get().(*pubReq)
	r.b = append(append(r.b[:0], s.keyPre...), room...)
	r.nk = len(r.b)
	r.b = strconv.AppendUint(r.b, m.Sender, 10)
	r.ns = len(r.b)
	r.b = append(r.b, m.Payload...)
	r.np = len(r.b)
	if r.dedupe = m.CID != ""; r.dedupe {
		r.b = appendDedupeKey(r.b, s.cidPre, room, m.CID)
	}
	r.room, r.shard, r.ack, r.ref, r.alone = room, s, ack, ref, m.Alone
	r.deadline = time.Now().Add(e.cfg.Timeout)

	e.pubMu.RLock()
	if e.closed.Load() {
		e.pubMu.RUnlock()
		e.putReq(r)
		e.stats.outcome(ErrClosed)
		ack(ref, ID{}, ErrClosed)
		return
	}
	select {
	case s.pump.reqs <- r:
		e.pubMu.RUnlock()
		s.pump.w.wake()
	default:
		e.pubMu.RUnlock()
		e.putReq(r)
		e.stats.outcome(ErrUnavailable)
		ack(ref, ID{}, fmt.Errorf("stream: publish to room %q: %w: %d messages already wait for Redis (PUBLISH_QUEUE)",
			room, ErrUnavailable, cap(s.pump.reqs)))
	}
}

// Stats returns the engine's counters.
func (e *Redis) Stats() Stats { return e.stats.snapshot() }

// outcome counts the outcome of r and its latency.
func (e *Redis) outcome(r *pubReq, err error) {
	e.stats.outcome(err)
	e.stats.publishLatency.Observe(time.Since(r.deadline.Add(-e.cfg.Timeout)))
}

// putReq returns r to the pool, unless its buffer grew large.
func (e *Redis) putReq(r *pubReq) {
	r.ack, r.ref, r.room, r.shard = nil, nil, "", nil
	if cap(r.b) <= maxPooledBuf {
		e.reqs.Put(r)
	}
}

// opError wraps err from a round trip for op on room: ErrClosed after
// Close, ErrUnavailable when Redis could not be reached or answered "not
// now" (loading, read-only replica, cluster down), Redis's own error
// otherwise.
func (e *Redis) opError(op, room string, err error) error {
	if e.closed.Load() && errors.Is(err, rueidis.ErrClosing) {
		return ErrClosed
	}
	if unavailable(err) {
		return fmt.Errorf("stream: %s room %q: %w: %w", op, room, ErrUnavailable, err)
	}
	return fmt.Errorf("stream: %s room %q: Redis refused: %w", op, room, err)
}

// unavailable reports whether err means Redis could not serve the request
// now, as opposed to refusing it.
func unavailable(err error) bool {
	re, ok := rueidis.IsRedisErr(err)
	if !ok {
		return true // network error, timeout, closed client
	}
	if re.IsLoading() || re.IsClusterDown() || re.IsTryAgain() {
		return true
	}
	msg := re.Error()
	for _, p := range []string{"READONLY", "MASTERDOWN", "NOREPLICAS", "MISCONF"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// info returns what XINFO STREAM says about the stream at key.
func (e *Redis) info(ctx context.Context, key string) (streamInfo, error) {
	return parseStreamInfo(e.client.Do(ctx, e.client.B().XinfoStream().Key(key).Build()))
}

// Subscribe starts delivery of room's messages and returns the room's
// last ID. The room's pump reads that ID (XINFO STREAM) in its next round
// trip, shared with the other joins and the publishes of the moment
// (redis_join.go), so every message published after Subscribe returns is
// delivered. When Redis cannot be reached the error wraps ErrUnavailable
// and the room is not subscribed; while a pump is failing it says so at
// once, without a round trip.
func (e *Redis) Subscribe(room string) (ID, error) {
	if e.closed.Load() {
		return ID{}, ErrClosed
	}
	s, key := e.shards[e.shardOf(room)], e.key(room)
	if n := e.failing.Load(); n > 0 {
		// Redis is known to be down: answer at once rather than make the
		// caller wait for a timeout.
		return ID{}, fmt.Errorf("stream: subscribe to room %q: %w: %d of %d pumps cannot reach Redis", room, ErrUnavailable, n, len(e.pumps))
	}
	return e.join(s, room, key)
}

// Unsubscribe stops delivery of room's messages. Messages published
// before Unsubscribe are still delivered, unless Redis cannot be reached:
// then the room is dropped at once with whatever was not delivered yet.
// A Handler call for the room may be in progress when it returns.
func (e *Redis) Unsubscribe(room string) error {
	if e.closed.Load() {
		return ErrClosed
	}
	s, key := e.shards[e.shardOf(room)], e.key(room)
	s.mu.Lock()
	r := s.rooms[key]
	active := r != nil && r.subscribed
	s.mu.Unlock()
	if !active {
		return nil
	}
	if e.failing.Load() > 0 {
		// Redis is known to be down: drop the room at once (what is not
		// delivered yet is lost to this node anyway) instead of waiting.
		s.mu.Lock()
		if r = s.rooms[key]; r != nil && r.subscribed {
			s.drop(r)
		}
		s.mu.Unlock()
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	defer cancel()
	in, err := e.info(ctx, key)
	stop := in.lastGen
	s.mu.Lock()
	if r = s.rooms[key]; r == nil || !r.subscribed {
		s.mu.Unlock()
		return nil
	}
	if err != nil || !r.last.Less(stop) {
		s.drop(r)
	} else {
		r.subscribed, r.stop = false, stop
		r.gen++
		s.markDirty(r) // leaving: read up to stop
	}
	s.mu.Unlock()
	if err != nil {
		if e.log.Enabled(ctx, slog.LevelDebug) {
			e.log.Debug("stream: unsubscribe without reaching Redis; undelivered messages of the room are dropped",
				"room", room, "err", err)
		}
		return nil
	}
	s.pump.poke()
	return nil
}

// Health returns nil while Redis answers PING within Timeout, every pump
// completed a round trip within Block + Timeout, and no room is stuck on
// an entry it cannot read; otherwise an error wrapping ErrUnavailable that
// says what is wrong.
func (e *Redis) Health() error {
	if e.closed.Load() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	defer cancel()
	if err := e.client.Do(ctx, e.client.B().Ping().Build()).Error(); err != nil {
		return fmt.Errorf("stream: Redis does not answer PING: %w: %w", ErrUnavailable, err)
	}
	now := time.Now()
	var bad []string
	for i, p := range e.pumps {
		p.hmu.Lock()
		lastOK, lastErr := p.lastOK, p.lastErr
		p.hmu.Unlock()
		switch age := now.Sub(lastOK); {
		case lastErr != nil:
			bad = append(bad, fmt.Sprintf("pump %d failing for %v: %v", i, age.Round(time.Millisecond), lastErr))
		case age > e.readDeadline:
			bad = append(bad, fmt.Sprintf("pump %d has not completed a round trip for %v (limit %v): pump or Handler stuck", i, age.Round(time.Millisecond), e.readDeadline))
		}
	}
	for _, s := range e.shards {
		s.mu.Lock()
		stuck := s.stuck
		s.mu.Unlock()
		if stuck > 0 {
			bad = append(bad, fmt.Sprintf("shard %d has %d rooms stuck on an entry whose ID cannot be decoded", s.idx, stuck))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 3 {
			bad = append(bad[:3], fmt.Sprintf("and %d more", len(bad)-3))
		}
		return fmt.Errorf("stream: Redis engine unhealthy: %s: %w", strings.Join(bad, "; "), ErrUnavailable)
	}
	return nil
}

// Close refuses new messages (ErrClosed), lets the pumps publish what is
// queued, stops delivery, waiting for Handler calls in progress or for ctx
// to end, deletes this node's presence (other nodes stop
// counting its members at once), and closes the connections.
func (e *Redis) Close(ctx context.Context) error {
	e.pubMu.Lock()
	first := e.closed.CompareAndSwap(false, true)
	e.pubMu.Unlock()
	if !first {
		return nil
	}
	close(e.stop)
	for _, p := range e.pumps {
		p.w.interrupt()
	}
	done := make(chan struct{})
	go func() {
		e.running.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		e.cancel()
		go func() { <-done; e.client.Close() }()
		return fmt.Errorf("stream: close Redis engine: pumps still running: %w", ctx.Err())
	}
	e.cancel()
	dctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	e.client.DoMulti(dctx, e.closePresence()...)
	e.client.Close()
	return nil
}
