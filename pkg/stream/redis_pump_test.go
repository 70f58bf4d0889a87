package stream

import (
	"fmt"
	"testing"
	"time"
)

// TestPumpWindowGrowsWithNodes: with more nodes publishing, each pump
// paces its round trips proportionally more, so that Redis sees about the
// same number of round trips per second; nodes that stopped publishing
// stop counting.
func TestPumpWindowGrowsWithNodes(t *testing.T) {
	e := &Redis{cfg: RedisConfig{BatchWindow: 2 * time.Millisecond}}
	p := &pump{e: e, peers: map[string]uint64{}}
	if w := p.window(); w != 2*time.Millisecond {
		t.Fatalf("alone: window %v, want 2ms", w)
	}
	ms := uint64(1_000_000)
	see := func(nodes int) {
		for i := range nodes {
			p.sawNode(fmt.Sprintf("node-%d", i), ID{Ms: ms})
		}
		ms += 200
		p.sawNode("node-0", ID{Ms: ms}) // triggers a recount
	}
	for _, tc := range []struct {
		others int
		want   time.Duration
	}{
		{1, 2 * time.Millisecond},
		{5, 6 * time.Millisecond},
		{40, 16 * time.Millisecond}, // capped at 8 windows
	} {
		p.peers = map[string]uint64{}
		see(tc.others)
		if w := p.window(); w != tc.want {
			t.Errorf("%d other nodes: window %v, want %v", tc.others, w, tc.want)
		}
	}
	// The others fall silent: after peerActive only node-0 counts.
	p.peers = map[string]uint64{}
	see(5)
	ms += peerActive + 1
	p.sawNode("node-0", ID{Ms: ms})
	if w := p.window(); w != 2*time.Millisecond {
		t.Fatalf("after the others went quiet: window %v, want 2ms", w)
	}
	p.e.cfg.BatchWindow = 0
	if w := p.window(); w != 0 {
		t.Fatalf("pacing disabled: window %v", w)
	}
}
