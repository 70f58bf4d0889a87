package stream

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds how the engine dials Redis: plain TCP (or TLS over it)
// whose reads and writes are raw system calls on the non-blocking socket.
//
// Why: a net.Conn reads and writes through syscall.Syscall, which tells
// the Go scheduler that the thread may block. When the process is
// otherwise idle (a node at chat rates), that wakes the runtime's monitor
// thread (sysmon) from its deep sleep, which then polls every 20 µs until
// everything is idle again: profiled at 100 rooms × 10 members, 1 msg/s
// each, sysmon took about a sixth of the gateway's CPU (BENCHMARKS.md
// section 12). A read or write of a non-blocking socket never blocks, so
// it needs no such notice; waiting for readiness still goes through the
// runtime's poller, with the deadlines rueidis sets.

// dialRedis is rueidis's DialCtxFn: it dials dst with d, wraps the TCP
// connection in a rawConn and, when tc is set, runs TLS over it.
func dialRedis(ctx context.Context, dst string, d *net.Dialer, tc *tls.Config) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", dst)
	if err != nil {
		return nil, err
	}
	conn := c
	if tcp, ok := c.(*net.TCPConn); ok {
		if rc, err := tcp.SyscallConn(); err == nil {
			conn = &rawConn{TCPConn: tcp, rc: rc}
		}
	}
	if tc == nil {
		return conn, nil
	}
	cfg := tc
	if cfg.ServerName == "" { // as tls.Dialer does: verify the host dialled
		host, _, err := net.SplitHostPort(dst)
		if err != nil {
			host = dst
		}
		cfg = tc.Clone()
		cfg.ServerName = host
	}
	tc2 := tls.Client(conn, cfg)
	if err := tc2.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return tc2, nil
}

// rawConn is a TCP connection whose Read and Write are raw read(2) and
// write(2) calls, parking in the runtime's poller only on EAGAIN. Every
// other method (deadlines, Close, addresses) is the TCPConn's.
type rawConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// Read reads into b: what the socket holds, or waits until it holds
// something, the peer closes (io.EOF) or the read deadline passes.
func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
			if e == unix.EINTR {
				continue
			}
			n, errno = int(r), e
			return e != unix.EAGAIN
		}
	})
	switch {
	case err != nil: // closed, or the deadline passed
		return 0, c.opError("read", err)
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of b, waiting for room in the socket's buffer as
// needed, unless the write deadline passes or the connection fails.
func (c *rawConn) Write(b []byte) (int, error) {
	var n int
	var errno syscall.Errno
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			p := b[n:]
			r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch e {
			case 0:
				n += int(r)
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	switch {
	case err != nil:
		return n, c.opError("write", err)
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// opError wraps err as the net package does, so that callers still see
// timeouts (os.ErrDeadlineExceeded) and closed connections as such.
func (c *rawConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
