package stream

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// waker parks a pump's goroutine until another goroutine has work for it
// (a publish, a join, rooms marked dirty, the listener lost, Close) or a
// time passes. It is an eventfd in the runtime's netpoller rather than a
// channel: a channel send that readies a parked goroutine makes the
// runtime wake a second thread (futex) that then steals the goroutine from
// the sender's processor, which at chat rates cost about two futex calls
// and a nanosleep per message (BENCHMARKS.md section 12). A goroutine the
// netpoller readies runs on the thread that polled, as the event loops'
// do (pkg/conn/poll.go).
//
// The work itself still travels in the pump's channels and fields; the
// waker only says "look". wake costs a system call only while the pump
// sleeps, so under load, when the pump never does, it is two atomic
// operations.
type waker struct {
	f  *os.File
	rc syscall.RawConn
	fd int
	// asleep: the pump sleeps, or is about to; wake must write the eventfd.
	asleep atomic.Bool
	// work: wake was called since the pump last went to sleep.
	work atomic.Bool
}

func newWaker() (*waker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("stream: eventfd for the pump: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pump-waker")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stream: eventfd for the pump: %w", err)
	}
	return &waker{f: f, rc: rc, fd: fd}, nil
}

// wake tells the pump to look at its work; any goroutine may call it,
// after queuing the work.
func (w *waker) wake() {
	w.work.Store(true)
	if w.asleep.Swap(false) {
		w.signal()
	}
}

// interrupt ends any wait of the pump, also a pause (Close).
func (w *waker) interrupt() {
	w.work.Store(true)
	w.asleep.Store(false)
	w.signal()
}

func (w *waker) signal() {
	one := [8]byte{1}
	_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(w.fd), uintptr(unsafe.Pointer(&one[0])), 8)
}

// sleep parks the pump until wake is called or until passes. It returns
// at once when wake was called since the last sleep: the pump then looks
// again at everything it waits for. A return may be spurious.
func (w *waker) sleep(until time.Time) {
	w.asleep.Store(true)
	// Either this sees the work flag of a wake, or that wake's Swap sees
	// asleep and writes the eventfd: no wake-up is lost.
	if w.work.Swap(false) {
		w.asleep.Store(false)
		return
	}
	w.wait(until)
	w.asleep.Store(false)
}

// pause parks the pump until t, unless interrupt is called: wakes do not
// end it (a busy pump waits for its tick while publishes queue up).
func (w *waker) pause(t time.Time, stopped func() bool) {
	for !stopped() && time.Now().Before(t) {
		w.wait(t)
	}
}

// wait reads the eventfd, parking in the netpoller until it is signalled
// or the deadline passes.
func (w *waker) wait(until time.Time) {
	if w.f.SetReadDeadline(until) != nil {
		return
	}
	_ = w.rc.Read(func(fd uintptr) bool {
		var b [8]byte
		_, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), 8)
		return e != unix.EAGAIN
	})
}

func (w *waker) close() { w.f.Close() }
