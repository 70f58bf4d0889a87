//go:build network

package network

// The processes, Redis commands and probe of BenchmarkNetworkLatency
// (latency_bench_test.go). They take a *testing.B: the tests' helpers
// (startRedis, startGateway, waitFor) take a *testing.T.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
	"github.com/chatgw/gateway/internal/redistest"
)

const (
	// benchSetupWithin bounds each wait of the setup (Redis listening,
	// the replica in sync, a gateway ready).
	benchSetupWithin = 15 * time.Second
	// probeEvery is how often the round-trip probe PINGs Redis.
	probeEvery = 10 * time.Millisecond
)

// benchProc is a process a benchmark started on a lab host. It is
// killed, and waited for, when the benchmark ends; its output is kept
// for the messages of a failure.
type benchProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	mu   sync.Mutex
	out  bytes.Buffer
}

// startBenchProc starts cmd, named name in messages.
func startBenchProc(b *testing.B, name string, cmd *exec.Cmd) *benchProc {
	b.Helper()
	p := &benchProc{name: name, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = lockedWriter{&p.mu, &p.out}, lockedWriter{&p.mu, &p.out}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if b.Failed() {
			b.Logf("%s's output:\n%s", name, p.output())
		}
	})
	return p
}

// pid is the process's ID: ip netns exec execs the program, so it is the
// program's own.
func (p *benchProc) pid() int { return p.cmd.Process.Pid }

// output returns what the process wrote so far.
func (p *benchProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// exited reports whether the process has ended.
func (p *benchProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startBenchRedis runs redis-server on h, port 6379, with args added
// (such as --replicaof), waits until it answers PING, and returns it
// with its address.
func startBenchRedis(b *testing.B, h *netlab.Host, args ...string) (*benchProc, string) {
	b.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Fatal("redis-server not found: install it with `apt-get install -y redis-server` (or run `make test`, which installs it)")
	}
	addr := h.Addr().String() + ":6379"
	// --dir: a replica writes the RDB of its first sync there.
	args = append([]string{"--port", "6379", "--bind", h.Addr().String(), "--save", "", "--appendonly", "no",
		"--protected-mode", "no", "--repl-diskless-sync-delay", "0", "--dir", b.TempDir()}, args...)
	p := startBenchProc(b, "redis-server on "+h.Name, h.Command(bin, args...))
	benchWait(b, "redis-server on "+h.Name+" to answer PING", func() bool {
		if p.exited() {
			b.Fatalf("redis-server on %s exited:\n%s", h.Name, p.output())
		}
		pong, err := benchRedisDo(h, addr, "PING")
		return err == nil && pong == "PONG"
	})
	return p, addr
}

// startBenchGateway runs the gateway on h in production, on the Redis at
// redisAddr, configured as scripts/redisbench.sh does, with env added;
// waits until /readyz answers 200 (Redis reached) and returns it with
// its address. The per-address limits are lifted: all of loadgen's
// connections come from one host (they are not counted anyway from a
// private address naming no client, but the benchmark should not depend
// on TRUSTED_PROXIES).
func startBenchGateway(b *testing.B, h *netlab.Host, name, bin, redisAddr string, env map[string]string) (*benchProc, string) {
	b.Helper()
	redisHost, redisPort, _ := net.SplitHostPort(redisAddr)
	cmd := h.Command(bin)
	cmd.Env = append(os.Environ(), "ENVIRONMENT=production", "ALLOWED_HOSTS=*", "LOG_LEVEL=warn",
		"IP_REDIS="+redisHost, "PORT_REDIS="+redisPort,
		"LISTEN_HOST="+h.Addr().String(), fmt.Sprintf("PORT=%d", gatewayPort),
		"MAX_CONNECTIONS_PER_IP=-1", "RATE_LIMIT_PER_IP=-1", "BYTE_RATE_PER_IP=-1")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := startBenchProc(b, name, cmd)
	addr := fmt.Sprintf("%s:%d", h.Addr(), gatewayPort)
	benchWait(b, name+" to answer /readyz", func() bool {
		if p.exited() {
			b.Fatalf("%s exited at start:\n%s", name, p.output())
		}
		_, err := httpGet(h, addr, "/readyz")
		return err == nil
	})
	return p, addr
}

// benchWait polls cond every 50 ms until it holds, failing the benchmark
// after benchSetupWithin.
func benchWait(b *testing.B, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(benchSetupWithin)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %v waiting for %s", benchSetupWithin, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// benchRoundTrips returns the sum of chat_redis_round_trips_total over the
// gateways on hosts.
func benchRoundTrips(b *testing.B, hosts []*netlab.Host) int64 {
	b.Helper()
	var n int64
	for _, h := range hosts {
		body, err := httpGet(h, fmt.Sprintf("%s:%d", h.Addr(), gatewayPort), "/metrics")
		if err != nil {
			b.Fatalf("metrics of the gateway on %s: %v", h.Name, err)
		}
		for line := range strings.Lines(string(body)) {
			if v, ok := strings.CutPrefix(line, "chat_redis_round_trips_total "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += int64(f)
			}
		}
	}
	return n
}

// benchRedisCalls returns how many times the Redis at addr ran cmd
// (lower case), from INFO commandstats.
func benchRedisCalls(b *testing.B, h *netlab.Host, addr, cmd string) int64 {
	b.Helper()
	info, err := benchRedisDo(h, addr, "INFO", "commandstats")
	if err != nil {
		b.Fatalf("INFO commandstats: %v", err)
	}
	for line := range strings.Lines(info) {
		if rest, ok := strings.CutPrefix(line, "cmdstat_"+cmd+":calls="); ok {
			calls, _, _ := strings.Cut(rest, ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			return n
		}
	}
	return 0
}

// benchRedisDo sends one command to the Redis at addr from host h on a new
// connection and returns its answer.
func benchRedisDo(h *netlab.Host, addr string, args ...string) (string, error) {
	c, err := dialBenchRESP(h, addr)
	if err != nil {
		return "", err
	}
	defer c.close()
	return c.do(args...)
}

// benchRESPConn is a plain RESP connection to Redis, for the benchmark's own
// commands (PING, INFO): the gateway's client stays the only other one.
type benchRESPConn struct {
	c net.Conn
	r *bufio.Reader
}

// dialBenchRESP connects to the Redis at addr from host h.
func dialBenchRESP(h *netlab.Host, addr string) (*benchRESPConn, error) {
	c, err := h.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &benchRESPConn{c: c, r: bufio.NewReader(c)}, nil
}

// close closes the connection.
func (c *benchRESPConn) close() { c.c.Close() }

// do sends a command and reads its answer as text (redistest.Command).
func (c *benchRESPConn) do(args ...string) (string, error) {
	_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
	return redistest.Command(c.c, c.r, args...)
}

// benchRTTProbe PINGs Redis every probeEvery from a gateway's host, the way
// that gateway reaches it (through its fault proxy, if any), and keeps
// the round trips: the delay the gateway really sees, under the load.
type benchRTTProbe struct {
	stop chan struct{}
	done chan struct{}
	rtts []time.Duration
	err  error
}

// startBenchRTTProbe starts probing the Redis at addr from host h.
func startBenchRTTProbe(h *netlab.Host, addr string) *benchRTTProbe {
	p := &benchRTTProbe{stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(h, addr)
	return p
}

// run PINGs until stopped or a PING fails.
func (p *benchRTTProbe) run(h *netlab.Host, addr string) {
	defer close(p.done)
	c, err := dialBenchRESP(h, addr)
	if err != nil {
		p.err = err
		return
	}
	defer c.close()
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		start := time.Now()
		if _, err := c.do("PING"); err != nil {
			p.err = err
			return
		}
		p.rtts = append(p.rtts, time.Since(start))
	}
}

// finish stops the probe and returns the median and 99th percentile of
// its round trips.
func (p *benchRTTProbe) finish() (p50, p99 time.Duration, err error) {
	close(p.stop)
	<-p.done
	if p.err != nil {
		return 0, 0, p.err
	}
	if len(p.rtts) == 0 {
		return 0, 0, errors.New("no round trip measured")
	}
	slices.Sort(p.rtts)
	at := func(q float64) time.Duration { return p.rtts[min(len(p.rtts)-1, int(q*float64(len(p.rtts))))] }
	return at(0.50), at(0.99), nil
}
