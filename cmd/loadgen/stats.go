package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Latency histogram geometry: 1 µs to 5 minutes, 3 significant digits.
const (
	latencyMinMicros = 1
	latencyMaxMicros = 5 * 60 * 1_000_000
	latencySigFigs   = 3
)

// newLatencyHistogram returns an empty histogram of loadgen's geometry.
func newLatencyHistogram() *hdr.Histogram {
	return hdr.New(latencyMinMicros, latencyMaxMicros, latencySigFigs)
}

// latencyShard is one lock's worth of histograms.
type latencyShard struct {
	mu       sync.Mutex
	total    *hdr.Histogram
	interval *hdr.Histogram
	_        [40]byte // keep shards on separate cache lines
}

// latencyRecorder records send→receive latencies from many reader
// goroutines. Each connection records into the shard of its ID, so locks
// are rarely contended.
type latencyRecorder struct {
	shards []latencyShard
}

// newLatencyRecorder returns a recorder with n shards.
func newLatencyRecorder(n int) *latencyRecorder {
	r := &latencyRecorder{shards: make([]latencyShard, n)}
	for i := range r.shards {
		r.shards[i].total = newLatencyHistogram()
		r.shards[i].interval = newLatencyHistogram()
	}
	return r
}

// record adds one latency, clamped to the histogram's range.
func (r *latencyRecorder) record(shard int, d time.Duration) {
	us := min(max(d.Microseconds(), latencyMinMicros), latencyMaxMicros)
	s := &r.shards[shard%len(r.shards)]
	s.mu.Lock()
	_ = s.total.RecordValue(us)
	_ = s.interval.RecordValue(us)
	s.mu.Unlock()
}

// takeInterval returns the latencies recorded since the last call.
func (r *latencyRecorder) takeInterval() *hdr.Histogram {
	out := newLatencyHistogram()
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		out.Merge(s.interval)
		s.interval.Reset()
		s.mu.Unlock()
	}
	return out
}

// totals returns all latencies recorded so far.
func (r *latencyRecorder) totals() *hdr.Histogram {
	out := newLatencyHistogram()
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		out.Merge(s.total)
		s.mu.Unlock()
	}
	return out
}

// counterSet counts rare events (errors, close codes) by kind.
type counterSet struct {
	mu sync.Mutex
	m  map[string]int64
}

// add counts one event of the given kind.
func (c *counterSet) add(kind string) { c.addN(kind, 1) }

// addN counts n events of the given kind.
func (c *counterSet) addN(kind string, n int64) {
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[string]int64)
	}
	c.m[kind] += n
	c.mu.Unlock()
}

// snapshot returns a copy of the counts.
func (c *counterSet) snapshot() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.m)
}

// live holds what the progress line shows; everything is safe for
// concurrent use.
type live struct {
	mu        sync.Mutex
	timeline  []TimePoint  // one point per second; guarded by mu
	phase     atomic.Value // string
	connected atomic.Int64 // connections open now
	opened    atomic.Int64 // successful handshakes
	failed    atomic.Int64 // failed dials and handshakes
	sent      atomic.Int64 // chat frames written
	received  atomic.Int64 // stamped chat frames read
	errs      counterSet   // by kind: dial, handshake_<status>, close_<code>, error_frame_<kind>, ...
	latency   *latencyRecorder
}

// progress records one TimePoint per second, with the CPU and memory of
// the pids, and, when w is not nil, prints it as a status line, until stop
// is closed.
func (l *live) progress(w io.Writer, label string, pids []int, stop <-chan struct{}, start time.Time) {
	if label != "" {
		label += " "
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastOpened, lastSent, lastRecv int64
	last := start
	lastCPU := make([]int64, len(pids)) // CPU ticks of each pid at the last sample
	for i, pid := range pids {
		lastCPU[i] = sampleProc(pid, start).CPUTicks
	}
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			dt := now.Sub(last).Seconds()
			last = now
			opened, sent, recv := l.opened.Load(), l.sent.Load(), l.received.Load()
			h := l.latency.takeInterval()
			phase, _ := l.phase.Load().(string)
			var procs []ProcPoint
			for i, pid := range pids {
				s := sampleProc(pid, now)
				if s.Err != "" {
					continue // gone or unreadable: a gap in its line
				}
				procs = append(procs, ProcPoint{PID: pid, CPU: float64(s.CPUTicks-lastCPU[i]) / clockTicks / dt, RSSBytes: s.RSSBytes})
				lastCPU[i] = s.CPUTicks
			}
			l.mu.Lock()
			l.timeline = append(l.timeline, TimePoint{Seconds: now.Sub(start).Seconds(), Phase: phase, Connected: l.connected.Load(),
				OutPerSec: float64(sent-lastSent) / dt, InPerSec: float64(recv-lastRecv) / dt, P99Micros: h.ValueAtQuantile(99),
				Procs: procs})
			l.mu.Unlock()
			if w == nil {
				lastOpened, lastSent, lastRecv = opened, sent, recv
				continue
			}
			fmt.Fprintf(w, "%s[%5.0fs] %-7s conns %d (+%.0f/s, failed %d) | out %.0f/s in %.0f/s | p50 %s p99 %s | errors %s\n",
				label, now.Sub(start).Seconds(), l.phase.Load(), l.connected.Load(),
				float64(opened-lastOpened)/dt, l.failed.Load(),
				float64(sent-lastSent)/dt, float64(recv-lastRecv)/dt,
				fmtMicros(h.ValueAtQuantile(50)), fmtMicros(h.ValueAtQuantile(99)),
				fmtCounts(l.errs.snapshot()))
			lastOpened, lastSent, lastRecv = opened, sent, recv
		}
	}
}

// fmtMicros formats a latency in microseconds compactly.
func fmtMicros(us int64) string {
	return (time.Duration(us) * time.Microsecond).String()
}

// fmtCounts formats counts as "a=1 b=2" in key order, or "none".
func fmtCounts(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	return b.String()
}
