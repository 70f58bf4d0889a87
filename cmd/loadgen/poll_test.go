package main

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestPollLoopReassembles feeds a connection held by an epoll loop frames
// cut at every awkward place (one byte at a time, a frame larger than the
// loop's buffer, several in one read) and checks that every stamped
// message is counted once, in order, that a ping is answered, and that a
// close frame is answered and ends the connection (counted as dropped:
// the gateway closed it during the run).
func TestPollLoopReassembles(t *testing.T) {
	// Connection 0 sends, connection 1 receives: the test plays the
	// gateway of connection 1, the second to connect (one dial at a time).
	peers := make(chan net.Conn, 2)
	release := make(chan struct{})
	url := startServer(t, func(c net.Conn, br *bufio.Reader) {
		req := readUpgrade(br)
		if req == nil {
			return
		}
		peers <- c // before the 101: connection 1 is dialled after it
		if _, err := c.Write([]byte(switching(req))); err == nil {
			<-release // the test reads and writes c
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server's
	r := newTestRunner(t, url, "-conns", "2", "-rooms", "1", "-senders", "1", "-rate", "0", "-dial-concurrency", "1")
	connect(t, r)
	if r.live.connected.Load() != 2 {
		t.Fatalf("connected %d, errors %v; want 2", r.live.connected.Load(), r.live.errs.snapshot())
	}
	<-peers // connection 0's
	peer := <-peers
	c := r.clients[1]
	br := bufio.NewReader(peer)

	msg := func(seq uint32, pad int) []byte {
		st := stamp{run: r.run, sender: 0, seq: seq, nanos: time.Now().UnixNano()}
		return ws.MustCompileFrame(ws.NewFrame(ws.OpText, true, appendChatMessage(nil, st, pad, false)))
	}
	send := func(b []byte) {
		t.Helper()
		if _, err := peer.Write(b); err != nil {
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
	send(serverFrame(ws.OpPing, "are you there"))
	if p := pongOf(peer, br); p != "are you there" {
		t.Fatalf("answer to a ping: %q", p)
	}

	// A close frame: the client answers it and the loop lets go.
	send(serverFrame(ws.OpClose, string(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))))
	if f, err := readClientFrame(peer, br); err != nil || f.Header.OpCode != ws.OpClose {
		t.Fatalf("answer to a close frame: %v, %v", f.Header.OpCode, err)
	}
	testutil.Eventually(t, "the loop to close the connection", func() bool { return r.live.connected.Load() == 1 })
	if open := r.poll.open(); len(open) != 1 || open[0] != r.clients[0] {
		t.Fatalf("%d connections still held after the close, want connection 0 only", len(open))
	}
	r.closeAll()
	// The loops have stopped: the counts can be read.
	if c.received != 5 || c.dup != 0 || c.late != 0 || c.unparsed != 0 || c.peers[0].lost(5) != 0 {
		t.Fatalf("received %d, duplicated %d, late %d, unparsed %d, lost %d; want 5 in order",
			c.received, c.dup, c.late, c.unparsed, c.peers[0].lost(5))
	}
	// The gateway closed it during the run: a dropped connection, named.
	if !c.dropped || r.live.errs.snapshot()["close_1001"] != 1 {
		t.Fatalf("a close by the gateway: dropped %v, errors %v; want dropped and close_1001 once", c.dropped, r.live.errs.snapshot())
	}
}
