package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/stream"
)

// TestModel is a seeded, model-based test of the message path (issue 18
// item 2), in the style of FoundationDB's simulation and etcd's
// robustness tests: a random sequence of joins (with and without the
// options), leaves, publishes (with and without cid, resent after
// reconnects) and faults (node restarts, Redis restarts, SCRIPT FLUSH,
// trims, expiries, foreign entries) runs against real gateways, on the
// embedded engine and on Redis with one to three nodes. Every frame every
// client receives is recorded with its time; once the system is quiet,
// model_check_test.go checks the history against what the protocol
// promises (per-sender order, nothing before a member's start, no gap and
// no duplicate after it, every acknowledged message stored once,
// "unavailable" means not stored, presence pacing).
//
// The schedule is a function of the seed; timing is not, so a seed that
// fails once may pass the next time. Budgets:
//
//	go test -run TestModel ./cmd/gateway                      # the short budget (modelShortSeeds seeds)
//	go test -run TestModel ./cmd/gateway -model.seeds=500 -timeout 2h
//	MODEL_SEEDS=500 go test -run TestModel ./cmd/gateway -timeout 2h
//	MODEL_SEED=17 go test -run TestModel -v ./cmd/gateway      # replay one seed
//	go test -run TestModel ./cmd/gateway -model.seed=17 -model.ops=200
//	MODEL_DUMP=/tmp MODEL_SEED=17 go test -run TestModel ./cmd/gateway  # all it recorded, in /tmp/model-17.txt
//
// Odd seeds run on Redis, even seeds on the embedded engine; the profile
// (trim, expire, long) is seed/2 mod 3.
func TestModel(t *testing.T) {
	first, n := modelSeedRange(t)
	ops := modelIntSetting(t, *modelOpsFlag, "MODEL_OPS", modelDefaultOps)
	for seed := first; seed < first+int64(n); seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runModel(t, seed, ops) })
	}
}

var (
	modelSeedsFlag = flag.Int("model.seeds", 0, "TestModel: number of seeds to run, from -model.seed (default: "+strconv.Itoa(modelShortSeeds)+", or $MODEL_SEEDS)")
	modelSeedFlag  = flag.Int64("model.seed", 0, "TestModel: the first seed (or $MODEL_SEED); alone it replays that one seed")
	modelOpsFlag   = flag.Int("model.ops", 0, "TestModel: operations per seed (default "+strconv.Itoa(modelDefaultOps)+", or $MODEL_OPS)")
)

const (
	// modelShortSeeds is the budget of a plain go test.
	modelShortSeeds = 8
	// modelDefaultOps is the number of operations of one seed.
	modelDefaultOps = 70
	// modelRooms is the number of rooms a seed uses.
	modelRooms = 2
	// modelQuiet bounds the final wait for the system to be quiet.
	modelQuiet = 5 * time.Second
)

// modelSeedRange returns the first seed and the number of seeds to run:
// flags win over the environment; a first seed given alone means that
// seed only.
func modelSeedRange(t *testing.T) (int64, int) {
	first, n := int64(1), modelShortSeeds
	if s := os.Getenv("MODEL_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("MODEL_SEED=%q: want a number", s)
		}
		first, n = v, 1
	}
	if *modelSeedFlag != 0 {
		first, n = *modelSeedFlag, 1
	}
	n = modelIntSetting(t, *modelSeedsFlag, "MODEL_SEEDS", n)
	return first, n
}

// modelIntSetting returns flag when set, else the environment variable
// when set, else def.
func modelIntSetting(t *testing.T, flagVal int, env string, def int) int {
	if flagVal > 0 {
		return flagVal
	}
	if s := os.Getenv(env); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("%s=%q: want a positive number", env, s)
		}
		return v
	}
	return def
}

// Profiles: what a seed's configuration stresses.
const (
	profTrim   = "trim"   // REDIS_MAXLEN 20 (Redis: --stream-node-max-entries 5), big bursts
	profExpire = "expire" // REDIS_TTL 1s, pauses past it
	profLong   = "long"   // default MAXLEN: long replays; foreign entries (Redis)
)

const (
	modelMaxLen = 20
	modelTTL    = time.Second
)

// model is the state of one seed's run. The driver (runModel's
// goroutine) owns everything but what the mconn and model mutexes guard.
type model struct {
	t       *testing.T
	seed    int64
	rng     *rand.Rand
	engine  string // "memory" or "redis"
	profile string
	redis   *redistest.Server
	env     map[string]string
	start   time.Time
	rooms   []string           // the first modelRooms are shared; others are made for one race
	cidRate map[string]float64 // probability that a message carries a cid, per room

	nodes   []*mnode // every node started, dead ones too
	actors  []*actor
	conns   []*mconn
	texts   map[string]*mmsg
	texted  int
	readers sync.WaitGroup // reader goroutines
	joining sync.WaitGroup // asynchronous joins

	mu      sync.Mutex // guards log and foreign
	log     []string
	foreign []foreignEntry
}

// mnode is one gateway started by the model.
type mnode struct {
	idx   int
	g     *gateway
	alive bool
}

// actor is a logical client: its connections follow one another (a
// reconnect after its node stopped opens the next one).
type actor struct {
	idx      int
	name     string
	room     string
	opt      bool // ids=1&ack=1 (and maybe since, history, presence); else a plain client that only receives
	presence bool
	conns    []*mconn
	msgs     []*mmsg // in first-send order
	seq      int     // attempts numbered across the actor's connections
	left     bool
}

// mmsg is one message (a unique text) and the attempts to send it.
type mmsg struct {
	text     string
	cid      string // "" without
	room     string
	actor    *actor
	attempts []*attempt
}

// attempt is one send of a message on one connection.
type attempt struct {
	seq  int // the actor's attempt number
	conn *mconn
	msg  *mmsg
	t    time.Time
}

// foreignEntry is an entry the model wrote to a room's stream itself
// (not the gateway's: fields note x).
type foreignEntry struct {
	room string
	id   stream.ID
	t    time.Time
}

// mconn is one WebSocket connection of an actor.
type mconn struct {
	idx      int
	actor    *actor
	node     *mnode
	room     string
	query    string
	ids      bool // ids=1 (and ack=1): an opt actor's
	presence bool
	since    *stream.ID
	future   bool // since= after every ID known when it dialed
	history  int
	resume   bool // opened after its node stopped

	dialStart time.Time
	attempts  []*attempt // in send order; written by one goroutine at a time

	wmu  sync.Mutex // serialises writes: the driver's sends and the reader's pongs
	conn net.Conn

	mu         sync.Mutex // guards the fields below
	joinDone   time.Time  // the 101 arrived; zero while dialing or when the dial failed
	dialErr    error
	dialing    bool
	frames     []mframe
	ended      time.Time // the reader stopped: closed by either side
	endWhy     string
	closeCode  int
	closedByUs bool
}

// Frame kinds.
const (
	kDeliver  = 'd'
	kAck      = 'a'
	kError    = 'e'
	kTrunc    = 'T'
	kPresence = 'p'
	kOther    = '?'
)

// mframe is one text frame a connection received.
type mframe struct {
	t       time.Time
	kind    byte
	text    string // kDeliver: the message
	user    string // kDeliver: the username
	id      stream.ID
	hasID   bool   // kDeliver with ids=1, kAck
	cid     string // kAck, kError
	code    string // kError
	since   stream.ID
	from    stream.ID
	hasFrom bool
	members int
	raw     string
}

func (c *mconn) name() string { return fmt.Sprintf("c%d(%s@n%d)", c.idx, c.actor.name, c.node.idx) }

// open reports whether c is connected: joined and not ended.
func (c *mconn) open() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.joinDone.IsZero() && c.ended.IsZero()
}

// snapshotFrames returns a copy of c's frames.
func (c *mconn) snapshotFrames() []mframe {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.frames)
}

func (m *model) logf(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = append(m.log, fmt.Sprintf("%6dms ", time.Since(m.start).Milliseconds())+fmt.Sprintf(format, args...))
}

// runModel runs one seed: setup, operations, quiet, final read, check.
func runModel(t *testing.T, seed int64, ops int) {
	m := &model{t: t, seed: seed, rng: rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15)), texts: map[string]*mmsg{},
		cidRate: map[string]float64{}}
	m.engine = "memory"
	if seed%2 != 0 {
		m.engine = "redis"
	}
	// Engine and profile follow the seed, so that any eight consecutive
	// seeds cover every pair.
	m.profile = []string{profTrim, profExpire, profLong}[seed/2%3]
	for range modelRooms {
		m.newRoom()
	}
	m.env = withEnv(noRateLimit, map[string]string{
		"MAX_CONNECTIONS_PER_IP": "-1", "FRAME_RATE": "-1", "LOG_LEVEL": "error",
	})
	var redisArgs []string
	switch m.profile {
	case profTrim:
		m.env["REDIS_MAXLEN"] = strconv.Itoa(modelMaxLen)
		redisArgs = append(redisArgs, "--stream-node-max-entries", "5")
	case profExpire:
		m.env["REDIS_TTL"] = modelTTL.String()
	}
	nodes := 1
	if m.engine == "redis" {
		nodes = 1 + m.rng.IntN(3)
		m.redis = redistest.Start(t, append([]string{"--appendonly", "yes", "--appendfsync", "always"}, redisArgs...)...)
		m.env = withEnv(m.env, redisEnvFor(m.redis), map[string]string{
			"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*",
			"REDIS_BLOCK": "1s", "REDIS_TIMEOUT": "1s", "REDIS_BACKOFF_MAX": "200ms", "REDIS_SWEEP": "3s",
		})
	}
	m.start = time.Now()
	m.logf("seed %d: engine %s, profile %s, %d node(s), rooms %v, cid rates %v", seed, m.engine, m.profile, nodes, m.rooms, m.cidRate)
	for range nodes {
		m.startNode()
	}
	defer m.closeAll()

	for range ops {
		m.step()
	}
	m.joining.Wait()
	openAtEnd := m.quiet()
	m.closeAll()
	final := m.finalRead()
	ck := newChecker(m, openAtEnd, final)
	ck.run()
	t.Logf("seed %d: %s, %s, %d nodes started, %d actors, %d connections, %d messages; %s",
		seed, m.engine, m.profile, len(m.nodes), len(m.actors), len(m.conns), len(m.texts), ck.summary())
	if dir := os.Getenv("MODEL_DUMP"); dir != "" {
		m.dump(dir, ck)
	}
	if len(ck.viol) > 0 {
		m.mu.Lock()
		oplog := strings.Join(m.log, "\n")
		m.mu.Unlock()
		more := ""
		if ex := ck.examples(12); len(ex) > 1 {
			more = "\nthe first of other kinds, then of other connections:\n  " + strings.Join(ex[1:], "\n  ")
		}
		t.Fatalf("seed %d (%s, %s): %d violations (%s); replay with MODEL_SEED=%d\noperations:\n%s\nfirst violation: %s%s",
			seed, m.engine, m.profile, len(ck.viol), ck.summary(), seed, oplog, ck.viol[0], more)
	}
}

// startNode starts one more gateway node.
func (m *model) startNode() *mnode {
	n := &mnode{idx: len(m.nodes), g: startGateway(m.t, m.env), alive: true}
	m.nodes = append(m.nodes, n)
	m.logf("node n%d started at %s", n.idx, n.g.addr)
	return n
}

func (m *model) aliveNodes() []*mnode {
	var out []*mnode
	for _, n := range m.nodes {
		if n.alive {
			out = append(out, n)
		}
	}
	return out
}

func (m *model) pickNode() *mnode {
	a := m.aliveNodes()
	return a[m.rng.IntN(len(a))]
}

// openConns returns the open connections of actors that did not leave,
// in room ("" for any), with ack=1 when opt.
func (m *model) openConns(room string, opt bool) []*mconn {
	var out []*mconn
	for _, a := range m.actors {
		if a.left || len(a.conns) == 0 || (opt && !a.opt) || (room != "" && a.room != room) {
			continue
		}
		if c := a.conns[len(a.conns)-1]; c.node.alive && c.open() {
			out = append(out, c)
		}
	}
	return out
}

// newRoom adds a room, with its rate of cid messages.
func (m *model) newRoom() string {
	room := fmt.Sprintf("m%d-r%d", m.seed, len(m.rooms))
	m.rooms = append(m.rooms, room)
	m.cidRate[room] = []float64{0, 0.5, 0.9}[m.rng.IntN(3)]
	return room
}

// sharedRoom returns one of the rooms most operations use.
func (m *model) sharedRoom() string { return m.rooms[m.rng.IntN(modelRooms)] }

// newActor registers an actor in a random shared room.
func (m *model) newActor(opt bool) *actor { return m.newActorIn(m.sharedRoom(), opt) }

// newActorIn registers an actor in room.
func (m *model) newActorIn(room string, opt bool) *actor {
	a := &actor{idx: len(m.actors), room: room, opt: opt}
	if opt {
		a.name = fmt.Sprintf("o%d", a.idx)
		a.presence = m.rng.IntN(4) == 0
	} else {
		a.name = fmt.Sprintf("p%d", a.idx)
	}
	m.actors = append(m.actors, a)
	return a
}

// knownIDs returns the IDs of room the clients observed so far (acks and
// deliveries with ids) and the foreign entries.
func (m *model) knownIDs(room string) []stream.ID {
	var out []stream.ID
	for _, c := range m.conns {
		if c.room != room {
			continue
		}
		for _, f := range c.snapshotFrames() {
			if f.hasID && (f.kind == kAck || f.kind == kDeliver) {
				out = append(out, f.id)
			}
		}
	}
	m.mu.Lock()
	for _, f := range m.foreign {
		if f.room == room {
			out = append(out, f.id)
		}
	}
	m.mu.Unlock()
	return out
}

// dial opens a connection for a on node n with the options in query
// (plus ids=1&ack=1 for an opt actor); async dials in the background.
func (m *model) dial(a *actor, n *mnode, query string, async bool) *mconn {
	q := query
	if a.opt {
		q = strings.TrimPrefix(q+"&ids=1&ack=1", "&")
		if a.presence {
			q += "&presence=1"
		}
	}
	c := &mconn{idx: len(m.conns), actor: a, node: n, room: a.room, query: q, ids: a.opt, presence: a.presence}
	for kv := range strings.SplitSeq(q, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "since":
			id, _ := stream.ParseID(v)
			c.since = &id
			// In the future: a second or more after every ID known.
			known := m.knownIDs(a.room)
			c.future = len(known) > 0 && !slices.ContainsFunc(known, func(k stream.ID) bool { return k.Ms+1000 > id.Ms })
		case "history":
			c.history, _ = strconv.Atoi(v)
		}
	}
	m.conns = append(m.conns, c)
	a.conns = append(a.conns, c)
	c.dialing = true
	path := "/ws/chat/" + a.room + "/"
	if q != "" {
		path += "?" + q
	}
	m.logf("join %s room %s %s%s", c.name(), a.room, path[strings.LastIndex(path, "/")+1:], map[bool]string{true: " (async)"}[async])
	c.dialStart = time.Now()
	do := func() {
		cl, err := n.g.tryDial(path)
		c.mu.Lock()
		c.dialing = false
		if err != nil {
			c.dialErr = err
			c.mu.Unlock()
			m.logf("join %s failed: %v", c.name(), err)
			return
		}
		c.conn = cl.conn
		c.joinDone = time.Now()
		c.mu.Unlock()
		m.readers.Add(1)
		go m.read(c, cl.conn, cl.br)
	}
	if async {
		m.joining.Add(1)
		go func() {
			defer m.joining.Done()
			do()
		}()
		return c
	}
	do()
	return c
}

// read records every frame c receives until the connection ends.
func (m *model) read(c *mconn, conn net.Conn, br *bufio.Reader) {
	defer m.readers.Done()
	why, code := "", 0
	for {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Minute))
		h, err := ws.ReadHeader(br)
		if err != nil {
			why = err.Error()
			break
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(br, p); err != nil {
			why = err.Error()
			break
		}
		now := time.Now()
		if h.OpCode == ws.OpPing {
			c.write(ws.MaskFrame(ws.NewPongFrame(p)))
			continue
		}
		if h.OpCode == ws.OpClose {
			cc, reason := ws.ParseCloseFrameData(p)
			code, why = int(cc), "close "+strconv.Itoa(int(cc))+" "+reason
			c.write(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(cc, ""))))
			break
		}
		if h.OpCode != ws.OpText {
			continue
		}
		f := parseFrame(now, p)
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
	conn.Close()
	c.mu.Lock()
	c.ended, c.endWhy, c.closeCode = time.Now(), why, code
	c.mu.Unlock()
}

// parseFrame decodes a text frame of the protocol.
func parseFrame(t time.Time, p []byte) mframe {
	f := mframe{t: t, kind: kOther, raw: string(p)}
	var w wire
	if json.Unmarshal(p, &w) != nil {
		return f
	}
	switch {
	case w.Ack != "":
		f.kind, f.cid = kAck, w.CID
		if id, err := stream.ParseID(w.Ack); err == nil {
			f.id, f.hasID = id, true
		}
	case w.Error != "":
		f.kind, f.code, f.cid = kError, w.Error, w.CID
	case w.Truncated != nil:
		f.kind = kTrunc
		f.since, _ = stream.ParseID(w.Truncated.Since)
		if w.Truncated.From != "" {
			f.from, _ = stream.ParseID(w.Truncated.From)
			f.hasFrom = true
		}
	case w.Presence != nil:
		f.kind, f.members = kPresence, w.Presence.Members
	case w.Message != nil:
		f.kind, f.text = kDeliver, *w.Message
		if w.Username != nil {
			f.user = *w.Username
		}
		if w.ID != "" {
			if id, err := stream.ParseID(w.ID); err == nil {
				f.id, f.hasID = id, true
			}
		}
	}
	return f
}

// write writes a raw frame; errors end the connection through its reader.
func (c *mconn) write(frame ws.Frame) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = ws.WriteFrame(c.conn, frame)
}

// newMsg makes a new message of a's, with a cid at its room's rate.
func (m *model) newMsg(a *actor) *mmsg { return m.newMsgPad(a, 0) }

// newMsgPad is newMsg with pad more bytes of text.
func (m *model) newMsgPad(a *actor, pad int) *mmsg {
	m.texted++
	base := fmt.Sprintf("s%d-%s-%d", m.seed, a.name, m.texted)
	msg := &mmsg{text: base, room: a.room, actor: a}
	if pad > 0 {
		msg.text += "-" + strings.Repeat("x", pad)
	}
	if m.rng.Float64() < m.cidRate[a.room] {
		msg.cid = "k" + base
	}
	a.msgs = append(a.msgs, msg)
	m.texts[msg.text] = msg
	return msg
}

// send sends one attempt of msg on c. The attempt is recorded before the
// write: a write that fails may still have reached the gateway.
func send(c *mconn, msg *mmsg) {
	a := c.actor
	a.seq++
	at := &attempt{seq: a.seq, conn: c, msg: msg, t: time.Now()}
	c.attempts = append(c.attempts, at)
	msg.attempts = append(msg.attempts, at)
	v := map[string]string{"username": a.name, "message": msg.text}
	if msg.cid != "" {
		v["cid"] = msg.cid
	}
	b, _ := json.Marshal(v)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = wsutil.WriteClientText(c.conn, b)
}

// unanswered returns the attempts on c that got no ack or error frame
// yet: attempts minus answers, counted.
func unanswered(c *mconn) int {
	n := len(c.attempts)
	for _, f := range c.snapshotFrames() {
		if f.kind == kAck || f.kind == kError {
			n--
		}
	}
	return n
}

// settle waits (polling, with a deadline) until every join finished and
// every attempt on an open connection is answered.
func (m *model) settle() {
	m.joining.Wait()
	if !m.waitFor(testutil.Timeout, func() bool {
		for _, c := range m.openConns("", true) {
			if unanswered(c) > 0 {
				return false
			}
		}
		return true
	}) {
		m.logf("settle: timed out with unanswered messages")
		return
	}
	m.logf("settled")
}

// waitFor polls cond every 10ms until it holds or d passes.
func (m *model) waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// unacked returns a's cid messages that no ack answered yet, in order.
func unacked(a *actor) []*mmsg {
	acked := map[string]bool{}
	for _, c := range a.conns {
		for _, f := range c.snapshotFrames() {
			if f.kind == kAck && f.cid != "" {
				acked[f.cid] = true
			}
		}
	}
	var out []*mmsg
	for _, msg := range a.msgs {
		if msg.cid != "" && !acked[msg.cid] && len(msg.attempts) > 0 {
			out = append(out, msg)
		}
	}
	return out
}

// lastSeen returns the ID of the last entry a's connections received.
func lastSeen(a *actor) *stream.ID {
	var last *stream.ID
	for _, c := range a.conns {
		for _, f := range c.snapshotFrames() {
			if f.kind == kDeliver && f.hasID && (last == nil || last.Less(f.id)) {
				id := f.id
				last = &id
			}
		}
	}
	return last
}

// lastAcked returns the newest ID acknowledged to c.
func lastAcked(c *mconn) *stream.ID {
	var last *stream.ID
	for _, f := range c.snapshotFrames() {
		if f.kind == kAck && f.hasID && (last == nil || last.Less(f.id)) {
			id := f.id
			last = &id
		}
	}
	return last
}

// roomKey returns the Redis key of room's stream, "" when it does not
// exist.
func (m *model) roomKey(room string) string {
	keys, err := m.redis.Do("KEYS", "chat:{*}:"+room)
	if err != nil || keys == "" {
		return ""
	}
	return strings.Split(keys, "\n")[0]
}

// quiet waits until the system is quiet: every join finished, every
// attempt on an open connection answered, every open member has what the
// checker requires of it up to the room's newest entry, and no frame
// arrived for a while; at most modelQuiet. It returns the connections
// open at that point.
func (m *model) quiet() map[*mconn]bool {
	m.joining.Wait()
	frames := func() int {
		n := 0
		for _, c := range m.conns {
			c.mu.Lock()
			n += len(c.frames)
			c.mu.Unlock()
		}
		return n
	}
	prev, stable := -1, time.Now()
	ok := m.waitFor(modelQuiet, func() bool {
		if n := frames(); n != prev {
			prev, stable = n, time.Now()
			return false
		}
		if time.Since(stable) < 200*time.Millisecond {
			return false
		}
		for _, c := range m.openConns("", true) {
			if unanswered(c) > 0 {
				return false
			}
		}
		open := map[*mconn]bool{}
		for _, c := range m.conns {
			open[c] = c.open()
		}
		ck := newChecker(m, open, nil)
		return ck.tailMissing() == 0
	})
	if !ok {
		m.logf("quiet: not quiet after %v; checking anyway", modelQuiet)
	} else {
		m.logf("quiet")
	}
	open := map[*mconn]bool{}
	for _, c := range m.conns {
		open[c] = c.open()
	}
	return open
}

// finalEntry is one entry of a room's stream read at the end.
type finalEntry struct {
	id      stream.ID
	text    string
	foreign bool
}

// finalRead reads every room's stream as it is at the end: Redis with
// XRANGE; the embedded engine through a since=0 join, up to a marker
// message published after the join.
func (m *model) finalRead() map[string][]finalEntry {
	out := map[string][]finalEntry{}
	for _, room := range m.rooms {
		if m.engine == "redis" {
			out[room] = m.xrange(room)
			continue
		}
		out[room] = m.replayAll(room)
	}
	return out
}

// xrange reads room's whole stream from Redis.
func (m *model) xrange(room string) []finalEntry {
	key := m.roomKey(room)
	if key == "" {
		return nil
	}
	raw, err := m.redis.Do("XRANGE", key, "-", "+")
	if err != nil {
		m.t.Fatalf("seed %d: XRANGE %s: %v", m.seed, key, err)
	}
	var out []finalEntry
	lines := strings.Split(raw, "\n")
	for i := 0; i < len(lines); {
		id, err := stream.ParseID(lines[i])
		if err != nil || !strings.Contains(lines[i], "-") {
			i++
			continue
		}
		e := finalEntry{id: id, foreign: true}
		i++
		for i+1 < len(lines) && !isIDLine(lines[i]) {
			if lines[i] == "p" {
				var w wire
				if json.Unmarshal([]byte(lines[i+1]), &w) == nil && w.Message != nil {
					e.text, e.foreign = *w.Message, false
				}
			}
			i += 2
		}
		out = append(out, e)
	}
	return out
}

func isIDLine(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok || ms == "" || seq == "" {
		return false
	}
	for _, r := range ms + seq {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// replayAll reads what the embedded engine holds of room: a since=0
// join, then a marker message from another connection; everything the
// joiner gets before the marker is held.
func (m *model) replayAll(room string) []finalEntry {
	g := m.aliveNodes()[0].g
	r, err := g.tryDial("/ws/chat/" + room + "/?since=0&ids=1")
	if err != nil {
		m.t.Fatalf("seed %d: final read of %s: %v", m.seed, room, err)
	}
	defer r.conn.Close()
	s, err := g.tryDial("/ws/chat/" + room + "/")
	if err != nil {
		m.t.Fatalf("seed %d: final read of %s: %v", m.seed, room, err)
	}
	defer s.conn.Close()
	marker := fmt.Sprintf("final-marker-%d", m.seed)
	b, _ := json.Marshal(map[string]string{"username": "final", "message": marker})
	if err := wsutil.WriteClientText(s.conn, b); err != nil {
		m.t.Fatalf("seed %d: final read of %s: %v", m.seed, room, err)
	}
	var out []finalEntry
	for {
		_ = r.conn.SetReadDeadline(time.Now().Add(testutil.Timeout))
		h, err := ws.ReadHeader(r.br)
		if err != nil {
			m.t.Fatalf("seed %d: final read of %s: %v after %d entries", m.seed, room, err, len(out))
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(r.br, p); err != nil {
			m.t.Fatalf("seed %d: final read of %s: %v", m.seed, room, err)
		}
		if h.OpCode != ws.OpText {
			continue
		}
		f := parseFrame(time.Now(), p)
		if f.kind != kDeliver {
			continue
		}
		if f.text == marker {
			return out
		}
		out = append(out, finalEntry{id: f.id, text: f.text})
	}
}

// closeAll closes every connection and waits for the readers.
func (m *model) closeAll() {
	m.joining.Wait()
	for _, c := range m.conns {
		c.mu.Lock()
		conn := c.conn
		if c.ended.IsZero() {
			c.closedByUs = true
		}
		c.mu.Unlock()
		if conn != nil {
			conn.Close()
		}
	}
	m.readers.Wait()
}

// dump writes everything a seed recorded to <dir>/model-<seed>.txt
// (MODEL_DUMP=<dir>), for reading a failure: the operations, each
// connection's sends and frames, the final streams and every violation.
func (m *model) dump(dir string, ck *checker) {
	var b strings.Builder
	m.mu.Lock()
	b.WriteString(strings.Join(m.log, "\n"))
	m.mu.Unlock()
	ms := func(t time.Time) int64 { return t.Sub(m.start).Milliseconds() }
	for _, c := range m.conns {
		c.mu.Lock()
		fmt.Fprintf(&b, "\n\n== %s room %s %q dial %dms joined %dms ended %dms (%s) byUs=%t resume=%t err=%v\n", c.name(), c.room, c.query,
			ms(c.dialStart), ms(c.joinDone), ms(c.ended), c.endWhy, c.closedByUs, c.resume, c.dialErr)
		c.mu.Unlock()
		for _, at := range c.attempts {
			fmt.Fprintf(&b, "  send %dms #%d %s cid=%q\n", ms(at.t), at.seq, padding.ReplaceAllString(at.msg.text, "-x…"), at.msg.cid)
		}
		for _, f := range ck.views[c] {
			fmt.Fprintf(&b, "  recv %dms %s\n", ms(f.t), padding.ReplaceAllString(f.raw, "-x…"))
		}
	}
	for _, room := range m.rooms {
		fmt.Fprintf(&b, "\n== room %s final entries:", room)
		for _, e := range ck.final[room] {
			fmt.Fprintf(&b, " %s:%s", e.id, padding.ReplaceAllString(e.text, "-x…"))
		}
	}
	b.WriteString("\n\n== violations\n" + strings.Join(ck.viol, "\n") + "\n")
	_ = os.WriteFile(fmt.Sprintf("%s/model-%d.txt", dir, m.seed), []byte(b.String()), 0o644)
}
