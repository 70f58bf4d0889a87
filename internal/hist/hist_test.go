package hist

import (
	"sync"
	"testing"
	"time"
)

func TestObserveBuckets(t *testing.T) {
	var h Histogram
	h.Observe(50 * time.Microsecond)  // first bucket
	h.Observe(100 * time.Microsecond) // on the bound: still the first
	h.Observe(3 * time.Millisecond)   // (2.5 ms, 5 ms]
	h.Observe(time.Minute)            // above every bound
	s := h.Snapshot()
	if s.Counts[0] != 2 || s.Counts[5] != 1 || s.Counts[len(Bounds)] != 1 || s.Count() != 4 {
		t.Fatalf("counts %v; want 2 in the first bucket, 1 in (2.5ms,5ms], 1 in the last", s.Counts)
	}
	if want := 50*time.Microsecond + 100*time.Microsecond + 3*time.Millisecond + time.Minute; s.Sum != want {
		t.Errorf("sum %v, want %v", s.Sum, want)
	}
	if q := s.Quantile(0.5); q != 100*time.Microsecond {
		t.Errorf("median %v, want 100µs", q)
	}
	if q := s.Quantile(1); q != Bounds[len(Bounds)-1] {
		t.Errorf("max %v, want the largest bound", q)
	}
	if q := (Snapshot{}).Quantile(0.99); q != 0 {
		t.Errorf("empty quantile %v, want 0", q)
	}
}

func TestObserveConcurrentAndAllocationFree(t *testing.T) {
	var h Histogram
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				h.Observe(time.Duration(i) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	if n := h.Snapshot().Count(); n != 4000 {
		t.Fatalf("count %d, want 4000", n)
	}
	if a := testing.AllocsPerRun(100, func() { h.Observe(time.Millisecond) }); a != 0 {
		t.Errorf("Observe allocates %.0f times; want 0", a)
	}
}
