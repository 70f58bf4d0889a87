package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/pkg/auth"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// PathPrefix is where chat rooms live: ws://HOST/ws/chat/<room>/.
const PathPrefix = "/ws/chat/"

// MaxRoomName is the longest room name accepted, in bytes.
const MaxRoomName = 100

var (
	_ conn.Handler   = (*Hub)(nil)
	_ stream.Handler = (*Hub)(nil).Deliver
)

// Hub maps rooms to the connections of this node, publishes what members
// send to the stream.Engine and delivers what the engine hands back to
// every member except the sender. It is the conn.Handler of the gateway.
//
// Lock order: Hub.mu, then room.mu, then conn's own locks (Send). The
// leaves, taken under either and never around another lock: banned's
// mutex, addrs' mutex, a session's mu, watchMu, room.lastMu.
type Hub struct {
	engine     stream.Engine
	log        *slog.Logger
	ack        stream.Ack // h.published, made once so Publish does not allocate
	tokens     *auth.Verifier
	rate       rateParams
	historyMax int          // HISTORY_MAX
	epoch      time.Time    // the limiters' clock starts here
	limitE     *decodeError // the rate_limited error
	limitF     *conn.Frame  // its frame
	banned     penalties    // addresses recently closed for their rate
	addrs      addrBuckets  // buckets of the client addresses (RATE_LIMIT_PER_IP, BYTE_RATE_PER_IP)

	mu    sync.RWMutex
	rooms map[string]*room
	stats counters

	// Presence (presence.go): the rooms with presence=1 members, polled
	// by one goroutine started with the first of them, stopped by Close.
	watchMu      sync.Mutex
	watched      map[*room]string // room → its name
	presenceOnce sync.Once
	quit         chan struct{} // closed by Close
	closeOnce    sync.Once
}

// room holds the local members of one room.
type room struct {
	mu      sync.RWMutex // Lock: join, leave, state; RLock: deliver, and a member's own limiter
	members []member
	pending []*conn.Conn // joined while the subscription is not ready
	state   roomState
	refs    int // members and pending joins; guarded by Hub.mu
	// watchers counts the members with presence=1; guarded by mu.
	watchers int

	// last is the newest entry of the room this node has seen: delivered,
	// acknowledged to a local sender, or the room's end when it was
	// subscribed. A joiner's floor: it never gets an entry at or below
	// it, which is older than its join. lastMu is a leaf, taken under mu
	// (RLock is enough) or alone.
	lastMu sync.Mutex
	last   stream.ID
}

// member is one local member of a room: its connection, whose Slot is
// its index in room.members, and what the Hub keeps about it. rate is
// used only by OnMessage, which runs on the member's event loop one call
// at a time, under room.mu.RLock; the rest changes only under room.mu.Lock.
type member struct {
	c    *conn.Conn
	user string   // the username its token forces, as JSON; "" when none
	sess *session // its query options and replay (session.go); nil when it set none
	// floor: deliveries at or below it are skipped, as older than the
	// member's join (room.last then) or replayed already (session.go).
	floor stream.ID
	rate  limiter
}

// roomState is where a room's engine subscription stands. Only one
// Subscribe or Unsubscribe runs per room at a time, off the event loops.
type roomState uint8

const (
	roomIdle          roomState = iota // not subscribed
	roomSubscribing                    // Subscribe running; joiners wait in pending
	roomSubscribed                     // members receive messages
	roomUnsubscribing                  // Unsubscribe running after the last member left
)

type counters struct {
	received, published, delivered, rejected, unavailable, unconfirmed atomic.Int64
	rateLimited, rateClosed, ratePaused, replayed                      atomic.Int64
}

// Stats are the Hub's counters.
type Stats struct {
	Rooms       int   `json:"rooms"`        // rooms with members on this node
	Received    int64 `json:"received"`     // messages received from clients
	Published   int64 `json:"published"`    // messages accepted by the engine
	Delivered   int64 `json:"delivered"`    // frames handed to member connections
	Rejected    int64 `json:"rejected"`     // messages refused for bad JSON or missing fields
	Unavailable int64 `json:"unavailable"`  // messages the engine did not store (sender told "unavailable")
	Unconfirmed int64 `json:"unconfirmed"`  // messages sent to Redis without an answer in time (sender told "unconfirmed")
	RatePaused  int64 `json:"rate_paused"`  // messages that waited for their sender's RATE_LIMIT (RATE_MODE pace): read later, not dropped
	RateLimited int64 `json:"rate_limited"` // messages dropped over RATE_LIMIT (RATE_MODE drop; sender told "rate_limited")
	RateClosed  int64 `json:"rate_closed"`  // connections closed with 1008 for going on over RATE_LIMIT (RATE_MODE drop)
	Replayed    int64 `json:"replayed"`     // stored messages replayed to since= and history= joins
}

// NewHub returns a Hub. Its Deliver method must be the engine's Handler;
// SetEngine connects the two, as each needs the other at construction.
func NewHub(cfg Config, logger *slog.Logger) (*Hub, error) {
	if logger == nil {
		return nil, errors.New("room: NewHub needs a logger")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tokens, err := auth.New(cfg.Auth)
	if err != nil {
		return nil, err
	}
	h := &Hub{log: logger, rooms: make(map[string]*room), tokens: tokens, rate: newRateParams(cfg), historyMax: cfg.HistoryMax,
		epoch: time.Now(), watched: make(map[*room]string), quit: make(chan struct{})}
	h.ack = h.published
	h.limitE = &decodeError{code: CodeRateLimited, detail: fmt.Sprintf(
		"message dropped: over %g messages per second (bursts of %d); more than %d drops within %v close the connection",
		cfg.RateLimit, cfg.RateBurst, cfg.RateCloseAfter, RateCloseWindow)}
	h.limitF = conn.NewStaticText(errorJSON(h.limitE))
	return h, nil
}

// SetEngine sets the engine messages are published to. It must be called
// before the server starts.
func (h *Hub) SetEngine(e stream.Engine) { h.engine = e }

// Close stops the Hub's background work (the presence poller). Call it
// once the server is shut down, before the engine is closed.
func (h *Hub) Close() {
	h.closeOnce.Do(func() { close(h.quit) })
}

// Stats returns the Hub's counters.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	n := len(h.rooms)
	h.mu.RUnlock()
	return Stats{
		Rooms:       n,
		Received:    h.stats.received.Load(),
		Published:   h.stats.published.Load(),
		Delivered:   h.stats.delivered.Load(),
		Rejected:    h.stats.rejected.Load(),
		Unavailable: h.stats.unavailable.Load(),
		Unconfirmed: h.stats.unconfirmed.Load(),
		RatePaused:  h.stats.ratePaused.Load(),
		RateLimited: h.stats.rateLimited.Load(),
		RateClosed:  h.stats.rateClosed.Load(),
		Replayed:    h.stats.replayed.Load(),
	}
}

// Route maps a request URI to its room: /ws/chat/<room>/ (extra segments
// after the room are ignored, as in the original app). Unknown paths get
// 404, bad room names 400, a query option with a bad value (options.go)
// 400. With a key in Config.Auth, the token query parameter must hold a
// valid token (else 401) that allows the room (else 403); a username it
// fixes and the options ride in the key, after the room name (see
// splitKey). Token checks run here, on the event loop: an ES256 or RS256
// verification costs tens of microseconds per upgrade.
func (h *Hub) Route(uri []byte) (string, error) {
	path, query, _ := strings.Cut(string(uri), "?")
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return "", &conn.HandshakeError{Status: http.StatusNotFound,
			Reason: fmt.Sprintf("no WebSocket endpoint at %q; rooms are at %s<room>/", path, PathPrefix)}
	}
	name, _, _ := strings.Cut(rest, "/")
	if strings.Contains(name, "%") {
		dec, err := url.PathUnescape(name)
		if err != nil {
			return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: "room name has a bad %-escape"}
		}
		name = dec
	}
	if err := ValidRoomName(name); err != nil {
		return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: err.Error()}
	}
	var opts options
	if query != "" {
		var err error
		if opts, err = parseOptions(query, h.historyMax); err != nil {
			return "", err
		}
	}
	key := name
	if h.tokens != nil {
		var err error
		if key, err = h.authorize(name, query); err != nil {
			return "", err
		}
	}
	return withOptions(key, opts), nil
}

// keySep separates the room name from the username a token fixes, and
// that from the query options (withOptions), in a connection's key:
// "<room>", "<room>\x00<username as JSON>" or
// "<room>\x00<username or nothing>\x00<options>". Room names never
// contain it, nor does JSON (it escapes control characters).
const keySep = "\x00"

// splitKey returns the room and the fixed username ("" when none) of a
// connection's key.
func splitKey(key string) (name, user string) {
	name, rest, _ := strings.Cut(key, keySep)
	user, _, _ = strings.Cut(rest, keySep)
	return name, user
}

// authorize checks the token of a request for room name (the token query
// parameter) and returns the connection's key.
func (h *Hub) authorize(name, query string) (string, error) {
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", &conn.HandshakeError{Status: http.StatusBadRequest, Reason: "bad query string"}
	}
	claims, err := h.tokens.Verify(q.Get("token"))
	if err != nil {
		return "", &conn.HandshakeError{Status: http.StatusUnauthorized, Reason: err.Error()}
	}
	if !claims.AllowsRoom(name) {
		return "", &conn.HandshakeError{Status: http.StatusForbidden, Reason: fmt.Sprintf("auth: the token does not allow room %q", name)}
	}
	if claims.Username == nil {
		return name, nil
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(*claims.Username) // a string always encodes
	return name + keySep + strings.TrimSuffix(b.String(), "\n"), nil
}

// ValidRoomName checks a room name: 1 to 100 bytes of ASCII letters,
// digits, '_', '-' and '.'.
func ValidRoomName(name string) error {
	if name == "" {
		return errors.New("room name is empty; use /ws/chat/<room>/")
	}
	if len(name) > MaxRoomName {
		return fmt.Errorf("room name is %d bytes; the limit is %d", len(name), MaxRoomName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("room name has %q at byte %d; use ASCII letters, digits, '_', '-' and '.'", c, i)
		}
	}
	return nil
}

// OnOpen joins the connection to its room. In a subscribed room that is
// immediate; otherwise the connection waits (conn.OpenPending) while the
// room is subscribed on the engine, off the event loop, and its 101 is
// written once every message published from then on will reach it. A
// join that replays history (since=, history=) also waits for the first
// page of its replay (session.go).
func (h *Hub) OnOpen(c *conn.Conn) (conn.Opening, error) {
	name, _ := splitKey(c.Key())
	h.mu.Lock()
	r := h.rooms[name]
	if r == nil {
		r = &room{}
		h.rooms[name] = r
	}
	r.refs++
	h.mu.Unlock()

	r.mu.Lock()
	if r.state == roomSubscribed {
		s := h.join(name, r, c)
		h.engine.SetMembers(name, len(r.members))
		r.mu.Unlock()
		if s == nil || !s.async() {
			return conn.OpenNow, nil
		}
		replays := s.opts.replays()
		go h.start(name, r, c, s, replays)
		if replays {
			return conn.OpenPending, nil
		}
		return conn.OpenNow, nil
	}
	r.pending = append(r.pending, c)
	start := r.state == roomIdle
	if start {
		r.state = roomSubscribing
	}
	r.mu.Unlock()
	if start {
		go h.subscribe(name, r)
	}
	return conn.OpenPending, nil
}

// subscribe subscribes the room on the engine and answers its pending
// joins.
func (h *Hub) subscribe(name string, r *room) {
	last, err := h.engine.Subscribe(name)
	r.seen(last)
	r.mu.Lock()
	pend := r.pending
	r.pending = nil
	if err != nil {
		r.state = roomIdle
		r.mu.Unlock()
		h.log.Warn("cannot subscribe room", "room", name, "err", err)
		refused := &conn.HandshakeError{Status: http.StatusServiceUnavailable, Reason: "the message store is unavailable; retry later"}
		for _, c := range pend {
			c.Complete(refused)
		}
		h.unref(name, r, len(pend))
		return
	}
	r.state = roomSubscribed
	var sessions []*session // of pend, for those with options
	for i, c := range pend {
		if s := h.join(name, r, c); s != nil {
			if sessions == nil {
				sessions = make([]*session, len(pend))
			}
			sessions[i] = s
		}
	}
	empty := len(r.members) == 0
	if empty {
		r.state = roomUnsubscribing // every joiner left meanwhile
	} else if len(pend) > 0 {
		h.engine.SetMembers(name, len(r.members))
	}
	r.mu.Unlock()
	for i, c := range pend {
		var s *session
		if sessions != nil {
			s = sessions[i]
		}
		switch {
		case s == nil || !s.async():
			c.Complete(nil)
		case s.opts.replays():
			go h.start(name, r, c, s, true) // answers the join itself
		default:
			c.Complete(nil)
			go h.start(name, r, c, s, false)
		}
	}
	if empty {
		h.unsubscribe(name, r)
	}
}

// unsubscribe unsubscribes a room whose last member left, then
// subscribes it again if someone joined meanwhile.
func (h *Hub) unsubscribe(name string, r *room) {
	if err := h.engine.Unsubscribe(name); err != nil && !errors.Is(err, stream.ErrClosed) {
		h.log.Warn("cannot unsubscribe room", "room", name, "err", err)
	}
	r.mu.Lock()
	again := len(r.pending) > 0
	if again {
		r.state = roomSubscribing
	} else {
		r.state = roomIdle
	}
	r.mu.Unlock()
	if again {
		h.subscribe(name, r)
		return
	}
	h.unref(name, r, 0)
}

// join makes c a member of r, named name, and returns its session (nil
// when c set no query option). r.mu must be held. The caller reports the
// new count to the engine (SetMembers).
func (h *Hub) join(name string, r *room, c *conn.Conn) *session {
	_, user := splitKey(c.Key())
	s := newSession(c)
	c.SetSlot(len(r.members))
	lim := h.startLimiter(c)
	if (h.rate.addr.rate > 0 || h.rate.addrMsgs.rate > 0) && c.ClientKnown() {
		lim.addr = h.addrs.get(clientAddr(c.Remote()))
	}
	r.members = append(r.members, member{c: c, user: user, sess: s, floor: r.position(), rate: lim})
	if s != nil && s.opts.flags&optPresence != 0 {
		r.watchers++
		if r.watchers == 1 {
			h.watch(name, r)
		}
	}
	return s
}

// now is the limiters' clock: nanoseconds since the Hub was made.
func (h *Hub) now() int64 { return int64(time.Since(h.epoch)) }

// startLimiter returns the limiter of a connection that joins now: empty
// when its address had a connection closed for its rate within
// RateCloseWindow, else full.
func (h *Hub) startLimiter(c *conn.Conn) limiter {
	now := h.now()
	return h.rate.start(now, c.ClientKnown() && h.banned.has(clientAddr(c.Remote()), now))
}

// seen notes that the node has seen entry id of r: delivered it,
// acknowledged it, or found it as the room's end.
func (r *room) seen(id stream.ID) {
	r.lastMu.Lock()
	if r.last.Less(id) {
		r.last = id
	}
	r.lastMu.Unlock()
}

// position returns the newest entry of r the node has seen.
func (r *room) position() stream.ID {
	r.lastMu.Lock()
	defer r.lastMu.Unlock()
	return r.last
}

// others reports whether r has a member, or a pending join, other than
// c. r.mu must be held (RLock is enough).
func (r *room) others(c *conn.Conn) bool {
	n := len(r.members) + len(r.pending)
	if r.member(c) != nil {
		n--
	}
	return n > 0
}

// member returns c's entry in r.members, or nil when c is not a member.
// r.mu must be held (RLock is enough).
func (r *room) member(c *conn.Conn) *member {
	if i := c.Slot(); i >= 0 && i < len(r.members) && r.members[i].c == c {
		return &r.members[i]
	}
	return nil
}

// OnClose removes the connection from its room (or from its pending
// joins), unsubscribing the room when its last local member leaves.
func (h *Hub) OnClose(c *conn.Conn, _ error) { h.leave(c) }

// leave is OnClose: it removes c from its room or its pending joins, and
// stops its replay. It does nothing for a connection already gone.
func (h *Hub) leave(c *conn.Conn) {
	name, _ := splitKey(c.Key())
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return
	}
	r.mu.Lock()
	found := false
	if m := r.member(c); m != nil {
		if s := m.sess; s != nil {
			s.stop()
			if s.opts.flags&optPresence != 0 {
				r.watchers--
				if r.watchers == 0 {
					h.unwatch(r)
				}
			}
		}
		if ab := m.rate.addr; ab != nil {
			h.addrs.put(clientAddr(c.Remote()), ab)
		}
		i, last := c.Slot(), len(r.members)-1
		r.members[i] = r.members[last]
		r.members[i].c.SetSlot(i)
		r.members[last] = member{}
		r.members = r.members[:last]
		c.SetSlot(-1)
		found = true
		h.engine.SetMembers(name, len(r.members))
	} else if i := slices.Index(r.pending, c); i >= 0 {
		r.pending = slices.Delete(r.pending, i, i+1)
		found = true
	}
	leave := found && len(r.members) == 0 && len(r.pending) == 0 && r.state == roomSubscribed
	if leave {
		r.state = roomUnsubscribing
	}
	r.mu.Unlock()
	if !found {
		return
	}
	if leave {
		go h.unsubscribe(name, r)
	}
	h.unref(name, r, 1)
}

// unref drops n references to r and forgets the room when none is left
// and no subscription is running, so a later Subscribe of the same name
// never races with an earlier Unsubscribe.
func (h *Hub) unref(name string, r *room, n int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r.refs -= n
	if r.refs > 0 || h.rooms[name] != r {
		return
	}
	r.mu.RLock()
	idle := r.state == roomIdle
	r.mu.RUnlock()
	if idle {
		delete(h.rooms, name)
	}
}

// OnMessage checks a client's message against the sender's rate limit,
// decodes it and publishes it to the room. Over the limit, with RATE_MODE
// pace (the default), the message waits: OnMessage returns how long, and
// the server reads nothing more from the client until then (see
// conn.Handler); with RATE_MODE drop it is dropped and its sender alone
// gets a rate_limited frame, or is closed with 1008 when it goes on. An
// invalid message gets an error frame, only to its sender, and the
// connection stays open. An ack=1 sender's frames about a message name
// the "cid" it carried (ack.go).
func (h *Hub) OnMessage(c *conn.Conn, msg []byte) time.Duration {
	name, _ := splitKey(c.Key())
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return 0 // not joined: OnMessage follows OnOpen, so never
	}
	now := h.now()
	r.mu.RLock()
	m := r.member(c)
	if m == nil {
		r.mu.RUnlock()
		return 0
	}
	if h.rate.pace {
		if wait := m.rate.pace(now, &h.rate); wait > 0 {
			r.mu.RUnlock()
			h.stats.ratePaused.Add(1)
			if c.ClientKnown() {
				// Reconnecting buys its address no burst for a while.
				h.banned.add(clientAddr(c.Remote()), now)
			}
			return time.Duration(wait)
		}
	}
	// Bytes (BYTE_RATE, BYTE_RATE_PER_IP) and an address's messages
	// (RATE_LIMIT_PER_IP) are paced in either mode.
	if wait := m.rate.bytesWait(now, &h.rate, len(msg)); wait > 0 {
		r.mu.RUnlock()
		h.stats.ratePaused.Add(1)
		return time.Duration(wait)
	}
	h.stats.received.Add(1)
	v := rateAllowed
	if h.rate.pace {
		m.rate.admit(now, &h.rate)
	} else {
		v = m.rate.take(now, &h.rate)
	}
	user := m.user
	acks := m.sess != nil && m.sess.opts.flags&optAck != 0
	// alone: no other local member, so this node need not read the
	// message back.
	alone := len(r.members)+len(r.pending) <= 1
	r.mu.RUnlock()
	switch v {
	case rateRefused:
		h.stats.rateLimited.Add(1)
		if acks {
			h.refuseWithCID(c, msg, nil)
			return 0
		}
		c.Send(h.limitF)
		return 0
	case rateExceeded:
		h.stats.rateLimited.Add(1)
		h.stats.rateClosed.Add(1)
		if c.ClientKnown() {
			h.banned.add(clientAddr(c.Remote()), now)
		}
		if h.log.Enabled(context.Background(), slog.LevelDebug) {
			h.log.Debug("closing a connection over its rate limit", "room", name, "conn_id", c.ID(), "remote", c.Remote())
		}
		c.Close(rateClose)
		return 0
	}
	if acks {
		h.publishAcked(c, name, msg, user, alone)
		return 0
	}
	username, message, derr := decodeMessage(msg)
	if derr != nil {
		h.stats.rejected.Add(1)
		c.Send(errorFrames[derr])
		return 0
	}
	bp := payloadPool.Get().(*[]byte)
	if user != "" {
		*bp = appendOutboundUser((*bp)[:0], user, message)
	} else {
		*bp = appendOutbound((*bp)[:0], username, message)
	}
	h.engine.Publish(name, stream.Message{Sender: c.ID(), Payload: *bp, Alone: alone}, h.ack, c)
	putPayload(bp)
	return 0
}

// published is the engine's Ack for the messages of OnMessage: it counts
// the outcome and tells the sender when its message was not stored, or
// may not have been; an ack=1 sender (an *ackRef) also when it was. For
// a stored message it notes the ID as seen in the room (so a later
// joiner does not get it) and answers whether someone else in the room
// here needs it (Message.Alone).
func (h *Hub) published(ref any, id stream.ID, err error) bool {
	var c *conn.Conn
	cid := ""
	a, acked := ref.(*ackRef)
	if acked {
		c, cid = a.c, a.cid
	} else {
		c = ref.(*conn.Conn)
	}
	if err == nil {
		h.stats.published.Add(1)
		others := true
		name, _ := splitKey(c.Key())
		h.mu.RLock()
		r := h.rooms[name]
		h.mu.RUnlock()
		if r != nil {
			r.mu.RLock()
			r.seen(id)
			others = r.others(c)
			r.mu.RUnlock()
		}
		if acked {
			h.sendAck(a, id)
		}
		return others
	}
	f := unavailableFrame
	code := errUnavailable
	switch {
	case errors.Is(err, stream.ErrUnconfirmed):
		h.stats.unconfirmed.Add(1)
		f, code = unconfirmedFrame, errUnconfirmed
	default:
		h.stats.unavailable.Add(1)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		name, _ := splitKey(c.Key())
		h.log.Debug("publish failed", "room", name, "conn_id", c.ID(), "err", err)
	}
	if cid != "" {
		sendError(c, code, cid)
		return false
	}
	c.Send(f)
	return false
}

var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// putPayload returns a buffer of payloadPool, unless it grew large.
func putPayload(bp *[]byte) {
	if cap(*bp) <= 64<<10 {
		payloadPool.Put(bp)
	}
}

// textFrame encodes a frame from the bytes append writes into a pooled
// buffer. The caller releases the frame.
func textFrame(enc func([]byte) []byte) *conn.Frame {
	bp := payloadPool.Get().(*[]byte)
	*bp = enc((*bp)[:0])
	f := conn.NewTextFrame(*bp)
	putPayload(bp)
	return f
}

// Deliver is the engine's Handler: it encodes m once and queues the frame
// on every local member of the room except the sender and those that
// joined after it (their floor). A member with a session may get the
// frame with the ID (ids=1), or hold it while its replay runs
// (session.go). A loss notice (m.Lost) goes to the members that follow
// IDs (notifyLost).
func (h *Hub) Deliver(name string, m stream.Message) {
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return
	}
	if m.Lost {
		h.notifyLost(r, m)
		return
	}
	f := conn.NewTextFrame(m.Payload)
	var fid *conn.Frame // f with the ID, made for the first ids=1 member
	n := 0
	r.mu.RLock()
	r.seen(m.ID)
	for i := range r.members {
		mb := &r.members[i]
		c := mb.c
		if c.ID() == m.Sender || !mb.floor.Less(m.ID) {
			continue // its own, or older than its join or replay
		}
		s := mb.sess
		if s == nil {
			c.Send(f)
			n++
			continue
		}
		switch {
		case s.replaying:
			s.hold(m)
			continue
		case s.opts.flags&optIDs != 0:
			if fid == nil {
				fid = textFrame(func(b []byte) []byte { return appendWithID(b, m.Payload, m.ID) })
			}
			c.Send(fid)
		default:
			c.Send(f)
		}
		n++
	}
	r.mu.RUnlock()
	f.Release()
	if fid != nil {
		fid.Release()
	}
	h.stats.delivered.Add(int64(n))
}

// notifyLost tells the members of r that follow IDs (ids=1, since=,
// history=) that entries between m.LostAfter and m.ID were lost before
// this node could deliver them: {"truncated":{"since":…,"from":…}}, the
// frame a replay starts with when history was trimmed. A replaying
// member holds it, and gets it at the switch if the range reaches past
// its replay. Plain members get nothing: the original protocol has no
// such frame.
func (h *Hub) notifyLost(r *room, m stream.Message) {
	var f *conn.Frame
	r.mu.RLock()
	for i := range r.members {
		mb := &r.members[i]
		s := mb.sess
		if s == nil || !s.followsIDs() || !mb.floor.Less(m.ID) {
			continue
		}
		if s.replaying {
			s.hold(m)
			continue
		}
		if m.LostAfter.Less(mb.floor) {
			// Joined within the range: from its start on.
			g := lostFrame(m, mb.floor)
			mb.c.Send(g)
			g.Release()
			continue
		}
		if f == nil {
			f = lostFrame(m, m.LostAfter)
		}
		mb.c.Send(f)
	}
	r.mu.RUnlock()
	if f != nil {
		f.Release()
	}
}

// lostFrame encodes the truncated frame of notice m for a member that
// got everything up to after: {"truncated":{"since":…,"from":m.ID}}, since
// the later of m.LostAfter and after.
func lostFrame(m stream.Message, after stream.ID) *conn.Frame {
	since := m.LostAfter
	if since.Less(after) {
		since = after
	}
	return textFrame(func(b []byte) []byte { return appendTruncated(b, since, m.ID, true) })
}

// errorFrames are the pre-encoded error frames, one per decode error.
var errorFrames = map[*decodeError]*conn.Frame{}

var (
	errUnavailable = &decodeError{
		code: CodeUnavailable, detail: "the message was not stored: the message store is unavailable or overloaded; resend it later",
	}
	errUnconfirmed = &decodeError{
		code: CodeUnconfirmed, detail: "the message store did not confirm the message in time: it may still be delivered; resending it may duplicate it",
	}
	unavailableFrame = conn.NewStaticText(errorJSON(errUnavailable))
	unconfirmedFrame = conn.NewStaticText(errorJSON(errUnconfirmed))
)

func init() {
	for _, e := range []*decodeError{errInvalidJSON, errNotObject, errMissingUser, errMissingMessage, errInvalidCID} {
		errorFrames[e] = conn.NewStaticText(errorJSON(e))
	}
}

// errorJSON encodes an error frame: {"error":code,"field":…,"detail":…}.
func errorJSON(e *decodeError) []byte { return appendError(nil, e, "") }

// appendError appends an error frame: {"error":code,"field":…,"detail":…},
// with "cid":<cid as sent> before "detail" when cid is set (ack=1).
func appendError(b []byte, e *decodeError, cid string) []byte {
	b = fmt.Appendf(b, `{"error":%q`, e.code)
	if e.field != "" {
		b = fmt.Appendf(b, `,"field":%q`, e.field)
	}
	if cid != "" {
		b = append(b, `,"cid":`...)
		b = append(b, cid...)
	}
	return fmt.Appendf(b, `,"detail":%q}`, e.detail)
}
