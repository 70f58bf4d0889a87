package room

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/stream"
)

// chatOfSize returns a chat message of about size bytes, its "message" a
// string padded with text.
func chatOfSize(size int) []byte {
	const head, tail = `{"username": "ana", "message": "`, `"}`
	pad := max(0, size-len(head)-len(tail))
	p := append([]byte(head), bytes.Repeat([]byte("hola "), pad/5+1)[:pad]...)
	return append(p, tail...)
}

var sizes = []struct {
	name string
	n    int
}{{"64B", 64}, {"1KiB", 1 << 10}, {"16KiB", 16 << 10}}

func BenchmarkDecodeMessage(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			data := chatOfSize(sz.n)
			if _, _, err := decodeMessage(data); err != nil {
				b.Fatal(err.code)
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, _, err := decodeMessage(data); err != nil {
					b.Fatal(err.code)
				}
			}
		})
	}
	b.Run("nested", func(b *testing.B) {
		data := []byte(`{"username": {"name": "ana", "tags": ["a", "b"]}, "message": {"text": "hola", "n": [1, 2.5, -3e8, true, null]}, "x": 1}`)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, _, err := decodeMessage(data); err != nil {
				b.Fatal(err.code)
			}
		}
	})
}

func BenchmarkAppendOutbound(b *testing.B) {
	for _, sz := range append(sizes, struct {
		name string
		n    int
	}{"nested", 0}) {
		b.Run(sz.name, func(b *testing.B) {
			var data []byte
			if sz.n > 0 {
				data = chatOfSize(sz.n)
			} else {
				data = []byte(`{"username": {"name": "ana", "tags": ["a", "b"]}, "message": {"text": "hola", "n": [1, 2.5, -3e8, true, null]}}`)
			}
			user, msg, err := decodeMessage(data)
			if err != nil {
				b.Fatal(err.code)
			}
			buf := make([]byte, 0, len(data)+32)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				buf = appendOutbound(buf[:0], user, msg)
			}
		})
	}
}

// sink is a WebSocket client that reads everything it is sent into one
// buffer, without parsing or allocating, and tells its fanout when it has
// read the bytes it expects.
type sink struct {
	fo       *fanout
	nc       net.Conn
	r        io.Reader
	got      atomic.Int64 // bytes read
	want     atomic.Int64 // bytes expected by the end of the batch
	signaled atomic.Bool  // got reached want and pending was decremented
}

func (d *sink) run() {
	buf := make([]byte, 64<<10)
	for {
		n, err := d.r.Read(buf)
		if n > 0 {
			got := d.got.Add(int64(n))
			if got >= d.want.Load() && d.signaled.CompareAndSwap(false, true) && d.fo.pending.Add(-1) == 0 {
				d.fo.done <- nil
			}
		}
		if err != nil {
			select {
			case d.fo.done <- fmt.Errorf("member stopped reading after %d bytes: %w", d.got.Load(), err):
			default:
			}
			return
		}
	}
}

// fanout is a gateway node in a benchmark: a conn.Server on 127.0.0.1:0
// with a Hub on the Memory engine, and members real WebSocket clients in
// one room.
type fanout struct {
	srv     *conn.Server
	hub     *Hub
	engine  *stream.Memory
	members []*sink
	pending atomic.Int64 // members still reading the batch
	done    chan error   // nil when the batch is read, or a read error
	timer   *time.Timer  // bounds wait; reused, as time.After allocates
}

const benchRoom = "bench"

func startFanout(b *testing.B, members int) *fanout {
	b.Helper()
	logger := testutil.DiscardLogger()
	hub, err := NewHub(Config{}, logger)
	if err != nil {
		b.Fatal(err)
	}
	engine := stream.NewMemory(hub.Deliver)
	hub.SetEngine(engine)
	// A queue far over what the benchmark sends, so a loop that falls
	// behind shows as time, not as slow-consumer closes; no pings; all
	// members come from 127.0.0.1, so no per-address cap.
	srv, err := conn.NewServer(conn.Config{MaxQueueBytes: 1 << 30, PingInterval: time.Hour, PongTimeout: time.Hour, MaxConnectionsPerIP: -1}, hub, logger)
	if err != nil {
		b.Fatal(err)
	}
	fo := &fanout{srv: srv, hub: hub, engine: engine, done: make(chan error, 1), timer: time.NewTimer(time.Hour)}
	fo.timer.Stop()
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	url := "ws://" + srv.Addr().String() + PathPrefix + benchRoom + "/"
	for range members {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
		nc, br, _, err := ws.Dial(ctx, url)
		cancel()
		if err != nil {
			fo.stop()
			b.Fatalf("dial member %d: %v", len(fo.members), err)
		}
		d := &sink{fo: fo, nc: nc, r: nc}
		if br != nil {
			d.r = br
		}
		d.signaled.Store(true) // no batch yet
		fo.members = append(fo.members, d)
		go d.run()
	}
	return fo
}

// expect starts a batch: every member must read n more bytes.
func (fo *fanout) expect(n int64) {
	fo.pending.Store(int64(len(fo.members)))
	for _, d := range fo.members {
		d.want.Add(n)
		d.signaled.Store(false)
	}
}

// wait returns once every member has read the batch.
func (fo *fanout) wait(b *testing.B) {
	fo.timer.Reset(time.Minute)
	defer fo.timer.Stop()
	select {
	case err := <-fo.done:
		if err != nil {
			b.Fatal(err)
		}
	case <-fo.timer.C:
		b.Fatalf("%d members did not read the batch in a minute", fo.pending.Load())
	}
}

func (fo *fanout) stop() {
	for _, d := range fo.members {
		d.nc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	_ = fo.srv.Shutdown(ctx)
	_ = fo.engine.Close(ctx)
}

// BenchmarkDeliver measures Hub.Deliver, the fan-out of one message to
// every member of a room, with members on real loopback WebSocket
// connections; the time includes writing the frames and the clients
// reading them.
//
// burst: b.N messages back to back, then the benchmark waits until every
// member has read them all before it stops the timer (as centrifuge's
// hub_broadcast_bench_test.go does). The queues grow while the loops catch
// up, so frames and queues in flight come from the allocator, not the
// pools.
//
// paced: one message at a time, each read by every member before the
// next: the steady state of a room that is not overloaded.
func BenchmarkDeliver(b *testing.B) {
	payload := []byte(`{"username":"ana","message":"hola, ¿qué tal? a message of about 64 B"}`)
	frameLen := int64(len(payload) + 2)
	m := stream.Message{ID: stream.ID{Ms: 1}, Sender: 1, Payload: payload} // no member has ID 1
	for _, members := range []int{10, 100, 1000} {
		var fo *fanout
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			fo = startFanout(b, members)
			b.Run("burst", func(b *testing.B) {
				fo.expect(int64(b.N) * frameLen)
				b.SetBytes(int64(len(payload)))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					m.ID.Seq++ // entries of a room have increasing IDs
					fo.hub.Deliver(benchRoom, m)
				}
				fo.wait(b)
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/frame")
			})
			b.Run("paced", func(b *testing.B) {
				b.SetBytes(int64(len(payload)))
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					fo.expect(frameLen)
					m.ID.Seq++
					fo.hub.Deliver(benchRoom, m)
					fo.wait(b)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*members), "ns/frame")
			})
		})
		if fo != nil {
			fo.stop()
		}
	}
}
