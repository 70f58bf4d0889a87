package stream

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

func newTestMemory(t testing.TB, cfg MemoryConfig, h Handler) *Memory {
	t.Helper()
	if h == nil {
		h = func(string, Message) {}
	}
	e, err := NewMemoryWith(h, cfg)
	if err != nil {
		t.Fatalf("NewMemoryWith: %v", err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	return e
}

// hMessages returns n messages as checkEntries expects them.
func hMessages(n int) []Message { return hRange(0, n) }

// hRange returns the messages hMessages would number from to to-1.
func hRange(from, to int) []Message {
	msgs := make([]Message, 0, to-from)
	for i := from; i < to; i++ {
		msgs = append(msgs, Message{Sender: uint64(100 + i), Payload: fmt.Appendf(nil, "h%d", i)})
	}
	return msgs
}

func TestMemoryConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  MemoryConfig
		want string // substring of the error; "" means valid
	}{
		{"zero", MemoryConfig{}, ""},
		{"negative maxlen", MemoryConfig{MaxLen: -1}, "REDIS_MAXLEN"},
		{"huge maxlen", MemoryConfig{MaxLen: 1 << 40}, "REDIS_MAXLEN"},
		{"negative ttl", MemoryConfig{TTL: -time.Second}, "REDIS_TTL"},
		{"negative window", MemoryConfig{DedupeWindow: -time.Second}, "REDIS_DEDUPE_WINDOW"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewMemoryWith(func(string, Message) {}, tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("NewMemoryWith: %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("NewMemoryWith error %v, want one naming %s", err, tc.want)
			}
		})
	}
	t.Run("defaults", func(t *testing.T) {
		c, err := MemoryConfig{}.withDefaults()
		want := MemoryConfig{MaxLen: DefaultRedisMaxLen, TTL: DefaultRedisTTL, DedupeWindow: DefaultRedisDedupeWindow}
		if err != nil || c != want {
			t.Fatalf("defaults %+v (%v), want %+v", c, err, want)
		}
		if got := (RedisConfig{}).Defaulted().MemoryConfig(); got != want {
			t.Fatalf("RedisConfig.Defaulted().MemoryConfig() = %+v, want %+v", got, want)
		}
	})
}

// TestMemoryTruncatedExact: the ring knows exactly what it evicted, so
// History after the last evicted entry is whole and after any earlier one
// is truncated.
func TestMemoryTruncatedExact(t *testing.T) {
	e := newTestMemory(t, MemoryConfig{MaxLen: 5}, nil)
	ctx := context.Background()
	ids := publishAll(t, e, "ring", hMessages(8)) // holds ids[3:8]
	for _, tc := range []struct {
		after     ID
		from      int
		truncated bool
	}{
		{ids[0], 3, true},
		{ids[1], 3, true},
		{ids[2], 3, false}, // the last evicted: nothing after it is missing
		{ids[3], 4, false},
		{ids[7], 8, false},
	} {
		got, truncated, err := history(ctx, e, "ring", tc.after, 100)
		if err != nil || truncated != tc.truncated {
			t.Fatalf("History after %v: truncated %v (%v), want %v", tc.after, truncated, err, tc.truncated)
		}
		checkEntries(t, got, ids, tc.from, 8)
	}
}

// TestMemoryTTL: a room nothing was published to for TTL loses its ring,
// as a Redis stream expires; a prune then frees it, unless it is
// subscribed.
func TestMemoryTTL(t *testing.T) {
	e := newTestMemory(t, MemoryConfig{TTL: 100 * time.Millisecond, DedupeWindow: 100 * time.Millisecond}, nil)
	ctx := context.Background()
	ids := publishAll(t, e, "idle", hMessages(3))
	mustSubscribe(t, e, "watched")
	publishAll(t, e, "watched", hMessages(1))
	testutil.Eventually(t, "the idle room's ring to expire", func() bool {
		got, _, err := history(ctx, e, "idle", ID{}, 10)
		return err == nil && len(got) == 0
	})
	if _, truncated, _ := history(ctx, e, "idle", ids[1], 10); !truncated {
		t.Fatalf("History after an expired entry with a later one: not truncated")
	}
	if _, truncated, _ := history(ctx, e, "idle", ids[2], 10); truncated {
		t.Fatalf("History after the last entry of an expired ring: truncated, want whole")
	}

	e.prune(time.Now().Add(time.Hour).UnixMilli())
	e.mu.RLock()
	_, idle := e.rooms["idle"]
	_, watched := e.rooms["watched"]
	e.mu.RUnlock()
	if idle || !watched {
		t.Fatalf("after a prune: idle room kept %v, subscribed room kept %v; want false, true", idle, watched)
	}
	// The engine now knows nothing of the room: an old ID is truncated,
	// and the room's IDs keep increasing.
	if _, truncated, _ := history(ctx, e, "idle", ids[2], 10); !truncated {
		t.Fatalf("History of a swept room after an ID: not truncated")
	}
	again := mustPublishID(t, e, "idle", Message{Sender: 1, Payload: []byte("again")})
	if !ids[2].Less(again) {
		t.Fatalf("ID after the prune %v, not after %v", again, ids[2])
	}
	// Issue 18, item 6: the room has a new entry now; a resume from before
	// the expiry must still be told that entries are gone, and get the
	// new one.
	got, truncated, err := history(ctx, e, "idle", ids[1], 10)
	if err != nil || !truncated || len(got) != 1 || got[0].ID != again {
		t.Fatalf("History after an entry swept with its room, once the room has a new entry: %d entries, truncated %v (%v); want the new one, truncated", len(got), truncated, err)
	}
	if got, truncated, err := history(ctx, e, "idle", again, 10); err != nil || truncated || len(got) != 0 {
		t.Fatalf("History after the new entry: %d entries, truncated %v (%v); want nothing, not truncated", len(got), truncated, err)
	}
}

// TestMemoryTruncatedAfterRestart: an embedded engine starts with nothing,
// so a resume from an ID older than its start is truncated (the entries
// between died with the previous process), and one from after its start
// is not.
func TestMemoryTruncatedAfterRestart(t *testing.T) {
	old := newTestMemory(t, MemoryConfig{}, nil)
	before := publishAll(t, old, "room", hMessages(1))[0]
	testutil.Eventually(t, "the clock to pass the old engine's entry", func() bool {
		return uint64(time.Now().UnixMilli()) > before.Ms
	})
	e := newTestMemory(t, MemoryConfig{}, nil)
	ctx := context.Background()
	if _, truncated, err := history(ctx, e, "room", before, 10); err != nil || !truncated {
		t.Fatalf("History after an ID older than the engine: truncated %v (%v), want true", truncated, err)
	}
	ids := publishAll(t, e, "room", hMessages(2))
	if got, truncated, err := history(ctx, e, "room", before, 10); err != nil || !truncated || len(got) != 2 {
		t.Fatalf("History after an ID older than the engine, with new entries: %d entries, truncated %v (%v); want 2, truncated", len(got), truncated, err)
	}
	if got, truncated, err := history(ctx, e, "room", ids[0], 10); err != nil || truncated || len(got) != 1 {
		t.Fatalf("History after its own entry: %d entries, truncated %v (%v); want 1, not truncated", len(got), truncated, err)
	}
}

// TestMemoryPruneForgetsCIDs: CIDs outlive their window only until the
// next prune.
func TestMemoryPruneForgetsCIDs(t *testing.T) {
	e := newTestMemory(t, MemoryConfig{DedupeWindow: time.Minute}, nil)
	mustPublishID(t, e, "r", Message{Sender: 1, Payload: []byte("x"), CID: "a"})
	e.prune(time.Now().UnixMilli())
	if n := len(e.rooms["r"].cids); n != 1 {
		t.Fatalf("%d CIDs after a prune within the window, want 1", n)
	}
	e.prune(time.Now().Add(2 * time.Minute).UnixMilli())
	if r := e.rooms["r"]; r == nil || len(r.cids) != 0 {
		t.Fatalf("room state after a prune past the window: %+v, want the ring kept and no CID", r)
	}
}

// BenchmarkMemoryHistory reads 100 entries after an ID from a full ring,
// as a reconnecting client's replay does.
func BenchmarkMemoryHistory(b *testing.B) {
	e := newTestMemory(b, MemoryConfig{}, nil)
	msgs := make([]Message, DefaultRedisMaxLen)
	for i := range msgs {
		msgs[i] = Message{Sender: 1, Payload: []byte(`{"username":"u","message":"hello"}`)}
	}
	ids := publishAll(b, e, "room", msgs)
	after := ids[len(ids)-101]
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		got, _, err := history(ctx, e, "room", after, 100)
		if err != nil || len(got) != 100 {
			b.Fatalf("History: %d entries, %v", len(got), err)
		}
	}
}
