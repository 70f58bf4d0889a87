package conn

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/chatgw/gateway/internal/testutil"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	if err := c.setDefaults(); err != nil {
		t.Fatalf("zero Config: %v", err)
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	want := Config{
		MaxMessageBytes:  64 << 10,
		MaxQueueBytes:    1 << 20,
		MaxPartialBytes:  64 << 20,
		FragmentTimeout:  15 * time.Second,
		FrameRate:        200,
		FrameBurst:       1000,
		PingInterval:     30 * time.Second,
		PongTimeout:      30 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		CloseTimeout:     2 * time.Second,
		HTTPReadTimeout:  10 * time.Second,
		HTTPWriteTimeout: 60 * time.Second,
		HTTPIdleTimeout:  30 * time.Second,
		MaxHeaderBytes:   16 << 10,
		HTTPMaxBodyBytes: 64 << 10,
		EventLoops:       runtime.GOMAXPROCS(0),
		WSPrefix:         "/ws/",
		FileLimit:        int(min(rl.Cur, math.MaxInt32)),
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("defaults %+v\nwant %+v", c, want)
	}
	if d := (Config{}).Defaulted(); d.FileLimit != 0 || d.MaxConnections != 0 {
		t.Fatalf("Defaulted: FileLimit %d, MaxConnections %d; want 0 (the process's) and 0 (what it allows)", d.FileLimit, d.MaxConnections)
	}

	set := Config{MaxMessageBytes: 1000, MaxQueueBytes: 2000, MaxPartialBytes: 1 << 20, FragmentTimeout: time.Second,
		FrameRate: 5, FrameBurst: 7, MaxConnections: 9, MaxConnectionsPerIP: 3, PingInterval: time.Second, PongTimeout: 2 * time.Second,
		HandshakeTimeout: 3 * time.Second, CloseTimeout: 4 * time.Second, HTTPReadTimeout: 5 * time.Second, HTTPWriteTimeout: 6 * time.Second,
		HTTPIdleTimeout: 7 * time.Second, MaxHeaderBytes: 4096, HTTPMaxBodyBytes: 10, EventLoops: 3, WSPrefix: "/socket/", FileLimit: 500}
	got := set
	if err := got.setDefaults(); err != nil {
		t.Fatalf("explicit Config: %v", err)
	}
	if !reflect.DeepEqual(got, set) {
		t.Fatalf("setDefaults changed set fields: %+v\nwant %+v", got, set)
	}
}

// TestConfigBudget: MaxConnections is lowered to fit FileLimit, keeping
// descriptors for the process and for plain HTTP; -1 means the limit.
func TestConfigBudget(t *testing.T) {
	for _, tc := range []struct {
		fileLimit, maxConns int
		sockets, websockets int
		wantErr             bool
	}{
		{1 << 20, 10_000, 1<<20 - 64, 10_000, false},
		{1024, 10_000, 960, 896, false},
		{1024, -1, 960, 896, false},
		{1024, 100, 960, 100, false},
		{164, 10_000, 100, 75, false},
		{66, 10_000, 2, 2, false},
		{65, 10_000, 0, 0, true},
	} {
		c := Config{FileLimit: tc.fileLimit, MaxConnections: tc.maxConns}
		sockets, websockets, err := c.budget()
		if (err != nil) != tc.wantErr || err == nil && (sockets != tc.sockets || websockets != tc.websockets) {
			t.Errorf("FileLimit %d, MaxConnections %d: %d sockets, %d WebSockets, %v; want %d, %d, error %v",
				tc.fileLimit, tc.maxConns, sockets, websockets, err, tc.sockets, tc.websockets, tc.wantErr)
		}
	}
	s := newTestServer(t, Config{FileLimit: 1024}, &recorder{})
	if got := s.Config().MaxConnections; got != 896 {
		t.Fatalf("Config().MaxConnections = %d with FileLimit 1024, want 896", got)
	}
	if _, err := NewServer(Config{FileLimit: 65}, &recorder{}, testutil.DiscardLogger()); err == nil || !strings.Contains(err.Error(), "ulimit") {
		t.Fatalf("NewServer with FileLimit 65: %v, want an error saying to raise the limit", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" means valid; otherwise a part of the error
	}{
		{"zero", Config{}, ""},
		{"negative max message", Config{MaxMessageBytes: -1}, "MAX_MESSAGE_BYTES"},
		{"queue under twice the message", Config{MaxMessageBytes: 1000, MaxQueueBytes: 1999}, "MAX_QUEUE_BYTES"},
		{"queue of exactly twice the message", Config{MaxMessageBytes: 1000, MaxQueueBytes: 2000}, ""},
		{"big message with the default queue", Config{MaxMessageBytes: 1 << 20}, "MAX_QUEUE_BYTES"},
		{"big message with a big queue", Config{MaxMessageBytes: 1 << 20, MaxQueueBytes: 2 << 20}, ""},
		{"small queue with the default message", Config{MaxQueueBytes: 100 << 10}, "MAX_QUEUE_BYTES"},
		{"negative queue", Config{MaxQueueBytes: -1}, "MAX_QUEUE_BYTES"},
		{"negative event loops", Config{EventLoops: -1}, "EVENT_LOOPS"},
		{"1024 event loops", Config{EventLoops: 1024}, ""},
		{"1025 event loops", Config{EventLoops: 1025}, "EVENT_LOOPS"},
		{"negative ping interval", Config{PingInterval: -time.Second}, "PING_INTERVAL"},
		{"negative pong timeout", Config{PongTimeout: -1}, "PONG_TIMEOUT"},
		{"negative handshake timeout", Config{HandshakeTimeout: -1}, "HANDSHAKE_TIMEOUT"},
		{"negative close timeout", Config{CloseTimeout: -1}, "CLOSE_TIMEOUT"},
		{"negative partial bytes", Config{MaxPartialBytes: -1}, "MAX_PARTIAL_BYTES"},
		{"partial bytes under one message", Config{MaxMessageBytes: 1000, MaxQueueBytes: 2000, MaxPartialBytes: 3000}, "MAX_PARTIAL_BYTES"},
		{"partial bytes of one message", Config{MaxMessageBytes: 1000, MaxQueueBytes: 2000, MaxPartialBytes: maxPartialPerConn(1000)}, ""},
		{"queue of 1 GiB", Config{MaxQueueBytes: 1 << 30}, ""},
		{"queue over 1 GiB", Config{MaxQueueBytes: 1<<30 + 1}, "MAX_QUEUE_BYTES"},
		{"negative fragment timeout", Config{FragmentTimeout: -1}, "FRAGMENT_TIMEOUT"},
		{"frame rate -1: no limit", Config{FrameRate: -1}, ""},
		{"frame rate -2", Config{FrameRate: -2}, "FRAME_RATE"},
		{"frame rate over 1e9", Config{FrameRate: 1e9 + 1}, "FRAME_RATE"},
		{"negative frame burst", Config{FrameBurst: -1}, "FRAME_BURST"},
		{"max connections -1: the file limit", Config{MaxConnections: -1}, ""},
		{"max connections -2", Config{MaxConnections: -2}, "MAX_CONNECTIONS"},
		{"per-IP -1: no limit", Config{MaxConnectionsPerIP: -1}, ""},
		{"per-IP -2", Config{MaxConnectionsPerIP: -2}, "MAX_CONNECTIONS_PER_IP"},
		{"negative HTTP read timeout", Config{HTTPReadTimeout: -1}, "HTTP_READ_TIMEOUT"},
		{"negative HTTP write timeout", Config{HTTPWriteTimeout: -1}, "HTTP_WRITE_TIMEOUT"},
		{"negative HTTP idle timeout", Config{HTTPIdleTimeout: -1}, "HTTP_IDLE_TIMEOUT"},
		{"header bytes under 1 KiB", Config{MaxHeaderBytes: 1000}, "MAX_HEADER_BYTES"},
		{"header bytes over 1 MiB", Config{MaxHeaderBytes: 2 << 20}, "MAX_HEADER_BYTES"},
		{"negative body bytes", Config{HTTPMaxBodyBytes: -1}, "HTTP_MAX_BODY_BYTES"},
		{"negative file limit", Config{FileLimit: -1}, "FileLimit"},
		{"origin with a path", Config{AllowedOrigins: []string{"https://a.example/app"}}, "ALLOWED_ORIGINS"},
		{"origins", Config{AllowedOrigins: []string{"https://a.example", "b.example", ".c.example", "null"}}, ""},
		{"prefix without slash", Config{WSPrefix: "ws/"}, "WSPrefix"},
		{"root prefix", Config{WSPrefix: "/"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.setDefaults()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("setDefaults: %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("setDefaults: %v, want an error naming %s", err, tc.want)
			}
		})
	}
	t.Run("NewServer refuses an invalid Config", func(t *testing.T) {
		if _, err := NewServer(Config{MaxMessageBytes: -1}, &recorder{}, testutil.DiscardLogger()); err == nil {
			t.Fatal("NewServer accepted MaxMessageBytes -1")
		}
	})
	t.Run("NewServer needs a Handler and a logger", func(t *testing.T) {
		if _, err := NewServer(Config{}, nil, testutil.DiscardLogger()); err == nil {
			t.Fatal("NewServer accepted a nil Handler")
		}
		if _, err := NewServer(Config{}, &recorder{}, nil); err == nil {
			t.Fatal("NewServer accepted a nil logger")
		}
	})
}

// newTestServer returns a server that is not listening, for tests of its
// configuration; it is shut down at the end of the test.
func newTestServer(t *testing.T, cfg Config, h Handler) *Server {
	t.Helper()
	return newLoggedServer(t, cfg, h, testutil.DiscardLogger())
}

func newLoggedServer(t *testing.T, cfg Config, h Handler, logger *slog.Logger) *Server {
	t.Helper()
	if cfg.TrustedProxies == nil {
		// The tests' clients are on loopback, which is trusted by default:
		// they act as clients from the internet unless a test says not.
		cfg.TrustedProxies = []string{"none"}
	}
	if cfg.EventLoops == 0 {
		cfg.EventLoops = 1
	}
	s, err := NewServer(cfg, h, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil && !errors.Is(err, ErrServerClosed) {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

func TestHostAllowed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allowed []string
		yes, no []string
	}{
		{"empty list accepts any", nil,
			[]string{"example.com", "example.com:8000", "[::1]:1", "", "anything"}, nil},
		{"star accepts any", []string{"*"},
			[]string{"example.com", "other.org:443", ""}, nil},
		{"star among names accepts any", []string{"chat.example.com", "*"},
			[]string{"other.org"}, nil},
		{"name", []string{"chat.example.com"},
			[]string{"chat.example.com", "chat.example.com:8000", "chat.example.com:", "CHAT.Example.COM", "Chat.Example.Com:443"},
			[]string{"example.com", "chat.example.com.evil.org", "evil.org:chat.example.com", "xchat.example.com", "", ":8000", "chat.example.co"}},
		{"names are trimmed and case-folded", []string{"  Chat.Example.COM "},
			[]string{"chat.example.com", "CHAT.EXAMPLE.COM:1"}, []string{"example.com"}},
		{"domain pattern, as in Django", []string{".example.com"},
			[]string{"example.com", "a.example.com", "a.b.example.com:80", "Example.COM."}, []string{"badexample.com", "example.org", "com"}},
		{"several names", []string{"a.example", "b.example"},
			[]string{"a.example", "b.example:80"}, []string{"c.example"}},
		{"IPv4", []string{"127.0.0.1"},
			[]string{"127.0.0.1", "127.0.0.1:8000"}, []string{"127.0.0.2", "localhost"}},
		{"IPv6 listed bare", []string{"::1"},
			[]string{"[::1]", "[::1]:8000"}, []string{"[::2]:8000", "127.0.0.1"}},
		{"IPv6 case", []string{"fe80::ABCD"},
			[]string{"[FE80::abcd]:8000", "[fe80::abcd]"}, []string{"[fe80::abce]"}},
		// Entries carry no port (the doc of AllowedHosts): one with a port
		// never matches, as in the original Django app.
		{"entry with a port matches nothing", []string{"chat.example.com:8000"},
			nil, []string{"chat.example.com:8000", "chat.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, Config{AllowedHosts: tc.allowed}, &recorder{})
			for _, h := range tc.yes {
				if !s.hostAllowed([]byte(h)) {
					t.Errorf("Host %q refused with AllowedHosts %q", h, tc.allowed)
				}
			}
			for _, h := range tc.no {
				if s.hostAllowed([]byte(h)) {
					t.Errorf("Host %q accepted with AllowedHosts %q", h, tc.allowed)
				}
			}
		})
	}
}

// TestHostAllowedBracketedIPv6: the doc of AllowedHosts says it lists "Host
// header values (without port)", and the Host header of an IPv6 address is
// bracketed ("[::1]", RFC 9110 7.2 and RFC 3986 3.2.2). Such an entry must
// match; hostAllowed strips the brackets from the header but NewServer
// keeps them in the entry, so it never does.
func TestHostAllowedBracketedIPv6(t *testing.T) {
	s := newTestServer(t, Config{AllowedHosts: []string{"[::1]"}}, &recorder{})
	for _, h := range []string{"[::1]", "[::1]:8000"} {
		if !s.hostAllowed([]byte(h)) {
			t.Errorf("Host %q refused with AllowedHosts [\"[::1]\"]", h)
		}
	}
}

// recorder is a Handler that accepts every upgrade and reports what the
// server calls.
type recorder struct {
	opened chan *Conn
	closed chan error
	msgs   chan string
}

func newRecorder() *recorder {
	return &recorder{opened: make(chan *Conn, 1000), closed: make(chan error, 1000), msgs: make(chan string, 1000)}
}

func (r *recorder) Route(uri []byte) (string, error) { return string(uri), nil }
func (r *recorder) OnOpen(c *Conn) (Opening, error) {
	if r.opened != nil {
		r.opened <- c
	}
	return OpenNow, nil
}

// OnMessage and OnClose never block the loop: what does not fit in the
// channels is dropped.
func (r *recorder) OnMessage(c *Conn, msg []byte) time.Duration {
	select {
	case r.msgs <- string(msg):
	default:
	}
	return 0
}
func (r *recorder) OnClose(c *Conn, cause error) {
	select {
	case r.closed <- cause:
	default:
	}
}

// startServer runs a server on 127.0.0.1:0 until the end of the test.
func startServer(t *testing.T, cfg Config, h Handler) *Server {
	t.Helper()
	return startLoggedServer(t, cfg, h, testutil.DiscardLogger(), nil)
}

// startLoggedServer is startServer with a logger, and setup called
// between Listen and Serve (to replace Server.accept).
func startLoggedServer(t *testing.T, cfg Config, h Handler, logger *slog.Logger, setup func(*Server)) *Server {
	t.Helper()
	s := newLoggedServer(t, cfg, h, logger)
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(s)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	t.Cleanup(func() {
		// Registered after newLoggedServer's cleanup, so it runs first.
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
		defer cancel()
		_ = s.Shutdown(ctx)
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s
}

// dialServer opens a WebSocket to s and returns the client side and the
// server's Conn.
func dialServer(t *testing.T, s *Server, rec *recorder) (net.Conn, *bufio.Reader, *Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Timeout)
	defer cancel()
	nc, br, _, err := ws.Dial(ctx, "ws://"+s.Addr().String()+"/ws/test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if br == nil {
		br = bufio.NewReader(nc)
	}
	select {
	case c := <-rec.opened:
		return nc, br, c
	case <-time.After(testutil.Timeout):
		t.Fatal("OnOpen was not called")
	}
	return nil, nil, nil
}

// TestSendReferences: Send takes a reference to the frame and the loop
// drops it once the frame is written; frames sent to a closed connection
// are not retained.
func TestSendReferences(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{}, rec)
	type peer struct {
		nc net.Conn
		br *bufio.Reader
		c  *Conn
	}
	var peers []peer
	for range 3 {
		nc, br, c := dialServer(t, s, rec)
		peers = append(peers, peer{nc, br, c})
	}
	f := NewTextFrame([]byte("hello"))
	for _, p := range peers {
		p.c.Send(f)
	}
	for i, p := range peers {
		_ = p.nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
		wf, err := ws.ReadFrame(p.br)
		if err != nil || wf.Header.OpCode != ws.OpText || string(wf.Payload) != "hello" {
			t.Fatalf("client %d read %+v %q %v", i, wf.Header, wf.Payload, err)
		}
	}
	testutil.Eventually(t, "the loop to release the written frame", func() bool { return f.refs.Load() == 1 })

	// Close one connection; a frame sent to it afterwards is dropped.
	peers[0].c.Close(ErrShutdown)
	wf, err := ws.ReadFrame(peers[0].br)
	if code, reason := ws.ParseCloseFrameData(wf.Payload); err != nil || wf.Header.OpCode != ws.OpClose || code != ws.StatusGoingAway || reason == "" {
		t.Fatalf("closed client read %+v %d %q %v, want close 1001 with a reason", wf.Header, code, reason, err)
	}
	select {
	case cause := <-rec.closed:
		if !errors.Is(cause, ErrShutdown) {
			t.Fatalf("OnClose cause %v, want ErrShutdown", cause)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("OnClose was not called")
	}
	peers[0].c.Send(f)
	if got := f.refs.Load(); got != 1 {
		t.Fatalf("Send to a closing connection left %d references, want 1", got)
	}
	f.Release()
}

// TestSendToSleepingLoop: frames sent from another goroutine while the
// loop sleeps reach every client, whether that goroutine writes them
// (up to maxDirectWrites connections) or wakes the loop for the rest; and
// a write that fills the socket on that goroutine is finished by the loop
// once the client reads.
func TestSendToSleepingLoop(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{EventLoops: 1, MaxQueueBytes: 8 << 20}, rec)
	l := s.loops[0]
	asleep := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return !l.inRound && !l.wakeup
	}
	type peer struct {
		nc net.Conn
		br *bufio.Reader
		c  *Conn
	}
	peers := make([]peer, 2*maxDirectWrites+3)
	for i := range peers {
		nc, br, c := dialServer(t, s, rec)
		peers[i] = peer{nc, br, c}
	}
	for round := range 3 {
		testutil.Eventually(t, "the loop to sleep", asleep)
		f := NewTextFrame([]byte("hello " + strconv.Itoa(round)))
		for _, p := range peers {
			p.c.Send(f)
		}
		f.Release()
		for i, p := range peers {
			_ = p.nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
			wf, err := ws.ReadFrame(p.br)
			if err != nil || string(wf.Payload) != "hello "+strconv.Itoa(round) {
				t.Fatalf("round %d: client %d read %q, %v", round, i, wf.Payload, err)
			}
		}
	}

	// 4 MiB to a client that reads nothing yet: far more than the socket
	// takes, so the write on this goroutine stops at EAGAIN.
	testutil.Eventually(t, "the loop to sleep", asleep)
	p := peers[0]
	payload := bytes.Repeat([]byte("x"), 4<<20)
	big := NewTextFrame(payload)
	p.c.Send(big)
	big.Release()
	if n, _ := p.c.Queued(); n == 0 {
		t.Fatal("4 MiB were written at once: the socket took everything, nothing tests the rest")
	}
	_ = p.nc.SetReadDeadline(time.Now().Add(testutil.Timeout))
	wf, err := ws.ReadFrame(p.br)
	if err != nil || !bytes.Equal(wf.Payload, payload) {
		t.Fatalf("the big frame: read %d bytes, %v; want all %d", len(wf.Payload), err, len(payload))
	}
	testutil.Eventually(t, "the queue to empty", func() bool { n, _ := p.c.Queued(); return n == 0 })
}

// TestSlowConsumerReleasesFrames: a client that never reads is closed with
// ErrSlowConsumer once its queue passes MaxQueueBytes, and every frame it
// held is released.
func TestSlowConsumerReleasesFrames(t *testing.T) {
	rec := newRecorder()
	s := startServer(t, Config{MaxMessageBytes: 1 << 10, MaxQueueBytes: 16 << 10, CloseTimeout: 100 * time.Millisecond}, rec)
	_, _, c := dialServer(t, s, rec)
	payload := []byte(strings.Repeat("x", 1000))
	var frames []*Frame
	closing := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.closing
	}
	// Loopback socket buffers hold megabytes; keep sending until they and
	// the queue are full.
	for i := 0; !closing(); i++ {
		if i == 1_000_000 {
			t.Fatal("1 GB sent to a client that does not read and it is still open")
		}
		f := NewTextFrame(payload)
		c.Send(f)
		frames = append(frames, f)
	}
	select {
	case cause := <-rec.closed:
		if !errors.Is(cause, ErrSlowConsumer) {
			t.Fatalf("OnClose cause %v, want ErrSlowConsumer", cause)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("OnClose was not called")
	}
	testutil.Eventually(t, "the socket to be released", func() bool { return s.Stats().Open == 0 })
	if st := s.Stats(); st.SlowConsumers != 1 || st.Closes["server 1008"] != 1 || st.QueuedBytes != 0 {
		t.Errorf("Stats after a slow consumer: %d slow consumers, closes %v, %d bytes queued; want 1, server 1008 once, 0",
			st.SlowConsumers, st.Closes, st.QueuedBytes)
	}
	for i, f := range frames {
		if got := f.refs.Load(); got != 1 {
			t.Fatalf("frame %d of %d has %d references after the close, want 1 (ours)", i, len(frames), got)
		}
		f.Release()
	}
}
