// Package hist is a fixed-bucket histogram of durations for the gateway's
// latency metrics. Observe is safe from any goroutine and neither locks nor
// allocates, so hot paths can call it; exporters (cmd/gateway's /metrics)
// read a Snapshot.
package hist

import (
	"sync/atomic"
	"time"
)

// Bounds are the upper bounds of the buckets, from 100 µs to 10 s: the
// range between a loopback round trip and a Redis timeout. A last,
// unbounded bucket counts what is slower.
var Bounds = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// Histogram counts durations into Bounds. The zero value is ready to use.
type Histogram struct {
	counts [len(Bounds) + 1]atomic.Uint64
	sum    atomic.Int64 // nanoseconds
}

// Observe counts d.
func (h *Histogram) Observe(d time.Duration) {
	i := 0
	for i < len(Bounds) && d > Bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// Snapshot is a histogram's state at one moment.
type Snapshot struct {
	// Counts holds the observations per bucket (not cumulative): Counts[i]
	// for i < len(Bounds) those at most Bounds[i] and above the bound
	// before; the last those above every bound.
	Counts [len(Bounds) + 1]uint64
	Sum    time.Duration // of every observation
}

// Snapshot returns the counts so far. Concurrent observations may land
// in Counts a moment before Sum: the two agree once observers pause.
func (h *Histogram) Snapshot() Snapshot {
	var s Snapshot
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
	return s
}

// Count returns the number of observations.
func (s Snapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Quantile returns the upper bound of the bucket holding the q-th
// quantile (0 < q ≤ 1), or 0 without observations; above every bound it
// returns the largest bound.
func (s Snapshot) Quantile(q float64) time.Duration {
	n := s.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range s.Counts {
		seen += c
		if seen >= rank {
			return Bounds[min(i, len(Bounds)-1)]
		}
	}
	return Bounds[len(Bounds)-1]
}
