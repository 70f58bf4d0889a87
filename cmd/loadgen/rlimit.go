package main

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// fdReserve is how many descriptors loadgen keeps for itself (stdio, /proc
// reads, the runtime's epoll and timers) beyond one per connection.
const fdReserve = 64

// raiseNoFile raises the RLIMIT_NOFILE soft limit to the hard limit and
// returns how many connections this process can then hold.
func raiseNoFile() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise RLIMIT_NOFILE soft limit to %d: %w", lim.Max, err)
		}
	}
	n := int64(lim.Cur) - fdReserve
	if lim.Cur > 1<<30 {
		n = 1 << 30
	}
	return int(max(n, 0)), nil
}
