package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"github.com/sethvargo/go-envconfig"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// testRedisConfig returns a configuration for tests against addrs: short
// BLOCK and backoff so that failures and recovery show within seconds, and
// a prefix of its own (from the test name) so tests sharing a server do
// not see each other's keys.
func testRedisConfig(t testing.TB, addrs ...string) RedisConfig {
	return RedisConfig{
		Addrs:      addrs,
		Prefix:     "t-" + strings.NewReplacer("/", "-", "{", "", "}", "").Replace(t.Name()),
		Block:      time.Second,
		Sweep:      time.Second,
		Timeout:    500 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond,
		BackoffMax: 200 * time.Millisecond,
		// Presence tests wait for a few intervals.
		PresenceInterval: 100 * time.Millisecond,
	}
}

// logSink collects log output for assertions and echoes it to the test log
// until the test ends (t.Log after the end would panic).
type logSink struct {
	t    testing.TB
	mu   sync.Mutex
	buf  bytes.Buffer
	done bool
}

func newLogSink(t testing.TB) *logSink {
	s := &logSink{t: t}
	t.Cleanup(func() { s.mu.Lock(); s.done = true; s.mu.Unlock() })
	return s
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if !s.done {
		s.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newTestRedis starts a Redis engine that is closed when the test ends.
func newTestRedis(t testing.TB, cfg RedisConfig, h Handler, log *logSink) *Redis {
	t.Helper()
	if log == nil {
		log = newLogSink(t)
	}
	e, err := NewRedis(cfg, h, log.logger())
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return e
}

func TestRedisConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RedisConfig
		want string // substring of the error; "" means valid
	}{
		{"legacy host", RedisConfig{Host: "redis"}, ""},
		{"addrs", RedisConfig{Addrs: []string{"a:1", " b:2"}}, ""},
		{"nothing", RedisConfig{}, "IP_REDIS"},
		{"both", RedisConfig{Host: "redis", Addrs: []string{"a:1"}}, "REDIS_ADDRS"},
		{"bad port", RedisConfig{Host: "redis", Port: 70000}, "PORT_REDIS"},
		{"addr without port", RedisConfig{Addrs: []string{"redis"}}, "REDIS_ADDRS"},
		{"addr bad port", RedisConfig{Addrs: []string{"redis:x"}}, "REDIS_ADDRS"},
		{"ca without tls", RedisConfig{Host: "redis", TLSCAFile: "/ca.pem"}, "REDIS_TLS"},
		{"ca unreadable", RedisConfig{Host: "redis", TLS: true, TLSCAFile: "/nonexistent/ca.pem"}, "REDIS_TLS_CA_FILE"},
		{"negative db", RedisConfig{Host: "redis", DB: -1}, "REDIS_DB"},
		{"prefix with brace", RedisConfig{Host: "redis", Prefix: "a{b}"}, "REDIS_PREFIX"},
		{"negative maxlen", RedisConfig{Host: "redis", MaxLen: -1}, "REDIS_MAXLEN"},
		{"too many shards", RedisConfig{Host: "redis", ReadShards: 5000}, "REDIS_READ_SHARDS"},
		{"negative count", RedisConfig{Host: "redis", ReadCount: -5}, "REDIS_READ_COUNT"},
		{"tiny block", RedisConfig{Host: "redis", Block: time.Microsecond}, "REDIS_BLOCK"},
		{"negative ttl", RedisConfig{Host: "redis", TTL: -time.Second}, "REDIS_TTL"},
		{"negative timeout", RedisConfig{Host: "redis", Timeout: -time.Second}, "REDIS_TIMEOUT"},
		{"backoff inverted", RedisConfig{Host: "redis", BackoffMin: time.Minute, BackoffMax: time.Second}, "REDIS_BACKOFF_MIN"},
		{"flush delay disabled", RedisConfig{Host: "redis", FlushDelay: -1}, ""},
		{"flush delay too long", RedisConfig{Host: "redis", FlushDelay: time.Minute}, "REDIS_FLUSH_DELAY"},
		{"negative dedupe window", RedisConfig{Host: "redis", DedupeWindow: -time.Second}, "REDIS_DEDUPE_WINDOW"},
		{"negative presence interval", RedisConfig{Host: "redis", PresenceInterval: -time.Second}, "REDIS_PRESENCE_INTERVAL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.cfg.withDefaults()
			if err == nil {
				_, err = got.tlsConfig()
			}
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("withDefaults: %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("withDefaults error %v, want one naming %s", err, tc.want)
			}
		})
	}

	t.Run("defaults", func(t *testing.T) {
		c, err := RedisConfig{Host: "redis"}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		want := RedisConfig{
			Host: "redis", Port: 6379, Addrs: []string{"redis:6379"}, Prefix: "chat",
			MaxLen: 1000, TTL: 24 * time.Hour, ReadShards: 16, ReadCount: 512, Block: 5 * time.Second, Sweep: 30 * time.Second,
			Timeout: 2 * time.Second, BackoffMin: 100 * time.Millisecond, BackoffMax: 5 * time.Second,
			FlushDelay: 20 * time.Microsecond, BatchWindow: 2 * time.Millisecond, PublishQueue: 16384,
			DedupeWindow: 2 * time.Minute, PresenceInterval: time.Second, WaitTimeout: DefaultRedisWaitTimeout,
		}
		if fmt.Sprint(c) != fmt.Sprint(want) {
			t.Fatalf("defaults\n got %+v\nwant %+v", c, want)
		}
	})

	t.Run("LogValueRedactsPasswords", func(t *testing.T) {
		var b bytes.Buffer
		slog.New(slog.NewTextHandler(&b, nil)).Info("config", "redis", RedisConfig{Host: "h", Password: "hunter2", SentinelPassword: "s3cret"})
		if out := b.String(); strings.Contains(out, "hunter2") || strings.Contains(out, "s3cret") || !strings.Contains(out, "redis.host=h") {
			t.Fatalf("logged %s", out)
		}
	})

	t.Run("NewRedisNamesTheVariable", func(t *testing.T) {
		_, err := NewRedis(RedisConfig{}, func(string, Message) {}, testutil.DiscardLogger())
		if err == nil || !strings.Contains(err.Error(), "IP_REDIS") {
			t.Fatalf("NewRedis(zero config) = %v, want an error naming IP_REDIS", err)
		}
	})

	t.Run("NewRedisUnreachable", func(t *testing.T) {
		srv := redistest.Start(t)
		addr := srv.Addr()
		srv.Kill()
		start := time.Now()
		_, err := NewRedis(RedisConfig{Addrs: []string{addr}, Timeout: 200 * time.Millisecond}, func(string, Message) {}, testutil.DiscardLogger())
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("NewRedis against a dead server = %v, want ErrUnavailable", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("NewRedis took %v to fail", d)
		}
	})
}

// TestRedisConfigEnv checks the env tags the gateway fills the config with.
func TestRedisConfigEnv(t *testing.T) {
	var c RedisConfig
	err := envconfig.ProcessWith(context.Background(), &envconfig.Config{
		Target: &c,
		Lookuper: envconfig.MapLookuper(map[string]string{
			"IP_REDIS":                "10.0.0.1",
			"PORT_REDIS":              "6380",
			"REDIS_ADDRS":             "a:1,b:2",
			"REDIS_SENTINEL_MASTER":   "mymaster",
			"REDIS_USERNAME":          "gw",
			"REDIS_PASSWORD":          "secret",
			"REDIS_TLS":               "true",
			"REDIS_DB":                "2",
			"REDIS_MAXLEN":            "5000",
			"REDIS_TTL":               "1h",
			"REDIS_READ_SHARDS":       "8",
			"REDIS_READ_COUNT":        "100",
			"REDIS_BLOCK":             "250ms",
			"REDIS_SWEEP":             "10s",
			"REDIS_TIMEOUT":           "1s",
			"REDIS_BATCH_WINDOW":      "3ms",
			"PUBLISH_QUEUE":           "99",
			"REDIS_DEDUPE_WINDOW":     "30s",
			"REDIS_PRESENCE_INTERVAL": "500ms",
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := RedisConfig{
		Host: "10.0.0.1", Port: 6380, Addrs: []string{"a:1", "b:2"}, SentinelMaster: "mymaster",
		Username: "gw", Password: "secret", TLS: true, DB: 2, MaxLen: 5000, TTL: time.Hour,
		ReadShards: 8, ReadCount: 100, Block: 250 * time.Millisecond, Sweep: 10 * time.Second, Timeout: time.Second,
		BatchWindow: 3 * time.Millisecond, PublishQueue: 99,
		DedupeWindow: 30 * time.Second, PresenceInterval: 500 * time.Millisecond,
	}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Fatalf("parsed\n got %+v\nwant %+v", c, want)
	}
}

// TestRedisConfigDefaulted: Defaulted (what gateway -h prints) gives the
// same defaults NewRedis applies.
func TestRedisConfigDefaulted(t *testing.T) {
	got, err := RedisConfig{Host: "h"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	want := RedisConfig{Host: "h"}.Defaulted()
	want.Addrs = got.Addrs
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("withDefaults\n got %+v\nDefaulted\n     %+v", got, want)
	}
}

func TestRedisEngine(t *testing.T) {
	srv := redistest.Start(t)
	testEngine(t, func(t *testing.T, h Handler, o engineOpts) Engine {
		return newTestRedis(t, o.redis(testRedisConfig(t, srv.Addr())), h, nil)
	})
}

// TestRedisNodes runs several engines, as several gateway nodes, on one
// Redis.
func TestRedisNodes(t *testing.T) {
	srv := redistest.Start(t)
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%dNodes", n), func(t *testing.T) {
			testNodes(t, n, testRedisConfig(t, srv.Addr()))
		})
	}
}

// node is one engine of a multi-node test with what it received.
type node struct {
	e *Redis
	c *collector
}

// startNodes starts n engines on cfg, each with a collector, and waits
// until every one reaches Redis.
func startNodes(t *testing.T, n int, cfg RedisConfig) []node {
	nodes := make([]node, n)
	for i := range nodes {
		nodes[i].c = newCollector()
		nodes[i].e = newTestRedis(t, cfg, nodes[i].c.handle, nil)
	}
	// Every pump connected before the test starts: on a loaded machine a
	// pump's first connect may outlast cfg.Timeout and be retried, and
	// meanwhile Subscribe answers "backend unavailable" at once.
	for i, nd := range nodes {
		testutil.Eventually(t, fmt.Sprintf("node %d to reach Redis", i), func() bool { return nd.e.Health() == nil })
	}
	return nodes
}

// testNodes is the multi-node suite: n engines sharing cfg's Redis.
func testNodes(t *testing.T, n int, cfg RedisConfig) {
	testNodesHistory(t, n, cfg)

	t.Run("CrossNode", func(t *testing.T) {
		nodes := startNodes(t, n, cfg)
		for _, nd := range nodes {
			mustSubscribe(t, nd.e, "cross")
		}
		for i, nd := range nodes {
			mustPublish(t, nd.e, "cross", Message{Sender: uint64(i), Payload: fmt.Appendf(nil, "from %d", i)})
		}
		for i, nd := range nodes {
			got := nd.c.waitFor(t, "cross", n)
			senders := map[uint64]bool{}
			for _, m := range got {
				senders[m.Sender] = true
			}
			if len(got) != n || len(senders) != n {
				t.Fatalf("node %d got %d messages from %d senders, want %d from %d", i, len(got), len(senders), n, n)
			}
		}
	})

	t.Run("OneOrderEverywhere", func(t *testing.T) {
		nodes := startNodes(t, n, cfg)
		for _, nd := range nodes {
			mustSubscribe(t, nd.e, "order")
		}
		const senders, each = 10, 100
		publishFromSenders(t, senders, each, "order", func(s int) Engine { return nodes[s%n].e }) // senders spread over the nodes
		var first []Message
		for i, nd := range nodes {
			got := nd.c.waitFor(t, "order", senders*each)
			if len(got) != senders*each {
				t.Fatalf("node %d got %d messages, want %d", i, len(got), senders*each)
			}
			next := make([]int, senders)
			for j, m := range got {
				if want := strconv.Itoa(next[m.Sender]); string(m.Payload) != want {
					t.Fatalf("node %d, sender %d: got %q, want %s", i, m.Sender, m.Payload, want)
				}
				next[m.Sender]++
				if j > 0 && !got[j-1].ID.Less(m.ID) {
					t.Fatalf("node %d: IDs not increasing: %v then %v", i, got[j-1].ID, m.ID)
				}
			}
			if i == 0 {
				first = got
				continue
			}
			for j := range got {
				if got[j].ID != first[j].ID {
					t.Fatalf("node %d message %d has ID %v, node 0 has %v: orders differ", i, j, got[j].ID, first[j].ID)
				}
			}
		}
	})

	t.Run("FirstMessageRightAfterSubscribe", func(t *testing.T) {
		nodes := startNodes(t, n, cfg)
		for i := range 30 {
			room := fmt.Sprintf("first-%d", i)
			sub, pub := nodes[i%n], nodes[(i+1)%n]
			mustSubscribe(t, sub.e, room)
			mustPublish(t, pub.e, room, Message{Sender: 7, Payload: []byte("hello")})
			if got := sub.c.waitFor(t, room, 1); string(got[0].Payload) != "hello" {
				t.Fatalf("room %s: got %q, want hello", room, got[0].Payload)
			}
		}
	})
}

// published is a message whose Publish returned nil.
type published struct {
	payload string
	id      ID
}

// publisher publishes numbered messages to room at a steady pace until
// stopped, recording which ones were accepted.
type publisher struct {
	mu          sync.Mutex
	accepted    []published
	unavailable int
	refused     []string // payloads answered ErrUnavailable: must never be delivered
	unconfirmed int
	other       []error
	stop        chan struct{}
	done        chan struct{}
}

func startPublisher(e Engine, room string, every time.Duration) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			payload := "m" + strconv.Itoa(i)
			id, err := PublishWait(context.Background(), e, room, Message{Sender: 1, Payload: []byte(payload)})
			p.mu.Lock()
			switch {
			case err == nil:
				p.accepted = append(p.accepted, published{payload, id})
			case errors.Is(err, ErrUnavailable):
				p.unavailable++
				p.refused = append(p.refused, payload)
			case errors.Is(err, ErrUnconfirmed):
				p.unconfirmed++
			default:
				p.other = append(p.other, err)
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// counts returns how many messages were accepted and how many failed
// (not stored, or not confirmed).
func (p *publisher) counts() (accepted, failed int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.accepted), p.unavailable + p.unconfirmed
}

func (p *publisher) finish(t *testing.T) []published {
	t.Helper()
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, err := range p.other {
		t.Errorf("Publish failed without ErrUnavailable or ErrUnconfirmed: %v", err)
	}
	return p.accepted
}

// checkExactlyOnce waits until every accepted message reached c for room
// and checks that deliveries have increasing IDs (so no duplicates) and
// that each accepted message arrived with the ID Publish returned.
// Messages whose Publish was not confirmed may be delivered too (the
// connection may break after Redis appended them); messages refused with
// ErrUnavailable must not be.
func checkExactlyOnce(t *testing.T, c *collector, room string, accepted []published, refused []string) {
	t.Helper()
	var got []Message
	testutil.EventuallyWithin(t, 15*time.Second, "every accepted message to be delivered", func() bool {
		got = c.waitFor(t, room, 0)
		seen := make(map[string]bool, len(got))
		for _, m := range got {
			seen[string(m.Payload)] = true
		}
		for _, a := range accepted {
			if !seen[a.payload] {
				return false
			}
		}
		return true
	})
	byPayload := make(map[string]ID, len(got))
	for i, m := range got {
		if _, dup := byPayload[string(m.Payload)]; dup {
			t.Fatalf("message %q delivered twice", m.Payload)
		}
		byPayload[string(m.Payload)] = m.ID
		if i > 0 && !got[i-1].ID.Less(m.ID) {
			t.Fatalf("IDs not increasing: %v then %v", got[i-1].ID, m.ID)
		}
	}
	for _, a := range accepted {
		if id := byPayload[a.payload]; id != a.id {
			t.Fatalf("message %q delivered with ID %v, Publish returned %v", a.payload, id, a.id)
		}
	}
	for _, r := range refused {
		if _, ok := byPayload[r]; ok {
			t.Fatalf("message %q was answered ErrUnavailable (not stored) but was delivered", r)
		}
	}
}

// TestRedisRestart kills Redis in the middle of a steady stream of
// publishes and restarts it on the same port. The server persists every
// acknowledged write (appendfsync always), as a production Redis that
// promises durability would: every accepted message must then reach the
// subscriber exactly once, in order.
func TestRedisRestart(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, nil)
	mustSubscribe(t, e, "steady")
	p := startPublisher(e, "steady", 2*time.Millisecond)

	c.waitFor(t, "steady", 50)
	if err := e.Health(); err != nil {
		t.Fatalf("Health before the outage: %v", err)
	}
	srv.Kill()
	testutil.EventuallyWithin(t, 5*time.Second, "Publish to fail", func() bool {
		_, failed := p.counts()
		return failed > 0
	})
	var herr error
	testutil.EventuallyWithin(t, 5*time.Second, "Health to report the outage", func() bool {
		herr = e.Health()
		return herr != nil
	})
	if !errors.Is(herr, ErrUnavailable) {
		t.Fatalf("Health during the outage = %v, want ErrUnavailable", herr)
	}
	t.Logf("Health during the outage: %v", herr)
	if _, err := e.Subscribe("other"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Subscribe during the outage = %v, want ErrUnavailable", err)
	}

	srv.Restart()
	testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	before, _ := p.counts()
	testutil.Eventually(t, "50 more accepted publishes", func() bool {
		n, _ := p.counts()
		return n >= before+50
	})
	accepted := p.finish(t)
	t.Logf("accepted %d messages, %d refused (not stored), %d unconfirmed", len(accepted), p.unavailable, p.unconfirmed)
	checkExactlyOnce(t, c, "steady", accepted, p.refused)
}

// TestRedisRestartWithoutPersistence: Redis restarts empty. Messages
// accepted before it that no node had read are lost with it (that is what
// running without persistence means, and the engine logs it); everything
// accepted after the restart is delivered exactly once, in order, and no
// refused message is delivered.
func TestRedisRestartWithoutPersistence(t *testing.T) {
	srv := redistest.Start(t) // --save "" --appendonly no
	log := newLogSink(t)
	c := newCollector()
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), c.handle, log)
	mustSubscribe(t, e, "amnesia")
	p := startPublisher(e, "amnesia", 2*time.Millisecond)
	c.waitFor(t, "amnesia", 50)
	srv.Kill()
	testutil.EventuallyWithin(t, 5*time.Second, "Publish to fail", func() bool {
		_, failed := p.counts()
		return failed > 0
	})
	before, _ := p.counts()
	srv.Restart()
	testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	testutil.Eventually(t, "50 more accepted publishes", func() bool {
		n, _ := p.counts()
		return n >= before+50
	})
	accepted := p.finish(t)
	if n := srv.MustDo("XLEN", e.key("amnesia")); n == "0" {
		t.Fatal("nothing stored after the restart")
	}
	// Only what was accepted after the restart is still in Redis: check
	// those exactly, and that all deliveries are in increasing ID order.
	checkExactlyOnce(t, c, "amnesia", accepted[before:], p.refused)
	if !strings.Contains(log.String(), "Redis lost messages of the room that this node had read") {
		t.Fatal("the lost stream was not logged")
	}
}

// TestRedisHungServer pauses Redis (SIGSTOP: connections stay open, nothing
// answers). Publish must fail with ErrUnavailable within a bound set by
// REDIS_TIMEOUT, from many goroutines at once, Health must fail, and all
// must recover when Redis resumes.
func TestRedisHungServer(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	c := newCollector()
	e := newTestRedis(t, cfg, c.handle, nil)
	mustSubscribe(t, e, "hung")
	mustPublish(t, e, "hung", Message{Sender: 1, Payload: []byte("before")})
	c.waitFor(t, "hung", 1)

	srv.Pause()
	const publishers = 20
	limit := 2*cfg.Timeout + time.Second // documented: 2×REDIS_TIMEOUT, plus slack for a loaded CI machine
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for i := range publishers {
		wg.Go(func() {
			start := time.Now()
			_, err := PublishWait(context.Background(), e, "hung", Message{Sender: 1, Payload: fmt.Appendf(nil, "during-%d", i)})
			if d := time.Since(start); d > limit {
				errs <- fmt.Errorf("Publish took %v against a hung Redis, want at most %v", d, limit)
			} else if !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrUnconfirmed) {
				errs <- fmt.Errorf("Publish against a hung Redis = %v, want ErrUnavailable or ErrUnconfirmed", err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := e.Health(); err == nil {
		t.Error("Health is nil while Redis hangs")
	}
	srv.Resume()
	testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	mustPublish(t, e, "hung", Message{Sender: 1, Payload: []byte("after")})
	testutil.Eventually(t, "the message after the hang", func() bool {
		got := c.waitFor(t, "hung", 1)
		return string(got[len(got)-1].Payload) == "after"
	})
}

// TestRedisTrimmedWhileWedged stalls the Handler, so the reader is wedged
// and Redis trims entries it has not read: Health must fail while it is
// wedged, and the gap must be logged once it resumes.
func TestRedisTrimmedWhileWedged(t *testing.T) {
	// Small stream nodes, so that MAXLEN ~ trims at a fine granularity.
	srv := redistest.Start(t, "--stream-node-max-entries", "10")
	log := newLogSink(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.MaxLen, cfg.ReadCount = 20, 5
	release := make(chan struct{})
	c := newCollector()
	var once sync.Once
	e := newTestRedis(t, cfg, func(room string, m Message) {
		once.Do(func() { <-release })
		c.handle(room, m)
	}, log)
	// A second node publishes: the wedged node's pump is stuck in its
	// Handler and publishes nothing meanwhile.
	pub := newTestRedis(t, cfg, func(string, Message) {}, nil)
	mustSubscribe(t, e, "wedged")
	mustPublish(t, pub, "wedged", Message{Sender: 1, Payload: []byte("0")})
	for i := 1; i < 200; i++ {
		mustPublish(t, pub, "wedged", Message{Sender: 1, Payload: strconv.AppendInt(nil, int64(i), 10)})
	}
	var herr error
	testutil.Eventually(t, "Health to report the wedged reader", func() bool {
		herr = e.Health()
		return herr != nil
	})
	t.Logf("Health while wedged: %v", herr)
	close(release)
	var got []Message
	testutil.Eventually(t, "the last message", func() bool {
		got = c.waitFor(t, "wedged", 1)
		return string(got[len(got)-1].Payload) == "199"
	})
	testutil.Eventually(t, "the trim warning", func() bool {
		return strings.Contains(log.String(), "trimmed before this node read them")
	})
	testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	got = slices.DeleteFunc(got, func(m Message) bool { return m.Lost }) // the notices
	if len(got) >= 200 {
		t.Fatalf("got all %d messages; the test meant Redis to trim some", len(got))
	}
	for i := 1; i < len(got); i++ {
		if !got[i-1].ID.Less(got[i].ID) {
			t.Fatalf("IDs not increasing: %v then %v", got[i-1].ID, got[i].ID)
		}
	}
}

// TestRedisUnsubscribeLeaves checks that messages published before
// Unsubscribe are delivered and later ones are not, across nodes: the
// room is leaving, read up to its stop.
func TestRedisUnsubscribeLeaves(t *testing.T) {
	srv := redistest.Start(t)
	nodes := startNodes(t, 2, testRedisConfig(t, srv.Addr()))
	a, b := nodes[0], nodes[1]
	mustSubscribe(t, b.e, "leave")
	for round := range 20 {
		mustPublish(t, a.e, "leave", Message{Sender: 1, Payload: fmt.Appendf(nil, "in-%d", round)})
		if err := b.e.Unsubscribe("leave"); err != nil {
			t.Fatal(err)
		}
		mustPublish(t, a.e, "leave", Message{Sender: 1, Payload: fmt.Appendf(nil, "out-%d", round)})
		mustSubscribe(t, b.e, "leave")
	}
	mustPublish(t, a.e, "leave", Message{Sender: 1, Payload: []byte("end")})
	var got []Message
	testutil.Eventually(t, "the end message", func() bool {
		got = b.c.waitFor(t, "leave", 0)
		return len(got) > 0 && string(got[len(got)-1].Payload) == "end"
	})
	var ps []string
	for _, m := range got {
		ps = append(ps, string(m.Payload))
	}
	want := []string{}
	for round := range 20 {
		want = append(want, fmt.Sprintf("in-%d", round))
	}
	want = append(want, "end")
	if !slices.Equal(ps, want) {
		t.Fatalf("deliveries %q, want %q", ps, want)
	}
}

// TestRedisCluster runs the conformance and multi-node suites on a
// 3-master Redis Cluster.
func TestRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	t.Run("Conformance", func(t *testing.T) {
		testEngine(t, func(t *testing.T, h Handler, o engineOpts) Engine {
			return newTestRedis(t, o.redis(testRedisConfig(t, cl.Addrs()...)), h, nil)
		})
	})
	t.Run("Nodes", func(t *testing.T) {
		testNodes(t, 3, testRedisConfig(t, cl.Addrs()...))
	})
	t.Run("ShardsSpreadOverMasters", func(t *testing.T) {
		cfg := testRedisConfig(t, cl.Addrs()...)
		e := newTestRedis(t, cfg, func(string, Message) {}, nil)
		for i := range 64 {
			mustPublish(t, e, fmt.Sprintf("spread-%d", i), Message{Sender: 1, Payload: []byte("x")})
		}
		used := 0
		for _, s := range cl.Servers {
			if keys := s.MustDo("KEYS", cfg.Prefix+":*"); keys != "" {
				used++
			}
		}
		if used < 2 {
			t.Fatalf("rooms landed on %d of 3 masters, want them spread", used)
		}
	})
}

// TestRedisSentinelFailover kills the master under two nodes: the sentinel
// promotes the replica, and the engines must recover and keep delivering.
//
// Redis replication is asynchronous, so a failover may lose writes the
// master acknowledged but had not yet sent to the replica. The test makes
// that impossible for what it asserts: before the kill it waits until the
// replica holds every accepted message (what WAIT would guarantee), and
// during the outage nothing can be accepted (the old master is dead).
// So every accepted message must be delivered exactly once, in order.
func TestRedisSentinelFailover(t *testing.T) {
	st := redistest.StartSentinel(t, 500*time.Millisecond)
	cfg := testRedisConfig(t, st.Sentinel.Addr())
	cfg.SentinelMaster = st.MasterName
	t.Run("Conformance", func(t *testing.T) {
		testEngine(t, func(t *testing.T, h Handler, o engineOpts) Engine {
			c := testRedisConfig(t, st.Sentinel.Addr())
			c.SentinelMaster = st.MasterName
			return newTestRedis(t, o.redis(c), h, nil)
		})
	})
	nodes := startNodes(t, 2, cfg)
	for _, nd := range nodes {
		mustSubscribe(t, nd.e, "ha")
	}
	pub := nodes[0].e
	var accepted []published
	var refused []string
	publish := func(i int) error {
		payload := "m" + strconv.Itoa(i)
		id, err := PublishWait(context.Background(), pub, "ha", Message{Sender: 1, Payload: []byte(payload)})
		if err == nil {
			accepted = append(accepted, published{payload, id})
		} else if errors.Is(err, ErrUnavailable) {
			refused = append(refused, payload)
		}
		return err
	}
	i := 0
	for ; i < 50; i++ {
		if err := publish(i); err != nil {
			t.Fatalf("Publish before the failover: %v", err)
		}
	}
	key := pub.key("ha")
	testutil.EventuallyWithin(t, 5*time.Second, "the replica to hold every accepted message", func() bool {
		n, err := st.Replica.Do("XLEN", key)
		return err == nil && n == "50"
	})

	st.Master.Kill()
	testutil.EventuallyWithin(t, 5*time.Second, "Health to report the dead master", func() bool { return pub.Health() != nil })
	outage := 0
	testutil.EventuallyWithin(t, 30*time.Second, "Publish to succeed on the promoted replica", func() bool {
		err := publish(i)
		i++
		if err != nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrUnconfirmed) {
			t.Fatalf("Publish during the failover = %v, want ErrUnavailable or ErrUnconfirmed", err)
		}
		if err != nil {
			outage++
		}
		return err == nil
	})
	t.Logf("%d Publish calls failed with ErrUnavailable during the failover", outage)
	if addr, err := st.MasterAddr(); err != nil || addr != st.Replica.Addr() {
		t.Fatalf("sentinel master = %s (%v), want the replica %s", addr, err, st.Replica.Addr())
	}
	for end := i + 50; i < end; i++ {
		if err := publish(i); err != nil {
			t.Fatalf("Publish after the failover: %v", err)
		}
	}
	for _, nd := range nodes {
		checkExactlyOnce(t, nd.c, "ha", accepted, refused)
		e := nd.e
		testutil.Eventually(t, "Health to recover", func() bool { return e.Health() == nil })
	}
}

// BenchmarkRedisPublish measures Publish from many goroutines sharing the
// auto-pipelined connection.
func BenchmarkRedisPublish(b *testing.B) {
	srv := redistest.Start(b)
	e := newTestRedis(b, testRedisConfig(b, srv.Addr()), func(string, Message) {}, nil)
	ctx := context.Background()
	// Warm up: let the pump dial its connection and the pools fill, so
	// that setup does not count as allocations of Publish.
	for range 1000 {
		if _, err := PublishWait(ctx, e, "bench", Message{Sender: 1, Payload: []byte("warm-up")}); err != nil {
			b.Fatal(err)
		}
	}
	for _, size := range []int{64, 1024} {
		b.Run(fmt.Sprintf("payload=%d", size), func(b *testing.B) {
			// As the gateway does: Publish from one goroutine without
			// waiting, a static Ack; at most `window` messages in flight.
			const window = 4096
			payload := bytes.Repeat([]byte("x"), size)
			done := make(chan struct{}, window)
			var failed atomic.Int64
			ack := ackOf(func(_ any, _ ID, err error) {
				if err != nil {
					failed.Add(1)
				}
				done <- struct{}{}
			})
			for range window {
				done <- struct{}{}
			}
			m := Message{Sender: 1 << 40, Payload: payload}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				<-done
				e.Publish("bench", m, ack, nil)
			}
			for range window {
				<-done
			}
			if n := failed.Load(); n > 0 {
				b.Fatalf("%d publishes failed", n)
			}
		})
	}
}

// BenchmarkRedisDecode measures the reader's decode path on a real XREAD
// reply of 100 entries: decoding, per-room bookkeeping and the Handler
// call. One op is one reply.
func BenchmarkRedisDecode(b *testing.B) {
	srv := redistest.Start(b)
	cfg := testRedisConfig(b, srv.Addr())
	e := newTestRedis(b, cfg, func(string, Message) {}, nil)
	const batch = 100
	payload := bytes.Repeat([]byte("x"), 128)
	for range batch {
		if _, err := PublishWait(context.Background(), e, "decode", Message{Sender: 1 << 40, Payload: payload}); err != nil {
			b.Fatal(err)
		}
	}
	key := e.key("decode")
	reply, err := e.client.Do(context.Background(), e.client.B().Xread().Count(batch).Streams().Key(key).Id("0-0").Build()).ToMessage()
	if err != nil {
		b.Fatal(err)
	}
	s := &redisShard{rooms: map[string]*redisRoom{key: {name: "decode", key: key, subscribed: true}}}
	room := s.rooms[key]
	delivered := 0
	h := func(_ string, m Message) { delivered += len(m.Payload) }
	var out []redisDelivery
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		room.last = ID{}
		if err := forEachStream(reply, func(key string, v rueidis.RedisMessage) {
			out = s.collectStream(key, v, 512, DefaultRedisMaxLen, out)
		}); err != nil {
			b.Fatal(err)
		}
		for i := range out {
			h(out[i].room, out[i].msg)
		}
		if len(out) != batch {
			b.Fatalf("decoded %d entries, want %d", len(out), batch)
		}
		out = out[:0]
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/msg")
}

// TestDecodeEntry covers malformed entries the reader must skip.
func TestDecodeEntry(t *testing.T) {
	srv := redistest.Start(t)
	e := newTestRedis(t, testRedisConfig(t, srv.Addr()), func(string, Message) {}, nil)
	ctx := context.Background()
	key := e.key("raw")
	for _, fv := range [][]string{
		{"s", "42", "p", "ok"},
		{"p", "no sender"},
		{"s", "not-a-number", "p", "x"},
		{"s", "43", "p", "", "extra", "ignored"},
	} {
		if err := e.client.Do(ctx, e.client.B().Arbitrary("XADD").Keys(key).Args(append([]string{"*"}, fv...)...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := e.client.Do(ctx, e.client.B().Xrange().Key(key).Start("-").End("+").Build()).ToArray()
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		sender  uint64
		payload string
		ok      bool
	}
	var got []result
	for i := range entries {
		_, sender, payload, ok := decodeEntry(&entries[i])
		got = append(got, result{sender, string(payload), ok})
	}
	want := []result{{42, "ok", true}, {0, "", false}, {0, "", false}, {43, "", true}}
	if !slices.Equal(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
}

func TestParseUint(t *testing.T) {
	for _, s := range []string{"0", "7", "42", "1700000000000", "18446744073709551615", "18446744073709551616",
		"99999999999999999999", "", "-1", "+1", "1a", " 1", "184467440737095516150"} {
		want, werr := strconv.ParseUint(s, 10, 64)
		got, ok := parseUint(s)
		if ok != (werr == nil) || got != want && ok {
			t.Errorf("parseUint(%q) = %d, %v; strconv says %d, %v", s, got, ok, want, werr)
		}
	}
}

// TestRedisIdleNodesSendNothing: with rooms subscribed and nothing
// published, a node sends Redis no reads at all: no blocking read, no
// polling; Redis tells it when a room gets an entry (client tracking).
func TestRedisIdleNodesSendNothing(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.ReadShards = 4
	e := newTestRedis(t, cfg, func(string, Message) {}, nil)
	for i := range 20 {
		if _, err := e.Subscribe(fmt.Sprintf("idle-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	calls := func(cmd string) int {
		out, err := srv.Do("INFO", "commandstats")
		if err != nil {
			t.Fatal(err)
		}
		_, rest, _ := strings.Cut(out, "cmdstat_"+cmd+":calls=")
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		return n
	}
	// The pump's first read of the rooms arms their tracking: wait for it.
	var before int
	testutil.Eventually(t, "INFO commandstats to show an XREAD (the pump never read, or the stats did not parse)", func() bool {
		before = calls("xread")
		return before > 0
	})
	time.Sleep(100 * time.Millisecond) // let the subscribes' reads finish
	before = calls("xread")
	<-time.After(500 * time.Millisecond) // an observation window, not synchronisation
	if n := calls("xread") - before; n != 0 {
		t.Fatalf("%d XREADs in 500ms with nothing published: an idle node must read nothing", n)
	}
}

// TestRedisDownFailsFast: once the readers have seen Redis go away,
// Subscribe answers ErrUnavailable without waiting for a timeout (the
// gateway calls it from an event loop) and Unsubscribe returns at once.
func TestRedisDownFailsFast(t *testing.T) {
	srv := redistest.Start(t)
	cfg := testRedisConfig(t, srv.Addr())
	cfg.Timeout = 2 * time.Second
	e := newTestRedis(t, cfg, func(string, Message) {}, nil)
	mustSubscribe(t, e, "kept")
	srv.Kill()
	testutil.Eventually(t, "a reader to notice Redis is gone", func() bool { return e.failing.Load() > 0 })

	start := time.Now()
	_, err := e.Subscribe("new-room")
	if took := time.Since(start); !errors.Is(err, ErrUnavailable) || took >= cfg.Timeout/2 {
		t.Fatalf("Subscribe with Redis down: %v after %v; want ErrUnavailable well before the %v timeout", err, took, cfg.Timeout)
	}
	start = time.Now()
	if err := e.Unsubscribe("kept"); err != nil || time.Since(start) >= cfg.Timeout/2 {
		t.Fatalf("Unsubscribe with Redis down: %v after %v", err, time.Since(start))
	}

	srv.Restart()
	testutil.Eventually(t, "the readers to recover", func() bool { return e.failing.Load() == 0 })
	mustSubscribe(t, e, "new-room")
}
