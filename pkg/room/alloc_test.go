package room

import (
	"testing"
	"time"
)

// TestHotPathAllocs guards the per-message work of the room layer: the
// decode of a chat message, the encode of what members receive and the
// rate limiter take no allocation. (The frame and fan-out side is guarded
// in pkg/conn.) make test runs this without the race detector too.
func TestHotPathAllocs(t *testing.T) {
	data := chatOfSize(200)
	buf := make([]byte, 0, 512)
	p := newRateParams(Config{}.Defaulted())
	now := time.Now().UnixNano()
	l := p.start(now, false)
	for name, f := range map[string]func(){
		"decode": func() {
			if _, _, err := decodeMessage(data); err != nil {
				t.Fatal(err.code)
			}
		},
		"encode": func() {
			user, msg, _ := decodeMessage(data)
			buf = appendOutbound(buf[:0], user, msg)
		},
		"rate limit": func() {
			now += int64(time.Second) // always within the rate
			l.take(now, &p)
		},
	} {
		if a := testing.AllocsPerRun(200, f); a != 0 {
			t.Errorf("%s: %.1f allocations per message, want 0", name, a)
		}
	}
}
