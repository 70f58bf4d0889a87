package conn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

// floodHandler counts the message bytes of connections whose path is
// /ws/flood, and reports each message of the others with the flood count
// at that moment.
type floodHandler struct {
	*recorder
	flooded atomic.Int64
	seen    chan int64
}

func (h *floodHandler) OnMessage(c *Conn, msg []byte) time.Duration {
	if c.Key() == "/ws/flood" {
		h.flooded.Add(int64(len(msg)))
		return 0
	}
	h.seen <- h.flooded.Load()
	return 0
}

// flood writes buf to nc again and again until a write fails; done is
// closed then.
func flood(nc net.Conn, first, buf []byte) (done chan struct{}) {
	done = make(chan struct{})
	go func() {
		defer close(done)
		if _, err := nc.Write(first); err != nil {
			return
		}
		for {
			if _, err := nc.Write(buf); err != nil {
				return
			}
		}
	}()
	return done
}

// TestReadFairness: a client that floods its socket with valid messages
// is read at most readsPerWake buffers per round, so a message from
// another client on the same loop is served within a few rounds of the
// flood: at most 3×readsPerWake buffers of flood (plus the message in
// progress) are read between the moment it is sent and its delivery,
// however loaded the machine is. Without the limit the flooder was often
// read until its socket was empty, megabytes (TestReadBudgetPerRound
// checks the limit itself). Pings are answered meanwhile.
func TestReadFairness(t *testing.T) {
	h := &floodHandler{recorder: newRecorder(), seen: make(chan int64, 1)}
	s := startServer(t, Config{EventLoops: 1, FrameRate: -1}, h)
	flooder, _, resp, _ := send(t, s, "", upgradeRequest("/ws/flood"))
	if resp.StatusCode != 101 {
		t.Fatalf("flooder upgrade: %d", resp.StatusCode)
	}
	msg := frame(bText, bytes.Repeat([]byte("f"), 60<<10))
	done := flood(flooder, nil, bytes.Repeat(msg, 16))
	defer func() { flooder.Close(); <-done }()
	testutil.Eventually(t, "the flood to be read", func() bool { return h.flooded.Load() > 8*readBufferSize })

	other, br := upgrade(t, s, "")
	// Two rounds, and one more for a message that reaches the server's
	// socket after write returns (softirq), plus the flood message in
	// progress.
	bound := int64(3*readsPerWake*readBufferSize + 60<<10)
	var worst int64
	for i := range 20 {
		before := h.flooded.Load()
		if _, err := other.Write(frame(bText, []byte("m"))); err != nil {
			t.Fatal(err)
		}
		var at int64
		select {
		case at = <-h.seen:
		case <-time.After(testutil.Timeout):
			t.Fatalf("message %d never delivered during the flood", i)
		}
		worst = max(worst, at-before)
		ping(t, other, br, fmt.Sprint(i))
	}
	if worst > bound {
		t.Fatalf("%d flood bytes were read before another client's message; want at most %d (three rounds)", worst, bound)
	}
	t.Logf("at most %d KiB of flood read before the other client's message (bound %d KiB)", worst>>10, bound>>10)
}

// countHandler counts the messages it is given.
type countHandler struct {
	*recorder
	n int
}

func (h *countHandler) OnMessage(*Conn, []byte) time.Duration { h.n++; return 0 }

// TestReadBudgetPerRound: in one round a socket is read at most
// readsPerWake times, however often it shows up (an epoll event, another
// one, the again list), and it is in the again list once. The loop here
// does not run: the test plays its rounds, with an 80-byte read buffer
// holding 4 messages.
func TestReadBudgetPerRound(t *testing.T) {
	h := &countHandler{recorder: newRecorder()}
	s := newTestServer(t, Config{FrameRate: -1}, h)
	l, err := newLoop(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.poll.close(); unix.Close(l.efd) })
	l.buf = make([]byte, 80)
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	c := &Conn{fd: fds[0], loop: l, state: stateOpen, ready: true, slot: -1}
	c.rd.lim = &readLimits{max: 1 << 10}
	msg := frame(bText, []byte("0123456789abcd")) // 20 bytes
	if _, err := unix.Write(fds[1], bytes.Repeat(msg, 200)); err != nil {
		t.Fatal(err)
	}
	perRound := readsPerWake * len(l.buf) / len(msg)
	for round := 1; round <= 5; round++ {
		before := h.n
		again := l.startRound()
		l.read(c) // epoll reports c
		l.read(c) // and again in the same round
		l.readAgain(again)
		l.read(c)
		if got := h.n - before; got != perRound {
			t.Fatalf("round %d: %d messages read, want %d (%d reads of %d bytes)", round, got, perRound, readsPerWake, len(l.buf))
		}
		if len(l.again) != 1 || !c.inAgain {
			t.Fatalf("round %d: again list of %d, want c once", round, len(l.again))
		}
	}
}

// seqPayload is the payload of frame i of TestPartialWrites: its index,
// then bytes derived from it, size bytes in all.
func seqPayload(i, size int) []byte {
	p := make([]byte, size)
	binary.BigEndian.PutUint32(p, uint32(i))
	for j := 4; j < size; j++ {
		p[j] = byte('a' + (i+j)%26)
	}
	return p
}

// TestPartialWrites: a client that stops reading makes writev stop in the
// middle of a frame (EAGAIN); the rest of that frame and the frames queued
// behind it go out on EPOLLOUT once the client reads again, every byte in
// order, and every frame is released.
func TestPartialWrites(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxQueueBytes: 16 << 20}, rec)
	nc := dialFrom(t, s, "", 4096) // a small receive buffer: the kernel holds little
	if _, err := nc.Write(upgradeRequest("/ws/a")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	if resp, _ := readResponse(t, br); resp.StatusCode != 101 {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	c := <-rec.opened
	midFrame := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.outOff > 0 && len(c.out.frames) > 1
	}
	var frames []*Frame
	size := func(i int) int { return 1000 + i*7919%3000 }
	for i := 0; !midFrame(); i++ {
		if i == 4000 {
			t.Fatal("8 MB queued and writev never stopped in the middle of a frame")
		}
		f := NewTextFrame(seqPayload(i, size(i)))
		c.Send(f)
		frames = append(frames, f)
		if i%100 == 99 {
			testutil.Eventually(t, "the loop to write what it can", func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.out == nil || c.outOff > 0 || len(c.out.frames) > 50
			})
		}
	}
	t.Logf("writev stopped mid-frame with %d frames sent", len(frames))
	// The client catches up.
	for i := range frames {
		f := readFrame(t, nc, br)
		if want := seqPayload(i, size(i)); f.Header.OpCode != ws.OpText || !f.Header.Fin || !bytes.Equal(f.Payload, want) {
			t.Fatalf("frame %d of %d: %v fin=%v %d bytes (index %d); want text %d bytes", i, len(frames),
				f.Header.OpCode, f.Header.Fin, len(f.Payload), binary.BigEndian.Uint32(append(f.Payload, 0, 0, 0, 0)), len(want))
		}
	}
	testutil.Eventually(t, "the queue to empty", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.out == nil && c.outBytes == 0
	})
	for i, f := range frames {
		if got := f.refs.Load(); got != 1 {
			t.Fatalf("frame %d has %d references after it was written, want 1 (ours)", i, got)
		}
		f.Release()
	}
}

// pacedReader reads at most 1 KiB a millisecond: a client that reads,
// slowly.
type pacedReader struct {
	r    net.Conn
	tick *time.Ticker
}

func (p pacedReader) Read(b []byte) (int, error) {
	<-p.tick.C
	return p.r.Read(b[:min(len(b), 1<<10)])
}

// TestSlowReaderGetsCloseFrame is the attack "a reader that reads
// slowly": it falls behind until its queue overflows and it is closed as
// a slow consumer, with the kernel's buffers full and a large frame half
// written. It still reads every frame whole, then the 1008 close frame,
// then EOF, although getting there takes longer than CLOSE_TIMEOUT: the
// wait is extended while it reads. (The socket used to be closed at
// CLOSE_TIMEOUT with the frame in flight cut.)
func TestSlowReaderGetsCloseFrame(t *testing.T) {
	rec := newRecorder()
	const closeTimeout, size = 20 * time.Millisecond, 30000
	s := startServer(t, Config{MaxMessageBytes: 32 << 10, MaxQueueBytes: 64 << 10, CloseTimeout: closeTimeout}, rec)
	nc := dialFrom(t, s, "", 4096)
	if _, err := nc.Write(upgradeRequest("/ws/a")); err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(time.Millisecond) // the slow reader's pace
	defer tick.Stop()
	br := bufio.NewReader(pacedReader{nc, tick})
	if resp, _ := readResponse(t, br); resp.StatusCode != 101 {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	c := <-rec.opened
	// Fix the server's send buffer (no autotuning to megabytes): the
	// kernel then holds about 140 KB for this client.
	if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10); err != nil {
		t.Fatal(err)
	}
	// The client reads from now on, checking each frame.
	type result struct {
		frames int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		last, frames := -1, 0
		for {
			f, err := ws.ReadFrame(br)
			if err != nil {
				done <- result{frames, fmt.Errorf("after %d frames: %w", frames, err)}
				return
			}
			if f.Header.OpCode == ws.OpClose {
				code, reason := ws.ParseCloseFrameData(f.Payload)
				if code != ws.StatusPolicyViolation || !strings.Contains(reason, "slow consumer") {
					err = fmt.Errorf("close %d %q; want 1008 slow consumer", code, reason)
				} else if _, rerr := br.ReadByte(); rerr == nil {
					err = fmt.Errorf("data after the close frame")
				}
				done <- result{frames, err}
				return
			}
			i := int(binary.BigEndian.Uint32(f.Payload))
			if f.Header.OpCode != ws.OpText || len(f.Payload) != size || i <= last || !bytes.Equal(f.Payload, seqPayload(i, size)) {
				done <- result{frames, fmt.Errorf("frame %d after %d is broken: %v, %d bytes", i, last, f.Header.OpCode, len(f.Payload))}
				return
			}
			last = i
			frames++
		}
	}()
	// The server sends what the client's pace lets through until the
	// kernel's buffers are full and writev stops in the middle of a frame;
	// then it goes on until the queue overflows.
	state := func() (closing, blocked, low bool) {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.closing, c.outOff > 0, c.outBytes < size
	}
	sent := 0
	for full := false; ; sent++ {
		closing, blocked, _ := state()
		if closing {
			break
		}
		full = full || blocked
		f := NewTextFrame(seqPayload(sent, size))
		c.Send(f)
		f.Release()
		if !full {
			testutil.Eventually(t, "the queue to empty or block", func() bool { closing, blocked, low := state(); return closing || blocked || low })
		}
	}
	c.mu.Lock()
	inFlight := c.outBytes
	c.mu.Unlock()
	closedAt := time.Now()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("%d of %d frames read whole (%d bytes of the last in flight at the close), then the close frame %v after the close (CLOSE_TIMEOUT %v)",
		r.frames, sent, inFlight, time.Since(closedAt), closeTimeout)
}

// TestFrameFlood is the attack "a flood of empty continuation frames": a
// flooder is read no faster than FRAME_RATE after FRAME_BURST frames (its
// reads pause; TCP slows it down), it is not closed, and another client's
// ping time on the same loop, measured alternately without and during a
// flood, is not made much worse: the median of the ratios stays under 20
// (a ratio, as times vary with the machine; the flood used to keep a core
// busy for seconds and raise other rooms' p99 a thousandfold).
func TestFrameFlood(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{EventLoops: 1, FrameRate: 100, FrameBurst: 200, CloseTimeout: 100 * time.Millisecond}, rec)
	other, br := upgrade(t, s, "")
	// 11 000 empty frames (64 KiB), 55 times the burst.
	flood := cat(frame(bFragText, []byte("a")), bytes.Repeat(frame(bCont, nil), 11_000))
	const rounds = 21
	ratios := make([]float64, rounds)
	for i := range rounds {
		quiet := ping(t, other, br, fmt.Sprint("q", i))
		fl, _ := upgrade(t, s, "")
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = fl.Write(flood) // blocks while the server reads slowly; fails once fl is closed
		}()
		flooded := ping(t, other, br, fmt.Sprint("f", i))
		ratios[i] = float64(flooded) / float64(quiet)
		fl.Close()
		<-done
	}
	st := s.Stats()
	if st.Limited != 0 || st.Paused == 0 {
		t.Fatalf("stats %+v; want the flooders paused, none closed by a limit", st)
	}
	slices.Sort(ratios)
	t.Logf("ping time during a flood / without: median %.1f, range %.1f to %.1f; %d pauses", ratios[rounds/2], ratios[0], ratios[rounds-1], st.Paused)
	if r := ratios[rounds/2]; r > 20 {
		t.Fatalf("a flood made another client's pings %.0f times slower (median of %d pairs)", r, rounds)
	}
}

// TestFragmentTimeout: a message left unfinished is closed with 1008 at
// FRAGMENT_TIMEOUT, although the client keeps the connection busy with
// pings; so is a frame whose bytes stop coming.
func TestFragmentTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start []byte
	}{
		{"fragmented message", frame(bFragText, []byte("{\"mess"))},
		{"frame split across reads", frame(bText, []byte("{\"message\": 1}"))[:8]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			s := startServer(t, Config{FragmentTimeout: 200 * time.Millisecond, CloseTimeout: 100 * time.Millisecond, FrameRate: -1}, rec)
			nc, br := upgrade(t, s, "")
			if _, err := nc.Write(tc.start); err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, "the unfinished message to be held", func() bool { return s.Stats().PartialBytes > 0 })
			if tc.name == "fragmented message" {
				// Pings and empty continuations, one of each a millisecond,
				// do not extend the time.
				tick := time.NewTicker(time.Millisecond) // the client's pace
				defer tick.Stop()
				for i := 0; s.Stats().TimedOut == 0; i++ {
					if _, err := nc.Write(cat(frame(bCont, nil), frame(bPing, []byte("p")))); err != nil {
						break
					}
					if i == 100_000 {
						t.Fatal("the message is still held")
					}
					<-tick.C
				}
			}
			expectClose(t, nc, br, ws.StatusPolicyViolation, "FRAGMENT_TIMEOUT")
			testutil.Eventually(t, "the connection to be released", func() bool { st := s.Stats(); return st.Open == 0 && st.PartialBytes == 0 })
			if st := s.Stats(); st.TimedOut != 1 {
				t.Fatalf("stats %+v; want one timeout", st)
			}
		})
	}
}

// rawUpgrade opens a WebSocket with raw system calls and returns its
// descriptor: a client that costs the test process no heap, so that heap
// growth is the server's.
func rawUpgrade(t *testing.T, s *Server) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// The runtime's signals interrupt blocking calls: retry on EINTR.
	ap := s.Addr().(*net.TCPAddr).AddrPort()
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
	for err == unix.EINTR || err == unix.EALREADY {
		_, err = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, int(testutil.Timeout/time.Millisecond))
		if err == nil {
			var soErr int
			if soErr, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && soErr != 0 {
				err = unix.Errno(soErr)
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: int64(testutil.Timeout / time.Second)})
	if _, err := unix.Write(fd, upgradeRequest("/ws/a")); err != nil {
		t.Fatal(err)
	}
	var buf [512]byte
	n := 0
	for !bytes.Contains(buf[:n], crlfcrlf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || m == 0 {
			t.Fatalf("reading the 101: %v", err)
		}
		n += m
	}
	if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 101 ")) {
		t.Fatalf("answer %q", buf[:n])
	}
	return fd
}

// TestUnfinishedMessagesMemory is the attack "many connections each
// holding an unfinished fragmented message", scaled down to 500: each
// holds one small buffer (512 B in Stats.PartialBytes) and the server's
// heap grows by a few KiB per connection, the connection included (it was
// 58 KB when fragments took buffers from a pool that large messages had
// grown).
func TestUnfinishedMessagesMemory(t *testing.T) {
	const n = 500
	s := startServer(t, Config{MaxConnectionsPerIP: -1}, newRecorder())
	// Grow the pools of large buffers first, as big messages do.
	warm, _ := upgrade(t, s, "")
	for range 20 {
		big := frame(bText, bytes.Repeat([]byte("w"), 60<<10))
		if _, err := warm.Write(cat(big[:30<<10], big[30<<10:])); err != nil {
			t.Fatal(err)
		}
	}
	warm.Close()
	testutil.Eventually(t, "the warm-up connection to go", func() bool { return s.Stats().Open == 0 })
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fds := make([]int, n)
	for i := range fds {
		fds[i] = rawUpgrade(t, s)
		if _, err := unix.Write(fds[i], frame(bFragText, []byte("{"))); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, "every connection to hold its fragment", func() bool { return s.Stats().PartialBytes == n*minBuffer })
	runtime.GC()
	runtime.ReadMemStats(&after)
	perConn := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("heap %+d bytes per connection, %d B held for its fragment", perConn, s.Stats().PartialBytes/n)
	if perConn > 4<<10 {
		t.Fatalf("the heap grew %d bytes per connection holding a 1-byte fragment; want at most 4 KiB", perConn)
	}
}

// TestPartialBytesCap: past MAX_PARTIAL_BYTES, all connections together,
// a connection that would hold more is closed with 1013; the others keep
// their messages, and the bytes are given back when connections go.
func TestPartialBytesCap(t *testing.T) {
	const maxMsg = 1024
	limit := maxPartialPerConn(maxMsg) // room for 6 connections holding 512 B
	s := startServer(t, Config{MaxMessageBytes: maxMsg, MaxQueueBytes: 2 * maxMsg, MaxPartialBytes: limit, CloseTimeout: 100 * time.Millisecond}, newRecorder())
	fits := limit / minBuffer
	type client struct {
		nc net.Conn
		br *bufio.Reader
	}
	var clients []client
	for i := range fits + 3 {
		nc, br := upgrade(t, s, "")
		if _, err := nc.Write(frame(bFragText, []byte("{"))); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, client{nc, br})
		if i >= fits {
			expectClose(t, nc, br, StatusTryAgainLater, "retry later")
		}
	}
	testutil.Eventually(t, "the refused ones to be released", func() bool { return s.Stats().Open == int64(fits) })
	if st := s.Stats(); st.PartialBytes != int64(fits*minBuffer) || st.Limited != 3 {
		t.Fatalf("stats %+v; want %d bytes held and 3 connections limited", st, fits*minBuffer)
	}
	// The first ones finish their messages.
	if _, err := clients[0].nc.Write(frame(bFinCont, []byte("}"))); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the finished message to give its buffer back", func() bool { return s.Stats().PartialBytes == int64((fits-1)*minBuffer) })
	for _, c := range clients[1:fits] {
		c.nc.Close()
	}
	testutil.Eventually(t, "every buffer to be given back", func() bool { return s.Stats().PartialBytes == 0 })
}

// paceHandler records messages and declines each one the first time it
// sees it for wait, as a Handler over its message rate does.
type paceHandler struct {
	*recorder
	wait     time.Duration
	declined map[string]bool // owned by the loop goroutine
}

func (h *paceHandler) OnMessage(c *Conn, msg []byte) time.Duration {
	if !h.declined[string(msg)] {
		h.declined[string(msg)] = true
		return h.wait
	}
	return h.recorder.OnMessage(c, msg)
}

// TestPacedReadsLoseNothing: over FRAME_RATE, or with a Handler that
// declines messages for a while, a client's messages all arrive, in order,
// no faster than the rate allows; the client is not closed.
func TestPacedReadsLoseNothing(t *testing.T) {
	const n = 60
	var msgs []byte
	for i := range n {
		msgs = append(msgs, frame(bText, fmt.Appendf(nil, "m%02d", i))...)
	}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wait    time.Duration
		atLeast time.Duration
	}{
		// 50 frames past the burst at 100/s: half a second at least.
		{"frame rate", Config{EventLoops: 1, FrameRate: 100, FrameBurst: 10}, 0, 450 * time.Millisecond},
		// Each message declined once for 5 ms: 60 pauses.
		{"handler", Config{EventLoops: 1, FrameRate: -1}, 5 * time.Millisecond, 250 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := newRecorder()
			var h Handler = rec
			if tc.wait > 0 {
				h = &paceHandler{recorder: rec, wait: tc.wait, declined: map[string]bool{}}
			}
			s := startServer(t, tc.cfg, h)
			c, _ := upgrade(t, s, "")
			start := time.Now()
			if _, err := c.Write(msgs); err != nil {
				t.Fatal(err)
			}
			for i := range n {
				select {
				case m := <-rec.msgs:
					if want := fmt.Sprintf("m%02d", i); m != want {
						t.Fatalf("message %d is %q, want %q", i, m, want)
					}
				case <-time.After(testutil.Timeout):
					t.Fatalf("message %d did not arrive", i)
				}
			}
			if d := time.Since(start); d < tc.atLeast {
				t.Fatalf("%d messages taken in %v, faster than the rate allows (%v)", n, d, tc.atLeast)
			}
			if st := s.Stats(); st.Paused == 0 || st.Limited != 0 {
				t.Fatalf("stats %+v: want pauses and no connection closed", st)
			}
			select {
			case err := <-rec.closed:
				t.Fatalf("the client was closed: %v", err)
			default:
			}
		})
	}
}

// TestByFDChunks: the descriptor table across a chunk's edge, a chunk
// added for a high descriptor, and clearing where no chunk was made.
func TestByFDChunks(t *testing.T) {
	var l loop
	a, b, c := &Conn{}, &Conn{}, &Conn{}
	l.setFD(fdChunk-1, a)
	l.setFD(fdChunk, b)
	l.setFD(5*fdChunk+7, c)
	for _, tc := range []struct {
		fd   int
		want *Conn
	}{{fdChunk - 1, a}, {fdChunk, b}, {5*fdChunk + 7, c}, {0, nil}, {fdChunk + 1, nil}, {3 * fdChunk, nil}, {9 * fdChunk, nil}, {-1, nil}} {
		if got := l.lookup(tc.fd); got != tc.want {
			t.Errorf("lookup(%d) = %p, want %p", tc.fd, got, tc.want)
		}
	}
	if l.byFD[3] != nil {
		t.Error("a chunk was made for descriptors no connection has")
	}
	l.setFD(3*fdChunk+1, nil) // no chunk there: nothing to clear, nothing made
	if l.byFD[3] != nil {
		t.Error("clearing made a chunk")
	}
	l.setFD(fdChunk, nil)
	if l.lookup(fdChunk) != nil || l.lookup(fdChunk-1) != a {
		t.Error("clearing one descriptor touched another")
	}
}
