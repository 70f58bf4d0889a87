package backoff

import (
	"testing"
	"time"
)

func TestWaitDoublesUpToMax(t *testing.T) {
	p := Policy{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	for n, want := range map[int]time.Duration{
		-1: 0, 0: 0, 1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond,
		4: 80 * time.Millisecond, 5: 100 * time.Millisecond, 60: 100 * time.Millisecond, 1 << 20: 100 * time.Millisecond,
	} {
		if got := p.Wait(n); got != want {
			t.Errorf("Wait(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestJitterStaysInTheUpperHalf(t *testing.T) {
	p := Policy{Min: 8 * time.Millisecond, Max: time.Second, Jitter: true}
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := p.Wait(3) // 32ms without jitter
		if d < 16*time.Millisecond || d > 32*time.Millisecond {
			t.Fatalf("Wait(3) with jitter = %v, want within [16ms, 32ms]", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("Wait(3) with jitter took %d distinct values in 1000 calls: not random", len(seen))
	}
}

func TestZeroPolicyWaitsNothing(t *testing.T) {
	if d := (Policy{}).Wait(5); d != 0 {
		t.Fatalf("zero Policy waits %v, want 0", d)
	}
}
