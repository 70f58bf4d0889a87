package stream

import "time"

// This file holds a pump's pacing: under load, round trips start on a
// wall-clock grid shared by all nodes, one window apart, the window
// growing with the number of active nodes.

// peerActive is how recently another node must have published to count
// as active for pacing (presence reads it: redis_presence.go).
const peerActive = 2 * time.Second

// maxWindowFactor caps the pacing window at this many BatchWindows.
const maxWindowFactor = 8

// window is the pacing of round trips under load: BatchWindow with two
// active nodes (this one and one other), and proportionally longer with
// more, up to maxWindowFactor times, so that all nodes together start
// about the same number of round trips per second however many there
// are: Redis's cost per message then does not grow with the nodes.
func (p *pump) window() time.Duration {
	w := p.e.cfg.BatchWindow
	nodes := int(p.e.activePeers.Load()) + 1
	if w <= 0 || nodes <= 2 {
		return w
	}
	return w * time.Duration(min(nodes, 2*maxWindowFactor)) / 2
}

// nextTick is when a busy pump whose last reading round trip started at
// last starts the next one: the first multiple of w since the zero time
// (wall clock) that is at least w/2 after last. Every node paces on the
// same grid, so under load their round trips reach Redis at about the
// same moment and Redis wakes once for several of them instead of once
// each: on the six-node benchmark that cut Redis's CPU per message by
// about a tenth (BENCHMARKS.md section 6). Once on the grid a pump keeps
// exactly one window between round trips.
func nextTick(last time.Time, w time.Duration) time.Time {
	t := last.Add(w / 2)
	n := t.Truncate(w)
	if n.Before(t) {
		n = n.Add(w)
	}
	return n
}

// activity notes a round trip, started at t, that published or read
// something. Two within a few windows mean load: the pump paces its
// round trips. A lone message leaves it idle.
func (p *pump) activity(t time.Time) {
	// The window in force: with many nodes it is several BatchWindows,
	// and a busy pump's round trips are that far apart.
	w := p.window()
	p.busy = w > 0 && t.Sub(p.lastActive) < 4*w
	p.lastActive = t
}
