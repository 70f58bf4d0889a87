package validate

import (
	"strconv"
	"strings"
	"testing"
)

// maxmemoryShare is the largest part of a container's memory limit that
// Redis's maxmemory may take: the rest is for the copy-on-write pages of
// an AOF rewrite, client buffers and fragmentation (see the comments in
// deploy/).
const maxmemoryShare = 0.75

// checkMaxmemory checks a redis-server command line: --maxmemory set and
// at most maxmemoryShare of limit bytes, and --maxmemory-policy
// noeviction.
func checkMaxmemory(t *testing.T, where string, argv []string, limit int64) {
	t.Helper()
	opt := map[string]string{}
	for i := 0; i+1 < len(argv); i++ {
		if strings.HasPrefix(argv[i], "--") {
			opt[argv[i][2:]] = argv[i+1]
		}
	}
	if p := opt["maxmemory-policy"]; p != "noeviction" {
		t.Errorf("%s: --maxmemory-policy is %q; want noeviction (a full Redis refuses writes rather than dropping messages)", where, p)
	}
	mm, err := redisBytes(opt["maxmemory"])
	switch {
	case err != nil:
		t.Errorf("%s: --maxmemory %q: %v; set it, e.g. --maxmemory 600mb", where, opt["maxmemory"], err)
	case limit <= 0:
		t.Errorf("%s: the Redis container has no memory limit; set one above --maxmemory", where)
	case float64(mm) > maxmemoryShare*float64(limit):
		t.Errorf("%s: --maxmemory %s (%d bytes) is over %.0f %% of the container's memory limit (%d bytes); lower it or raise the limit",
			where, opt["maxmemory"], mm, 100*maxmemoryShare, limit)
	}
}

// redisBytes parses a Redis memory size: a number with an optional unit,
// k/m/g (powers of 1000) or kb/mb/gb (powers of 1024), as redis.conf
// reads them.
func redisBytes(s string) (int64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"b", 1}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, strconv.ErrSyntax
	}
	return n * mult, nil
}

func TestRedisBytes(t *testing.T) {
	for in, want := range map[string]int64{"600mb": 600 << 20, "1gb": 1 << 30, "1g": 1e9, "100": 100, "64KB": 64 << 10} {
		if got, err := redisBytes(in); err != nil || got != want {
			t.Errorf("redisBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "lots", "-1mb", "0"} {
		if _, err := redisBytes(bad); err == nil {
			t.Errorf("redisBytes(%q) accepted", bad)
		}
	}
}
