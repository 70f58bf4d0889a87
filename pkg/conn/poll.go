package conn

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Waiting and the hot-path system calls, written so that the Go runtime
// has nothing to do between two rounds of a loop.
//
// A loop never blocks in epoll_wait. Its epoll descriptor (itself pollable)
// is registered with the runtime's netpoller through an *os.File, and the
// loop goroutine parks in rawConn.Read until that descriptor is readable;
// inside, epoll_wait runs with timeout 0. The tick is a read deadline on
// the same file. So an idle loop is a parked goroutine, not a thread in a
// blocking system call: the runtime need not hand its P to another thread,
// and sysmon, which wakes up every 20 µs while some thread is in a system
// call, can sleep until the next timer.
//
// The calls a loop makes between two waits (epoll_wait with timeout 0,
// read, writev, the eventfd) never block, so they are raw system calls:
// syscall.Syscall tells the scheduler a call may block, and entering one
// wakes a sleeping sysmon, which then polls for a millisecond or more.

// poller parks a loop goroutine until its epoll descriptor has events or
// the deadline passes.
type poller struct {
	f  *os.File
	rc syscall.RawConn
}

// newPoller registers epfd, made non-blocking, with the runtime's
// netpoller. The poller owns epfd from then on: close it with close.
func newPoller(epfd int) (*poller, error) {
	if err := unix.SetNonblock(epfd, true); err != nil {
		return nil, fmt.Errorf("conn: epoll fd non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("conn: epoll fd: %w", err)
	}
	return &poller{f: f, rc: rc}, nil
}

// wait parks until ready returns true, or until the deadline set by
// setDeadline passes (timedOut, with a nil err). ready is called first,
// and again after each wake-up of the netpoller. An err means the poller
// failed and the loop cannot wait on it any more.
func (p *poller) wait(ready func(fd uintptr) bool) (timedOut bool, err error) {
	err = p.rc.Read(ready)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return true, nil
	}
	return false, err
}

// setDeadline sets when wait returns timedOut.
func (p *poller) setDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

func (p *poller) close() error { return p.f.Close() }

// epollWait is epoll_wait with timeout 0, as a raw system call.
func epollWait(epfd int, events []unix.EpollEvent) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
		uintptr(unsafe.Pointer(unsafe.SliceData(events))), uintptr(len(events)), 0, 0, 0)
	return int(n), errno
}

// rawRead is read(2) on a non-blocking descriptor, as a raw system call.
func rawRead(fd int, p []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// rawWrite is write(2) on a non-blocking descriptor, as a raw system call.
func rawWrite(fd int, p []byte) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), errno
}

// rawWritev is writev(2) on a non-blocking descriptor, as a raw system call.
func rawWritev(fd int, iov []unix.Iovec) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(iov))), uintptr(len(iov)))
	return int(n), errno
}
