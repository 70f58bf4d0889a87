package netlab

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Proxy is a TCP fault proxy on a lab host: it forwards each connection
// made to its address to a target, holding every chunk for a delay with
// jitter in each direction (this kernel has no netem), and can reset all
// the connections it carries. It keeps the order of the bytes: a chunk
// never overtakes the one before it.
type Proxy struct {
	ln     net.Listener
	h      *Host
	target string
	delay  time.Duration
	jitter time.Duration

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartProxy listens on h at port (0 for any) and forwards to target,
// dialing from h, with delay ± jitter each way. It stops when the test
// ends.
func (h *Host) StartProxy(t testing.TB, port int, target string, delay, jitter time.Duration) *Proxy {
	t.Helper()
	ln, err := h.Listen("tcp", net.JoinHostPort(h.addr.String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("netlab: proxy on %s: %v", h.Name, err)
	}
	p := &Proxy{ln: ln, h: h, target: target, delay: delay, jitter: jitter, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr returns the proxy's address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Reset closes every connection the proxy carries, both sides, mid-stream.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // RST, not FIN
		}
		c.Close()
	}
}

// accept forwards connections until the listener closes.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := p.h.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

// chunk is bytes read and when they may be written.
type chunk struct {
	b  []byte
	at time.Time
}

// pipe copies src to dst, each chunk held until its time; when either
// side ends, both are closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		last := time.Time{}
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				b := append([]byte(nil), buf[:n]...)
				at := time.Now().Add(p.delay + time.Duration((rand.Float64()*2-1)*float64(p.jitter)))
				if at.Before(last) {
					at = last // never overtake the chunk before
				}
				last = at
				q <- chunk{b, at}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range q {
		sleepUntil(c.at)
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	for range q { // let the reader end
	}
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// preciseBelow is the longest wait that sleepUntil makes with a
// nanosleep on the goroutine's thread: Go's timers wake idle processes
// up to a millisecond late (a 1.2 ms time.Sleep measured 2.2 ms here),
// which would turn a 1 ms delay into 1.5. Longer waits (the clients' 20
// ms) keep time.Sleep, so that many connections do not each hold a
// thread.
const preciseBelow = 5 * time.Millisecond

// sleepUntil waits until t.
func sleepUntil(t time.Time) {
	d := time.Until(t)
	switch {
	case d <= 0:
	case d < preciseBelow:
		ts := syscall.NsecToTimespec(int64(d))
		for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
		}
	default:
		time.Sleep(d)
	}
}

// close stops the proxy and its connections.
func (p *Proxy) close() {
	p.ln.Close()
	p.Reset()
	p.wg.Wait()
}
