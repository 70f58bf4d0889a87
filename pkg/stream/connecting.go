package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/internal/backoff"
)

var _ Engine = (*connecting)(nil)

// connecting is the engine of a gateway whose Redis did not answer at
// start: the gateway serves at once (/healthz answers, /readyz says 503,
// joins are refused with 503 and publishes with "unavailable") while a
// goroutine keeps trying to connect, with exponential backoff between
// REDIS_BACKOFF_MIN and REDIS_BACKOFF_MAX. Once Redis answers, every call
// goes to the Redis engine. With REDIS_START_TIMEOUT set, it gives up
// after that long and calls giveUp.
type connecting struct {
	ready atomic.Pointer[Redis]

	// Set once by ConnectRedis, read by the retrying goroutine.
	cfg          RedisConfig
	startTimeout time.Duration
	h            Handler
	log          *slog.Logger
	giveUp       func(error)

	mu      sync.Mutex
	lastErr error
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// errConnecting wraps the reason the engine is not there yet.
var errConnecting = errors.New("not connected to Redis yet")

// ConnectRedis is NewRedis for a gateway that serves before its Redis
// answers. It tries NewRedis once: on success it returns that engine, and
// a configuration error is returned as is. When Redis cannot be reached
// (ErrUnavailable) it logs why and returns an engine that answers at
// once (Publish and Subscribe fail with ErrUnavailable, Health says why,
// History, Last and Members are unavailable) while a goroutine keeps
// calling NewRedis, waiting REDIS_BACKOFF_MIN doubled per attempt up to
// REDIS_BACKOFF_MAX between tries; once one succeeds, every call goes to
// that Redis engine. With startTimeout > 0 (REDIS_START_TIMEOUT) it stops
// trying after that long and calls giveUp, from its goroutine, with the
// last error. Close stops the retries.
func ConnectRedis(cfg RedisConfig, startTimeout time.Duration, h Handler, log *slog.Logger, giveUp func(error)) (Engine, error) {
	r, err := NewRedis(cfg, h, log)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, ErrUnavailable) {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &connecting{
		cfg: cfg, startTimeout: startTimeout, h: h, log: log, giveUp: giveUp,
		lastErr: err, cancel: cancel, done: make(chan struct{}),
	}
	log.Error("cannot reach Redis; serving without it (readiness 503, joins refused) and retrying: is it running, and are IP_REDIS/PORT_REDIS (or REDIS_ADDRS) right?",
		"err", err, "retry_max", cfg.Defaulted().BackoffMax.String(), "give_up_after", giveUpText(startTimeout))
	go c.retry(ctx)
	return c, nil
}

// giveUpText says when a connecting engine gives up, for its log.
func giveUpText(d time.Duration) string {
	if d <= 0 {
		return "never (REDIS_START_TIMEOUT=0)"
	}
	return d.String()
}

// retry connects until it succeeds, the engine is closed, or the start
// timeout passes. The wait before attempt n (the first is ConnectRedis's)
// is the backoff's wait n-1, without jitter.
func (c *connecting) retry(ctx context.Context) {
	defer close(c.done)
	rc := c.cfg.Defaulted()
	policy := backoff.Policy{Min: rc.BackoffMin, Max: rc.BackoffMax}
	start := time.Now()
	for attempt := 2; ; attempt++ {
		wait := policy.Wait(attempt - 1)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		r, err := NewRedis(c.cfg, c.h, c.log)
		if err == nil {
			c.connected(r, attempt, start)
			return
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		if c.startTimeout > 0 && time.Since(start) >= c.startTimeout {
			c.giveUp(fmt.Errorf("no Redis within REDIS_START_TIMEOUT (%v): %w", c.startTimeout, err))
			return
		}
		c.log.Warn("still cannot reach Redis; retrying", "attempt", attempt, "in", wait.String(), "err", err)
	}
}

// connected hands calls over to r, the engine attempt made, unless the
// engine was closed meanwhile: then r is closed.
func (c *connecting) connected(r *Redis, attempt int, start time.Time) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = r.Close(context.Background())
		return
	}
	c.ready.Store(r)
	c.mu.Unlock()
	c.log.Info("connected to Redis; ready", "attempts", attempt, "after", time.Since(start).Round(time.Millisecond).String())
}

// notYet is the error of a call made before Redis answered.
func (c *connecting) notYet() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Errorf("%w: %w (%w)", ErrUnavailable, errConnecting, c.lastErr)
}

// Publish goes to Redis once connected; before, it is refused as
// unavailable: nothing was stored.
func (c *connecting) Publish(room string, m Message, ack Ack, ref any) {
	if r := c.ready.Load(); r != nil {
		r.Publish(room, m, ack, ref)
		return
	}
	ack(ref, ID{}, c.notYet())
}

// Subscribe goes to Redis once connected; before, it fails, so joins are
// refused with 503.
func (c *connecting) Subscribe(room string) (ID, error) {
	if r := c.ready.Load(); r != nil {
		return r.Subscribe(room)
	}
	return ID{}, c.notYet()
}

// Unsubscribe goes to Redis once connected; before, nothing is subscribed.
func (c *connecting) Unsubscribe(room string) error {
	if r := c.ready.Load(); r != nil {
		return r.Unsubscribe(room)
	}
	return nil
}

// Health is Redis's once connected, else why it is not.
func (c *connecting) Health() error {
	if r := c.ready.Load(); r != nil {
		return r.Health()
	}
	return c.notYet()
}

// Stats are Redis's once connected.
func (c *connecting) Stats() Stats {
	if r := c.ready.Load(); r != nil {
		return r.Stats()
	}
	return Stats{}
}

// History is Redis's once connected; before, it is unavailable.
func (c *connecting) History(ctx context.Context, room string, after ID, n int) (Page, error) {
	if r := c.ready.Load(); r != nil {
		return r.History(ctx, room, after, n)
	}
	return Page{}, c.notYet()
}

// Last is Redis's once connected; before, it is unavailable.
func (c *connecting) Last(ctx context.Context, room string, n int) ([]Message, error) {
	if r := c.ready.Load(); r != nil {
		return r.Last(ctx, room, n)
	}
	return nil, c.notYet()
}

// SetMembers goes to Redis once connected; before, there are no members
// to count (joins are refused) and nothing is recorded.
func (c *connecting) SetMembers(room string, n int) {
	if r := c.ready.Load(); r != nil {
		r.SetMembers(room, n)
	}
}

// Members is Redis's once connected; before, it is unavailable.
func (c *connecting) Members(ctx context.Context, room string) (int, error) {
	if r := c.ready.Load(); r != nil {
		return r.Members(ctx, room)
	}
	return 0, c.notYet()
}

// Close stops the retries and closes Redis if it was reached.
func (c *connecting) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	select {
	case <-c.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if r := c.ready.Load(); r != nil {
		return r.Close(ctx)
	}
	return nil
}
