package conn

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Connection caps. Serve admits a socket only while the server holds
// fewer than its descriptor budget (Config.FileLimit less fdlimit.Reserve) and
// the client's address fewer than Config.MaxConnectionsPerIP; otherwise
// the socket is answered 503 with Retry-After at once and closed. The
// WebSocket cap (Config.MaxConnections, below the budget so that plain
// HTTP still gets in) is checked at the upgrade (upgrade.go).

// retryAfterSeconds is the Retry-After of every 503 the server sends.
const retryAfterSeconds = 10

// ipLimit counts the sockets each client address holds: an IPv4 address,
// or the /64 of an IPv6 one (what one host usually gets).
type ipLimit struct {
	max int // 0: no limit, nothing is counted
	mu  sync.Mutex
	n   map[netip.Addr]int32
}

// perIPAddr returns the address a's sockets are counted under: a itself
// for IPv4, the first address of its /64 for IPv6.
func perIPAddr(a netip.Addr) netip.Addr {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// acquire counts one more socket for a, unless a holds max already.
func (l *ipLimit) acquire(a netip.Addr) bool {
	k := perIPAddr(a)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = make(map[netip.Addr]int32)
	}
	if int(l.n[k]) >= l.max {
		return false
	}
	l.n[k]++
	return true
}

// release counts one socket of a less.
func (l *ipLimit) release(a netip.Addr) {
	k := perIPAddr(a)
	l.mu.Lock()
	if l.n[k] <= 1 {
		delete(l.n, k)
	} else {
		l.n[k]--
	}
	l.mu.Unlock()
}

// held returns the sockets counted for a.
func (l *ipLimit) held(a netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int(l.n[perIPAddr(a)])
}

// admit decides whether a socket just accepted from addr may be held. It
// returns whether the socket was counted for its address (to release
// then), or the reason of a refusal. A trusted proxy's socket is not
// counted for the proxy: for the client it names, if any (setClient).
func (s *Server) admit(addr netip.Addr, proxy bool) (perIP bool, reason string) {
	if held := s.stats.open.Load() + s.stats.http.Load(); held >= s.sockets {
		// At the cap, an unfinished request head is cheaper to lose than
		// an established connection: evict the oldest heads to make room
		// (evictHead), and admit this socket in the meantime, within
		// evictReserve. So a liveness probe and a fresh join still get in
		// while slow heads fill the server.
		if held >= s.sockets+evictReserve {
			s.stats.refuse(refusedCapacity)
			return false, "server at its connection limit; retry later"
		}
		for _, l := range s.loops {
			l.post(reqEvict, nil, nil)
		}
	}
	if s.perIP.max == 0 || proxy {
		return false, ""
	}
	if !s.perIP.acquire(addr) {
		s.stats.refuse(refusedPerIP)
		return false, fmt.Sprintf("too many connections from %s (MAX_CONNECTIONS_PER_IP is %d); retry later", perIPAddr(addr), s.perIP.max)
	}
	return true, ""
}

// evictReserve is how many sockets over its budget the server admits
// while it evicts unfinished heads, taken from the descriptors reserved
// for the process (fdlimit.Reserve).
const evictReserve = 16

// minHeadAge is the youngest unfinished request head evictHead evicts: a
// client on a slow link sends its head within it.
const minHeadAge = int64(250 * time.Millisecond)

// evictHead closes the loop's oldest connection that has not finished its
// request head for minHeadAge, with 503: the server is at its cap.
func (l *loop) evictHead() {
	var oldest *Conn
	started := func(c *Conn) int64 { return c.deadline - int64(l.srv.cfg.HandshakeTimeout) }
	for _, c := range l.conns {
		if c.state == stateHandshake && l.now-started(c) >= minHeadAge && (oldest == nil || c.deadline < oldest.deadline) {
			oldest = c
		}
	}
	if oldest != nil {
		l.srv.stats.evicted.Add(1)
		l.reject(oldest, http.StatusServiceUnavailable, "server at its connection limit and the request head unfinished; retry later", nil)
	}
}

// setClient makes client, named by the trusted proxy c comes from, c's
// address, and counts it for MaxConnectionsPerIP. It returns the reason
// of a refusal when the client holds its share already; the caller
// refuses the connection and counts it (refusedPerIP).
func (s *Server) setClient(c *Conn, client netip.AddrPort) string {
	c.remote, c.anonymous = client, false
	if s.perIP.max == 0 || c.perIP {
		return ""
	}
	if !s.perIP.acquire(client.Addr()) {
		return fmt.Sprintf("too many connections from %s (MAX_CONNECTIONS_PER_IP is %d); retry later", perIPAddr(client.Addr()), s.perIP.max)
	}
	c.perIP = true
	return ""
}

// releaseIP gives back the per-address count of c's socket.
func (s *Server) releaseIP(c *Conn) {
	if c.perIP {
		c.perIP = false
		s.perIP.release(c.remote.Addr())
	}
}

// refuse answers a socket the server will not hold with 503 and a reason,
// and closes it.
func refuse(fd int, reason string) {
	_, _ = unix.Write(fd, errorResponse(http.StatusServiceUnavailable, reason))
	var buf [2048]byte
	discardInput(fd, buf[:])
	unix.Close(fd)
}

// refuseWithSpare runs when accept fails for lack of descriptors: it
// closes the spare descriptor, accepts the waiting connection in its
// place, answers it 503 and closes it, then opens the spare again. It
// reports whether a connection was answered; if not, Serve backs off.
func (s *Server) refuseWithSpare() bool {
	if s.spare < 0 {
		s.spare = openSpare() // freed by an earlier round and not reopened
		return false
	}
	unix.Close(s.spare)
	s.spare = -1
	fd, _, err := s.accept(s.lfd)
	if err == nil {
		s.stats.accepted.Add(1)
		s.stats.refuse(refusedCapacity)
		refuse(fd, "server out of file descriptors; retry later")
		s.warnAccept("out of file descriptors; refusing connections", unix.EMFILE, 0)
	}
	s.spare = openSpare()
	return err == nil
}

// openSpare opens the descriptor kept free for refuseWithSpare; -1 when
// even that fails.
func openSpare() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// accept4 is accept(2) giving a non-blocking descriptor and the peer's
// address: Server.accept. It reads the address into a buffer on the stack
// instead of unix.Accept4's two allocations: every connection's first
// bytes of garbage.
func accept4(lfd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	n := uint32(unix.SizeofSockaddrAny)
	fd, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&n)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, netip.AddrPort{}, errno
	}
	return int(fd), rawToAddrPort(&rsa), nil
}

// rawToAddrPort returns the address of an AF_INET or AF_INET6 socket
// address (IPv4-mapped IPv6 unmapped); the zero AddrPort for others.
func rawToAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), networkPort(a.Port))
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), networkPort(a.Port))
	}
	return netip.AddrPort{}
}

// networkPort converts a port as stored in a socket address (network
// byte order) to a number.
func networkPort(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// warnAccept logs an accept failure at most once a second, with the
// number of failures since the last line.
func (s *Server) warnAccept(msg string, err error, retryIn time.Duration) {
	s.failures++
	if now := time.Now(); now.Sub(s.lastWarned) >= time.Second {
		s.log.Warn(msg, "err", err, "failures", s.failures, "retry_in", retryIn, "open", s.stats.open.Load(), "http", s.stats.http.Load())
		s.lastWarned, s.failures = now, 0
	}
}

// errorResponse is the HTTP response the server sends when it refuses a
// request itself: the status, a one-line reason as the body, and
// Retry-After with a 503.
func errorResponse(status int, reason string) []byte {
	b := make([]byte, 0, 160+len(reason))
	b = fmt.Appendf(b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	if status == http.StatusServiceUnavailable {
		b = append(b, "Retry-After: "+strconv.Itoa(retryAfterSeconds)+"\r\n"...)
	}
	b = fmt.Appendf(b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n", len(reason)+1, reason)
	return b
}

// discardInput reads and drops what a non-blocking socket holds, so that closing
// it sends FIN after the bytes queued to the client rather than RST,
// which could discard them. It reads two buffers at most: a client that
// is still flooding gets RST.
func discardInput(fd int, buf []byte) {
	for range 2 {
		n, err := rawRead(fd, buf)
		if err != nil || n < len(buf) {
			return
		}
	}
}
