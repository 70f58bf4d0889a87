package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/pkg/stream"
)

// connecting is the engine of a gateway whose Redis did not answer at
// start: the gateway serves at once (/healthz answers, /readyz says 503,
// joins are refused with 503 and publishes with "unavailable") while a
// goroutine keeps trying to connect, with exponential backoff between
// REDIS_BACKOFF_MIN and REDIS_BACKOFF_MAX. Once Redis answers, every call
// goes to the Redis engine. With REDIS_START_TIMEOUT set, it gives up
// after that long and calls giveUp.
type connecting struct {
	ready atomic.Pointer[stream.Redis]

	mu      sync.Mutex
	lastErr error
	closed  bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// errConnecting wraps the reason the engine is not there yet.
var errConnecting = errors.New("not connected to Redis yet")

// connectRedis tries NewRedis once. On success it returns the engine. A
// configuration error is returned as is. When Redis cannot be reached it
// returns a connecting engine that goes on trying in the background.
func connectRedis(cfg Config, h stream.Handler, log *slog.Logger, giveUp func(error)) (stream.Engine, error) {
	r, err := stream.NewRedis(cfg.Redis, h, log)
	if err == nil {
		return r, nil
	}
	if !errors.Is(err, stream.ErrUnavailable) {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &connecting{lastErr: err, cancel: cancel, done: make(chan struct{})}
	rc := cfg.Redis.Defaulted()
	log.Error("cannot reach Redis; serving without it (readiness 503, joins refused) and retrying: is it running, and are IP_REDIS/PORT_REDIS (or REDIS_ADDRS) right?",
		"err", err, "retry_max", rc.BackoffMax.String(), "give_up_after", giveUpText(cfg.StartTimeout))
	go c.retry(ctx, cfg, rc, h, log, giveUp)
	return c, nil
}

func giveUpText(d time.Duration) string {
	if d <= 0 {
		return "never (REDIS_START_TIMEOUT=0)"
	}
	return d.String()
}

// retry connects until it succeeds, the engine is closed, or the start
// timeout passes.
func (c *connecting) retry(ctx context.Context, cfg Config, rc stream.RedisConfig, h stream.Handler, log *slog.Logger, giveUp func(error)) {
	defer close(c.done)
	start := time.Now()
	wait := rc.BackoffMin
	for attempt := 2; ; attempt++ {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		r, err := stream.NewRedis(cfg.Redis, h, log)
		if err == nil {
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				_ = r.Close(context.Background())
				return
			}
			c.ready.Store(r)
			c.mu.Unlock()
			log.Info("connected to Redis; ready", "attempts", attempt, "after", time.Since(start).Round(time.Millisecond).String())
			return
		}
		c.mu.Lock()
		c.lastErr = err
		c.mu.Unlock()
		if cfg.StartTimeout > 0 && time.Since(start) >= cfg.StartTimeout {
			giveUp(fmt.Errorf("no Redis within REDIS_START_TIMEOUT (%v): %w", cfg.StartTimeout, err))
			return
		}
		log.Warn("still cannot reach Redis; retrying", "attempt", attempt, "in", wait.String(), "err", err)
		wait = min(2*wait, rc.BackoffMax)
	}
}

func (c *connecting) notYet() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Errorf("%w: %w (%w)", stream.ErrUnavailable, errConnecting, c.lastErr)
}

// Publish goes to Redis once connected; before, it is refused as
// unavailable: nothing was stored.
func (c *connecting) Publish(room string, m stream.Message, ack stream.Ack, ref any) {
	if r := c.ready.Load(); r != nil {
		r.Publish(room, m, ack, ref)
		return
	}
	ack(ref, stream.ID{}, c.notYet())
}

// Subscribe goes to Redis once connected; before, it fails, so joins are
// refused with 503.
func (c *connecting) Subscribe(room string) (stream.ID, error) {
	if r := c.ready.Load(); r != nil {
		return r.Subscribe(room)
	}
	return stream.ID{}, c.notYet()
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
func (c *connecting) Stats() stream.Stats {
	if r := c.ready.Load(); r != nil {
		return r.Stats()
	}
	return stream.Stats{}
}

// History is Redis's once connected; before, it is unavailable.
func (c *connecting) History(ctx context.Context, room string, after stream.ID, n int) (stream.Page, error) {
	if r := c.ready.Load(); r != nil {
		return r.History(ctx, room, after, n)
	}
	return stream.Page{}, c.notYet()
}

// Last is Redis's once connected; before, it is unavailable.
func (c *connecting) Last(ctx context.Context, room string, n int) ([]stream.Message, error) {
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
