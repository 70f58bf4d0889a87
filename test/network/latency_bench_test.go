//go:build network

package network

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chatgw/gateway/internal/netlab"
)

// The load of BenchmarkNetworkLatency, as scripts/redisbench.sh's first
// rate: 1 000 rooms of 2 members placed on different gateways, both
// members sending 1 message a second: 2 000 messages/s in all, every one
// crossing from one gateway to the other through Redis.
const (
	benchRooms   = 1000
	benchMembers = 2
	benchRate    = 1.0 // messages per second per member
	benchHold    = 2 * time.Second
	benchDrain   = 3 * time.Second
	// benchDuration is the send phase unless DURATION says otherwise.
	benchDuration = 10 * time.Second
)

// latencyCase is one network the benchmark measures the gateway on.
type latencyCase struct {
	name string
	// toRedis ± redisJitter is added each way between each gateway and
	// Redis (and, with waitReplicas, between the replica and Redis); 0
	// means the gateways dial Redis directly.
	toRedis, redisJitter time.Duration
	// toClients ± clientJitter is added each way between the client host
	// and each gateway; 0 means loadgen dials the gateways directly.
	toClients, clientJitter time.Duration
	// waitReplicas, above zero, adds a replica of Redis on its own host
	// and sets REDIS_WAIT_REPLICAS on the gateways.
	waitReplicas int
}

// latencyCases are the sub-benchmarks of BenchmarkNetworkLatency: the
// same hosts each time, with more of the network's delay added.
var latencyCases = []latencyCase{
	{name: "loopback"},
	{name: "lat1ms", toRedis: time.Millisecond, redisJitter: 200 * time.Microsecond},
	{name: "lat1ms_clients20ms", toRedis: time.Millisecond, redisJitter: 200 * time.Microsecond,
		toClients: 20 * time.Millisecond, clientJitter: 5 * time.Millisecond},
	{name: "wait1", toRedis: time.Millisecond, redisJitter: 200 * time.Microsecond, waitReplicas: 1},
}

// BenchmarkNetworkLatency measures the gateway's delivery latency and
// cost over a network: Redis, two gateways and a client host each on a
// host of their own (internal/netlab), loadgen on the client host
// sending redisbench.sh's load (2 000 messages/s, every message from one
// gateway to the other) for DURATION (default 10s). Sub-benchmarks:
//
//   - loopback: the bridge only, no delay added;
//   - lat1ms: 1 ms ± 0.2 ms each way between each gateway and Redis
//     (fault proxies: this kernel has no netem);
//   - lat1ms_clients20ms: that, and 20 ms ± 5 ms each way between the
//     client host and each gateway;
//   - wait1: lat1ms with a replica of Redis on its own host, 1 ms ±
//     0.2 ms from Redis, and REDIS_WAIT_REPLICAS=1 on the gateways
//     (skipped, saying so, by a gateway that does not know the setting;
//     an error if Redis then sees no WAIT).
//
// Each reports p50-ms and p99-ms (send to receive, from loadgen), lost,
// redis-µs/msg and gateway-µs/msg (CPU time from /proc over the send
// phase and drain, as scripts/redisbench.sh, per message published),
// msg/s, and redis-rtt-ms: the median PING round trip from a gateway's
// host through its way to Redis during the run (what the delay really
// is). Each logs a table row, and the whole table is printed at the end.
// One iteration is one load run (-benchtime 1x); with more, the metrics
// are the means over the runs. The gateways inherit the environment:
// REDIS_BATCH_WINDOW=1ms before go test tries another setting. It needs
// root, like the tests, and runs only with -bench:
//
//	DURATION=10s go test -tags network -run '^$' -bench NetworkLatency -benchtime 1x ./test/network/
func BenchmarkNetworkLatency(b *testing.B) {
	duration := benchDuration
	if s := os.Getenv("DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			b.Fatalf("DURATION=%q: want a positive duration such as 10s", s)
		}
		duration = d
	}
	bins := buildBenchBinaries(b)
	var rows []string
	for _, c := range latencyCases {
		b.Run(c.name, func(b *testing.B) {
			if c.waitReplicas > 0 && !bins.waitKnown {
				// Skip's message shows only with -v: the table says it too.
				why := "not measured: this gateway build does not know REDIS_WAIT_REPLICAS (`gateway -h` does not list it), so it would run without WAIT"
				rows = append(rows, fmt.Sprintf("%-19s %s", c.name, why))
				b.Skip(why)
			}
			rows = append(rows, runLatencyCase(b, bins, c, duration))
		})
	}
	if len(rows) == 0 {
		return
	}
	// The table of every case that ran, on stdout: a parent benchmark's
	// log is printed only with -v.
	fmt.Printf("NetworkLatency: send phase %v, %d rooms × %d members on 2 gateways, %g msg/s per member; CPU in µs per message published, over the send phase and drain\n%s\n%s\n",
		duration, benchRooms, benchMembers, benchRate, latencyHeader(), strings.Join(rows, "\n"))
}

// benchBinaries are the programs the benchmark runs, built once.
type benchBinaries struct {
	gateway, loadgen string
	// waitKnown: the gateway lists REDIS_WAIT_REPLICAS in its -h.
	waitKnown bool
}

// buildBenchBinaries builds cmd/gateway and cmd/loadgen into a temporary
// directory, removed when the benchmark ends.
func buildBenchBinaries(b *testing.B) benchBinaries {
	b.Helper()
	dir := b.TempDir()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	if out, err := exec.Command(goBin, "build", "-o", dir+string(filepath.Separator), "../../cmd/gateway", "../../cmd/loadgen").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	bins := benchBinaries{gateway: filepath.Join(dir, "gateway"), loadgen: filepath.Join(dir, "loadgen")}
	help, err := exec.Command(bins.gateway, "-h").CombinedOutput()
	if err != nil {
		b.Fatalf("gateway -h: %v\n%s", err, help)
	}
	bins.waitKnown = bytes.Contains(help, []byte("REDIS_WAIT_REPLICAS"))
	return bins
}

// runLatencyCase builds case c's network, runs the load b.N times,
// reports the metrics and returns the case's table row.
func runLatencyCase(b *testing.B, bins benchBinaries, c latencyCase, duration time.Duration) string {
	lab := netlab.New(b)
	redisHost, clients := lab.Host("redis"), lab.Host("clients")
	gwHosts := []*netlab.Host{lab.Host("gateway1"), lab.Host("gateway2")}
	redis, redisAddr := startBenchRedis(b, redisHost)
	pids := []int{redis.pid(), os.Getpid()}
	var replica *benchProc
	if c.waitReplicas > 0 {
		replicaHost := lab.Host("replica")
		link := redisAddr
		if c.toRedis > 0 {
			link = replicaHost.StartProxy(b, 6380, redisAddr, c.toRedis, c.redisJitter).Addr()
		}
		host, port, _ := net.SplitHostPort(link)
		replica, _ = startBenchRedis(b, replicaHost, "--replicaof", host, port)
		pids = append(pids, replica.pid())
		benchWait(b, "the replica to be in sync", func() bool {
			info, err := benchRedisDo(redisHost, redisAddr, "INFO", "replication")
			return err == nil && strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online")
		})
	}
	var urls, viaRedis []string
	var gateways []*benchProc
	for i, h := range gwHosts {
		via := redisAddr
		if c.toRedis > 0 {
			via = h.StartProxy(b, 6380, redisAddr, c.toRedis, c.redisJitter).Addr()
		}
		viaRedis = append(viaRedis, via)
		env := map[string]string{}
		if c.waitReplicas > 0 {
			env["REDIS_WAIT_REPLICAS"] = strconv.Itoa(c.waitReplicas)
		}
		gw, addr := startBenchGateway(b, h, fmt.Sprintf("gateway%d", i+1), bins.gateway, via, env)
		gateways = append(gateways, gw)
		pids = append(pids, gw.pid())
		if c.toClients > 0 {
			addr = clients.StartProxy(b, 0, addr, c.toClients, c.clientJitter).Addr()
		}
		urls = append(urls, "ws://"+addr)
	}

	var sum latencyResult
	for range b.N {
		trips := benchRoundTrips(b, gwHosts)
		waits := benchRedisCalls(b, redisHost, redisAddr, "wait")
		probe := startBenchRTTProbe(gwHosts[0], viaRedis[0])
		s := runBenchLoadgen(b, clients, bins.loadgen, urls, pids, duration)
		p50, p99, err := probe.finish()
		if err != nil {
			b.Errorf("%s: the round-trip probe to Redis: %v", c.name, err)
		}
		r := benchResultOf(b, s, redis.pid(), gateways, replica)
		r.rttP50, r.rttP99 = p50, p99
		r.roundTrips = benchRoundTrips(b, gwHosts) - trips
		r.waits = benchRedisCalls(b, redisHost, redisAddr, "wait") - waits
		if c.waitReplicas > 0 && r.waits == 0 {
			b.Errorf("%s: REDIS_WAIT_REPLICAS=%d was set but Redis received no WAIT during the run: the gateway ignored it, so this is no WAIT measurement", c.name, c.waitReplicas)
		}
		sum.add(r)
	}
	r := sum.mean(b.N)
	b.ReportMetric(0, "ns/op") // the run's length is set, not measured
	b.ReportMetric(r.p50, "p50-ms")
	b.ReportMetric(r.p99, "p99-ms")
	b.ReportMetric(r.lost, "lost")
	b.ReportMetric(r.redisUS, "redis-µs/msg")
	b.ReportMetric(r.gatewayUS, "gateway-µs/msg")
	b.ReportMetric(r.rate, "msg/s")
	b.ReportMetric(benchMS(r.rttP50), "redis-rtt-ms")
	if replica != nil {
		b.ReportMetric(r.replicaUS, "replica-µs/msg")
	}
	row := r.row(c.name)
	b.Logf("\n%s\n%s", latencyHeader(), row)
	return row
}

// latencyResult is what one load run of a case measured, or the sum or
// mean of several.
type latencyResult struct {
	rate, sent, lost                float64 // messages/s over the send phase; published; lost
	p50, p90, p99, max              float64 // send → receive, ms
	redisUS, gatewayUS, replicaUS   float64 // CPU µs per message published
	proxyUS                         float64 // the test process's CPU µs per message: the fault proxies, and the probe
	rttP50, rttP99                  time.Duration
	roundTrips, waits               int64 // pump round trips of both gateways; WAITs Redis ran
	connsFailed, dropped, errFrames float64
}

// add adds o to r.
func (r *latencyResult) add(o latencyResult) {
	r.rate += o.rate
	r.sent += o.sent
	r.lost += o.lost
	r.p50 += o.p50
	r.p90 += o.p90
	r.p99 += o.p99
	r.max += o.max
	r.redisUS += o.redisUS
	r.gatewayUS += o.gatewayUS
	r.replicaUS += o.replicaUS
	r.proxyUS += o.proxyUS
	r.rttP50 += o.rttP50
	r.rttP99 += o.rttP99
	r.roundTrips += o.roundTrips
	r.waits += o.waits
	r.connsFailed += o.connsFailed
	r.dropped += o.dropped
	r.errFrames += o.errFrames
}

// mean divides the sum r of n runs by n.
func (r latencyResult) mean(n int) latencyResult {
	f := float64(n)
	return latencyResult{
		rate: r.rate / f, sent: r.sent / f, lost: r.lost / f,
		p50: r.p50 / f, p90: r.p90 / f, p99: r.p99 / f, max: r.max / f,
		redisUS: r.redisUS / f, gatewayUS: r.gatewayUS / f, replicaUS: r.replicaUS / f, proxyUS: r.proxyUS / f,
		rttP50: r.rttP50 / time.Duration(n), rttP99: r.rttP99 / time.Duration(n),
		roundTrips: r.roundTrips / int64(n), waits: r.waits / int64(n),
		connsFailed: r.connsFailed / f, dropped: r.dropped / f, errFrames: r.errFrames / f,
	}
}

// latencyHeader is the header of the rows that latencyResult.row prints.
func latencyHeader() string {
	return fmt.Sprintf("%-19s %6s %6s %5s %7s %7s %7s %7s %7s %7s %7s %7s %11s %6s %6s",
		"case", "msg/s", "sent", "lost", "p50 ms", "p90 ms", "p99 ms", "max ms",
		"redis", "gateway", "proxies", "replica", "rtt p50/p99", "msg/rt", "waits")
}

// row formats r as a line of the table: CPU columns are µs per message
// published (proxies: the test process, where the fault proxies run, with
// the probe: the loopback row, without proxies, is its floor);
// rtt is the probe's PING round trip to Redis in ms; msg/rt is messages
// published per pump round trip of both gateways.
func (r latencyResult) row(name string) string {
	perTrip := 0.0
	if r.roundTrips > 0 {
		perTrip = r.sent / float64(r.roundTrips)
	}
	line := fmt.Sprintf("%-19s %6.0f %6.0f %5.0f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %5.2f/%-5.2f %6.2f %6d",
		name, r.rate, r.sent, r.lost, r.p50, r.p90, r.p99, r.max,
		r.redisUS, r.gatewayUS, r.proxyUS, r.replicaUS, benchMS(r.rttP50), benchMS(r.rttP99), perTrip, r.waits)
	if r.connsFailed > 0 || r.dropped > 0 || r.errFrames > 0 {
		line += fmt.Sprintf("  (conns failed %.0f, dropped %.0f, error frames %.0f)", r.connsFailed, r.dropped, r.errFrames)
	}
	return line
}

// benchMS is d in milliseconds.
func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchLoadSummary is the part of loadgen's -json summary the benchmark reads
// (cmd/loadgen/summary.go).
type benchLoadSummary struct {
	Conns struct {
		Target  int64 `json:"target"`
		Opened  int64 `json:"opened"`
		Failed  int64 `json:"failed"`
		Dropped int64 `json:"dropped"`
	} `json:"conns"`
	Messages struct {
		Sent        int64   `json:"sent"`
		Expected    int64   `json:"expected"`
		Lost        int64   `json:"lost"`
		ErrorFrames int64   `json:"error_frames"`
		SendSeconds float64 `json:"send_seconds"`
	} `json:"messages"`
	Latency struct {
		Count int64 `json:"count"`
		P50   int64 `json:"p50"`
		P90   int64 `json:"p90"`
		P99   int64 `json:"p99"`
		Max   int64 `json:"max"`
	} `json:"latency_us"`
	Errors map[string]int64 `json:"errors"`
	Procs  []struct {
		PID            int     `json:"pid"`
		CPUSendSeconds float64 `json:"cpu_send_seconds"`
		End            struct {
			Err string `json:"err"`
		} `json:"end"`
	} `json:"procs"`
}

// runBenchLoadgen runs loadgen on the client host against urls, sampling the
// CPU of pids, and returns its summary. It fails the benchmark when
// loadgen does not finish in time or prints no summary; a summary with
// loss (exit status 1) is a result.
func runBenchLoadgen(b *testing.B, h *netlab.Host, bin string, urls []string, pids []int, duration time.Duration) benchLoadSummary {
	b.Helper()
	pidList := make([]string, len(pids))
	for i, p := range pids {
		pidList[i] = strconv.Itoa(p)
	}
	const connectWithin = time.Minute
	cmd := h.Command(bin, "-url", strings.Join(urls, ","), "-remote",
		"-conns", strconv.Itoa(benchRooms*benchMembers), "-rooms", strconv.Itoa(benchRooms),
		"-senders", strconv.Itoa(benchMembers), "-rate", strconv.FormatFloat(benchRate, 'g', -1, 64),
		"-hold", benchHold.String(), "-duration", duration.String(), "-drain", benchDrain.String(),
		"-connect-timeout", connectWithin.String(), "-pid", strings.Join(pidList, ","), "-json", "-quiet")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("start loadgen: %v", err)
	}
	within := connectWithin + benchHold + duration + benchDrain + 30*time.Second
	timer := time.AfterFunc(within, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	if !timer.Stop() {
		b.Fatalf("loadgen did not finish within %v; killed:\n%s", within, stderr.String())
	}
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 1) {
		b.Fatalf("loadgen: %v\n%s", err, stderr.String())
	}
	var s benchLoadSummary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		b.Fatalf("loadgen's summary: %v\nstdout: %s\nstderr: %s", err, stdout.String(), stderr.String())
	}
	if err != nil {
		b.Logf("loadgen reported problems (exit status 1): %s", strings.TrimSpace(stderr.String()))
	}
	return s
}

// benchResultOf turns loadgen's summary into a result, failing the benchmark
// when the run measured nothing sound: connections missing, nothing
// sent, or a sampled process gone.
func benchResultOf(b *testing.B, s benchLoadSummary, redisPID int, gateways []*benchProc, replica *benchProc) latencyResult {
	b.Helper()
	if s.Conns.Opened != s.Conns.Target || s.Messages.Sent == 0 || s.Latency.Count == 0 {
		b.Errorf("the run measured nothing sound: %d of %d connections opened (%d failed), %d messages sent, %d latencies; errors %v",
			s.Conns.Opened, s.Conns.Target, s.Conns.Failed, s.Messages.Sent, s.Latency.Count, s.Errors)
	}
	cpu := map[int]float64{}
	for _, p := range s.Procs {
		if p.End.Err != "" {
			b.Errorf("sampling pid %d: %s", p.PID, p.End.Err)
		}
		cpu[p.PID] = p.CPUSendSeconds
	}
	sent := float64(s.Messages.Sent)
	perMsg := func(seconds float64) float64 {
		if sent == 0 {
			return 0
		}
		return seconds * 1e6 / sent
	}
	r := latencyResult{
		sent: sent, lost: float64(s.Messages.Lost),
		p50: float64(s.Latency.P50) / 1000, p90: float64(s.Latency.P90) / 1000,
		p99: float64(s.Latency.P99) / 1000, max: float64(s.Latency.Max) / 1000,
		redisUS: perMsg(cpu[redisPID]), proxyUS: perMsg(cpu[os.Getpid()]),
		connsFailed: float64(s.Conns.Failed), dropped: float64(s.Conns.Dropped), errFrames: float64(s.Messages.ErrorFrames),
	}
	if s.Messages.SendSeconds > 0 {
		r.rate = sent / s.Messages.SendSeconds
	}
	for _, g := range gateways {
		r.gatewayUS += perMsg(cpu[g.pid()])
	}
	if replica != nil {
		r.replicaUS = perMsg(cpu[replica.pid()])
	}
	return r
}
