package stream

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestRedisWaitReplicas: with REDIS_WAIT_REPLICAS=1 an acked message is
// on the replica when its ack arrives; while the replica is stopped,
// messages are stored on the master but answered ErrUnconfirmed, and a
// resend of one with its CID after the replica is back is acked with the
// first ID, replicated.
func TestRedisWaitReplicas(t *testing.T) {
	master, replica := startReplicated(t)
	cfg := testRedisConfig(t, master.Addr())
	cfg.WaitReplicas, cfg.WaitTimeout = 1, 200*time.Millisecond
	c := newCollector()
	e := newTestRedis(t, cfg, c.handle, nil)
	mustSubscribe(t, e, "w")
	key := e.key("w")
	ctx := context.Background()

	id := mustPublishID(t, e, "w", Message{Sender: 1, Payload: []byte("one")})
	if !holds(t, replica, key, id) {
		t.Fatalf("message acked as %v is not on the replica at its ack", id)
	}

	replica.Pause()
	_, err := PublishWait(ctx, e, "w", Message{Sender: 1, Payload: []byte("two"), CID: "c2"})
	if !errors.Is(err, ErrUnconfirmed) || !strings.Contains(err.Error(), "REDIS_WAIT_REPLICAS") {
		t.Fatalf("Publish with the replica stopped = %v, want ErrUnconfirmed naming REDIS_WAIT_REPLICAS", err)
	}
	if n := e.Stats().WaitShort; n < 1 {
		t.Errorf("Stats.WaitShort = %d, want at least 1", n)
	}
	if got := master.MustDo("XLEN", key); got != "2" {
		t.Errorf("the master holds %s entries, want 2 (the unconfirmed one is stored there)", got)
	}
	replica.Resume()

	var id2 ID
	testutil.EventuallyWithin(t, 10*time.Second, "the resend to be acked", func() bool {
		id2, err = PublishWait(ctx, e, "w", Message{Sender: 1, Payload: []byte("two"), CID: "c2"})
		return err == nil
	})
	if !holds(t, replica, key, id2) {
		t.Fatalf("resend acked as %v: not on the replica at its ack", id2)
	}
	if got := master.MustDo("XLEN", key); got != "2" {
		t.Errorf("the master holds %s entries after the resend, want 2 (a resend appends nothing)", got)
	}
	got := c.settle(t, e, "w")
	if len(got) != 2 || string(got[1].Payload) != "two" || got[1].ID != id2 {
		t.Errorf("deliveries %v, want one and two (as %v)", got, id2)
	}
}

// TestRedisWaitReplicasConfig: REDIS_WAIT_TIMEOUT defaults to 250ms, or
// half of a shorter REDIS_TIMEOUT, and must stay below REDIS_TIMEOUT.
func TestRedisWaitReplicasConfig(t *testing.T) {
	cfg, err := RedisConfig{Host: "h", WaitReplicas: 1}.withDefaults()
	if err != nil || cfg.WaitTimeout != DefaultRedisWaitTimeout {
		t.Fatalf("defaults: WaitTimeout %v, %v; want %v", cfg.WaitTimeout, err, DefaultRedisWaitTimeout)
	}
	cfg, err = RedisConfig{Host: "h", WaitReplicas: 1, Timeout: 300 * time.Millisecond}.withDefaults()
	if err != nil || cfg.WaitTimeout != 150*time.Millisecond {
		t.Fatalf("REDIS_TIMEOUT=300ms: WaitTimeout %v, %v; want 150ms", cfg.WaitTimeout, err)
	}
	for _, c := range []RedisConfig{
		{Host: "h", WaitReplicas: 1, WaitTimeout: 2 * time.Second},
		{Host: "h", WaitReplicas: 1, WaitTimeout: -time.Second},
		{Host: "h", WaitReplicas: 17},
		{Host: "h", WaitReplicas: -1},
	} {
		if _, err := c.withDefaults(); err == nil || !strings.Contains(err.Error(), "REDIS_WAIT_") {
			t.Errorf("%+v: err %v, want one naming REDIS_WAIT_REPLICAS or REDIS_WAIT_TIMEOUT", c, err)
		}
	}
}
