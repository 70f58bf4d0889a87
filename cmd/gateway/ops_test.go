package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-envconfig"

	"github.com/chatgw/gateway/internal/redistest"
	"github.com/chatgw/gateway/internal/testutil"
)

// scrape reads /metrics (from the admin listener when there is one) and
// returns each sample by its name with labels, as printed.
func scrape(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	addr := g.addr
	if g.admin != "" {
		addr = g.admin
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestMetricsMoveWithTraffic scrapes /metrics before and after traffic
// and checks that the counters moved by what was sent, on both engines.
func TestMetricsMoveWithTraffic(t *testing.T) {
	r := redistest.Start(t)
	for name, env := range map[string]map[string]string{
		"memory": nil,
		"redis":  {"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "127.0.0.1", "PORT_REDIS": strconv.Itoa(r.Port()), "ADMIN_ADDR": "127.0.0.1:0"},
	} {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, env)
			before := scrape(t, g)
			a, b := g.dial(t, "metrics"), g.dial(t, "metrics")
			a.sendChat("ana", "hola")
			if _, msg := b.recvChat(); msg != "hola" {
				t.Fatalf("b got %q", msg)
			}
			a.send(`{"username":"ana"}`) // missing field: an error frame
			if got := a.recv(); !strings.Contains(got, "missing_field") {
				t.Fatalf("a got %q, want the missing_field error", got)
			}
			after := scrape(t, g)
			for metric, want := range map[string]float64{
				"chat_messages_received_total":                    2,
				"chat_messages_published_total":                   1,
				`chat_error_frames_total{code="invalid_message"}`: 1,
				"chat_deliveries_total":                           1,
				"chat_websockets_opened_total":                    2,
				"chat_engine_accepted_total":                      1,
				"chat_publish_seconds_count":                      map[string]float64{"memory": 0, "redis": 1}[name],
			} {
				if d := after[metric] - before[metric]; d != want {
					t.Errorf("%s moved by %v, want %v", metric, d, want)
				}
			}
			for metric, want := range map[string]float64{"chat_websockets_open": 2, "chat_rooms": 1, "chat_engine_healthy": 1} {
				if after[metric] != want {
					t.Errorf("%s = %v, want %v", metric, after[metric], want)
				}
			}
			// A client may read a frame before the writev that sent it has
			// returned and been counted: the gauge goes to zero just after.
			testutil.EventuallyWithin(t, 2*time.Second, "chat_queued_bytes to reach 0", func() bool {
				return scrape(t, g)["chat_queued_bytes"] == 0
			})
			if name == "redis" {
				if after["chat_redis_round_trips_total"] <= before["chat_redis_round_trips_total"] {
					t.Errorf("chat_redis_round_trips_total did not move (%v)", after["chat_redis_round_trips_total"])
				}
				// One node: its own message wakes nothing (client tracking
				// with NOLOOP); the counter exists and stays put.
				if _, ok := after["chat_redis_wakes_total"]; !ok {
					t.Error("chat_redis_wakes_total is missing")
				} else if d := after["chat_redis_wakes_total"] - before["chat_redis_wakes_total"]; d != 0 {
					t.Errorf("chat_redis_wakes_total moved by %v on a lone node; its own messages must wake nothing", d)
				}
			}
			if _, ok := after["go_goroutines"]; !ok {
				t.Error("the Go runtime metrics are missing")
			}
			// A refused upgrade and a client's close are counted by reason
			// and code.
			if status, _ := rawUpgrade(t, g.addr, "/ws/nowhere/"); status != http.StatusNotFound {
				t.Fatalf("upgrade of an unknown path: %d, want 404", status)
			}
			b.writeRaw(rawFrame(0x88, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""), false))
			testutil.Eventually(t, "the refusal and the close in /metrics", func() bool {
				m := scrape(t, g)
				return m[`chat_upgrades_refused_total{reason="not_found"}`]-before[`chat_upgrades_refused_total{reason="not_found"}`] == 1 &&
					m[`chat_closes_total{by="client",code="1000"}`]-before[`chat_closes_total{by="client",code="1000"}`] == 1
			})
			for k := range after {
				if strings.Contains(k, "metrics\"") || strings.Contains(k, "room=") {
					t.Errorf("a metric carries a room name: %s", k)
				}
			}
		})
	}
}

// TestMetricsAreDocumented: every gateway metric is in docs/operations.md.
func TestMetricsAreDocumented(t *testing.T) {
	doc, err := readFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"chat_publish_seconds", "chat_redis_round_trip_seconds", descName(buildInfoDesc)}
	for _, m := range gatewayLabeled {
		names = append(names, descName(m.desc))
	}
	for _, m := range gatewayMetrics {
		names = append(names, descName(m.desc))
	}
	for _, n := range names {
		if !strings.Contains(doc, "`"+n+"`") && !strings.Contains(doc, "`"+n+"{") {
			t.Errorf("docs/operations.md does not list `%s`", n)
		}
	}
}

// TestDrainSequence: on SIGTERM /readyz answers 503 at once while
// everything else goes on for DRAIN_DELAY; then upgrades get 503 and the
// connections get 1001 in batches over DRAIN_WINDOW, not all at once; the
// process exits 0.
func TestDrainSequence(t *testing.T) {
	g := startGateway(t, map[string]string{"DRAIN_DELAY": "1s", "DRAIN_WINDOW": "1s"})
	const n = 20
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = g.dial(t, "drain")
	}
	if code, _ := g.httpGet(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the signal: %d", code)
	}
	closedAt := make([]time.Time, n)
	codes := make([]ws.StatusCode, n)
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			codes[i], _ = c.expectClose(true)
			closedAt[i] = time.Now()
		})
	}
	stopped := time.Now()
	g.stop() // as SIGTERM does
	testutil.Eventually(t, "/readyz 503 right after the signal", func() bool {
		code, _ := g.httpGet(t, "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, _ := g.httpGet(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz while draining: %d, want 200", code)
	}
	late := g.dial(t, "drain") // within DRAIN_DELAY: still served
	late.sendChat("late", "still here")
	testutil.Eventually(t, "upgrades refused after DRAIN_DELAY", func() bool {
		status, _ := rawUpgrade(t, g.addr, "/ws/chat/drain/")
		return status == http.StatusServiceUnavailable
	})
	wg.Wait()
	first, last := closedAt[0], closedAt[0]
	for i := range n {
		if codes[i] != ws.StatusGoingAway {
			t.Errorf("client %d closed with %d, want 1001", i, codes[i])
		}
		first, last = minTime(first, closedAt[i]), maxTime(last, closedAt[i])
	}
	if first.Sub(stopped) < 900*time.Millisecond {
		t.Errorf("first 1001 after %v, want after DRAIN_DELAY (1s)", first.Sub(stopped))
	}
	if last.Sub(first) < 300*time.Millisecond {
		t.Errorf("all %d closes within %v; want them spread over DRAIN_WINDOW (1s)", n, last.Sub(first))
	}
	select {
	case code := <-g.code:
		g.code <- code // for the cleanup
		if code != 0 {
			t.Fatalf("exit code %d, want 0", code)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("the gateway did not exit after the drain")
	}
}

// TestStopsAtOnceWithNothingToDrain: DRAIN_DELAY and DRAIN_WINDOW serve a
// load balancer in production. In development (go run, Ctrl-C) they are 0
// unless set, and a node with no connection open skips them: the process
// exits at once instead of waiting them out. Both cases are far inside
// the delays they skip (15 s and 40 s).
func TestStopsAtOnceWithNothingToDrain(t *testing.T) {
	exitsWithin := func(t *testing.T, g *gateway, limit time.Duration) {
		t.Helper()
		start := time.Now()
		g.stop() // as Ctrl-C does
		select {
		case code := <-g.code:
			g.code <- code // for the cleanup
			if code != 0 {
				t.Fatalf("exit code %d, want 0", code)
			}
			if took := time.Since(start); took > limit {
				t.Fatalf("exited %v after the signal, want within %v", took, limit)
			}
		case <-time.After(testutil.Timeout):
			t.Fatalf("the gateway did not exit within %v of the signal", testutil.Timeout)
		}
	}
	t.Run("development, a connection open, default delays", func(t *testing.T) {
		cfg, err := loadConfig(t.Context(), envconfig.MapLookuper(nil))
		if err != nil || cfg.DrainDelay != 0 || cfg.DrainWindow != 0 {
			t.Fatalf("development defaults: DRAIN_DELAY %v, DRAIN_WINDOW %v, %v; want 0 and 0", cfg.DrainDelay, cfg.DrainWindow, err)
		}
		g := startGateway(t, map[string]string{"DRAIN_DELAY": unset, "DRAIN_WINDOW": unset})
		c := g.dial(t, "dev")
		closed := make(chan ws.StatusCode, 1)
		go func() {
			code, _ := c.expectClose(true)
			c.writeRaw(rawFrame(0x88, ws.NewCloseFrameBody(code, ""), false)) // echo it, as a browser does
			closed <- code
		}()
		exitsWithin(t, g, 3*time.Second)
		if code := <-closed; code != ws.StatusGoingAway {
			t.Errorf("the open connection got close code %d, want 1001", code)
		}
	})
	t.Run("production, nobody connected, long delays", func(t *testing.T) {
		r := redistest.Start(t)
		g := startGateway(t, withEnv(redisEnvFor(r), map[string]string{
			"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "DRAIN_DELAY": "30s", "DRAIN_WINDOW": "10s", "LOG_LEVEL": "info"}))
		g.dial(t, "briefly").conn.Close()
		testutil.Eventually(t, "the connection to be gone", func() bool { return scrape(t, g)["chat_websockets_open"] == 0 })
		exitsWithin(t, g, 3*time.Second)
		if !g.logs.contains("nothing to drain") {
			t.Error("the log does not say why it stopped at once")
		}
	})
}

// descName is the metric name of a descriptor.
func descName(d *prometheus.Desc) string {
	name := d.String()
	name = name[strings.Index(name, `"`)+1:]
	return name[:strings.Index(name, `"`)]
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestStartBeforeRedis: a production gateway started while Redis is down
// serves /healthz, answers 503 to /readyz and to joins, and works once
// Redis comes up, without a restart.
func TestStartBeforeRedis(t *testing.T) {
	r := redistest.Start(t)
	r.Kill()
	g := startGateway(t, map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "127.0.0.1", "PORT_REDIS": strconv.Itoa(r.Port()),
		"REDIS_BACKOFF_MIN": "50ms", "REDIS_BACKOFF_MAX": "200ms", "REDIS_TIMEOUT": "500ms",
	})
	if code, _ := g.httpGet(t, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz without Redis: %d, want 200", code)
	}
	if code, _ := g.httpGet(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz without Redis: %d, want 503", code)
	}
	if status, _ := rawUpgrade(t, g.addr, "/ws/chat/early/"); status != http.StatusServiceUnavailable {
		t.Fatalf("join without Redis: %d, want 503", status)
	}
	testutil.Eventually(t, "the retry warning in the log", func() bool { return g.logs.contains("still cannot reach Redis") })
	r.Restart()
	testutil.Eventually(t, "/readyz 200 once Redis is up", func() bool {
		code, _ := g.httpGet(t, "/readyz")
		return code == http.StatusOK
	})
	a, b := g.dial(t, "late"), g.dial(t, "late")
	a.sendChat("ana", "after redis came up")
	if _, msg := b.recvChat(); msg != "after redis came up" {
		t.Fatalf("got %q", msg)
	}
}

// TestStartTimeoutGivesUp: with REDIS_START_TIMEOUT the gateway exits 1
// when Redis never answers.
func TestStartTimeoutGivesUp(t *testing.T) {
	r := redistest.Start(t)
	r.Kill()
	g := startGateway(t, map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "127.0.0.1", "PORT_REDIS": strconv.Itoa(r.Port()),
		"REDIS_BACKOFF_MIN": "50ms", "REDIS_BACKOFF_MAX": "100ms", "REDIS_TIMEOUT": "200ms", "REDIS_START_TIMEOUT": "500ms",
	})
	select {
	case code := <-g.code:
		g.code <- code // for the cleanup
		if code != 1 {
			t.Fatalf("exit code %d, want 1", code)
		}
	case <-time.After(testutil.Timeout):
		t.Fatal("the gateway did not give up")
	}
	if !g.logs.contains("REDIS_START_TIMEOUT") {
		t.Error("the log does not say why it gave up")
	}
}

// TestHealthAndReadyChecks: -healthcheck and -readycheck reach the
// gateway where it listens (LISTEN_HOST), with a Host ALLOWED_HOSTS takes,
// and tell liveness from readiness.
func TestHealthAndReadyChecks(t *testing.T) {
	r := redistest.Start(t)
	env := map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "chat.example.com", "IP_REDIS": "127.0.0.1", "PORT_REDIS": strconv.Itoa(r.Port()),
		"LISTEN_HOST": "127.0.0.3", "REDIS_BACKOFF_MIN": "50ms", "REDIS_BACKOFF_MAX": "100ms", "REDIS_TIMEOUT": "300ms",
	}
	g := startGateway(t, env)
	_, port, _ := net.SplitHostPort(g.addr)
	check := func(flag string) (int, string) {
		var stderr bytes.Buffer
		code := run(context.Background(), []string{flag}, envconfig.MapLookuper(withEnv(env, map[string]string{"PORT": port})), io.Discard, &stderr, nil)
		return code, stderr.String()
	}
	if code, msg := check("-healthcheck"); code != 0 {
		t.Fatalf("-healthcheck on 127.0.0.3: exit %d: %s", code, msg)
	}
	if code, msg := check("-readycheck"); code != 0 {
		t.Fatalf("-readycheck with Redis up: exit %d: %s", code, msg)
	}
	r.Kill()
	testutil.Eventually(t, "-readycheck failing with Redis down", func() bool { code, _ := check("-readycheck"); return code == 1 })
	if code, msg := check("-healthcheck"); code != 0 {
		t.Fatalf("-healthcheck with Redis down: exit %d: %s (liveness must not depend on Redis)", code, msg)
	}
}

// TestVersionAndLogs: -version prints the build's version; production
// logs print durations as text and the engine by name.
func TestVersionAndLogs(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-version"}, envconfig.MapLookuper(nil), &out, io.Discard, nil); code != 0 ||
		!strings.HasPrefix(out.String(), "gateway ") || !strings.Contains(out.String(), "go1.") || !strings.Contains(out.String(), "revision ") {
		t.Fatalf("-version: exit %d, %q", code, out.String())
	}
	r := redistest.Start(t)
	g := startGateway(t, map[string]string{
		"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "127.0.0.1", "PORT_REDIS": strconv.Itoa(r.Port()),
		"LOG_LEVEL": "info", "DRAIN_DELAY": "10ms",
	})
	c := g.dial(t, "logs") // something to drain, so the drain logs its timings
	g.stop()
	c.expectClose(true)
	g.code <- <-g.code // wait for the exit; leave the code for the cleanup
	for _, want := range []string{`"engine":"redis"`, `"drain_delay":"10ms"`, `"shutdown_timeout":"5s"`} {
		if !g.logs.contains(want) {
			t.Errorf("logs lack %s", want)
		}
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// stamp sets the -ldflags -X variables for one test, as a stamped build
// has them.
func stamp(t *testing.T, v, rev string) {
	t.Helper()
	oldV, oldRev := version, revision
	version, revision = v, rev
	t.Cleanup(func() { version, revision = oldV, oldRev })
}

// TestBuildInfoStamped: a stamped version and revision show in -version,
// in the start log line and as chat_build_info's labels.
func TestBuildInfoStamped(t *testing.T) {
	const rev = "0123456789abcdef0123456789abcdef01234567"
	stamp(t, "v1.4.0", rev)
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-version"}, envconfig.MapLookuper(nil), &out, io.Discard, nil); code != 0 ||
		!strings.HasPrefix(out.String(), "gateway v1.4.0 (revision 0123456789ab") || !strings.HasSuffix(out.String(), " "+runtime.Version()+"\n") {
		t.Fatalf("-version: exit %d, %q; want the stamped version, a 12-digit revision and %s", code, out.String(), runtime.Version())
	}
	g := startGateway(t, map[string]string{"LOG_LEVEL": "info"})
	if !g.logs.contains(`version=v1.4.0 revision=` + rev + ` go=` + runtime.Version()) {
		t.Errorf("the start log line lacks the version, revision and Go release")
	}
	want := `chat_build_info{go="` + runtime.Version() + `",revision="` + rev + `",version="v1.4.0"}`
	if v, ok := scrape(t, g)[want]; !ok || v != 1 {
		t.Errorf("/metrics: %s = %v (present %v), want 1", want, v, ok)
	}
}

// TestBuildInfoFallsBack: unstamped, the version and revision come from
// the toolchain's build information (a test binary has no VCS stamp:
// "unknown"), never an empty label.
func TestBuildInfoFallsBack(t *testing.T) {
	stamp(t, "", "")
	b := buildInfo()
	if b.Version == "" || b.Revision == "" || b.Go != runtime.Version() {
		t.Fatalf("buildInfo() = %+v; want a version, a revision (or \"unknown\") and %s", b, runtime.Version())
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && !strings.HasPrefix(b.Revision, s.Value) {
				t.Errorf("revision %q, want vcs.revision %q", b.Revision, s.Value)
			}
		}
	}
}

// TestBuildStampsVersion: the Makefile and the Dockerfile stamp exactly
// the variables buildInfo reads (a renamed variable would leave every
// build unstamped without a word).
func TestBuildStampsVersion(t *testing.T) {
	for _, f := range []string{"../../Makefile", "../../Dockerfile"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"-X main.version=", "-X main.revision="} {
			if !strings.Contains(string(b), want) {
				t.Errorf("%s does not stamp %s", f, want)
			}
		}
	}
}
