package redistest

import (
	"io"
	"net"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy sits between clients and a real Redis server and passes bytes
// through, unless told to corrupt the server's replies: a fault injector
// for what a misbehaving middlebox or a broken server could send. It is
// not a fake Redis: every command reaches the real server.
type Proxy struct {
	ln      net.Listener
	target  string
	corrupt atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	closed  bool
}

// streamID matches a RESP bulk string holding a stream ID, "$15\r\n1-2\r\n".
var streamID = regexp.MustCompile(`\$\d+\r\n\d+-\d+\r\n`)

// StartProxy starts a proxy to target on a free loopback port; it is
// closed when the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// CorruptIDs makes the proxy replace, while on, every stream ID in the
// server's replies (XADD's answer, the IDs of XREAD entries) with "bad".
// IDs split across two reads of the connection pass unchanged.
func (p *Proxy) CorruptIDs(on bool) { p.corrupt.Store(on) }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			// Close ran between Accept and now.
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(s, c); s.Close() }()
		go func() { defer p.wg.Done(); p.replies(c, s); c.Close() }()
	}
}

// replies copies the server's bytes to the client, corrupting them when
// asked to.
func (p *Proxy) replies(c, s net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := s.Read(buf)
		if n > 0 {
			out := buf[:n]
			if p.corrupt.Load() {
				out = streamID.ReplaceAllLiteral(out, []byte("$3\r\nbad\r\n"))
			}
			if _, werr := c.Write(out); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Close cuts every connection through the proxy and refuses new ones, as
// a network partition would: the clients behind it lose Redis while the
// server keeps running for everyone else. Closing twice does nothing
// more.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
