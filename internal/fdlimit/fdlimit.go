// Package fdlimit holds what the gateway and loadgen share about open-file
// limits: the descriptors a process keeps for itself beside one per
// connection, and raising the soft limit to the hard one.
package fdlimit

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Reserve is how many descriptors a process keeps for itself beyond one
// per connection: the listener, epoll and eventfds, a spare descriptor,
// Redis, logs, stdio, /proc reads and the runtime's own.
const Reserve = 64

// Raise raises the soft RLIMIT_NOFILE to the hard limit and returns the
// soft limit in force then: roughly the most connections one process can
// hold, one descriptor each, plus Reserve.
func Raise() (uint64, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
			return 0, fmt.Errorf("raise the RLIMIT_NOFILE soft limit to its hard limit %d: %w", rl.Max, err)
		}
	}
	return rl.Cur, nil
}
