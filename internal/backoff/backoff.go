// Package backoff computes the waits between retries: exponential, capped,
// and optionally jittered. The gateway retries in three places (accepting
// sockets, a pump's Redis round trips, connecting to Redis at start); all
// take their waits from here so that they grow the same way.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff: Min after the first failure, doubled
// after each further one, never above Max. With Jitter the wait is a
// random point in the upper half of that ("equal jitter"), so that many
// processes that failed together do not retry in lockstep.
type Policy struct {
	Min, Max time.Duration
	Jitter   bool
}

// Wait returns how long to wait after the n-th failure in a row (n ≥ 1;
// n ≤ 0 waits nothing).
func (p Policy) Wait(n int) time.Duration {
	if n <= 0 || p.Max <= 0 {
		return 0
	}
	d := p.Max
	if n <= 30 && p.Min > 0 {
		d = min(p.Min<<(n-1), p.Max)
	}
	if p.Jitter {
		d = d/2 + rand.N(d/2+1)
	}
	return d
}
