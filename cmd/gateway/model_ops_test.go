package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/stream"
)

// The operations of TestModel (model_test.go): step picks one at random,
// with weights that depend on the engine and the profile.

func pick[T any](r *rand.Rand, s []T) (T, bool) {
	var zero T
	if len(s) == 0 {
		return zero, false
	}
	return s[r.IntN(len(s))], true
}

// step runs one random operation.
func (m *model) step() {
	type op struct {
		w int
		f func()
	}
	redis := m.engine == "redis"
	w := func(cond bool, n int) int {
		if cond {
			return n
		}
		return 0
	}
	ops := []op{
		{10, func() { m.joinPlain(false) }},
		{14, func() { m.joinOpt(false) }},
		{5, m.leave},
		{18, m.sendOne},
		{8, m.burst},
		{6, m.joinDuringBurst},
		{8, m.settle},
		{3, m.resendSome},
		{w(redis && len(m.aliveNodes()) > 0, 2), m.restartNode},
		{w(redis, 1), m.restartRedis},
		{w(redis, 2), m.scriptFlush},
		{w(redis && len(m.aliveNodes()) > 1, 2), m.flushStorm},
		{w(redis && m.profile == profLong, 3), m.foreignEntry},
		{w(m.profile == profExpire, 2), m.expire},
		{w(m.profile == profLong, 2), m.longRoom},
		{3, m.aloneRace},
	}
	total := 0
	for _, o := range ops {
		total += o.w
	}
	n := m.rng.IntN(total)
	for _, o := range ops {
		if n < o.w {
			o.f()
			return
		}
		n -= o.w
	}
}

func (m *model) joinPlain(async bool) *mconn {
	a := m.newActor(false)
	return m.dial(a, m.pickNode(), "", async || m.rng.IntN(4) == 0)
}

// joinOpt joins a new ack=1&ids=1 actor, with since=, history= or
// neither.
func (m *model) joinOpt(async bool) *mconn {
	a := m.newActor(true)
	return m.dial(a, m.pickNode(), m.optQuery(a.room), async || m.rng.IntN(4) == 0)
}

// optQuery chooses the replay option of an opt join: nothing, history=N,
// or a since= of one of several kinds: 0, a known ID, the bare <ms> form
// of one, an ID or a bare <ms> between two entries, an ID in the future.
func (m *model) optQuery(room string) string {
	switch m.rng.IntN(7) {
	case 0, 1:
		return ""
	case 2:
		return "history=" + strconv.Itoa(1+m.rng.IntN(30))
	}
	known := m.knownIDs(room)
	id, ok := pick(m.rng, known)
	// The newest known entry of id's millisecond: the next entry is in a
	// later one.
	lastOfMs := id
	for _, k := range known {
		if k.Ms == id.Ms && lastOfMs.Less(k) {
			lastOfMs = k
		}
	}
	switch k := m.rng.IntN(10); {
	case !ok || k == 0:
		return "since=0"
	case k <= 3:
		return "since=" + id.String()
	case k == 4:
		return "since=" + strconv.FormatUint(id.Ms, 10) // the bare <ms> form
	case k == 5:
		return "since=" + strconv.FormatUint(lastOfMs.Ms+1, 10) // bare, likely between entries
	case k <= 8:
		return "since=" + stream.ID{Ms: lastOfMs.Ms, Seq: lastOfMs.Seq + 1}.String() // between entries
	default:
		newest := slices.MaxFunc(known, cmpID)
		return "since=" + strconv.FormatUint(newest.Ms+600000, 10) // ten minutes in the future
	}
}

func (m *model) sendOne() {
	c, ok := pick(m.rng, m.openConns("", true))
	if !ok {
		m.joinOpt(false)
		return
	}
	msg := m.newMsg(c.actor)
	m.logf("send %s %s cid=%t", c.name(), msg.text, msg.cid != "")
	send(c, msg)
}

// burstSize is the length of one sender's burst.
func (m *model) burstSize() int {
	if m.profile == profTrim {
		return 5 + m.rng.IntN(36) // often more than REDIS_MAXLEN
	}
	return 3 + m.rng.IntN(18)
}

// burst has one to three senders send a burst each, concurrently.
func (m *model) burst() {
	senders := m.openConns("", true)
	m.rng.Shuffle(len(senders), func(i, j int) { senders[i], senders[j] = senders[j], senders[i] })
	senders = senders[:min(len(senders), 1+m.rng.IntN(3))]
	if len(senders) == 0 {
		m.joinOpt(false)
		return
	}
	m.runBursts(senders, m.burstPlan)
}

// burstPlan is the messages of an ordinary burst of c's.
func (m *model) burstPlan(c *mconn) []*mmsg {
	var out []*mmsg
	for range m.burstSize() {
		out = append(out, m.newMsg(c.actor))
	}
	return out
}

// runBursts sends the messages plan makes for each sender, the senders
// concurrently, and returns once all are written.
func (m *model) runBursts(senders []*mconn, plan func(c *mconn) []*mmsg) {
	m.planBursts(senders, plan)()
}

// planBursts makes each sender's messages with plan (on the driver's
// goroutine: the schedule stays a function of the seed) and returns the
// function that sends them, the senders concurrently, and returns once
// all are written. It may run on another goroutine.
func (m *model) planBursts(senders []*mconn, plan func(c *mconn) []*mmsg) func() {
	plans := make([][]*mmsg, len(senders))
	var names []string
	for i, c := range senders {
		plans[i] = plan(c)
		names = append(names, fmt.Sprintf("%s×%d(%s..)", c.name(), len(plans[i]), plans[i][0].text[:min(len(plans[i][0].text), 24)]))
	}
	m.logf("burst %s", strings.Join(names, " "))
	return func() {
		var wg sync.WaitGroup
		for i, c := range senders {
			wg.Go(func() {
				for _, msg := range plans[i] {
					send(c, msg)
				}
			})
		}
		wg.Wait()
	}
}

// joinDuringBurst races a join against a burst of a sender of the same
// room, on the sender's node or another: the shortcuts for a sender alone
// on its node must not lose or leak a message.
func (m *model) joinDuringBurst() {
	s, ok := pick(m.rng, m.openConns("", true))
	if !ok {
		m.joinOpt(false)
		return
	}
	node := s.node
	if m.rng.IntN(3) == 0 {
		node = m.pickNode()
	}
	a := m.newActorIn(s.room, m.rng.IntN(2) == 0)
	query := ""
	if a.opt {
		query = m.optQuery(a.room)
	}
	burst := m.planBursts([]*mconn{s}, m.burstPlan)
	var wg sync.WaitGroup
	// The first messages are written before the dial: the sender may be
	// alone when they are published.
	wg.Go(burst)
	m.dial(a, node, query, true)
	wg.Wait()
	m.joining.Wait()
}

// leave closes an actor's connection; the actor is done.
func (m *model) leave() {
	c, ok := pick(m.rng, append(m.openConns("", false), m.openConns("", true)...))
	if !ok {
		return
	}
	m.logf("leave %s", c.name())
	c.actor.left = true
	c.mu.Lock()
	c.closedByUs = true
	c.mu.Unlock()
	if m.rng.IntN(2) == 0 {
		c.write(ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
	}
	c.conn.Close()
}

// resendSome has an actor whose messages were refused or not answered
// resend its unacknowledged cid messages, as the protocol advises.
func (m *model) resendSome() {
	m.settle()
	for _, c := range m.openConns("", true) {
		if msgs := unacked(c.actor); len(msgs) > 0 {
			m.resend(c, msgs)
			return
		}
	}
}

func (m *model) resend(c *mconn, msgs []*mmsg) {
	var texts []string
	for _, msg := range msgs {
		texts = append(texts, msg.text)
	}
	m.logf("resend %s %s", c.name(), strings.Join(texts, " "))
	for _, msg := range msgs {
		send(c, msg)
	}
}

// restartNode stops a node (its clients get 1001), starts a new one, and
// reconnects the stopped node's clients to live nodes: opt clients with
// since=<the last ID they saw> and their unacknowledged messages resent.
func (m *model) restartNode() {
	n := m.pickNode()
	m.logf("stop node n%d", n.idx)
	n.alive = false
	n.g.stop()
	select {
	case code := <-n.g.code:
		n.g.code <- code // startGateway's cleanup waits for it too
	case <-time.After(testutil.Timeout):
		m.t.Fatalf("seed %d: node n%d did not stop", m.seed, n.idx)
	}
	m.startNode()
	for _, a := range m.actors {
		if a.left || len(a.conns) == 0 {
			continue
		}
		c := a.conns[len(a.conns)-1]
		if c.node != n {
			continue
		}
		if !m.waitFor(testutil.Timeout, func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return !c.dialing && (c.joinDone.IsZero() || !c.ended.IsZero())
		}) {
			m.t.Fatalf("seed %d: %s still open after its node stopped", m.seed, c.name())
		}
		m.reconnect(a)
	}
}

// reconnect opens a's next connection on a live node; an opt actor
// resumes with since=<last ID seen> (0 before any) and resends what was
// not acknowledged. A join refused (Redis down) is retried until a
// deadline; then the actor gives up.
func (m *model) reconnect(a *actor) {
	query := ""
	if a.opt {
		since := "0"
		if last := lastSeen(a); last != nil {
			since = last.String()
		}
		query = "since=" + since
	}
	var c *mconn
	if !m.waitFor(testutil.Timeout, func() bool {
		c = m.dial(a, m.pickNode(), query, false)
		c.resume = true
		return c.open()
	}) {
		m.logf("reconnect %s: giving up", a.name)
		a.left = true
		return
	}
	if a.opt {
		if msgs := unacked(a); len(msgs) > 0 {
			m.resend(c, msgs)
		}
	}
}

// restartRedis kills Redis (AOF with fsync always keeps what it
// acknowledged), sends and joins while it is down, restarts it, and waits
// until every node is ready again.
func (m *model) restartRedis() {
	m.logf("kill redis")
	m.redis.Kill()
	for range m.rng.IntN(4) {
		switch m.rng.IntN(3) {
		case 0:
			m.joinPlain(false)
		default:
			if c, ok := pick(m.rng, m.openConns("", true)); ok {
				msg := m.newMsg(c.actor)
				m.logf("send %s %s cid=%t (redis down)", c.name(), msg.text, msg.cid != "")
				send(c, msg)
			}
		}
	}
	m.logf("restart redis")
	m.redis.Restart()
	if !m.waitFor(20*time.Second, func() bool {
		for _, n := range m.aliveNodes() {
			if status, _ := n.g.httpGet(m.t, "/readyz"); status != 200 {
				return false
			}
		}
		return true
	}) {
		m.t.Fatalf("seed %d: nodes not ready 20s after Redis restarted", m.seed)
	}
	m.logf("redis back, nodes ready")
}

func (m *model) scriptFlush() {
	m.logf("SCRIPT FLUSH")
	if _, err := m.redis.Do("SCRIPT", "FLUSH"); err != nil {
		m.logf("SCRIPT FLUSH: %v", err)
	}
}

// flushStorm empties Redis's script cache, then keeps emptying it
// while two busy senders on each of two nodes burst long cid messages
// (pipelines longer than Redis reads at once, so that another node's EVAL
// can load the script between two commands of one): the dedupe script's
// NOSCRIPT retry must keep each sender's order.
func (m *model) flushStorm() {
	nodes := m.aliveNodes()
	m.rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	nodes = nodes[:min(len(nodes), 2)]
	var senders []*mconn
	for _, n := range nodes {
		var on []*mconn
		for _, c := range m.openConns("", true) {
			if c.node == n && len(on) < 2 {
				on = append(on, c)
			}
		}
		for len(on) < 2 {
			c := m.dial(m.newActor(true), n, "", false)
			if !c.open() {
				return
			}
			on = append(on, c)
		}
		senders = append(senders, on...)
	}
	m.scriptFlush()
	m.logf("SCRIPT FLUSH storm")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			_, _ = m.redis.Do("SCRIPT", "FLUSH")
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	m.runBursts(senders, func(c *mconn) []*mmsg {
		out := make([]*mmsg, 60+m.rng.IntN(100))
		for i := range out {
			out[i] = m.newMsgPad(c.actor, 200)
			if out[i].cid == "" {
				out[i].cid = "k" + strings.TrimRight(out[i].text, "x-")
			}
		}
		return out
	})
	m.settle()
	close(stop)
	wg.Wait()
}

// aloneRace aims at the shortcut for a sender alone on its node
// (Message.Alone), in one to three rooms of their own at once: in each,
// S sends alone, then joiners (plain, since=<S's last acknowledged ID>,
// ids=1) race a burst of S's on S's node, then S sends again. A joiner
// must get neither a message from before it dialed (without since) nor
// miss one after its start.
func (m *model) aloneRace() {
	n := m.pickNode()
	var senders []*mconn
	for range 1 + m.rng.IntN(3) {
		s := m.newActorIn(m.newRoom(), true)
		s.presence = false
		if sc := m.dial(s, n, "", false); sc.open() {
			senders = append(senders, sc)
		}
	}
	if len(senders) == 0 {
		return
	}
	for _, sc := range senders {
		m.logf("alone race in %s on n%d", sc.room, n.idx)
		for range 1 + m.rng.IntN(4) {
			msg := m.newMsg(sc.actor)
			m.logf("send %s %s cid=%t (alone)", sc.name(), msg.text, msg.cid != "")
			send(sc, msg)
		}
	}
	m.settle()
	// Long messages keep the sender's event loop busy between the check
	// that it is alone and the publish: the window a join must hit.
	pad := []int{0, 4000, 8000}[m.rng.IntN(3)]
	plan := m.burstPlan
	if pad > 0 {
		plan = func(c *mconn) []*mmsg {
			out := make([]*mmsg, 30+m.rng.IntN(50))
			for i := range out {
				out[i] = m.newMsgPad(c.actor, pad)
			}
			return out
		}
	}
	burst := m.planBursts(senders, plan)
	var wg sync.WaitGroup
	wg.Go(burst)
	for _, sc := range senders {
		for range 1 + m.rng.IntN(3) {
			a := m.newActorIn(sc.room, m.rng.IntN(2) == 0)
			q := ""
			if a.opt {
				q = m.optQuery(sc.room)
				if last := lastAcked(sc); last != nil && m.rng.IntN(2) == 0 {
					q = "since=" + last.String()
				}
			}
			node := n
			if m.rng.IntN(4) == 0 {
				node = m.pickNode()
			}
			m.dial(a, node, q, true)
		}
	}
	wg.Wait()
	m.joining.Wait()
	m.settle()
	for _, sc := range senders {
		for range 1 + m.rng.IntN(3) {
			msg := m.newMsg(sc.actor)
			m.logf("send %s %s cid=%t", sc.name(), msg.text, msg.cid != "")
			send(sc, msg)
		}
	}
}

// foreignEntry appends an entry that is not the gateway's to a room's
// stream: readers skip it and go on.
func (m *model) foreignEntry() { m.foreignEntryIn(m.sharedRoom()) }

// foreignEntryIn appends an entry that is not the gateway's to room's
// stream, when the stream exists.
func (m *model) foreignEntryIn(room string) {
	key := m.roomKey(room)
	if key == "" {
		return
	}
	raw, err := m.redis.Do("XADD", key, "*", "note", "x")
	if err != nil {
		m.logf("XADD foreign: %v", err)
		return
	}
	id, err := stream.ParseID(raw)
	if err != nil {
		return
	}
	m.mu.Lock()
	m.foreign = append(m.foreign, foreignEntry{room: room, id: id, t: time.Now()})
	m.mu.Unlock()
	m.logf("foreign entry %s in %s", id, room)
}

// longRoom fills a room with more than one replay page (100 entries),
// so that since= joins replay several pages.
func (m *model) longRoom() {
	c, ok := pick(m.rng, m.openConns("", true))
	if !ok {
		return
	}
	msgs := make([]*mmsg, 100+m.rng.IntN(60))
	for i := range msgs {
		msgs[i] = m.newMsg(c.actor)
	}
	m.logf("long burst %s×%d (%s..%s)", c.name(), len(msgs), msgs[0].text, msgs[len(msgs)-1].text)
	for i, msg := range msgs {
		send(c, msg)
		if i == len(msgs)/2 && m.engine == "redis" && m.rng.IntN(2) == 0 {
			m.settle()
			m.foreignEntryIn(c.room)
		}
	}
}

// expire lets a room expire (REDIS_TTL): a shared room, or a fresh room
// without cids (so that the embedded engine's prune may drop it) whose
// members all leave. The model waits until the room is gone (Redis: its
// key; embedded: TTL after its last message), publishes in another room
// (the embedded engine prunes on publish) and, for a fresh room, has a
// new sender publish in it and a since= joiner ask for what expired: it
// must be told (truncated).
func (m *model) expire() {
	room := m.sharedRoom()
	fresh := m.rng.IntN(2) == 0
	var old []stream.ID
	if fresh {
		room = m.newRoom()
		m.cidRate[room] = 0
		s := m.dial(m.newActorIn(room, true), m.pickNode(), "", false)
		if m.rng.IntN(2) == 0 {
			m.dial(m.newActorIn(room, false), m.pickNode(), "", false)
		}
		if s.open() {
			for range 2 + m.rng.IntN(5) {
				msg := m.newMsg(s.actor)
				m.logf("send %s %s cid=%t", s.name(), msg.text, msg.cid != "")
				send(s, msg)
			}
		}
	}
	m.settle()
	if fresh {
		old = m.knownIDs(room)
	}
	if fresh || m.rng.IntN(2) == 0 {
		for _, c := range append(m.openConns(room, false), m.openConns(room, true)...) {
			m.logf("leave %s (before expiry)", c.name())
			c.actor.left = true
			c.mu.Lock()
			c.closedByUs = true
			c.mu.Unlock()
			c.conn.Close()
		}
	}
	var last time.Time
	for _, msg := range m.texts {
		for _, at := range msg.attempts {
			if at.t.After(last) {
				last = at.t
			}
		}
	}
	m.logf("expire %s: waiting past REDIS_TTL", room)
	ok := m.waitFor(modelTTL+5*time.Second, func() bool {
		if m.engine == "redis" {
			return m.roomKey(room) == ""
		}
		// TTL after the last message anywhere: the room expired, and the
		// next publish may prune (at most once a second).
		return time.Since(last) > modelTTL+100*time.Millisecond
	})
	if !ok {
		m.logf("expire %s: still there", room)
	}
	// A publish elsewhere: the embedded engine prunes on publish.
	other := m.sharedRoom()
	if other == room {
		other = m.rooms[0]
	}
	c, ok := pick(m.rng, m.openConns(other, true))
	if !ok {
		c = m.dial(m.newActorIn(other, true), m.pickNode(), "", false)
	}
	if c.open() {
		msg := m.newMsg(c.actor)
		m.logf("send %s %s cid=%t (after expiry)", c.name(), msg.text, msg.cid != "")
		send(c, msg)
		m.settle()
	}
	if !fresh || len(old) == 0 {
		return
	}
	// The room lives again; a joiner asks for what expired.
	m.dial(m.newActorIn(room, false), m.pickNode(), "", false)
	s := m.dial(m.newActorIn(room, true), m.pickNode(), "", false)
	if s.open() {
		msg := m.newMsg(s.actor)
		m.logf("send %s %s cid=%t (after expiry)", s.name(), msg.text, msg.cid != "")
		send(s, msg)
	}
	m.settle()
	since, _ := pick(m.rng, old)
	m.dial(m.newActorIn(room, true), m.pickNode(), "since="+since.String(), false)
	m.settle()
}
