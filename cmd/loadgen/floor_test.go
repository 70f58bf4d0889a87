package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/chatgw/gateway/internal/testutil"
)

// startFloor runs a floor on a free loopback port until the test ends.
func startFloor(t *testing.T) *floor {
	t.Helper()
	f, err := newFloor("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("floor run: %v", err)
			}
		case <-time.After(testutil.Timeout):
			t.Error("floor did not stop")
		}
	})
	return f
}

func dialFloor(t *testing.T, f *floor, room string) (net.Conn, *bufio.Reader) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	nc, br, _, err := ws.Dial(ctx, "ws://"+f.Addr().String()+"/ws/chat/"+room+"/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if br == nil {
		br = bufio.NewReader(nc)
	}
	_ = nc.SetDeadline(time.Now().Add(testutil.Timeout))
	return nc, br
}

// TestFloorRelay: the floor upgrades WebSocket requests and writes each
// text message, unchanged, to every other member of its room, one write
// per member; it answers pings and close frames.
func TestFloorRelay(t *testing.T) {
	f := startFloor(t)
	a, _ := dialFloor(t, f, "x")
	_, brB := dialFloor(t, f, "x")
	_, brC := dialFloor(t, f, "x")
	d, brD := dialFloor(t, f, "y")

	msg := []byte(`{"username":"u","message":"` + strings.Repeat("m", 300) + `"}`) // 16-bit length
	if _, err := a.Write(appendClientFrame(nil, ws.OpText, msg, [4]byte{1, 2, 3, 4})); err != nil {
		t.Fatal(err)
	}
	for _, br := range []*bufio.Reader{brB, brC} {
		fr, err := readFrame(br)
		if err != nil {
			t.Fatal(err)
		}
		if fr.op != ws.OpText || !fr.fin || string(fr.payload) != string(msg) {
			t.Fatalf("got op %v fin %v payload %q, want the message", fr.op, fr.fin, fr.payload)
		}
		_, _ = br.Discard(fr.discard)
	}
	// The counter follows the write(2) that the clients already read from.
	testutil.Eventually(t, "the floor's count of 2 writes (one per other member)", func() bool { return f.writes.Load() == 2 })

	// Room y only has d: a ping is answered, its message goes nowhere, and
	// a close frame is echoed.
	if _, err := d.Write(appendClientFrame(nil, ws.OpText, []byte("alone"), [4]byte{5, 6, 7, 8})); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write(appendClientFrame(nil, ws.OpPing, []byte("p"), [4]byte{9, 9, 9, 9})); err != nil {
		t.Fatal(err)
	}
	fr, err := readFrame(brD)
	if err != nil || fr.op != ws.OpPong || string(fr.payload) != "p" {
		t.Fatalf("after a ping: frame %v %q, err %v; want pong \"p\"", fr.op, fr.payload, err)
	}
	_, _ = brD.Discard(fr.discard)
	if _, err := d.Write(appendClientFrame(nil, ws.OpClose, []byte{0x03, 0xe8}, [4]byte{1, 1, 1, 1})); err != nil {
		t.Fatal(err)
	}
	if fr, err = readFrame(brD); err != nil || fr.op != ws.OpClose {
		t.Fatalf("after a close: frame %v, err %v; want close", fr.op, err)
	}
	_, _ = brD.Discard(fr.discard)
	if _, err := readFrame(brD); err != io.EOF {
		t.Fatalf("after the close echo: %v, want EOF", err)
	}
	if m, w := f.messages.Load(), f.writes.Load(); m != 2 || w != 2 {
		t.Errorf("messages %d writes %d, want 2 and 2", m, w)
	}
}

// TestFloorDrivenByRunner: loadgen -mode run drives the floor like a
// gateway: every message reaches every other member, none comes back.
func TestFloorDrivenByRunner(t *testing.T) {
	f := startFloor(t)
	cfg, err := parseFlags([]string{"-url", "ws://" + f.Addr().String(), "-conns", "24", "-rooms", "4", "-senders", "2",
		"-rate", "20", "-duration", "300ms", "-hold", "0s", "-drain", "300ms", "-quiet"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newRunner(cfg, io.Discard).execute(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := s.problems(); len(p) > 0 {
		t.Fatalf("problems: %v", p)
	}
	m := s.Messages
	if m.Sent == 0 || m.Expected != m.Sent*5 || m.Delivered != m.Expected || m.Received != m.Expected {
		t.Fatalf("sent %d expected %d delivered %d received %d; want expected = delivered = received = 5 × sent",
			m.Sent, m.Expected, m.Delivered, m.Received)
	}
	if w := f.writes.Load(); w != m.Received {
		t.Errorf("floor writes %d, clients received %d", w, m.Received)
	}
}
