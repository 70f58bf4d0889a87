package main

import (
	"net/http"
	"strings"

	"github.com/chatgw/gateway/internal/hist"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/room"
	"github.com/chatgw/gateway/pkg/stream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsHandler serves the Prometheus metrics of one gateway process
// from its own registry (no global state): the Go runtime and process
// collectors, and the gateway's counters, read from the packages' Stats
// at scrape time, so the hot paths only bump the atomics they always had.
// docs/operations.md lists every metric.
func metricsHandler(src statsSource) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&gatewayCollector{src: src},
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// statsSource reads the counters of the running gateway.
type statsSource struct {
	conn   func() conn.Stats
	hub    func() room.Stats
	engine stream.Engine
}

// metric is one gauge or counter taken from a snapshot of the Stats.
type metric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*snapshot) float64
}

// snapshot is the Stats of one scrape.
type snapshot struct {
	conn   conn.Stats
	hub    room.Stats
	engine stream.Stats
	ready  bool
}

func newMetric(name, help string, kind prometheus.ValueType, value func(*snapshot) float64) metric {
	return metric{prometheus.NewDesc("chat_"+name, help, nil, nil), kind, value}
}

func counter(name, help string, v func(*snapshot) int64) metric {
	return newMetric(name, help, prometheus.CounterValue, func(s *snapshot) float64 { return float64(v(s)) })
}

func gauge(name, help string, v func(*snapshot) int64) metric {
	return newMetric(name, help, prometheus.GaugeValue, func(s *snapshot) float64 { return float64(v(s)) })
}

// gatewayMetrics are the gateway's own metrics. No label carries a room
// name or a connection ID: their number stays fixed whatever the traffic.
var gatewayMetrics = []metric{
	gauge("connections_open", "Sockets held by the event loops: in handshake, open or closing.", func(s *snapshot) int64 { return s.conn.Open }),
	gauge("websockets_open", "WebSocket connections held (joining, open or closing).", func(s *snapshot) int64 { return s.conn.WebSockets }),
	gauge("http_connections_open", "Connections held by the plain-HTTP server.", func(s *snapshot) int64 { return s.conn.HTTP }),
	counter("connections_accepted_total", "TCP connections accepted.", func(s *snapshot) int64 { return s.conn.Accepted }),
	counter("websockets_opened_total", "WebSocket upgrades completed.", func(s *snapshot) int64 { return s.conn.Upgraded }),
	counter("slow_consumer_closes_total", "Connections closed with 1008 because they did not read (MAX_QUEUE_BYTES).", func(s *snapshot) int64 { return s.conn.SlowConsumers }),
	gauge("queued_bytes", "Bytes queued for clients and not yet written.", func(s *snapshot) int64 { return s.conn.QueuedBytes }),
	counter("timeouts_total", "Handshakes, HTTP requests and unfinished messages cut by their timeout.", func(s *snapshot) int64 { return s.conn.TimedOut }),
	counter("limit_closes_total", "Connections closed for MAX_PARTIAL_BYTES.", func(s *snapshot) int64 { return s.conn.Limited }),
	counter("reads_paused_total", "Times a connection's reads were paused because it sent faster than FRAME_RATE, RATE_LIMIT or BYTE_RATE: slowed, nothing dropped.", func(s *snapshot) int64 { return s.conn.Paused }),
	counter("heads_evicted_total", "Connections closed with 503 before finishing their request head, to make room at the connection cap.", func(s *snapshot) int64 { return s.conn.Evicted }),
	gauge("partial_bytes", "Buffer bytes held for unfinished messages and frames.", func(s *snapshot) int64 { return s.conn.PartialBytes }),

	gauge("rooms", "Rooms with members on this node.", func(s *snapshot) int64 { return int64(s.hub.Rooms) }),
	counter("messages_received_total", "Chat messages received from clients.", func(s *snapshot) int64 { return s.hub.Received }),
	counter("messages_published_total", "Chat messages accepted by the engine (stored).", func(s *snapshot) int64 { return s.hub.Published }),
	counter("deliveries_total", "Frames handed to member connections.", func(s *snapshot) int64 { return s.hub.Delivered }),
	counter("replayed_total", "Stored messages replayed to clients joining with since= or history=.", func(s *snapshot) int64 { return s.hub.Replayed }),
	counter("engine_duplicates_total", "Publishes whose cid was already stored within REDIS_DEDUPE_WINDOW: acknowledged with the first ID, not appended again.", func(s *snapshot) int64 { return s.engine.Duplicates }),
	counter("rate_limit_closes_total", "Connections closed with 1008 for going on over RATE_LIMIT (RATE_MODE drop).", func(s *snapshot) int64 { return s.hub.RateClosed }),
	counter("messages_paused_total", "Times a message waited for its sender's RATE_LIMIT, BYTE_RATE or BYTE_RATE_PER_IP: read later, not dropped.", func(s *snapshot) int64 { return s.hub.RatePaused }),

	counter("engine_accepted_total", "Publish outcomes: stored.", func(s *snapshot) int64 { return s.engine.Accepted }),
	counter("engine_refused_total", "Publish outcomes: not stored (unavailable or closed).", func(s *snapshot) int64 { return s.engine.Refused }),
	counter("engine_unconfirmed_total", "Publish outcomes: sent, no answer in time (may be stored).", func(s *snapshot) int64 { return s.engine.Unconfirmed }),
	counter("engine_delivered_total", "Messages the engine handed to the rooms of this node.", func(s *snapshot) int64 { return s.engine.Delivered }),
	counter("redis_round_trips_total", "Pipelined round trips of the Redis pumps (blocking reads not included).", func(s *snapshot) int64 { return s.engine.RoundTrips }),
	counter("redis_wakes_total", "Rooms held here that Redis reported written by another node (client-tracking invalidations); each makes the pump read the room.", func(s *snapshot) int64 { return s.engine.Wakes }),
	counter("redis_errors_total", "Redis round trips that got no answer (Redis down or too slow, broken connection).", func(s *snapshot) int64 { return s.engine.RoundTripErrors }),
	counter("redis_reads_refused_total", "Redis reads answered with an error.", func(s *snapshot) int64 { return s.engine.ReadsRefused }),
	counter("redis_malformed_entries_total", "Stream entries skipped because they could not be decoded.", func(s *snapshot) int64 { return s.engine.Malformed }),
	counter("redis_lost_entries_total", "Entries of subscribed rooms that Redis trimmed (REDIS_MAXLEN) or lost before this node read them.", func(s *snapshot) int64 { return s.engine.Lost }),
	counter("redis_rollbacks_total", "Times a room's stream had lost entries this node had read (a Redis failover or restart that lost writes): logged, recorded for resumes, IDs raised past them.", func(s *snapshot) int64 { return s.engine.Rollbacks }),
	counter("redis_wait_short_total", "Round trips whose WAIT (REDIS_WAIT_REPLICAS) was confirmed by fewer replicas than asked: their messages were answered unconfirmed.", func(s *snapshot) int64 { return s.engine.WaitShort }),
	newMetric("engine_healthy", "1 while the engine can accept and deliver messages (what /readyz reports), else 0.", prometheus.GaugeValue,
		func(s *snapshot) float64 {
			if s.ready {
				return 1
			}
			return 0
		}),
}

// labeled is a counter with one label whose values come from a snapshot.
type labeled struct {
	desc   *prometheus.Desc
	values func(*snapshot) map[string]int64 // label value → count
}

// gatewayLabeled are the counters split by a bounded label.
var gatewayLabeled = []labeled{
	{prometheus.NewDesc("chat_upgrades_refused_total",
		"Connections and upgrades refused with an HTTP error, by reason: bad_request, unauthorized, forbidden, not_found, timeout, too_large, per_ip, capacity, draining, unavailable, other.",
		[]string{"reason"}, nil), func(s *snapshot) map[string]int64 { return s.conn.RefusedBy }},
	{prometheus.NewDesc("chat_closes_total",
		"Close frames sent, by who started the close (server, or client: an echo) and close code.",
		[]string{"by", "code"}, nil), func(s *snapshot) map[string]int64 { return s.conn.Closes }},
	{prometheus.NewDesc("chat_error_frames_total",
		"Error frames sent to senders, by code: invalid_message (invalid_json, not_object, missing_field), unavailable, unconfirmed, rate_limited.",
		[]string{"code"}, nil), func(s *snapshot) map[string]int64 {
		return map[string]int64{"invalid_message": s.hub.Rejected, "unavailable": s.hub.Unavailable,
			"unconfirmed": s.hub.Unconfirmed, "rate_limited": s.hub.RateLimited}
	}},
}

// buildInfoDesc is chat_build_info: a constant 1 whose labels say what
// the process runs, so dashboards can tell nodes' builds apart.
var buildInfoDesc = prometheus.NewDesc("chat_build_info",
	"Always 1; the labels give the gateway's version, VCS revision and Go release (gateway -version).",
	[]string{"version", "revision", "go"}, nil)

var (
	publishLatencyDesc = prometheus.NewDesc("chat_publish_seconds",
		"Time from publishing a message to the engine's answer (stored, refused or unconfirmed).", nil, nil)
	roundTripDesc = prometheus.NewDesc("chat_redis_round_trip_seconds",
		"Time of one pipelined Redis round trip of a pump (publishes and reads).", nil, nil)
)

// gatewayCollector turns the Stats into metrics at each scrape.
type gatewayCollector struct{ src statsSource }

// Describe sends the descriptors of every metric.
func (c *gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range gatewayMetrics {
		ch <- m.desc
	}
	for _, m := range gatewayLabeled {
		ch <- m.desc
	}
	ch <- publishLatencyDesc
	ch <- roundTripDesc
	ch <- buildInfoDesc
}

// Collect reads the Stats once and sends every metric.
func (c *gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	s := snapshot{conn: c.src.conn(), hub: c.src.hub(), engine: c.src.engine.Stats(), ready: c.src.engine.Health() == nil}
	for _, m := range gatewayMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(&s))
	}
	for _, m := range gatewayLabeled {
		for value, n := range m.values(&s) {
			// Closes are keyed "<by> <code>": two labels.
			ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(n), strings.Fields(value)...)
		}
	}
	ch <- constHistogram(publishLatencyDesc, s.engine.PublishLatency)
	ch <- constHistogram(roundTripDesc, s.engine.RoundTripLatency)
	b := buildInfo()
	ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, b.Version, b.Revision, b.Go)
}

// constHistogram converts a hist.Snapshot to a Prometheus histogram in
// seconds, with cumulative buckets.
func constHistogram(d *prometheus.Desc, h hist.Snapshot) prometheus.Metric {
	buckets := make(map[float64]uint64, len(hist.Bounds))
	var cum uint64
	for i, b := range hist.Bounds {
		cum += h.Counts[i]
		buckets[b.Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.Count(), h.Sum.Seconds(), buckets)
}
