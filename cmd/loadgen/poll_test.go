package main

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestPollLoopReassembles feeds a connection held by an epoll loop frames
// cut at every awkward place (one byte at a time, a frame larger than the
// loop's buffer, several in one read) and checks that every stamped
// message is counted once, in order, that a ping is answered, and that a
// close frame is answered and ends the connection (counted as dropped:
// the gateway closed it during the run).
func TestPollLoopReassembles(t *testing.T) {
	r := newRunner(config{conns: 1, rooms: 1, senders: 1}, io.Discard)
	ps, err := newPollSet(r, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := fds[1]
	defer unix.Close(peer)
	c := &client{id: 0, room: 0, sender: -1, fd: fds[0], peers: make([]seqTracker, 1)}
	r.live.connected.Add(1)
	if err := ps.add(c); err != nil {
		t.Fatal(err)
	}

	server := func(op ws.OpCode, payload []byte) []byte {
		b, err := ws.CompileFrame(ws.NewFrame(op, true, payload))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	msg := func(seq uint32, pad int) []byte {
		st := stamp{run: r.run, sender: 0, seq: seq, nanos: time.Now().UnixNano()}
		return server(ws.OpText, appendChatMessage(nil, st, pad, false))
	}
	send := func(b []byte) {
		t.Helper()
		if err := writeFull(peer, b, testutil.Timeout); err != nil {
			t.Fatal(err)
		}
	}
	received := func(n int64) {
		t.Helper()
		testutil.Eventually(t, "the loop to count the messages", func() bool { return r.live.received.Load() == n })
	}

	// One byte at a time: the frame is kept in c.partial between reads.
	for _, b := range msg(0, 0) {
		send([]byte{b})
		time.Sleep(100 * time.Microsecond)
	}
	received(1)
	// Larger than the loop's 64 KiB buffer, then two frames and the start
	// of a third in one write.
	send(msg(1, 3*pollBufSize/2))
	received(2)
	third := msg(4, 10)
	send(append(append(msg(2, 0), msg(3, 0)...), third[:5]...))
	received(4)
	send(third[5:])
	received(5)

	// A ping is answered with a pong carrying its payload.
	send(server(ws.OpPing, []byte("are you there")))
	pong := readPeerFrame(t, peer)
	if pong.Header.OpCode != ws.OpPong || string(pong.Payload) != "are you there" {
		t.Fatalf("answer to a ping: %v %q", pong.Header.OpCode, pong.Payload)
	}

	// A close frame: the client answers it and the loop lets go.
	send(server(ws.OpClose, ws.NewCloseFrameBody(ws.StatusGoingAway, "bye")))
	if f := readPeerFrame(t, peer); f.Header.OpCode != ws.OpClose {
		t.Fatalf("answer to a close frame: %v", f.Header.OpCode)
	}
	testutil.Eventually(t, "the loop to close the connection", func() bool { return r.live.connected.Load() == 0 })
	if open := ps.open(); len(open) != 0 {
		t.Fatalf("%d connections still held after the close", len(open))
	}
	ps.close()
	// The loop has stopped: its counts can be read.
	if c.received != 5 || c.dup != 0 || c.late != 0 || c.unparsed != 0 || c.peers[0].lost(5) != 0 {
		t.Fatalf("received %d, duplicated %d, late %d, unparsed %d, lost %d; want 5 in order",
			c.received, c.dup, c.late, c.unparsed, c.peers[0].lost(5))
	}
	// The gateway closed it during the run: a dropped connection, named.
	if !c.dropped || r.live.errs.snapshot()["close_1001"] != 1 {
		t.Fatalf("a close by the gateway: dropped %v, errors %v; want dropped and close_1001 once", c.dropped, r.live.errs.snapshot())
	}
}

// readPeerFrame reads one masked client frame from the non-blocking
// socket fd.
func readPeerFrame(t *testing.T, fd int) ws.Frame {
	t.Helper()
	var got []byte
	deadline := time.Now().Add(testutil.Timeout)
	buf := make([]byte, 512)
	for time.Now().Before(deadline) {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			got = append(got, buf[:n]...)
			if f, err := ws.ReadFrame(bytes.NewReader(got)); err == nil {
				return ws.UnmaskFrameInPlace(f)
			}
		}
		if err != nil && err != unix.EAGAIN {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no frame from the client")
	return ws.Frame{}
}
