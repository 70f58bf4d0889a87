package fdlimit

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestRaise: the soft limit is the hard one afterwards, and Raise says so.
func TestRaise(t *testing.T) {
	got, err := Raise()
	if err != nil {
		t.Fatal(err)
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if got != rl.Cur || rl.Cur != rl.Max {
		t.Fatalf("Raise returned %d; the soft limit is %d, the hard one %d: want all three equal", got, rl.Cur, rl.Max)
	}
}
