package conn

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/gobwas/ws"
)

// zeroMaskFrame encodes a client text frame masked with the key 0: feed
// unmasks in place, and with this key the input is the same after each
// iteration, so a benchmark can feed it again without copying it.
func zeroMaskFrame(payload []byte) []byte {
	b := []byte{bText}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, payload...)
}

func chatPayload(size int) []byte {
	p := []byte(`{"username":"ana","message":"`)
	p = append(p, bytes.Repeat([]byte("x"), max(0, size-len(p)-2))...)
	return append(p, `"}`...)
}

// BenchmarkFrameReaderFeed measures parsing one text message: delivered
// in one read, or split as partial epoll reads deliver it (in two for the
// small message, in 4 KiB reads for the large one).
func BenchmarkFrameReaderFeed(b *testing.B) {
	for _, tc := range []struct {
		name  string
		size  int
		chunk int // 0: one piece
	}{
		{"small/one-piece", 64, 0},
		{"small/split", 64, 33},
		{"16KiB/one-piece", 16 << 10, 0},
		{"16KiB/split-4KiB", 16 << 10, 4 << 10},
	} {
		b.Run(tc.name, func(b *testing.B) {
			input := zeroMaskFrame(chatPayload(tc.size))
			chunk := tc.chunk
			if chunk == 0 {
				chunk = len(input)
			}
			r := &frameReader{lim: &readLimits{max: 64 << 10}}
			defer r.reset()
			n := 0
			emit := func(op ws.OpCode, p []byte) readResult {
				n += len(p)
				return readOn
			}
			b.SetBytes(int64(len(input)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				for off := 0; off < len(input); off += chunk {
					if _, err := r.feed(input[off:min(off+chunk, len(input))], emit); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			if n != b.N*(len(input)-6-headerExtra(len(input)-6)) {
				b.Fatalf("emitted %d bytes for %d messages", n, b.N)
			}
		})
	}
}

// headerExtra is the size of the extended length field for a payload of n.
func headerExtra(n int) int {
	switch {
	case n < 126:
		return 0
	case n <= 0xffff:
		return 2
	}
	return 8
}

// BenchmarkNewTextFrame measures encoding a server frame from the pool.
func BenchmarkNewTextFrame(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			payload := chatPayload(size)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				f := NewTextFrame(payload)
				f.Release()
			}
		})
	}
}
