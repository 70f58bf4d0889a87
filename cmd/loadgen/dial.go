package main

import (
	"context"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The connect phase without a goroutine per connection: each epoll loop
// (poll.go) opens its share of the connections itself, and a connection
// whose handshake is done stays where it is, one of the sockets the loop
// reads.
//
// A dial makes a non-blocking socket, binds it to its -src address with
// the port left to connect(2) (IP_BIND_ADDRESS_NO_PORT, so each source
// address offers the whole ephemeral port range to every gateway
// address), sets TCP_NODELAY (no keepalive: setSocketOptions), starts
// connect(2) and writes the upgrade request at once: on loopback the TCP
// handshake is over when connect returns, so the write goes through. The
// socket is registered once, for EPOLLIN, level-triggered, and stays so
// after the 101. The system calls of one connect are therefore socket,
// setsockopt (two and a bind with -src), connect, write, epoll_ctl and
// read: 6, or 8 with -src, plus a share of an epoll_wait. A connect still
// in progress (SYN queue full, a remote gateway) makes the write fail
// with EAGAIN: the socket is then also registered for EPOLLOUT, the
// request is written when epoll says so, and one epoll_ctl MOD drops
// EPOLLOUT. A failed connect shows up as the write's error (the socket's
// pending error, what SO_ERROR would say).
//
// Loop k of the m that dial (m = min(loops, -dial-concurrency)) opens
// connections k, k+m, k+2m, ... in order, each once -connect-rate makes
// it due, with at most its share of -dial-concurrency in flight; the
// shares add up to -dial-concurrency. While it has dials in flight a loop
// wakes at least every scanEvery and then fails those past -dial-timeout.

// dialJob is the connect phase of one run, shared by the loops that dial.
type dialJob struct {
	r         *runner
	ctx       context.Context // done at -connect-timeout or on interrupt
	targets   []target        // by URL index
	start     time.Time       // dial times count from here
	end       time.Duration   // the -connect-timeout deadline, from start
	scanEvery time.Duration   // how often a loop looks for dials past -dial-timeout
	wg        sync.WaitGroup  // one per dialing loop, until its share is over
}

// newDialJob prepares the connect phase of r; ctx carries -connect-timeout.
func newDialJob(ctx context.Context, r *runner) *dialJob {
	j := &dialJob{r: r, ctx: ctx}
	for _, u := range r.cfg.urls {
		j.targets = append(j.targets, resolveTarget(ctx, u, r.prefix, r.cfg.options))
	}
	j.start = time.Now()
	j.end = r.cfg.connectTimeout
	if d, ok := ctx.Deadline(); ok {
		j.end = d.Sub(j.start)
	}
	// A dial fails at most 5% of -dial-timeout late (at most pollWait).
	j.scanEvery = min(max(r.cfg.dialTimeout/20, time.Millisecond), pollWait)
	return j
}

// assign gives the first min(len(loops), -dial-concurrency) loops their
// share of the connections; the loops start them when they run.
func (j *dialJob) assign(loops []*pollLoop) {
	conc := j.r.cfg.dialConc
	m := min(len(loops), conc)
	for k, l := range loops[:m] {
		share := conc / m
		if k < conc%m {
			share++
		}
		l.dl = &dialer{job: j, l: l, next: k, stride: m, share: share,
			inflight: make(map[int32]*dial, min(share, 1024)),
			rng:      rand.NewPCG(rand.Uint64(), rand.Uint64())}
		j.wg.Add(1)
	}
}

// due returns when connection i may start, from j.start (-connect-rate).
func (j *dialJob) due(i int) time.Duration {
	if j.r.cfg.connectRate <= 0 {
		return 0
	}
	return time.Duration(float64(i) / j.r.cfg.connectRate * float64(time.Second))
}

// dial is one connection being opened: the TCP connect, then the upgrade
// request and the server's answer. Only its loop touches it.
type dial struct {
	i        int            // connection index
	fd       int            // the socket, non-blocking
	deadline time.Duration  // -dial-timeout, from the job's start
	key      [wsKeyLen]byte // Sec-WebSocket-Key
	wrote    int            // bytes of the request written; any means the TCP connect is done
	sent     bool           // the whole request is written
	head     []byte         // the answer so far, once it came in more than one read
}

// dialer opens one loop's share of the connections. Only its loop uses it.
type dialer struct {
	job      *dialJob
	l        *pollLoop
	next     int                // the next connection to open; >= -conns once all are started
	stride   int                // the number of loops that dial
	share    int                // dials in flight at most
	inflight map[int32]*dial    // by descriptor
	free     []*dial            // ended dials, to reuse
	nextScan time.Duration      // when to look for dials past -dial-timeout, from the job's start
	rng      *rand.PCG          // Sec-WebSocket-Key source
	req      []byte             // the request being written
	sa4      unix.SockaddrInet4 // scratch addresses for bind and connect: no allocation
	sa6      unix.SockaddrInet6
}

// step fails the dials past their deadline and starts those due, and
// returns how long the loop may wait for events; done means the loop's
// share is over (every dial ended, or the phase was cut short).
func (d *dialer) step() (wait time.Duration, done bool) {
	j := d.job
	now := time.Since(j.start)
	if err := j.ctx.Err(); err != nil || now >= j.end {
		if err == nil {
			err = context.DeadlineExceeded
		}
		d.abort(err)
		return 0, true
	}
	if now >= d.nextScan {
		d.expire(now)
		d.nextScan = now + j.scanEvery
	}
	conns := j.r.cfg.conns
	for d.next < conns && len(d.inflight) < d.share && j.due(d.next) <= now {
		d.start(d.next, now)
		d.next += d.stride
	}
	if d.next >= conns && len(d.inflight) == 0 {
		return 0, true
	}
	wait = min(pollWait, j.end-now)
	if len(d.inflight) > 0 {
		wait = min(wait, d.nextScan-now)
	}
	if d.next < conns && len(d.inflight) < d.share {
		wait = min(wait, j.due(d.next)-now)
	}
	return max(wait, 0), false
}

// start opens connection i at now: when it returns, the dial has failed
// (and is counted) or is in flight.
func (d *dialer) start(i int, now time.Duration) {
	t, _, src := d.target(i)
	dst, err := t.addr(src)
	fd := -1
	if err == nil {
		fd, err = d.connect(src, dst, t.port)
	}
	if err != nil {
		d.failed(dialErrKind(&dialError{err}))
		return
	}
	dl := d.alloc()
	dl.i, dl.fd, dl.deadline, dl.key = i, fd, now+d.job.r.cfg.dialTimeout, newKey(d.rng)
	d.inflight[int32(fd)] = dl
	if err := d.write(dl); err != nil {
		d.fail(dl, dialErrKind(err))
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if !dl.sent {
		ev.Events |= unix.EPOLLOUT // the connect is still in progress
	}
	if err := unix.EpollCtl(d.l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		d.fail(dl, "epoll_ctl ("+err.Error()+")")
	}
}

// target returns the gateway, room and source address of connection i.
func (d *dialer) target(i int) (t *target, room int, src netip.Addr) {
	cfg := &d.job.r.cfg
	room, url := placement(i, cfg.rooms, len(cfg.urls), cfg.byRoom)
	if n := len(cfg.src); n > 0 {
		src = cfg.src[i%n]
	}
	return &d.job.targets[url], room, src
}

// connect makes a non-blocking TCP socket from src (if valid; the port is
// left to connect) and starts its connect to dst:port.
func (d *dialer) connect(src, dst netip.Addr, port int) (int, error) {
	family := unix.AF_INET6
	if dst.Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if src.IsValid() {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err == nil {
			err = unix.Bind(fd, d.sockaddr(src, 0))
		}
	}
	if err == nil {
		err = setSocketOptions(fd)
	}
	if err == nil {
		if err = unix.Connect(fd, d.sockaddr(dst, port)); err == unix.EINPROGRESS || err == unix.EINTR {
			err = nil // the connect goes on; the request's write or EPOLLOUT tells how it ended
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// setSocketOptions sets TCP_NODELAY, as Go's net.Dialer did. Unlike it,
// the tool sets no TCP keepalive: the gateway checks its clients with
// WebSocket pings (PING_INTERVAL), and at a million held connections Go's
// default probes (every 15 s) were 66 000 packets a second of the hold,
// and four system calls of every connect.
func setSocketOptions(fd int) error {
	return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
}

// sockaddr returns a:port in the loop's scratch address of its family.
func (d *dialer) sockaddr(a netip.Addr, port int) unix.Sockaddr {
	if a.Is4() {
		d.sa4 = unix.SockaddrInet4{Port: port, Addr: a.As4()}
		return &d.sa4
	}
	d.sa6 = unix.SockaddrInet6{Port: port, Addr: a.As16()}
	return &d.sa6
}

// write writes what is left of dl's upgrade request; dl.sent tells
// whether it is all out. An error before the first byte went out is the
// TCP connect's (the socket's pending error, what SO_ERROR would say): a
// dialError.
func (d *dialer) write(dl *dial) error {
	t, room, _ := d.target(dl.i)
	d.req = t.appendRequest(d.req[:0], room, &dl.key)
	for dl.wrote < len(d.req) {
		n, err := unix.Write(dl.fd, d.req[dl.wrote:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil // still connecting, or no room: EPOLLOUT will say
		case err != nil && dl.wrote == 0:
			return &dialError{err}
		case err != nil:
			return err
		}
		dl.wrote += n
	}
	dl.sent = true
	return nil
}

// event handles what epoll reported for the dial on fd, if it is one.
func (d *dialer) event(fd int32, events uint32) {
	dl := d.inflight[fd]
	if dl == nil {
		return
	}
	if !dl.sent {
		if err := d.write(dl); err != nil {
			d.fail(dl, dialErrKind(err))
			return
		}
		if !dl.sent {
			return
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: fd}
		if err := unix.EpollCtl(d.l.epfd, unix.EPOLL_CTL_MOD, dl.fd, &ev); err != nil {
			d.fail(dl, "epoll_ctl ("+err.Error()+")")
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		d.read(dl)
	}
}

// read reads the server's answer to dl's request; once its head is whole
// the connection is established or the dial has failed.
func (d *dialer) read(dl *dial) {
	n, err := unix.Read(dl.fd, d.l.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return // level-triggered: epoll says it again
	case err != nil:
		d.fail(dl, dialErrKind(err))
		return
	case n == 0:
		d.fail(dl, dialErrKind(io.ErrUnexpectedEOF))
		return
	}
	data := d.l.buf[:n]
	if dl.head != nil {
		dl.head = append(dl.head, data...)
		data = dl.head
	}
	end, err := parseUpgradeResponse(data, &dl.key)
	switch {
	case err != nil:
		d.fail(dl, dialErrKind(err))
	case end > 0:
		d.established(dl, data[end:])
	case dl.head == nil:
		dl.head = append([]byte(nil), data...) // the loop's buffer is reused
	}
}

// established makes dl's connection a client that the loop holds; rest
// is what came behind the 101 (frames).
func (d *dialer) established(dl *dial, rest []byte) {
	r := d.job.r
	_, room, _ := d.target(dl.i)
	c := &client{id: dl.i, room: room, sender: -1, fd: dl.fd, peers: make([]seqTracker, r.cfg.senders)}
	if member := dl.i / r.cfg.rooms; member < r.cfg.senders {
		c.sender = room*r.cfg.senders + member
	}
	d.release(dl)
	r.live.opened.Add(1)
	r.live.connected.Add(1)
	r.clients[c.id] = c
	if len(rest) > 0 { // frames that came with the 101
		left, done, err := c.feed(r, rest)
		if err != nil || done {
			c.dropped = true
			r.live.errs.add("closed_at_handshake")
			unix.Close(c.fd)
			r.live.connected.Add(-1)
			return
		}
		c.partial = append([]byte(nil), left...)
	}
	d.l.hold(c)
}

// expire fails the dials past -dial-timeout: dial_timeout while the TCP
// connect is not done, handshake_timeout after, as with ws.Dialer.
func (d *dialer) expire(now time.Duration) {
	for _, dl := range d.inflight {
		if dl.deadline <= now {
			d.fail(dl, dialErrKind(phaseError(dl, os.ErrDeadlineExceeded)))
		}
	}
}

// abort ends the loop's share early because of err (the context's error
// at -connect-timeout or on interrupt, or the loop stopped): dials in
// flight fail with it, and the connections not started count as
// not_dialed.
func (d *dialer) abort(err error) {
	for _, dl := range d.inflight {
		d.fail(dl, dialErrKind(phaseError(dl, err)))
	}
	if conns := d.job.r.cfg.conns; d.next < conns {
		n := int64((conns - d.next + d.stride - 1) / d.stride)
		d.job.r.live.failed.Add(n)
		d.job.r.live.errs.addN("not_dialed", n)
		d.next = conns
	}
}

// phaseError returns err as a dialError if dl's TCP connect was not done.
func phaseError(dl *dial, err error) error {
	if dl.wrote == 0 {
		return &dialError{err}
	}
	return err
}

// fail ends dl: its socket is closed and the failure counted as kind.
func (d *dialer) fail(dl *dial, kind string) {
	fd := dl.fd
	d.release(dl) // before the close: the descriptor may come back at once
	unix.Close(fd)
	d.failed(kind)
}

// failed counts one failed dial of the given kind.
func (d *dialer) failed(kind string) {
	d.job.r.live.failed.Add(1)
	d.job.r.live.errs.add(kind)
}

// alloc returns an empty dial.
func (d *dialer) alloc() *dial {
	if n := len(d.free); n > 0 {
		dl := d.free[n-1]
		d.free = d.free[:n-1]
		return dl
	}
	return &dial{}
}

// release forgets dl, which ended, and keeps it for reuse. Its answer
// buffer is dropped, not reused: the caller may still read what it holds.
func (d *dialer) release(dl *dial) {
	delete(d.inflight, int32(dl.fd))
	*dl = dial{}
	d.free = append(d.free, dl)
}
