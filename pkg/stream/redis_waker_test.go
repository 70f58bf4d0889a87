package stream

import (
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestWakerLosesNoWake: many goroutines queue work and wake one consumer
// that sleeps whenever it finds none, with a limit far beyond the test's:
// a lost wake-up would leave work queued while it sleeps.
func TestWakerLosesNoWake(t *testing.T) {
	w, err := newWaker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	const producers, each = 8, 2000
	work := make(chan int, producers*each)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				work <- p*each + i
				w.wake()
				if i%64 == 0 {
					time.Sleep(50 * time.Microsecond) // let the consumer fall asleep now and then
				}
			}
		}()
	}
	done := make(chan int)
	go func() {
		got := 0
		for got < producers*each {
			select {
			case <-work:
				got++
				continue
			default:
			}
			w.sleep(time.Now().Add(time.Hour))
		}
		done <- got
	}()
	select {
	case got := <-done:
		if got != producers*each {
			t.Fatalf("consumed %d, want %d", got, producers*each)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("the consumer sleeps with work queued: a wake-up was lost")
	}
	wg.Wait()
}

// TestWakerSleepAndPause: sleep ends at its limit without a wake, and at
// once after one; pause is not ended by wakes, only by its time or by
// interrupt.
func TestWakerSleepAndPause(t *testing.T) {
	w, err := newWaker()
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()

	start := time.Now()
	w.sleep(start.Add(30 * time.Millisecond))
	if time.Since(start) >= testutil.Timeout {
		t.Fatal("sleep outlived its limit")
	}

	w.wake()
	done := make(chan struct{})
	go func() { w.sleep(time.Now().Add(time.Hour)); close(done) }()
	select {
	case <-done:
	case <-time.After(testutil.Timeout):
		t.Fatal("sleep did not return after a wake")
	}

	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	paused := make(chan struct{})
	go func() { w.pause(time.Now().Add(time.Hour), stopped); close(paused) }()
	for range 10 {
		w.wake()
		time.Sleep(time.Millisecond)
	}
	select {
	case <-paused:
		t.Fatal("a wake ended a pause")
	default:
	}
	close(stop)
	w.interrupt()
	select {
	case <-paused:
	case <-time.After(testutil.Timeout):
		t.Fatal("interrupt did not end the pause")
	}
}
