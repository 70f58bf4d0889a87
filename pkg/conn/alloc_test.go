package conn

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The steady-state read, decode and write paths allocate nothing
// (bench_test.go measures them; these guards run in every `go test`).
// Each test plays the loop's part on a loop that does not run, with
// connections on socket pairs.

// testLoop returns a loop of a server with handler h that does not run,
// and n open connections on it, each with the peer end of its socket.
func testLoop(t *testing.T, h Handler, n int) (*loop, []*Conn, []int) {
	t.Helper()
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items: allocation counts are meaningless")
	}
	s := newTestServer(t, Config{FrameRate: 1e9, FrameBurst: 1e9}, h)
	l, err := newLoop(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.poll.close(); unix.Close(l.efd) })
	var conns []*Conn
	var peers []int
	for range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
		c := &Conn{fd: fds[0], loop: l, state: stateOpen, ready: true, slot: -1}
		c.rd.lim = &l.readLim
		conns = append(conns, c)
		peers = append(peers, fds[1])
	}
	return l, conns, peers
}

// flushAll does what the loop does at the end of a round: write the
// queues of the connections that asked for it.
func flushAll(l *loop) {
	l.mu.Lock()
	flushes := l.flushes
	l.flushes = l.flushSpare[:0]
	l.flushSpare = flushes
	l.mu.Unlock()
	flush(flushes)
}

// readPeers reads what the connections wrote, into one buffer.
func readPeers(t *testing.T, peers []int, buf []byte) {
	for _, fd := range peers {
		for {
			n, err := rawRead(fd, buf)
			if err != nil || n < len(buf) {
				break
			}
		}
	}
}

func TestFrameReadAllocs(t *testing.T) {
	h := &countHandler{recorder: newRecorder()}
	l, conns, _ := testLoop(t, h, 1)
	c := conns[0]
	for _, tc := range []struct {
		name  string
		size  int
		split int // 0: one read
	}{
		{"small", 64, 0},
		{"small split in two", 64, 33},
		{"16 KiB", 16 << 10, 0},
		{"16 KiB in 4 KiB reads", 16 << 10, 4 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			input := zeroMaskFrame(chatPayload(tc.size)) // unmasked in place, unchanged
			chunk := tc.split
			if chunk == 0 {
				chunk = len(input)
			}
			before := h.n
			allocs := testing.AllocsPerRun(100, func() {
				for off := 0; off < len(input); off += chunk {
					l.frames(c, input[off:min(off+chunk, len(input))])
				}
			})
			if allocs != 0 || h.n-before != 101 || c.state != stateOpen {
				t.Fatalf("%v allocations per message, %d messages, state %v; want 0, 101, open", allocs, h.n-before, c.state)
			}
		})
	}
}

func TestSendFlushAllocs(t *testing.T) {
	l, conns, peers := testLoop(t, newRecorder(), 1)
	c := conns[0]
	payload := chatPayload(64)
	buf := make([]byte, 64<<10)
	allocs := testing.AllocsPerRun(100, func() {
		f := NewTextFrame(payload)
		c.Send(f)
		c.Send(pingFrame)
		f.Release()
		flushAll(l)
		readPeers(t, peers, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per Send and flush, want 0", allocs)
	}
}

func TestFanOutAllocs(t *testing.T) {
	l, conns, peers := testLoop(t, newRecorder(), 100)
	payload := chatPayload(200)
	buf := make([]byte, 64<<10)
	allocs := testing.AllocsPerRun(50, func() {
		f := NewTextFrame(payload)
		for _, c := range conns {
			c.Send(f)
		}
		f.Release()
		flushAll(l)
		readPeers(t, peers, buf)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per fan-out to %d connections, want 0", allocs, len(conns))
	}
}

// TestConnSize guards what an idle connection costs: its Conn must fit the
// runtime's 208-byte size class (the next ones up are 224 and 240 bytes,
// 8 and 15 % more per connection). Reorder or shrink fields, or move
// state that only some connections need behind a pointer (closer), rather
// than grow past it.
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(Conn{}); n > 208 {
		t.Fatalf("Conn is %d bytes, over the 208-byte size class", n)
	}
}
