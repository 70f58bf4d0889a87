package stream

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"
)

var _ Engine = (*Redis)(nil)

// Entry fields of a room's stream: XADD <key> MAXLEN ~ <n> * s <sender> p <payload>.
const (
	fieldSender  = "s" // the sender's connection ID, in decimal
	fieldPayload = "p" // the opaque payload
	fieldRoom    = "r" // in a signal entry: the room that got an entry
)

// Signal streams. Every publish also appends the room's name to its
// shard's signal stream ("<prefix>:{<shard>}#signal"), which each node's
// reader blocks on; the reader then reads just the signalled rooms. The
// room streams stay the record: a signal is only a hint, and every room is
// read again at least every Block (and after any failure), so a lost
// signal delays a message at most that long.
const (
	signalMaxLen = "10000" // MAXLEN ~ of a signal stream
	signalCount  = 4096    // signals read per round at most
	// scanChunk bounds the rooms of one non-blocking room XREAD.
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
// shard = FNV-1a(room) mod ReadShards. Each shard also has a signal stream,
// "<prefix>:{<shard>}#signal", shared by all nodes, and each node one wake
// stream per shard, "<prefix>:{<shard>}#wake:<node>". The hash tag puts
// them all in one Redis Cluster slot.
//
// Publish appends an entry (fields "s", the sender, and "p", the payload)
// with XADD MAXLEN ~, refreshes the key's TTL, and appends the room's name
// to the shard's signal stream, in one round trip over the shared
// auto-pipelined connection.
//
// Delivery. Each shard has a reader goroutine that blocks on XREAD over
// its signal and wake streams, on a connection of its own, then reads the
// signalled rooms without blocking, always from the last ID it has read
// for each room (never "$"). Every Block it reads all its rooms anyway, so
// a lost signal only delays a message. The Handler is called from that
// goroutine, in stream order per room; rooms of one shard are delivered
// one at a time, so a slow Handler delays its whole shard and makes Health
// fail. The Payload points into the reply and is valid, read-only, during
// the call only.
//
// Subscribe reads the room's last ID (XINFO STREAM's last-generated-id,
// 0-0 when the key does not exist), adds the room to its shard from that
// ID, and then wakes the shard's reader with an XADD to the wake stream,
// so every message published after Subscribe returns is delivered, at
// once. Unsubscribe reads the last ID again: messages up to it, published
// while the room was subscribed, are still delivered, later ones are not.
//
// Failures. A reader that fails backs off (exponential, with jitter),
// reconnects, checks each room's stream (XINFO STREAM) and resumes from
// its last IDs, so accepted messages are delivered exactly once and in
// order, unless Redis trimmed or lost them: that is logged as a warning.
// Trimming is detected by counting entries against Redis's entries-added
// (Redis 7 and later), checked after failures, after a full batch and
// after a slow delivery.
type Redis struct {
	cfg     RedisConfig
	handler Handler
	log     *slog.Logger
	client  rueidis.Client
	node    string // random ID of this engine, names its wake streams
	shards  []*redisShard

	maxLen string // MAXLEN ~ argument
	ttlMs  string // PEXPIRE argument
	block  int64  // XREAD BLOCK, in milliseconds
	// readDeadline bounds one reader round trip: Block plus Timeout.
	readDeadline time.Duration

	bufs sync.Pool // *publishBuf

	closed  atomic.Bool
	failing atomic.Int32       // readers whose last round failed
	cancel  context.CancelFunc // stops the readers
	readers sync.WaitGroup
}

// redisShard is one reader: a set of rooms read by one goroutine with one
// XREAD. Its fields are guarded by mu unless marked otherwise.
type redisShard struct {
	idx     int
	wakeKey string
	sigKey  string // the shard's signal stream, shared by all nodes
	keyPre  string // "<prefix>:{<shard>}:", the start of its rooms' keys
	scratch []byte // for building keys in roomByName; guarded by mu

	mu    sync.Mutex
	rooms map[string]*redisRoom // by stream key

	// wakeQueued is set by Subscribe and Unsubscribe when they send a wake
	// and cleared by the reader before it snapshots rooms, so that a burst
	// of changes costs one wake.
	wakeQueued atomic.Bool

	// dirty lists rooms to read in the next round: signalled, just
	// subscribed or unsubscribed, or left with more entries than one read
	// returned. Guarded by mu; a room is listed once (redisRoom.dirty).
	dirty []*redisRoom

	// Owned by the reader goroutine.
	slow     bool // the last delivery took slowDelivery or more
	wakeLast ID
	sigLast  ID        // last signal read
	sigInit  bool      // sigLast was set from the signal stream
	sigFull  bool      // the last signal read returned a full batch
	lastFull time.Time // when every room was last read
	keys     []string
	ids      []string
	checks   []*redisRoom
	out      []redisDelivery

	// Health of the reader.
	hmu     sync.Mutex
	lastOK  time.Time // end of the last successful round trip
	lastErr error     // error of the last round trip, nil after success
}

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
	// stop, once unsubscribed, is the last ID to deliver: entries up to it
	// were published while the room was subscribed.
	stop ID
	// skips are ranges (from, to] published while the room was not
	// subscribed, between an Unsubscribe and a Subscribe that came before
	// the reader reached stop.
	skips []idRange
	// check asks the reader to look for trimmed entries before its next
	// read: set after a full batch (the reader is behind) and after errors.
	check bool
	// dirty: the room is listed in its shard's dirty list.
	dirty bool
}

// roomByName returns the subscribed or draining room of this shard named
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

// idRange is the range of IDs (from, to].
type idRange struct{ from, to ID }

// redisDelivery is one Handler call collected under the shard lock.
type redisDelivery struct {
	room string
	msg  Message
}

// publishBuf holds the bytes and commands of one Publish, reused through
// a pool once Redis has answered.
type publishBuf struct {
	b    []byte
	cmds [3]rueidis.Completed
}

// NewRedis validates cfg, connects to Redis and starts the readers. The
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
		block:        cfg.Block.Milliseconds(),
		readDeadline: cfg.Block + cfg.Timeout,
	}
	e.bufs.New = func() any { return &publishBuf{b: make([]byte, 0, 512)} }

	dialer := net.Dialer{Timeout: cfg.Timeout, KeepAlive: time.Second}
	opt := rueidis.ClientOption{
		InitAddress:      cfg.Addrs,
		ShuffleInit:      true,
		Username:         cfg.Username,
		Password:         cfg.Password,
		SelectDB:         cfg.DB,
		TLSConfig:        tlsCfg,
		Dialer:           dialer,
		ClientName:       "chatgw-" + e.node,
		ConnWriteTimeout: cfg.Timeout,
		MaxFlushDelay:    cfg.FlushDelay,
		// The engine has no use for client-side caching, and retries
		// itself: readers back off and resume, a failed Publish is the
		// caller's to retry (XADD is not idempotent).
		DisableCache: true,
		DisableRetry: true,
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
	e.client, err = rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("stream: connect to Redis at %s: %w: %w (check IP_REDIS/PORT_REDIS or REDIS_ADDRS, and that Redis runs)",
			strings.Join(cfg.Addrs, ","), ErrUnavailable, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	now := time.Now()
	e.shards = make([]*redisShard, cfg.ReadShards)
	for i := range e.shards {
		s := &redisShard{
			idx:     i,
			wakeKey: cfg.Prefix + ":{" + strconv.Itoa(i) + "}#wake:" + e.node,
			sigKey:  cfg.Prefix + ":{" + strconv.Itoa(i) + "}#signal",
			keyPre:  cfg.Prefix + ":{" + strconv.Itoa(i) + "}:",
			rooms:   make(map[string]*redisRoom),
			lastOK:  now,
		}
		e.shards[i] = s
		e.readers.Add(1)
		go e.read(ctx, s)
	}
	return e, nil
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

// appendKey appends the stream key of room to b.
func (e *Redis) appendKey(b []byte, room string) []byte {
	b = append(b, e.cfg.Prefix...)
	b = append(b, ":{"...)
	b = strconv.AppendInt(b, int64(e.shardOf(room)), 10)
	b = append(b, "}:"...)
	return append(b, room...)
}

// key returns the stream key of room.
func (e *Redis) key(room string) string {
	return string(e.appendKey(make([]byte, 0, len(e.cfg.Prefix)+len(room)+8), room))
}

// Publish appends m to the room's stream and refreshes the stream's TTL
// in one round trip. It returns the entry's ID once Redis acknowledged the
// XADD. When Redis cannot be reached or does not answer within Timeout (or
// ctx's deadline) the error wraps ErrUnavailable; the message was then not
// accepted, though it may still have been appended if the connection
// broke after sending it. Publish is safe for concurrent use: concurrent
// calls share pipelined round trips.
func (e *Redis) Publish(ctx context.Context, room string, m Message) (ID, error) {
	if err := ctx.Err(); err != nil {
		return ID{}, fmt.Errorf("stream: publish to room %q: %w", room, err)
	}
	if e.closed.Load() {
		return ID{}, ErrClosed
	}
	if _, ok := ctx.Deadline(); !ok {
		// Bound the round trip even when the caller does not: a hung
		// Redis must not hold a publisher longer than Timeout.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.cfg.Timeout)
		defer cancel()
	}
	// One buffer holds the key, the sender and a copy of the payload; the
	// commands refer to it without copying. It goes back to the pool only
	// after Redis answered: after an error the client may still hold the
	// commands, so the buffer is left to the garbage collector.
	pb := e.bufs.Get().(*publishBuf)
	b := e.appendKey(pb.b[:0], room)
	nk := len(b)
	b = strconv.AppendUint(b, m.Sender, 10)
	ns := len(b)
	b = append(b, m.Payload...)
	pb.b = b
	key := unsafe.String(&b[0], nk)
	sender := unsafe.String(&b[nk], ns-nk)
	payload := ""
	if len(b) > ns {
		payload = unsafe.String(&b[ns], len(b)-ns)
	}
	pb.cmds[0] = e.client.B().Xadd().Key(key).Maxlen().Almost().Threshold(e.maxLen).Id("*").
		FieldValue().FieldValue(fieldSender, sender).FieldValue(fieldPayload, payload).Build()
	pb.cmds[1] = e.client.B().Arbitrary("PEXPIRE").Keys(key).Args(e.ttlMs).Build()
	// The signal tells every node's reader of the shard which room to read,
	// so readers block on one key per shard instead of every room's.
	pb.cmds[2] = e.client.B().Xadd().Key(e.shards[e.shardOf(room)].sigKey).Maxlen().Almost().Threshold(signalMaxLen).Id("*").
		FieldValue().FieldValue(fieldRoom, room).Build()
	res := e.client.DoMulti(ctx, pb.cmds[:]...)

	raw, err := res[0].ToString()
	if err != nil {
		return ID{}, e.opError("publish to", room, err)
	}
	id, err := ParseID(raw)
	if err != nil {
		return ID{}, fmt.Errorf("stream: publish to room %q: Redis answered XADD with %q: %w", room, raw, err)
	}
	if res[1].NonRedisError() == nil && cap(pb.b) <= maxPooledBuf {
		e.bufs.Put(pb)
	}
	return id, nil
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

// streamInfo is what XINFO STREAM tells about a room's stream.
type streamInfo struct {
	missing bool  // the key does not exist
	lastGen ID    // last-generated-id: the last ID handed out
	first   ID    // first entry left, zero when empty
	length  int64 // entries in the stream
	added   int64 // entries-added: entries ever appended (Redis 7+)
	// hasAdded is false on Redis before 7, which does not count entries:
	// trimmed entries then go undetected.
	hasAdded bool
}

// info returns what XINFO STREAM says about the stream at key.
func (e *Redis) info(ctx context.Context, key string) (streamInfo, error) {
	return parseStreamInfo(e.client.Do(ctx, e.client.B().XinfoStream().Key(key).Build()))
}

// parseStreamInfo decodes an XINFO STREAM reply. A missing key is not an
// error: it is reported in streamInfo.missing.
func parseStreamInfo(rr rueidis.RedisResult) (streamInfo, error) {
	m, err := rr.AsMap()
	if err != nil {
		if re, ok := rueidis.IsRedisErr(err); ok && strings.Contains(strings.ToLower(re.Error()), "no such key") {
			return streamInfo{missing: true}, nil
		}
		return streamInfo{}, err
	}
	var in streamInfo
	v, ok := m["last-generated-id"]
	if !ok {
		return streamInfo{}, errors.New("XINFO STREAM reply without last-generated-id")
	}
	raw, _ := v.ToString()
	if in.lastGen, err = ParseID(raw); err != nil {
		return streamInfo{}, err
	}
	if v, ok := m["length"]; ok {
		in.length, _ = v.AsInt64()
	}
	if v, ok := m["recorded-first-entry-id"]; ok { // Redis 7+
		raw, _ := v.ToString()
		in.first, _ = ParseID(raw)
	} else if v, ok := m["first-entry"]; ok {
		if entry, err := v.ToArray(); err == nil && len(entry) > 0 {
			raw, _ := entry[0].ToString()
			in.first, _ = ParseID(raw)
		}
	}
	if v, ok := m["entries-added"]; ok {
		in.added, err = v.AsInt64()
		in.hasAdded = err == nil
	}
	return in, nil
}

// Subscribe starts delivery of room's messages. It reads the room's last
// ID, so every message published after it returns is delivered, and wakes
// the room's reader so that delivery starts at once. When Redis cannot be
// reached the error wraps ErrUnavailable and the room is not subscribed;
// while a reader is failing it says so at once, without a round trip.
func (e *Redis) Subscribe(room string) error {
	if e.closed.Load() {
		return ErrClosed
	}
	s, key := e.shards[e.shardOf(room)], e.key(room)
	s.mu.Lock()
	r := s.rooms[key]
	done := r != nil && r.subscribed
	s.mu.Unlock()
	if done {
		return nil
	}
	if n := e.failing.Load(); n > 0 {
		// Redis is known to be down: answer at once rather than make the
		// caller (an event loop) wait for a timeout.
		return fmt.Errorf("stream: subscribe to room %q: %w: %d readers cannot reach Redis", room, ErrUnavailable, n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.Timeout)
	defer cancel()
	in, err := e.info(ctx, key)
	if err != nil {
		return e.opError("subscribe to", room, err)
	}
	last := in.lastGen
	s.mu.Lock()
	if e.closed.Load() {
		s.mu.Unlock()
		return ErrClosed
	}
	switch r = s.rooms[key]; {
	case r == nil:
		r = &redisRoom{name: room, key: key, last: last, subscribed: true,
			seq: in.added, seqKnown: in.hasAdded || in.missing}
		s.rooms[key] = r
		// Read it once from last: a message published between XINFO and
		// now may have signalled before the room was listed.
		s.markDirty(r)
	case r.subscribed:
		// A concurrent Subscribe won.
	default:
		// Unsubscribed, but the reader has not reached its stop yet: keep
		// the cursor, skip what was published in between.
		r.subscribed = true
		if r.stop.Less(last) {
			r.skips = append(r.skips, idRange{r.stop, last})
		}
		s.markDirty(r)
	}
	s.mu.Unlock()
	e.wake(ctx, s)
	return nil
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
			delete(s.rooms, key)
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
		delete(s.rooms, key)
	} else {
		r.subscribed, r.stop = false, stop
		s.markDirty(r) // drain up to stop
	}
	s.mu.Unlock()
	if err != nil {
		if e.log.Enabled(ctx, slog.LevelDebug) {
			e.log.Debug("stream: unsubscribe without reaching Redis; undelivered messages of the room are dropped",
				"room", room, "err", err)
		}
		return nil
	}
	e.wake(ctx, s)
	return nil
}

// wake makes the shard's reader re-issue its XREAD with the current rooms,
// by appending to the wake stream it blocks on. A failed wake only delays
// the change until the reader's next round (at most Block).
func (e *Redis) wake(ctx context.Context, s *redisShard) {
	if !s.wakeQueued.CompareAndSwap(false, true) {
		return // a wake is on its way and the reader has not rebuilt yet
	}
	res := e.client.DoMulti(ctx,
		e.client.B().Xadd().Key(s.wakeKey).Maxlen().Threshold("1").Id("*").FieldValue().FieldValue("w", "1").Build(),
		e.client.B().Arbitrary("PEXPIRE").Keys(s.wakeKey).Args(e.ttlMs).Build(),
	)
	if err := res[0].Error(); err != nil && e.log.Enabled(ctx, slog.LevelDebug) {
		e.log.Debug("stream: wake reader", "shard", s.idx, "err", err)
	}
}

// Health returns nil while Redis answers PING within Timeout and every
// reader completed a round trip within Block + Timeout; otherwise an error
// wrapping ErrUnavailable that says what is wrong.
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
	for _, s := range e.shards {
		s.hmu.Lock()
		lastOK, lastErr := s.lastOK, s.lastErr
		s.hmu.Unlock()
		switch age := now.Sub(lastOK); {
		case lastErr != nil:
			bad = append(bad, fmt.Sprintf("shard %d failing for %v: %v", s.idx, age.Round(time.Millisecond), lastErr))
		case age > e.readDeadline:
			bad = append(bad, fmt.Sprintf("shard %d has not completed a read for %v (limit %v): reader or Handler stuck", s.idx, age.Round(time.Millisecond), e.readDeadline))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 3 {
			bad = append(bad[:3], fmt.Sprintf("and %d more", len(bad)-3))
		}
		return fmt.Errorf("stream: %d of %d Redis readers unhealthy: %s: %w", len(bad), len(e.shards), strings.Join(bad, "; "), ErrUnavailable)
	}
	return nil
}

// Close stops the readers, waiting for Handler calls in progress or for
// ctx to end, deletes this node's wake streams, and closes the connections.
func (e *Redis) Close(ctx context.Context) error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	e.cancel()
	done := make(chan struct{})
	go func() {
		e.readers.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		go func() { <-done; e.client.Close() }()
		return fmt.Errorf("stream: close Redis engine: readers still running: %w", ctx.Err())
	}
	dctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	dels := make([]rueidis.Completed, len(e.shards))
	for i, s := range e.shards {
		dels[i] = e.client.B().Del().Key(s.wakeKey).Build()
	}
	e.client.DoMulti(dctx, dels...)
	e.client.Close()
	return nil
}

// read is the loop of one shard's reader.
func (e *Redis) read(ctx context.Context, s *redisShard) {
	defer e.readers.Done()
	failures := 0
	for ctx.Err() == nil {
		err := e.readOnce(ctx, s, failures > 0)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		s.hmu.Lock()
		if err == nil {
			s.lastOK, s.lastErr = now, nil
		} else {
			s.lastErr = err
		}
		s.hmu.Unlock()
		if err == nil {
			if failures > 0 {
				e.failing.Add(-1)
				e.log.Info("stream: Redis reader recovered", "shard", s.idx, "failures", failures)
			}
			failures = 0
			continue
		}
		if failures == 0 {
			e.failing.Add(1)
			e.log.Warn("stream: Redis reader failed; backing off", "shard", s.idx, "err", err)
		}
		failures++
		t := time.NewTimer(e.backoff(failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff returns the pause after the n-th consecutive failure: BackoffMin
// doubled n-1 times, capped at BackoffMax, with "equal jitter" (a random
// point in its upper half) so that nodes do not reconnect in lockstep.
func (e *Redis) backoff(n int) time.Duration {
	d := e.cfg.BackoffMax
	if n < 30 {
		d = min(e.cfg.BackoffMin<<(n-1), e.cfg.BackoffMax)
	}
	return d/2 + rand.N(d/2+1)
}

// readOnce runs one round. First it reads, without blocking, the rooms
// that may have new entries: those signalled or marked since the last
// round, or every room after a failure, a slow delivery, a full signal
// batch, or Block since the last full read. Rooms whose read came back
// full stay marked, and the round ends there. Otherwise it blocks on the
// shard's signal stream and its own wake stream, and marks the rooms the
// signals name for the next round.
func (e *Redis) readOnce(ctx context.Context, s *redisShard, recovering bool) error {
	if !s.sigInit {
		// Start from the signal stream's end as it is before the first full
		// read: later publishes signal after it, earlier ones are found by
		// that read. (Never "$", which loses what comes in between.)
		in, err := e.info(ctx, s.sigKey)
		if err != nil {
			return fmt.Errorf("XINFO STREAM %s: %w", s.sigKey, err)
		}
		s.sigLast, s.sigInit, s.lastFull = in.lastGen, true, time.Time{}
	}
	// After a failure, a slow delivery or a full signal batch the reader may
	// have lost track: read every room and check each for trimmed entries.
	// Every Block it reads every room anyway, in case a signal was lost.
	verifyAll := recovering || s.slow || s.sigFull
	full := verifyAll || time.Since(s.lastFull) >= e.cfg.Block
	s.wakeQueued.Store(false)
	s.mu.Lock()
	s.keys, s.ids, s.checks = s.keys[:0], s.ids[:0], s.checks[:0]
	add := func(r *redisRoom) {
		if r.lastStrOf != r.last || r.lastStr == "" {
			r.lastStr, r.lastStrOf = r.last.String(), r.last
		}
		s.keys = append(s.keys, r.key)
		s.ids = append(s.ids, r.lastStr)
		if verifyAll || r.check {
			s.checks = append(s.checks, r)
		}
	}
	for key, r := range s.rooms {
		if !r.subscribed && !r.last.Less(r.stop) {
			delete(s.rooms, key) // unsubscribed and drained
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
	if full {
		s.lastFull, s.sigFull = time.Now(), false
	}

	if len(s.checks) > 0 {
		if err := e.verify(ctx, s); err != nil {
			return err
		}
	}
	for start := 0; start < len(s.keys); start += scanChunk {
		end := min(start+scanChunk, len(s.keys))
		cmd := e.client.B().Xread().Count(int64(e.cfg.ReadCount)).Streams().Key(s.keys[start:end]...).Id(s.ids[start:end]...).Build()
		if err := e.readRooms(ctx, s, cmd); err != nil {
			return err
		}
	}
	s.mu.Lock()
	more := len(s.dirty) > 0
	s.mu.Unlock()
	if more || ctx.Err() != nil {
		return nil // rooms left with entries: read them before blocking
	}

	// Block on the signals. The first read after a failure does not block,
	// so that Health sees the reader working again at once; the others
	// block on a connection of their own, and give it back to Redis (CLIENT
	// UNBLOCK) when Close cancels them.
	var cmd rueidis.Completed
	sigLast, wakeLast := s.sigLast.String(), s.wakeLast.String()
	if recovering {
		cmd = e.client.B().Xread().Count(signalCount).Streams().Key(s.sigKey, s.wakeKey).Id(sigLast, wakeLast).Build()
	} else {
		cmd = e.client.B().Xread().Count(signalCount).Block(e.block).Streams().Key(s.sigKey, s.wakeKey).Id(sigLast, wakeLast).Build().UnblockOnCancel()
	}
	rctx, cancel := context.WithTimeout(ctx, e.readDeadline)
	res := e.client.Do(rctx, cmd)
	cancel()
	reply, err := res.ToMessage()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return nil // BLOCK expired without entries
		}
		return fmt.Errorf("XREAD signals: %w", err)
	}
	return s.collectSignals(reply)
}

// readRooms runs one non-blocking XREAD of rooms and delivers what it
// returns.
func (e *Redis) readRooms(ctx context.Context, s *redisShard, cmd rueidis.Completed) error {
	rctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	res := e.client.Do(rctx, cmd)
	cancel()
	reply, err := res.ToMessage()
	if err != nil {
		if rueidis.IsRedisNil(err) {
			return nil // nothing new
		}
		return fmt.Errorf("XREAD: %w", err)
	}
	if err := s.collect(reply, e.cfg.ReadCount, e.log); err != nil {
		return err
	}
	start := time.Now()
	for i := range s.out {
		if ctx.Err() != nil {
			break // closing: deliver nothing more
		}
		d := &s.out[i]
		e.handler(d.room, d.msg)
	}
	s.slow = len(s.out) > 0 && time.Since(start) >= slowDelivery
	clear(s.out)
	s.out = s.out[:0]
	return nil
}

// collectSignals marks the rooms named by the signal entries of an XREAD
// reply, and notes the last signal and wake IDs.
func (s *redisShard) collectSignals(reply rueidis.RedisMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return forEachStream(reply, func(key string, v rueidis.RedisMessage) {
		entries, err := v.ToArray()
		if err != nil || len(entries) == 0 {
			return
		}
		switch key {
		case s.wakeKey:
			if id, ok := entryID(&entries[len(entries)-1]); ok {
				s.wakeLast = id
			}
		case s.sigKey:
			s.sigFull = len(entries) >= signalCount
			for i := range entries {
				id, ok := entryID(&entries[i])
				if !ok {
					continue
				}
				s.sigLast = id
				kv, _ := entries[i].ToArray()
				fields, _ := kv[1].ToArray()
				for j := 0; j+1 < len(fields); j += 2 {
					if f, _ := fields[j].ToString(); f != fieldRoom {
						continue
					}
					name, _ := fields[j+1].ToString()
					if r := s.roomByName(name); r != nil {
						s.markDirty(r)
					}
				}
			}
		}
	})
}

// forEachStream calls fn with each stream of an XREAD reply: RESP3 answers
// a map of key to entries, RESP2 an array of [key, entries].
func forEachStream(reply rueidis.RedisMessage, fn func(key string, entries rueidis.RedisMessage)) error {
	if reply.IsMap() {
		m, err := reply.AsMap()
		if err != nil {
			return fmt.Errorf("XREAD reply: %w", err)
		}
		for k, v := range m {
			fn(k, v)
		}
		return nil
	}
	pairs, err := reply.ToArray()
	if err != nil {
		return fmt.Errorf("XREAD reply: %w", err)
	}
	for i := range pairs {
		kv, err := pairs[i].ToArray()
		if err != nil || len(kv) != 2 {
			return fmt.Errorf("XREAD reply: malformed stream %d", i)
		}
		key, _ := kv[0].ToString()
		fn(key, kv[1])
	}
	return nil
}

// collect decodes an XREAD reply and, under the shard lock, decides which
// entries to deliver, appending them to s.out. Payloads point into reply.
func (s *redisShard) collect(reply rueidis.RedisMessage, readCount int, log *slog.Logger) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return forEachStream(reply, func(key string, entries rueidis.RedisMessage) {
		s.collectStream(key, entries, readCount, log)
	})
}

// collectStream handles the entries of one stream of an XREAD reply.
func (s *redisShard) collectStream(key string, v rueidis.RedisMessage, readCount int, log *slog.Logger) {
	entries, err := v.ToArray()
	if err != nil {
		return
	}
	r := s.rooms[key]
	if r == nil {
		return // dropped since the read started
	}
	r.check = len(entries) >= readCount
	if r.check {
		s.markDirty(r) // more to read
	}
	for i := range entries {
		id, sender, payload, ok := decodeEntry(&entries[i])
		if !ok {
			log.Warn("stream: skipping a malformed stream entry", "room", r.name, "key", key)
			continue
		}
		if !r.last.Less(id) {
			continue // already read
		}
		r.last = id
		r.seq++
		if !r.subscribed && r.stop.Less(id) {
			continue // published after Unsubscribe; the next round drops the room
		}
		if skipped(r, id) {
			continue
		}
		s.out = append(s.out, redisDelivery{room: r.name, msg: Message{ID: id, Sender: sender, Payload: payload}})
	}
}

// skipped reports whether id falls in one of r's skipped ranges, and
// forgets the ranges that end before id. Ranges are disjoint and sorted,
// and ids arrive in increasing order, so only the first range matters.
func skipped(r *redisRoom, id ID) bool {
	for len(r.skips) > 0 && r.skips[0].to.Less(id) {
		r.skips = r.skips[1:]
	}
	return len(r.skips) > 0 && r.skips[0].from.Less(id)
}

// entryID returns the ID of a stream entry, [id, [field, value, ...]].
func entryID(m *rueidis.RedisMessage) (id ID, ok bool) {
	kv, err := m.ToArray()
	if err != nil || len(kv) != 2 {
		return ID{}, false
	}
	raw, err := kv[0].ToString()
	if err != nil {
		return ID{}, false
	}
	ms, seq, found := strings.Cut(raw, "-")
	if id.Ms, ok = parseUint(ms); !ok || !found {
		return ID{}, false
	}
	if id.Seq, ok = parseUint(seq); !ok {
		return ID{}, false
	}
	return id, true
}

// decodeEntry decodes one stream entry, [id, [field, value, ...]], without
// copying: payload points into m.
func decodeEntry(m *rueidis.RedisMessage) (id ID, sender uint64, payload []byte, ok bool) {
	if id, ok = entryID(m); !ok {
		return ID{}, 0, nil, false
	}
	kv, _ := m.ToArray()
	fields, err := kv[1].ToArray()
	if err != nil || len(fields)%2 != 0 {
		return ID{}, 0, nil, false
	}
	var haveSender, havePayload bool
	for i := 0; i < len(fields); i += 2 {
		f, _ := fields[i].ToString()
		v, _ := fields[i+1].ToString()
		switch f {
		case fieldSender:
			if sender, haveSender = parseUint(v); !haveSender {
				return ID{}, 0, nil, false
			}
		case fieldPayload:
			payload = unsafe.Slice(unsafe.StringData(v), len(v))
			havePayload = true
		}
	}
	if !haveSender || !havePayload {
		return ID{}, 0, nil, false
	}
	return id, sender, payload, true
}

// parseUint parses a decimal uint64, as strconv.ParseUint(s, 10, 64) but
// several times faster on the short numbers of stream entries.
func parseUint(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 20 {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 {
			return 0, false
		}
		// Up to 19 digits cannot overflow; check only the 20th.
		if i == 19 && (n > (1<<64-1)/10 || n*10 > 1<<64-1-uint64(d)) {
			return 0, false
		}
		n = n*10 + uint64(d)
	}
	return n, true
}

// verify checks, with XINFO STREAM, the rooms in s.checks for entries the
// reader can no longer read: trimmed (MAXLEN) before it read them, or lost
// by Redis (a restart without persistence, a failover that lost
// unreplicated writes). Losses are logged; when the stream went back in
// time or vanished the cursor follows it, so that new entries are read.
//
// Trimming is found by counting: Redis numbers entries (entries-added),
// the room counts the entries it read (seq). With length entries left,
// the first one is number added-length+1; if that is beyond seq+1, the
// entries in between were trimmed before the reader got to them.
func (e *Redis) verify(ctx context.Context, s *redisShard) error {
	cmds := make([]rueidis.Completed, len(s.checks))
	for i, r := range s.checks {
		cmds[i] = e.client.B().XinfoStream().Key(r.key).Build()
	}
	vctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	res := e.client.DoMulti(vctx, cmds...)
	cancel()
	infos := make([]streamInfo, len(res))
	for i, rr := range res {
		var err error
		if infos[i], err = parseStreamInfo(rr); err != nil {
			return fmt.Errorf("XINFO STREAM: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.checks {
		r.check = false
		if s.rooms[r.key] != r {
			continue
		}
		in := infos[i]
		if !r.subscribed && (in.missing || in.lastGen.Less(r.stop)) {
			// Draining toward a stop that no longer exists: nothing left
			// to deliver.
			delete(s.rooms, r.key)
			continue
		}
		switch {
		case in.missing:
			if !r.last.IsZero() && r.seqKnown && r.seq > 0 {
				e.log.Warn("stream: room stream vanished from Redis (expired, or lost by a restart without persistence); undelivered messages are lost",
					"room", r.name, "last_id", r.last.String())
			}
			r.last, r.seq, r.seqKnown, r.skips = ID{}, 0, true, nil
		case in.lastGen.Less(r.last):
			e.log.Warn("stream: Redis lost messages of the room (failover or restart without persistence); resuming from what it has",
				"room", r.name, "last_id", r.last.String(), "redis_last_id", in.lastGen.String())
			r.last, r.seq, r.seqKnown, r.skips = in.lastGen, in.added, in.hasAdded, nil
		case !in.hasAdded:
			r.seqKnown = false
		case r.seqKnown && in.added < r.seq:
			// The key was deleted and recreated since: the count restarted.
			r.seqKnown = false
		default:
			// Entries after last that Redis no longer has: all of them
			// when caught up, those before the first entry left when last
			// is older than it. Otherwise the count cannot tell yet.
			var lost int64
			switch {
			case !r.seqKnown:
			case r.last == in.lastGen:
				lost = in.added - r.seq
			case in.length == 0 || r.last.Less(in.first):
				lost = in.added - in.length - r.seq
			}
			if lost > 0 {
				e.log.Warn("stream: messages of the room were trimmed before this node read them: raise REDIS_MAXLEN or make the Handler faster",
					"room", r.name, "lost", lost, "last_id", r.last.String())
				r.seq += lost
			}
		}
		if r.last == in.lastGen && in.hasAdded {
			r.seq, r.seqKnown = in.added, true // caught up: count afresh
		}
	}
	return nil
}
