package conn

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

// TestPollerWait: the poller parks until the epoll descriptor has events
// and reports timedOut once its deadline passes.
func TestPollerWait(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		t.Fatal(err)
	}
	p, err := newPoller(epfd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	events := make([]unix.EpollEvent, 4)
	var n int
	ready := func(uintptr) bool {
		var errno unix.Errno
		n, errno = epollWait(epfd, events)
		return n > 0 || errno != 0
	}

	start := time.Now()
	if err := p.setDeadline(start.Add(30 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if timedOut, err := p.wait(ready); !timedOut || err != nil {
		t.Fatalf("wait with nothing ready = %v, %v; want timedOut", timedOut, err)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Fatalf("wait returned after %v, before its deadline", d)
	}

	// A write from another goroutine wakes the parked wait.
	if err := p.setDeadline(time.Now().Add(testutil.Timeout)); err != nil {
		t.Fatal(err)
	}
	go func() {
		one := [8]byte{1}
		_, _ = rawWrite(efd, one[:])
	}()
	if timedOut, err := p.wait(ready); timedOut || err != nil {
		t.Fatalf("wait after an eventfd write = %v, %v; want events", timedOut, err)
	}
	if n != 1 || events[0].Fd != int32(efd) {
		t.Fatalf("epoll reported %d events %v, want the eventfd", n, events[:n])
	}
}

// TestTimersRunWhileIdle: an idle loop, parked in the netpoller, still
// runs its timers: a silent client is pinged, and closed with 1001 when it
// does not answer; the socket is freed at once (FIN after the close
// frame), without waiting CLOSE_TIMEOUT for a reply that will not come.
func TestTimersRunWhileIdle(t *testing.T) {
	rec := newRecorder()
	const closeTimeout = time.Minute
	s := startServer(t, Config{PingInterval: 100 * time.Millisecond, PongTimeout: 100 * time.Millisecond, CloseTimeout: closeTimeout}, rec)
	nc, br, _ := dialServer(t, s, rec)
	_ = nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
	f, err := ws.ReadFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	if f.Header.OpCode != ws.OpPing {
		t.Fatalf("first frame %v, want a ping", f.Header.OpCode)
	}
	f, err = ws.ReadFrame(br)
	if err != nil {
		t.Fatal(err)
	}
	if f.Header.OpCode != ws.OpClose {
		t.Fatalf("frame after an unanswered ping %v, want close", f.Header.OpCode)
	}
	if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusGoingAway {
		t.Fatalf("close code %d, want 1001", code)
	}
	select {
	case cause := <-rec.closed:
		if !errors.Is(cause, ErrPingTimeout) {
			t.Fatalf("OnClose cause %v, want ErrPingTimeout", cause)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("OnClose was not called")
	}
	if _, err := br.ReadByte(); err != io.EOF { // testutil.Timeout < closeTimeout
		t.Fatalf("after the close frame: %v, want EOF (the socket freed, not held for CLOSE_TIMEOUT)", err)
	}
	testutil.Eventually(t, "the server to count the connection out", func() bool { return s.Stats().WebSockets == 0 })
}
