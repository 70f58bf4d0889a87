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
// Lock order: Hub.mu, then room.mu, then banned's mutex (a leaf).
type Hub struct {
	engine stream.Engine
	log    *slog.Logger
	ack    stream.Ack // h.published, made once so Publish does not allocate
	tokens *auth.Verifier
	rate   rateParams
	epoch  time.Time   // the limiters' clock starts here
	limitF *conn.Frame // the rate_limited error frame
	banned penalties   // addresses recently closed for their rate

	mu    sync.RWMutex
	rooms map[string]*room
	stats counters
}

// room holds the local members of one room.
type room struct {
	mu      sync.RWMutex // Lock: join, leave, state; RLock: deliver, and a member's own limiter
	members []member
	pending []*conn.Conn // joined while the subscription is not ready
	state   roomState
	refs    int // members and pending joins; guarded by Hub.mu
}

// member is one local member of a room: its connection, whose Slot is
// its index in room.members, and what the Hub keeps about it. rate is
// used only by OnMessage, which runs on the member's event loop one call
// at a time, under room.mu.RLock; the rest changes only under room.mu.Lock.
type member struct {
	c    *conn.Conn
	user string // the username its token forces, as JSON; "" when none
	rate limiter
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
	rateLimited, rateClosed                                            atomic.Int64
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
	RateLimited int64 `json:"rate_limited"` // messages dropped over RATE_LIMIT (sender told "rate_limited")
	RateClosed  int64 `json:"rate_closed"`  // connections closed with 1008 for going on over RATE_LIMIT
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
	h := &Hub{log: logger, rooms: make(map[string]*room), tokens: tokens, rate: newRateParams(cfg), epoch: time.Now()}
	h.ack = h.published
	h.limitF = conn.NewStaticText(errorJSON(&decodeError{code: CodeRateLimited, detail: fmt.Sprintf(
		"message dropped: over %g messages per second (bursts of %d); more than %d drops within %v close the connection",
		cfg.RateLimit, cfg.RateBurst, cfg.RateCloseAfter, RateCloseWindow)}))
	return h, nil
}

// SetEngine sets the engine messages are published to. It must be called
// before the server starts.
func (h *Hub) SetEngine(e stream.Engine) { h.engine = e }

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
		RateLimited: h.stats.rateLimited.Load(),
		RateClosed:  h.stats.rateClosed.Load(),
	}
}

// Route maps a request URI to its room: /ws/chat/<room>/ (extra segments
// after the room are ignored, as in the original app). Unknown paths get
// 404, bad room names 400. With a key in Config.Auth, the token query
// parameter must hold a valid token (else 401) that allows the room (else
// 403); a username it fixes rides in the key, after the room name (see
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
	if h.tokens == nil {
		return name, nil
	}
	return h.authorize(name, query)
}

// keySep separates the room name from the username a token fixes in a
// connection's key: "<room>" or "<room>\x00<username as JSON>". Room
// names never contain it.
const keySep = "\x00"

// splitKey returns the room and the fixed username ("" when none) of a
// connection's key.
func splitKey(key string) (name, user string) {
	name, user, _ = strings.Cut(key, keySep)
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
// immediate; otherwise the connection waits (conn.ErrPending) while the
// room is subscribed on the engine, off the event loop, and its 101 is
// written once every message published from then on will reach it.
func (h *Hub) OnOpen(c *conn.Conn) error {
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
		r.join(c, h.startLimiter(c))
		r.mu.Unlock()
		return nil
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
	return conn.ErrPending
}

// subscribe subscribes the room on the engine and answers its pending
// joins.
func (h *Hub) subscribe(name string, r *room) {
	err := h.engine.Subscribe(name)
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
	for _, c := range pend {
		r.join(c, h.startLimiter(c))
	}
	empty := len(r.members) == 0
	if empty {
		r.state = roomUnsubscribing // every joiner left meanwhile
	}
	r.mu.Unlock()
	for _, c := range pend {
		c.Complete(nil)
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

// join makes c a member with the limiter lim. r.mu must be held.
func (r *room) join(c *conn.Conn, lim limiter) {
	_, user := splitKey(c.Key())
	c.SetSlot(len(r.members))
	r.members = append(r.members, member{c: c, user: user, rate: lim})
}

// now is the limiters' clock: nanoseconds since the Hub was made.
func (h *Hub) now() int64 { return int64(time.Since(h.epoch)) }

// startLimiter returns the limiter of a connection that joins now: empty
// when its address had a connection closed for its rate within
// RateCloseWindow, else full.
func (h *Hub) startLimiter(c *conn.Conn) limiter {
	now := h.now()
	return h.rate.start(now, h.banned.has(clientAddr(c.Remote()), now))
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
func (h *Hub) OnClose(c *conn.Conn, _ error) {
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
		i, last := c.Slot(), len(r.members)-1
		r.members[i] = r.members[last]
		r.members[i].c.SetSlot(i)
		r.members[last] = member{}
		r.members = r.members[:last]
		c.SetSlot(-1)
		found = true
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
// decodes it and publishes it to the room. A message over the limit is
// dropped and its sender alone gets a rate_limited frame, or is closed
// with 1008 when it goes on; an invalid message gets an error frame, only
// to its sender, and the connection stays open.
func (h *Hub) OnMessage(c *conn.Conn, msg []byte) {
	h.stats.received.Add(1)
	name, _ := splitKey(c.Key())
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return // not joined: OnMessage follows OnOpen, so never
	}
	now := h.now()
	r.mu.RLock()
	m := r.member(c)
	if m == nil {
		r.mu.RUnlock()
		return
	}
	v := m.rate.take(now, &h.rate)
	user := m.user
	// alone: no other local member, so this node need not read the
	// message back.
	alone := len(r.members)+len(r.pending) <= 1
	r.mu.RUnlock()
	switch v {
	case rateRefused:
		h.stats.rateLimited.Add(1)
		c.Send(h.limitF)
		return
	case rateExceeded:
		h.stats.rateLimited.Add(1)
		h.stats.rateClosed.Add(1)
		h.banned.add(clientAddr(c.Remote()), now)
		if h.log.Enabled(context.Background(), slog.LevelDebug) {
			h.log.Debug("closing a connection over its rate limit", "room", name, "conn_id", c.ID(), "remote", c.Remote())
		}
		c.Close(rateClose)
		return
	}
	username, message, derr := decodeMessage(msg)
	if derr != nil {
		h.stats.rejected.Add(1)
		c.Send(errorFrames[derr])
		return
	}
	bp := payloadPool.Get().(*[]byte)
	if user != "" {
		*bp = appendOutboundUser((*bp)[:0], user, message)
	} else {
		*bp = appendOutbound((*bp)[:0], username, message)
	}
	h.engine.Publish(name, stream.Message{Sender: c.ID(), Payload: *bp, Alone: alone}, h.ack, c)
	if cap(*bp) <= 64<<10 {
		payloadPool.Put(bp)
	}
}

// published is the engine's Ack for the messages of OnMessage: it counts
// the outcome and tells the sender when its message was not stored, or
// may not have been.
func (h *Hub) published(ref any, _ stream.ID, err error) {
	if err == nil {
		h.stats.published.Add(1)
		return
	}
	c := ref.(*conn.Conn)
	f := unavailableFrame
	switch {
	case errors.Is(err, stream.ErrUnconfirmed):
		h.stats.unconfirmed.Add(1)
		f = unconfirmedFrame
	default:
		h.stats.unavailable.Add(1)
	}
	if h.log.Enabled(context.Background(), slog.LevelDebug) {
		name, _ := splitKey(c.Key())
		h.log.Debug("publish failed", "room", name, "conn_id", c.ID(), "err", err)
	}
	c.Send(f)
}

var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// Deliver is the engine's Handler: it encodes m once and queues the frame
// on every local member of the room except the sender.
func (h *Hub) Deliver(name string, m stream.Message) {
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	if r == nil {
		return
	}
	f := conn.NewTextFrame(m.Payload)
	n := 0
	r.mu.RLock()
	for i := range r.members {
		if c := r.members[i].c; c.ID() != m.Sender {
			c.Send(f)
			n++
		}
	}
	r.mu.RUnlock()
	f.Release()
	h.stats.delivered.Add(int64(n))
}

// errorFrames are the pre-encoded error frames, one per decode error.
var errorFrames = map[*decodeError]*conn.Frame{}

var (
	unavailableFrame = conn.NewStaticText(errorJSON(&decodeError{
		code: CodeUnavailable, detail: "the message was not stored: the message store is unavailable or overloaded; resend it later",
	}))
	unconfirmedFrame = conn.NewStaticText(errorJSON(&decodeError{
		code: CodeUnconfirmed, detail: "the message store did not confirm the message in time: it may still be delivered; resending it may duplicate it",
	}))
)

func init() {
	for _, e := range []*decodeError{errInvalidJSON, errNotObject, errMissingUser, errMissingMessage} {
		errorFrames[e] = conn.NewStaticText(errorJSON(e))
	}
}

// errorJSON encodes an error frame: {"error":code,"field":…,"detail":…}.
func errorJSON(e *decodeError) []byte {
	b := fmt.Appendf(nil, `{"error":%q`, e.code)
	if e.field != "" {
		b = fmt.Appendf(b, `,"field":%q`, e.field)
	}
	return fmt.Appendf(b, `,"detail":%q}`, e.detail)
}
