package room

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/pkg/auth"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

var (
	_ conn.Handler   = (*Hub)(nil)
	_ stream.Handler = (*Hub)(nil).Deliver
)

// Hub maps rooms to the connections of this node, publishes what members
// send to the stream.Engine and delivers what the engine hands back to
// every member except the sender. It is the conn.Handler of the gateway.
//
// Lock order: docs/architecture.md, "Lock order" (Hub.mu, then room.mu,
// then conn's locks; the rest are leaves).
type Hub struct {
	engine      stream.Engine
	log         *slog.Logger
	ack         stream.Ack // h.published, made once so Publish does not allocate
	tokens      *auth.Verifier
	rate        rateParams
	historyMax  int         // HISTORY_MAX
	epoch       time.Time   // the limiters' clock starts here
	rateLimited *errorFrame // the rate_limited frame, stating the limits
	banned      penalties   // addresses recently closed for their rate
	addrs       addrBuckets // buckets of the client addresses (RATE_LIMIT_PER_IP, BYTE_RATE_PER_IP)

	// subLog rate-limits the log of failed subscriptions
	// (logSubscribeFailed).
	subLog struct {
		sync.Mutex
		at      time.Time
		skipped int
	}
	mu    sync.RWMutex
	rooms map[string]*room
	stats counters
	work  roomWork // subscriptions changing (roomwork.go)

	// Presence (presence.go): the rooms with presence=1 members, polled
	// by one goroutine started with the first of them, stopped by Close.
	watchMu      sync.Mutex
	watched      map[*room]string // room → its name
	presenceOnce sync.Once
	quit         chan struct{} // closed by Close
	closeOnce    sync.Once
}

// counters are the atomics behind Stats.
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
	h.rateLimited = newRateLimited(cfg)
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

// lookup returns the room named name, nil when it has no member or
// pending join on this node.
func (h *Hub) lookup(name string) *room {
	h.mu.RLock()
	r := h.rooms[name]
	h.mu.RUnlock()
	return r
}

// now is the limiters' clock: nanoseconds since the Hub was made.
func (h *Hub) now() int64 { return int64(time.Since(h.epoch)) }
