package stream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// TestConnectRedisBeforeRedis: with Redis down at start, ConnectRedis
// returns an engine that refuses at once (unavailable, nothing stored)
// and says why in Health; once Redis answers, calls go to it and messages
// flow.
func TestConnectRedisBeforeRedis(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Timeout = 200 * time.Millisecond
	c := newCollector()
	e, err := ConnectRedis(cfg, 0, c.handle, testutil.DiscardLogger(), func(err error) {
		t.Errorf("gave up with REDIS_START_TIMEOUT=0: %v", err)
	})
	if err != nil {
		t.Fatalf("ConnectRedis with Redis down = %v, want a connecting engine", err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	if _, ok := e.(*Redis); ok {
		t.Fatal("ConnectRedis returned a Redis engine with Redis down")
	}
	if _, err := PublishWait(context.Background(), e, "early", Message{Sender: 1, Payload: []byte("x")}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Publish before Redis = %v, want ErrUnavailable", err)
	}
	if _, err := e.Subscribe("early"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Subscribe before Redis = %v, want ErrUnavailable", err)
	}
	if err := e.Health(); err == nil || !strings.Contains(err.Error(), "not connected to Redis yet") {
		t.Fatalf("Health before Redis = %v, want it to say it is not connected yet", err)
	}
	srv.Restart()
	testutil.Eventually(t, "Health once Redis is up", func() bool { return e.Health() == nil })
	mustSubscribe(t, e, "late")
	mustPublish(t, e, "late", Message{Sender: 1, Payload: []byte("after redis came up")})
	if got := c.waitFor(t, "late", 1); string(got[0].Payload) != "after redis came up" {
		t.Fatalf("delivered %q", got[0].Payload)
	}
}

// TestConnectRedisGivesUp: with a start timeout, a connecting engine that
// never reaches Redis calls giveUp with an error naming
// REDIS_START_TIMEOUT.
func TestConnectRedisGivesUp(t *testing.T) {
	srv := redistest.Start(t)
	srv.Kill()
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Timeout = 100 * time.Millisecond
	gaveUp := make(chan error, 1)
	e, err := ConnectRedis(cfg, 300*time.Millisecond, func(string, Message) {}, testutil.DiscardLogger(), func(err error) { gaveUp <- err })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	select {
	case err := <-gaveUp:
		if !strings.Contains(err.Error(), "REDIS_START_TIMEOUT") {
			t.Fatalf("giveUp(%v), want an error naming REDIS_START_TIMEOUT", err)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("the connecting engine did not give up")
	}
}

// TestConnectRedisConfigError: a configuration error is returned at once,
// not retried.
func TestConnectRedisConfigError(t *testing.T) {
	_, err := ConnectRedis(RedisConfig{}, 0, func(string, Message) {}, testutil.DiscardLogger(), func(error) {})
	if err == nil || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "IP_REDIS") {
		t.Fatalf("ConnectRedis(zero config) = %v, want a configuration error naming IP_REDIS", err)
	}
}
