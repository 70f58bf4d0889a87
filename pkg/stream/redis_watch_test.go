package stream

import (
	"context"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestRedisBackRetriesAtOnce: a pump that backed off for seconds while
// Redis was down retries as soon as Redis answers again (the engine's
// watch probes its shard), not at the end of its backoff.
func TestRedisBackRetriesAtOnce(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes")
	cfg := testRedisConfig(t, srv.Addr())
	cfg.BackoffMin, cfg.BackoffMax = 250*time.Millisecond, 20*time.Second
	e := newTestRedis(t, cfg, func(string, Message) {}, nil)
	mustPublish(t, e, "back", Message{Sender: 1, Payload: []byte("before")})
	srv.Kill()
	// After the 6th failure in a row the pump waits 2-4 s (REDIS_BACKOFF_MIN
	// doubled 4 times, equal jitter).
	testutil.EventuallyWithin(t, 20*time.Second, "six failed round trips", func() bool {
		return e.Stats().RoundTripErrors >= 6
	})
	srv.Restart()
	back := time.Now()
	testutil.EventuallyWithin(t, 20*time.Second, "a publish to be acked", func() bool {
		_, err := PublishWait(context.Background(), e, "back", Message{Sender: 1, Payload: []byte("after")})
		return err == nil
	})
	if took := time.Since(back); took > 1500*time.Millisecond {
		t.Errorf("acks resumed %v after Redis came back, want within a few watch intervals (%v), not at the end of the backoff (2-4 s)", took, watchEvery)
	} else {
		t.Logf("acks resumed %v after Redis came back", took.Round(time.Millisecond))
	}
}
