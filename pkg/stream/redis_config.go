package stream

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults of RedisConfig, used for zero fields.
const (
	// DefaultRedisPort is the default of RedisConfig.Port (PORT_REDIS).
	DefaultRedisPort = 6379
	// DefaultRedisPrefix is the default of RedisConfig.Prefix (REDIS_PREFIX).
	DefaultRedisPrefix = "chat"
	// DefaultRedisMaxLen is the default of RedisConfig.MaxLen (REDIS_MAXLEN).
	DefaultRedisMaxLen = 1000
	// DefaultRedisTTL is the default of RedisConfig.TTL (REDIS_TTL).
	DefaultRedisTTL = 24 * time.Hour
	// DefaultRedisReadShards is the default of RedisConfig.ReadShards
	// (REDIS_READ_SHARDS).
	DefaultRedisReadShards = 16
	// DefaultRedisReadCount is the default of RedisConfig.ReadCount
	// (REDIS_READ_COUNT).
	DefaultRedisReadCount = 512
	// DefaultRedisBlock is the default of RedisConfig.Block (REDIS_BLOCK).
	DefaultRedisBlock = 5 * time.Second
	// DefaultRedisSweep is the default of RedisConfig.Sweep (REDIS_SWEEP).
	DefaultRedisSweep = 30 * time.Second
	// DefaultRedisTimeout is the default of RedisConfig.Timeout
	// (REDIS_TIMEOUT).
	DefaultRedisTimeout = 2 * time.Second
	// DefaultRedisBackoffMin is the default of RedisConfig.BackoffMin
	// (REDIS_BACKOFF_MIN).
	DefaultRedisBackoffMin = 100 * time.Millisecond
	// DefaultRedisBackoffMax is the default of RedisConfig.BackoffMax
	// (REDIS_BACKOFF_MAX).
	DefaultRedisBackoffMax = 5 * time.Second

	// DefaultRedisBatchWindow is the default of RedisConfig.BatchWindow
	// (REDIS_BATCH_WINDOW).
	DefaultRedisBatchWindow = 2 * time.Millisecond
	// DefaultPublishQueue is the default of RedisConfig.PublishQueue
	// (PUBLISH_QUEUE).
	DefaultPublishQueue = 16384

	// DefaultRedisDedupeWindow is the default of RedisConfig.DedupeWindow
	// (REDIS_DEDUPE_WINDOW) and MemoryConfig.DedupeWindow.
	DefaultRedisDedupeWindow = 2 * time.Minute
	// DefaultRedisPresenceInterval is the default of
	// RedisConfig.PresenceInterval (REDIS_PRESENCE_INTERVAL).
	DefaultRedisPresenceInterval = time.Second

	// DefaultRedisFlushDelay is the default of RedisConfig.FlushDelay
	// (REDIS_FLUSH_DELAY).
	DefaultRedisFlushDelay = 20 * time.Microsecond
)

// DefaultRedisWaitReplicas is the default of RedisConfig.WaitReplicas
// (REDIS_WAIT_REPLICAS): acknowledge what the primary stored.
const DefaultRedisWaitReplicas = 0

// DefaultRedisWaitTimeout is the default of RedisConfig.WaitTimeout
// (REDIS_WAIT_TIMEOUT), or half of Timeout when that is shorter: a
// replica normally confirms within a network round trip, and each round
// trip of a pump (every delivery of its rooms) waits for it.
const DefaultRedisWaitTimeout = 250 * time.Millisecond

// maxWaitReplicas caps REDIS_WAIT_REPLICAS.
const maxWaitReplicas = 16

// Bounds of RedisConfig's fields, checked once the defaults are set.
const (
	// maxRedisReadShards caps REDIS_READ_SHARDS: on a Cluster each shard
	// has a pump, with two connections per node.
	maxRedisReadShards = 1024
	// minRedisDuration is the least value of the duration fields that
	// cannot be turned off (REDIS_TTL, REDIS_BLOCK, REDIS_SWEEP, ...).
	minRedisDuration = time.Millisecond
	// maxRedisDelay caps the delays added to round trips (REDIS_FLUSH_DELAY,
	// REDIS_BATCH_WINDOW).
	maxRedisDelay = time.Second
)

// RedisConfig configures the Redis engine. The zero value of every field
// means its default; NewRedis rejects invalid values with an error naming
// the environment variable to fix. The env tags are read by cmd/gateway
// (github.com/sethvargo/go-envconfig); this package never reads the
// environment.
//
// Every gateway node sharing rooms must use the same Prefix and
// ReadShards: both are part of the stream keys.
type RedisConfig struct {
	// Host is the Redis host, the legacy way to name a single server or the
	// seed node of a cluster. Used with Port when Addrs is empty. Zero
	// means none: then Addrs must be set.
	Host string `env:"IP_REDIS" help:"Redis host (production); or use REDIS_ADDRS"`
	// Port is the port of Host. Zero means DefaultRedisPort (6379).
	Port int `env:"PORT_REDIS" help:"port of IP_REDIS"`
	// Addrs lists "host:port" addresses (comma-separated in the
	// environment): the seed nodes of a Redis Cluster, or the sentinels
	// when SentinelMaster is set. Zero means Host:Port. Setting both Addrs
	// and Host is an error.
	Addrs []string `env:"REDIS_ADDRS" help:"comma-separated host:port list: Redis Cluster seeds, or sentinels with REDIS_SENTINEL_MASTER"`
	// SentinelMaster is the master name monitored by the sentinels at
	// Addrs (or Host:Port). Zero means no Sentinel: Addrs are Redis nodes.
	SentinelMaster string `env:"REDIS_SENTINEL_MASTER" help:"Sentinel master name; REDIS_ADDRS (or IP_REDIS) are then the sentinels"`
	// SentinelUsername and SentinelPassword authenticate to the sentinels.
	// Zero means no authentication.
	SentinelUsername string `env:"REDIS_SENTINEL_USERNAME" help:"user for the sentinels"`
	// SentinelPassword: see SentinelUsername.
	SentinelPassword string `env:"REDIS_SENTINEL_PASSWORD" help:"password for the sentinels"`
	// Username is the Redis ACL user. Zero means "default".
	Username string `env:"REDIS_USERNAME" help:"Redis ACL user"`
	// Password authenticates Username. Zero means no AUTH.
	Password string `env:"REDIS_PASSWORD" help:"Redis password"`
	// TLS connects with TLS, verifying the server against the system roots
	// (or TLSCAFile) and the host name of each address. Zero means plain
	// TCP.
	TLS bool `env:"REDIS_TLS" help:"connect to Redis with TLS"`
	// TLSCAFile is a PEM file of CA certificates that replaces the system
	// roots. Zero means the system roots. Needs TLS.
	TLSCAFile string `env:"REDIS_TLS_CA_FILE" help:"PEM CA bundle for REDIS_TLS instead of the system roots"`
	// TLSInsecureSkipVerify disables certificate verification: for tests
	// only. Zero means verify. Needs TLS.
	TLSInsecureSkipVerify bool `env:"REDIS_TLS_INSECURE_SKIP_VERIFY" help:"skip certificate checks (tests only)"`
	// DB is the database number (SELECT). Zero means database 0, the only
	// one a Redis Cluster has.
	DB int `env:"REDIS_DB" help:"database number (not with Cluster)"`
	// Prefix starts every key: "<prefix>:{<shard>}:<room>". Zero means
	// DefaultRedisPrefix ("chat"). It must not contain '{' or '}'.
	Prefix string `env:"REDIS_PREFIX" help:"key prefix: streams are <prefix>:{<shard>}:<room>; same on every node"`
	// MaxLen caps each room's stream, approximately (XADD MAXLEN ~): older
	// entries are trimmed. A node whose reader falls further behind loses
	// messages and logs a warning. Zero means DefaultRedisMaxLen (1000).
	MaxLen int64 `env:"REDIS_MAXLEN" help:"approximate entries kept per room stream (XADD MAXLEN ~)"`
	// TTL is the expiry of a room's stream, so that rooms nobody writes to
	// disappear. Each node refreshes it when it writes to a room whose TTL
	// it last refreshed more than min(TTL/16, 1h) ago (ttlRefreshDivisor,
	// maxTTLRefresh). Zero means DefaultRedisTTL (24h); at least 1ms.
	TTL time.Duration `env:"REDIS_TTL" help:"expiry of a room stream after its last message (refreshed at most every min(TTL/16, 1h))"`
	// ReadShards is the number of key shards: rooms are spread over them by
	// a hash of their name, and each shard is one hash tag ("{<shard>}"),
	// so one Redis Cluster slot. On a Cluster each node runs one pump per
	// shard; on one Redis a single pump serves them all. Zero means
	// DefaultRedisReadShards (16); at most 1024 (maxRedisReadShards).
	ReadShards int `env:"REDIS_READ_SHARDS" help:"key shards (hash tags) that rooms are spread over; one pump each on a Cluster; same on every node"`
	// ReadCount is the XREAD COUNT: at most this many entries per room per
	// read. Zero means DefaultRedisReadCount (512).
	ReadCount int `env:"REDIS_READ_COUNT" help:"XREAD COUNT per room and read"`
	// Block is how long an idle pump waits before it checks its
	// connection with a PING (it sends nothing else while idle: Redis
	// tells it when a room gets an entry). It bounds how stale Health's
	// view of a pump may be (Block + Timeout) and how soon a connection
	// that broke while idle is found. Zero means DefaultRedisBlock (5s); at
	// least 1ms.
	Block time.Duration `env:"REDIS_BLOCK" help:"an idle pump PINGs Redis after this long; bounds how stale pump health may be"`
	// Sweep is how often a pump reads every one of its rooms, whether or
	// not Redis reported them written: the safety net for a wake that was
	// lost (Redis reports a connection's lost tracking, and the pump then
	// reads every room, so this is a second net). The sweep costs Redis
	// one key lookup per room and node each time: with 10 000 rooms on 6
	// nodes, every 5s, it was 8% of Redis's CPU at 1 000 msg/s. Zero means
	// DefaultRedisSweep (30s); at least 1ms.
	Sweep time.Duration `env:"REDIS_SWEEP" help:"every room is read again at least this often, in case a wake was lost"`
	// Timeout bounds each round trip (Publish, Subscribe, Unsubscribe,
	// Health) and each connection attempt. Zero means DefaultRedisTimeout
	// (2s); at least 1ms.
	Timeout time.Duration `env:"REDIS_TIMEOUT" help:"bound on each Redis round trip and connection attempt; a sender waits at most twice this for its answer"`
	// BackoffMin and BackoffMax bound a pump's exponential backoff, with
	// jitter, after failed round trips (the first retry is immediate).
	// Zero means DefaultRedisBackoffMin (100ms); at least 1ms.
	BackoffMin time.Duration `env:"REDIS_BACKOFF_MIN" help:"pause before retrying after Redis failed twice in a row (doubles up to REDIS_BACKOFF_MAX)"`
	// FlushDelay lets the shared connection wait up to this long after each
	// write to gather more commands into the next one (rueidis
	// MaxFlushDelay): fewer system calls for Redis and the gateway under
	// load, for at most this much added latency. Zero means
	// DefaultRedisFlushDelay (20µs); a negative value disables it; at most
	// 1s (maxRedisDelay).
	FlushDelay time.Duration `env:"REDIS_FLUSH_DELAY" help:"wait after each write to Redis to batch more commands (rueidis MaxFlushDelay); negative disables"`
	// BatchWindow paces a pump under load: while its reads keep finding
	// new entries, its round trips (publishes and reads together) start at
	// most this often, so that each carries more messages. With N > 2
	// nodes publishing (counted by presence) the window is N/2 times this,
	// at most 8 times, so that Redis sees about as many round trips per
	// second however many nodes there are (maxWindowFactor). An idle pump
	// sends at once. Zero means DefaultRedisBatchWindow (2ms); a negative
	// value disables pacing; at most 1s (maxRedisDelay).
	BatchWindow time.Duration `env:"REDIS_BATCH_WINDOW" help:"under load, at most one Redis round trip per pump per this window with 2 nodes (N/2 times it with N active nodes, up to 8x); idle pumps send at once; negative disables"`
	// PublishQueue bounds the messages waiting for a pump; a message that
	// finds the queue full is refused at once with an "unavailable" error
	// rather than buffered. Zero means DefaultPublishQueue (16384).
	PublishQueue int `env:"PUBLISH_QUEUE" help:"messages waiting for Redis per pump before senders get unavailable"`
	// BackoffMax: see BackoffMin. Zero means DefaultRedisBackoffMax (5s);
	// at least 1ms.
	BackoffMax time.Duration `env:"REDIS_BACKOFF_MAX" help:"longest pause between retries while Redis is down"`
	// DedupeWindow is how long a message's client-chosen ID (Message.CID)
	// is remembered per room: a resend with the same CID within it, from
	// any node, appends nothing and is acknowledged with the first ID.
	// Each CID costs one Redis key (its dedupe key) for this long. Zero
	// means DefaultRedisDedupeWindow (2m); at least 1ms.
	DedupeWindow time.Duration `env:"REDIS_DEDUPE_WINDOW" help:"how long a message's cid is remembered per room: a resend within it is not appended twice and gets the first ID back"`
	// PresenceInterval is how often each node publishes its member counts
	// and heartbeat. A node that dies stops being counted within 4
	// intervals (presenceLapse + 1); a count set on one node shows on the
	// others within about two. Zero means DefaultRedisPresenceInterval
	// (1s); at least 1ms.
	PresenceInterval time.Duration `env:"REDIS_PRESENCE_INTERVAL" help:"how often each node publishes its room member counts; a dead node stops being counted within 4 intervals"`
	// WaitReplicas, when above zero, makes acknowledgements durable
	// across a failover: after the publishes of each round trip the pump
	// sends WAIT <WaitReplicas> <WaitTimeout>, and a message is
	// acknowledged only when that many replicas confirmed it; otherwise
	// its sender gets ErrUnconfirmed (stored on the primary, maybe lost
	// by a failover). The round trip's read follows the WAIT, so this
	// node delivers its own messages once they are replicated. Zero means
	// DefaultRedisWaitReplicas (0): acknowledge what the primary stored;
	// at most 16.
	WaitReplicas int `env:"REDIS_WAIT_REPLICAS" help:"acknowledge a message only once this many replicas have it (WAIT), so acked messages survive a failover; 0: once the primary has it"`
	// WaitTimeout bounds each WAIT of WaitReplicas: while replicas lag,
	// every round trip of a pump, and so every delivery of its rooms,
	// waits this long. Zero means DefaultRedisWaitTimeout (250ms), or half
	// of Timeout when that is shorter; it must be below Timeout.
	WaitTimeout time.Duration `env:"REDIS_WAIT_TIMEOUT" help:"with REDIS_WAIT_REPLICAS: how long a round trip waits for the replicas before its messages are answered unconfirmed (deliveries wait too); default 250ms or half of REDIS_TIMEOUT"`
}

// MemoryConfig returns the part of c that the Memory engine shares with
// Redis (MaxLen, TTL, DedupeWindow), so that one environment configures
// the history of either engine.
func (c RedisConfig) MemoryConfig() MemoryConfig {
	return MemoryConfig{MaxLen: c.MaxLen, TTL: c.TTL, DedupeWindow: c.DedupeWindow}
}

// durationField is a duration field of RedisConfig with its default and
// bounds: Defaulted, withDefaults and the tests take them from here, so
// that each default and bound is written once (as a constant).
type durationField struct {
	v    *time.Duration
	def  time.Duration
	name string // the environment variable
	// off: a negative value turns the feature off (0), and max bounds
	// the value. Otherwise the value must be at least minRedisDuration.
	off bool
	max time.Duration
}

// durations lists the duration fields of c.
func (c *RedisConfig) durations() []durationField {
	return []durationField{
		{v: &c.TTL, def: DefaultRedisTTL, name: "REDIS_TTL"},
		{v: &c.Block, def: DefaultRedisBlock, name: "REDIS_BLOCK"},
		{v: &c.Sweep, def: DefaultRedisSweep, name: "REDIS_SWEEP"},
		{v: &c.Timeout, def: DefaultRedisTimeout, name: "REDIS_TIMEOUT"},
		{v: &c.BackoffMin, def: DefaultRedisBackoffMin, name: "REDIS_BACKOFF_MIN"},
		{v: &c.BackoffMax, def: DefaultRedisBackoffMax, name: "REDIS_BACKOFF_MAX"},
		{v: &c.FlushDelay, def: DefaultRedisFlushDelay, name: "REDIS_FLUSH_DELAY", off: true, max: maxRedisDelay},
		{v: &c.BatchWindow, def: DefaultRedisBatchWindow, name: "REDIS_BATCH_WINDOW", off: true, max: maxRedisDelay},
		{v: &c.DedupeWindow, def: DefaultRedisDedupeWindow, name: "REDIS_DEDUPE_WINDOW"},
		{v: &c.PresenceInterval, def: DefaultRedisPresenceInterval, name: "REDIS_PRESENCE_INTERVAL"},
	}
}

// countField is a count field of RedisConfig with its default and upper
// bound (0: none). Negative counts are errors.
type countField struct {
	get      func() int64
	set      func(int64)
	def, max int64
	name     string // the environment variable
}

// count returns the countField of *v.
func count[T int | int64](v *T, def, max int64, name string) countField {
	return countField{get: func() int64 { return int64(*v) }, set: func(n int64) { *v = T(n) }, def: def, max: max, name: name}
}

// counts lists the count fields of c.
func (c *RedisConfig) counts() []countField {
	return []countField{
		count(&c.MaxLen, DefaultRedisMaxLen, 0, "REDIS_MAXLEN"),
		count(&c.ReadShards, DefaultRedisReadShards, maxRedisReadShards, "REDIS_READ_SHARDS"),
		count(&c.ReadCount, DefaultRedisReadCount, 0, "REDIS_READ_COUNT"),
		count(&c.PublishQueue, DefaultPublishQueue, 0, "PUBLISH_QUEUE"),
		count(&c.WaitReplicas, DefaultRedisWaitReplicas, maxWaitReplicas, "REDIS_WAIT_REPLICAS"),
	}
}

// Defaulted returns c with every zero field set to the default NewRedis
// uses for it, without checking anything: what `gateway -h` prints.
func (c RedisConfig) Defaulted() RedisConfig {
	c.Port = cmp.Or(c.Port, DefaultRedisPort)
	c.Prefix = cmp.Or(c.Prefix, DefaultRedisPrefix)
	for _, f := range c.counts() {
		if f.get() == 0 {
			f.set(f.def)
		}
	}
	for _, f := range c.durations() {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = min(DefaultRedisWaitTimeout, c.Timeout/2)
	}
	return c
}

// withDefaults returns c with zero fields set to their defaults
// (Defaulted), or an error naming the first invalid variable.
func (c RedisConfig) withDefaults() (RedisConfig, error) {
	switch {
	case len(c.Addrs) > 0 && c.Host != "":
		return c, errors.New("stream: both IP_REDIS and REDIS_ADDRS are set: set only one (REDIS_ADDRS for several addresses)")
	case len(c.Addrs) == 0 && c.Host == "":
		return c, errors.New("stream: no Redis address: set IP_REDIS (and PORT_REDIS) or REDIS_ADDRS")
	case c.Port < 0 || c.Port > 65535:
		return c, fmt.Errorf("stream: PORT_REDIS=%d is not a port: use 1-65535", c.Port)
	case c.DB < 0:
		return c, fmt.Errorf("stream: REDIS_DB=%d is negative: use 0 or a database number", c.DB)
	case (c.TLSCAFile != "" || c.TLSInsecureSkipVerify) && !c.TLS:
		return c, errors.New("stream: REDIS_TLS_CA_FILE or REDIS_TLS_INSECURE_SKIP_VERIFY is set but REDIS_TLS is not: set REDIS_TLS=true")
	}
	// Defaulted leaves negative values alone: counts are then errors,
	// delays that can be turned off are off.
	c = c.Defaulted()
	if err := c.checkBounds(); err != nil {
		return c, err
	}
	if len(c.Addrs) == 0 {
		c.Addrs = []string{net.JoinHostPort(c.Host, strconv.Itoa(c.Port))}
	} else {
		c.Addrs = append([]string(nil), c.Addrs...)
		for i, a := range c.Addrs {
			a = strings.TrimSpace(a)
			host, port, err := net.SplitHostPort(a)
			if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
				return c, fmt.Errorf("stream: REDIS_ADDRS entry %q is not host:port: use a comma-separated list such as redis-1:6379,redis-2:6379", a)
			}
			c.Addrs[i] = a
		}
	}
	if strings.ContainsAny(c.Prefix, "{}") {
		return c, fmt.Errorf("stream: REDIS_PREFIX=%q contains '{' or '}': the engine adds the hash tag itself, remove them", c.Prefix)
	}
	switch {
	case c.WaitTimeout < minRedisDuration:
		return c, fmt.Errorf("stream: REDIS_WAIT_TIMEOUT=%v is below %v: use a duration such as %v, or unset it for the default", c.WaitTimeout, minRedisDuration, DefaultRedisWaitTimeout)
	case c.WaitTimeout >= c.Timeout:
		return c, fmt.Errorf("stream: REDIS_WAIT_TIMEOUT=%v is not below REDIS_TIMEOUT=%v: the round trip would time out first; lower it, or unset it for the default", c.WaitTimeout, c.Timeout)
	}
	if c.BackoffMin > c.BackoffMax {
		return c, fmt.Errorf("stream: REDIS_BACKOFF_MIN=%v exceeds REDIS_BACKOFF_MAX=%v: lower the minimum or raise the maximum", c.BackoffMin, c.BackoffMax)
	}
	return c, nil
}

// checkBounds checks the counts and durations of c, defaulted, against
// their bounds (counts, durations), turning off the delays set negative.
func (c *RedisConfig) checkBounds() error {
	for _, f := range c.counts() {
		switch n := f.get(); {
		case n < 0:
			return fmt.Errorf("stream: %s=%d is negative: use a positive number, or unset it for the default %d", f.name, n, f.def)
		case f.max > 0 && n > f.max:
			return fmt.Errorf("stream: %s=%d is too large: use at most %d, or unset it for the default %d", f.name, n, f.max, f.def)
		}
	}
	for _, f := range c.durations() {
		switch {
		case f.off && *f.v < 0:
			*f.v = 0
		case f.off && *f.v > f.max:
			return fmt.Errorf("stream: %s=%v is over %v: use a shorter delay such as the default %v, or a negative value to turn it off", f.name, *f.v, f.max, f.def)
		case !f.off && *f.v < minRedisDuration:
			return fmt.Errorf("stream: %s=%v is below %v: use a duration such as %v, or unset it for the default", f.name, *f.v, minRedisDuration, f.def)
		}
	}
	return nil
}

// LogValue implements slog.LogValuer: c without its passwords, so that
// the gateway may log its configuration.
func (c RedisConfig) LogValue() slog.Value {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "REDACTED"
	}
	return slog.GroupValue(
		slog.String("host", c.Host), slog.Int("port", c.Port), slog.Any("addrs", c.Addrs),
		slog.String("sentinel_master", c.SentinelMaster), slog.String("sentinel_username", c.SentinelUsername),
		slog.String("sentinel_password", redact(c.SentinelPassword)),
		slog.String("username", c.Username), slog.String("password", redact(c.Password)),
		slog.Bool("tls", c.TLS), slog.String("tls_ca_file", c.TLSCAFile), slog.Bool("tls_insecure_skip_verify", c.TLSInsecureSkipVerify),
		slog.Int("db", c.DB), slog.String("prefix", c.Prefix), slog.Int64("maxlen", c.MaxLen), slog.Duration("ttl", c.TTL),
		slog.Int("read_shards", c.ReadShards), slog.Int("read_count", c.ReadCount), slog.Duration("block", c.Block), slog.Duration("sweep", c.Sweep),
		slog.Duration("timeout", c.Timeout), slog.Duration("flush_delay", c.FlushDelay), slog.Duration("batch_window", c.BatchWindow), slog.Int("publish_queue", c.PublishQueue), slog.Duration("backoff_min", c.BackoffMin), slog.Duration("backoff_max", c.BackoffMax),
		slog.Duration("dedupe_window", c.DedupeWindow), slog.Duration("presence_interval", c.PresenceInterval),
		slog.Int("wait_replicas", c.WaitReplicas), slog.Duration("wait_timeout", c.WaitTimeout),
	)
}

// tlsConfig returns the TLS configuration c asks for, nil without TLS.
// The server name is left empty: the dialer takes it from each address.
func (c RedisConfig) tlsConfig() (*tls.Config, error) {
	if !c.TLS {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.TLSInsecureSkipVerify}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("stream: read REDIS_TLS_CA_FILE: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("stream: REDIS_TLS_CA_FILE=%q holds no PEM certificate: point it at the CA bundle", c.TLSCAFile)
		}
	}
	return tc, nil
}
