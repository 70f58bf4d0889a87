package main

import "github.com/chatgw/gateway/internal/fdlimit"

// raiseNoFile raises the RLIMIT_NOFILE soft limit to the hard limit and
// returns how many connections this process can then hold.
func raiseNoFile() (int, error) {
	cur, err := fdlimit.Raise()
	if err != nil {
		return 0, err
	}
	n := int64(cur) - fdlimit.Reserve // descriptors loadgen keeps for itself
	if cur > 1<<30 {
		n = 1 << 30
	}
	return int(max(n, 0)), nil
}
