package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"
)

// The floor mode (-mode floor) is the cost floor of a chat relay: the
// least CPU any gateway can spend per delivery on this machine, to compare
// the gateway with under the same load.
//
// It listens on -listen and accepts the same WebSocket upgrade as the
// gateway, minimally (any path is a room; the rest of the request is not
// checked), so loadgen -mode run drives it exactly as it drives a gateway,
// with the same sleeping Go clients, room shape and rate, and -pid samples
// its CPU per delivery the same way. Everything runs on one locked OS
// thread: one epoll_wait (blocking) per wake-up, one read(2) per readable
// socket, and for each text message one write(2) of the unmasked frame to
// each other member of its room. The payload is relayed as sent, so the
// clients' stamps survive.
//
// The thread makes raw system calls only and blocks SIGURG, so the Go
// runtime has almost nothing to do: no P hand-off around the blocking
// epoll_wait and no preemption signals. (The scheduler still asks a
// goroutine that ran 10 ms without yielding to yield at its next function
// call; epoll_wait returns every floorWaitMillis and the loop then makes
// such a call, so a stop-the-world never waits long for the thread.)
// What is left is the kernel's cost: the wake-up, the reads, and each
// write(2), including the wake-up of its receiver.
//
// Usage, in one session, so the two figures compare:
//
//	loadgen -mode floor -listen 127.0.0.1:8200 &
//	loadgen -url ws://127.0.0.1:8200 -conns 1000 -rooms 100 -rate 1 -pid $!
//	loadgen -url ws://127.0.0.1:8000 -conns 1000 -rooms 100 -rate 1 -pid $(pidof gateway)
//
// On SIGINT or SIGTERM it prints its own counts: messages, writes and the
// thread's CPU per write since it started.

// floorWaitMillis bounds one blocking epoll_wait of the floor.
const floorWaitMillis = 100

// floorMaxPending bounds the bytes kept for an incomplete request head or
// frame of one floor connection.
const floorMaxPending = 1 << 20

// floor is the floor relay. Only its thread touches the fields other than
// the counters.
type floor struct {
	lfd, epfd, efd int
	addr           netip.AddrPort

	byFD  []*floorConn
	rooms map[string][]*floorConn
	buf   []byte // read buffer
	out   []byte // the frame being relayed

	conns    atomic.Int64 // upgraded and open
	messages atomic.Int64 // text messages received
	writes   atomic.Int64 // write(2) calls that relayed a message
	failed   atomic.Int64 // relay writes that failed or were short
	cpuNanos atomic.Int64 // the thread's CPU time when run returned
}

// floorConn is one connection of the floor.
type floorConn struct {
	fd      int
	room    string // request path; "" during the handshake
	idx     int    // position in floor.rooms[room]
	pending []byte // incomplete request head or frame
}

// newFloor listens on addr, a loopback "host:port".
func newFloor(addr string) (*floor, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%w: -listen %q: want a loopback ip:port such as 127.0.0.1:8200", errUsage, addr)
	}
	if !ap.Addr().Unmap().IsLoopback() {
		return nil, fmt.Errorf("%w: -listen %s: loadgen only listens on loopback", errUsage, addr)
	}
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
	if ap.Addr().Unmap().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	f := &floor{lfd: -1, epfd: -1, efd: -1, rooms: map[string][]*floorConn{}, buf: make([]byte, 64<<10)}
	fail := func(op string, err error) (*floor, error) {
		f.closeAll()
		return nil, fmt.Errorf("floor: %s: %w", op, err)
	}
	if f.lfd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
		return fail("socket", err)
	}
	_ = unix.SetsockoptInt(f.lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(f.lfd, sa); err != nil {
		return fail("bind "+addr, err)
	}
	if err := unix.Listen(f.lfd, 4096); err != nil {
		return fail("listen", err)
	}
	bound, err := unix.Getsockname(f.lfd)
	if err != nil {
		return fail("getsockname", err)
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		f.addr = netip.AddrPortFrom(netip.AddrFrom4(b.Addr), uint16(b.Port))
	case *unix.SockaddrInet6:
		f.addr = netip.AddrPortFrom(netip.AddrFrom16(b.Addr), uint16(b.Port))
	}
	if f.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return fail("epoll_create1", err)
	}
	if f.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return fail("eventfd", err)
	}
	for _, fd := range []int{f.lfd, f.efd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fail("epoll_ctl", err)
		}
	}
	return f, nil
}

// Addr returns the address the floor listens on.
func (f *floor) Addr() netip.AddrPort { return f.addr }

// run serves until ctx is done, on a locked OS thread, then closes every
// socket.
func (f *floor) run(ctx context.Context) error {
	served, waker := make(chan struct{}), make(chan struct{})
	go func() { // wakes the thread through the eventfd when ctx ends
		defer close(waker)
		select {
		case <-ctx.Done():
			one := [8]byte{1}
			_, _ = unix.Write(f.efd, one[:])
		case <-served:
		}
	}()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		errc <- f.serve()
	}()
	err := <-errc
	close(served)
	<-waker // it no longer uses f.efd
	f.closeAll()
	return err
}

// serve is the floor's thread.
func (f *floor) serve() error {
	var urg unix.Sigset_t
	urg.Val[(unix.SIGURG-1)/64] |= 1 << ((uint(unix.SIGURG) - 1) % 64)
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &urg, nil); err != nil {
		return fmt.Errorf("floor: block SIGURG: %w", err)
	}
	defer func() {
		var ru unix.Rusage
		if unix.Getrusage(unix.RUSAGE_THREAD, &ru) == nil {
			f.cpuNanos.Store(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}()
	events := make([]unix.EpollEvent, 256)
	for {
		r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(f.epfd),
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), floorWaitMillis, 0, 0)
		floorSafePoint()
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return fmt.Errorf("floor: epoll_wait: %w", errno)
		}
		for _, ev := range events[:r] {
			switch fd := int(ev.Fd); fd {
			case f.efd:
				return nil
			case f.lfd:
				f.accept()
			default:
				if fd < len(f.byFD) && f.byFD[fd] != nil {
					f.read(f.byFD[fd])
				}
			}
		}
	}
}

// floorSafePoint is a function call with a stack check, where the
// scheduler can stop the floor's goroutine (for a garbage collection):
// raw system calls have none, and SIGURG, which would interrupt one, is
// blocked.
//
//go:noinline
func floorSafePoint() { floorNop() }

//go:noinline
func floorNop() {}

// accept takes every pending connection.
func (f *floor) accept() {
	for {
		fd, _, err := unix.Accept4(f.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or a failure the next wake-up retries
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
		if unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev) != nil {
			unix.Close(fd)
			continue
		}
		for fd >= len(f.byFD) {
			f.byFD = append(f.byFD, make([]*floorConn, max(1024, len(f.byFD)))...)
		}
		f.byFD[fd] = &floorConn{fd: fd, idx: -1}
	}
}

// read reads what c's socket holds (level-triggered: one read per wake-up
// is enough) and handles it.
func (f *floor) read(c *floorConn) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&f.buf[0])), uintptr(len(f.buf)))
	switch {
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return
	case errno != 0 || n == 0:
		f.drop(c)
		return
	}
	data := f.buf[:n]
	if len(c.pending) > 0 {
		if len(c.pending)+len(data) > floorMaxPending {
			f.drop(c)
			return
		}
		c.pending = append(c.pending, data...)
		data = c.pending
	}
	if c.room == "" {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			c.pending = append(c.pending[:0], data...)
			return
		}
		if !f.upgrade(c, data[:end+4]) {
			f.drop(c)
			return
		}
		data = data[end+4:]
	}
	rest, ok := f.frames(c, data)
	if !ok {
		f.drop(c)
		return
	}
	if len(rest) > 0 && len(c.pending) == 0 {
		c.pending = append([]byte(nil), rest...)
	} else {
		c.pending = append(c.pending[:0], rest...)
	}
}

// upgrade answers the WebSocket request head req with 101 and joins c to
// the room named by the request path.
func (f *floor) upgrade(c *floorConn, req []byte) bool {
	_, rest, _ := bytes.Cut(req, []byte(" "))
	path, _, _ := bytes.Cut(rest, []byte(" "))
	var key []byte
	for line := range bytes.SplitSeq(req, []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Key")) {
			key = bytes.TrimSpace(value)
		}
	}
	if len(path) == 0 || len(key) == 0 {
		return false
	}
	accept := acceptKey(key)
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		string(accept[:]) + "\r\n\r\n"
	if n, err := unix.Write(c.fd, []byte(resp)); err != nil || n != len(resp) {
		return false
	}
	c.room = string(path)
	members := f.rooms[c.room]
	c.idx = len(members)
	f.rooms[c.room] = append(members, c)
	f.conns.Add(1)
	return true
}

// frames handles the complete client frames in data and returns the
// incomplete rest; false means c must be dropped.
func (f *floor) frames(c *floorConn, data []byte) ([]byte, bool) {
	for len(data) >= 2 {
		op, masked, size := ws.OpCode(data[0]&0x0f), data[1]&0x80 != 0, int(data[1]&0x7f)
		hdr := 2
		switch size {
		case 126:
			if len(data) < 4 {
				return data, true
			}
			size, hdr = int(binary.BigEndian.Uint16(data[2:])), 4
		case 127:
			if len(data) < 10 {
				return data, true
			}
			size, hdr = int(min(binary.BigEndian.Uint64(data[2:]), floorMaxPending+1)), 10
		}
		if !masked || size > floorMaxPending {
			return nil, false
		}
		if len(data) < hdr+4+size {
			return data, true
		}
		var mask [4]byte
		copy(mask[:], data[hdr:])
		payload := data[hdr+4 : hdr+4+size]
		ws.Cipher(payload, mask, 0)
		data = data[hdr+4+size:]
		switch op {
		case ws.OpText:
			f.relay(c, payload)
		case ws.OpPing:
			f.send(c, ws.OpPong, payload)
		case ws.OpClose:
			f.send(c, ws.OpClose, payload)
			return nil, false
		}
	}
	return data, true
}

// relay writes payload as one text frame to every other member of c's
// room: one write(2) per member.
func (f *floor) relay(c *floorConn, payload []byte) {
	f.messages.Add(1)
	f.out = appendServerFrame(f.out[:0], ws.OpText, payload)
	for _, m := range f.rooms[c.room] {
		if m == c {
			continue
		}
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(m.fd), uintptr(unsafe.Pointer(&f.out[0])), uintptr(len(f.out)))
		f.writes.Add(1)
		if errno != 0 || int(n) != len(f.out) {
			f.failed.Add(1)
		}
	}
}

// send writes one control frame to c.
func (f *floor) send(c *floorConn, op ws.OpCode, payload []byte) {
	f.out = appendServerFrame(f.out[:0], op, payload)
	_, _ = unix.Write(c.fd, f.out)
}

// drop closes c and takes it out of its room.
func (f *floor) drop(c *floorConn) {
	if c.idx >= 0 {
		members := f.rooms[c.room]
		last := members[len(members)-1]
		members[c.idx], last.idx = last, c.idx
		members[len(members)-1] = nil
		if members = members[:len(members)-1]; len(members) == 0 {
			delete(f.rooms, c.room)
		} else {
			f.rooms[c.room] = members
		}
		f.conns.Add(-1)
	}
	f.byFD[c.fd] = nil
	unix.Close(c.fd) // also leaves the epoll set
}

// closeAll closes every descriptor of f. It runs after serve returned.
func (f *floor) closeAll() {
	for _, c := range f.byFD {
		if c != nil {
			f.drop(c)
		}
	}
	for _, fd := range []int{f.lfd, f.epfd, f.efd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	f.lfd, f.epfd, f.efd = -1, -1, -1
}

// appendServerFrame appends a final, unmasked server frame
// (RFC 6455 section 5.2) with opcode op and payload to dst.
func appendServerFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = append(dst, 0x80|byte(op))
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, payload...)
}

// runFloor is -mode floor: it serves on cfg.listen until ctx is done, then
// prints its counts.
func runFloor(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	f, err := newFloor(cfg.listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "floor: listening on ws://%s (one locked thread, one write(2) per delivery); stop with SIGINT\n", f.Addr())
	start := time.Now()
	err = f.run(ctx)
	fmt.Fprintln(stdout, f.report(time.Since(start)))
	return err
}

// report describes the floor's counts since it started.
func (f *floor) report(d time.Duration) string {
	w := f.writes.Load()
	perWrite := 0.0
	if w > 0 {
		perWrite = float64(f.cpuNanos.Load()) / 1e3 / float64(w)
	}
	return fmt.Sprintf("floor: %v: %d messages in, %d writes (%d failed); thread CPU %.3fs, %.2f µs/write (handshakes included; use loadgen -pid for the send phase alone)",
		d.Round(time.Millisecond), f.messages.Load(), w, f.failed.Load(), float64(f.cpuNanos.Load())/1e9, perWrite)
}
