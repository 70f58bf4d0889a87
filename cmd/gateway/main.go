// Command gateway is the WebSocket chat gateway: clients connect to
// ws://HOST:8000/ws/chat/<room>/ and every message they send reaches the
// other members of the room. It is configured from the environment; run
// `gateway -h` for the variables.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/room"
	"github.com/chatgw/gateway/pkg/stream"
	"github.com/sethvargo/go-envconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts the drain; from then on a second one has
		// its default effect: the process ends at once.
		<-ctx.Done()
		stop()
	}()
	os.Exit(run(ctx, os.Args[1:], envconfig.OsLookuper(), os.Stdout, os.Stderr, nil))
}

// flags are the command-line flags; everything else comes from the
// environment.
type flags struct {
	healthcheck, readycheck, version *bool
}

// newFlags defines the flags on a set that reports parse errors to
// stderr. -h prints printHelp's text, which lists every flag defined here.
func newFlags(stderr io.Writer) (*flag.FlagSet, flags) {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // -h prints the help, bad flags only the error
	return fs, flags{
		healthcheck: fs.Bool("healthcheck", false, "exit 0 if the local gateway answers /healthz (container health checks; uses PORT, LISTEN_HOST, ALLOWED_HOSTS)"),
		readycheck:  fs.Bool("readycheck", false, "exit 0 if the local gateway answers /readyz with 200 (ready for traffic)"),
		version:     fs.Bool("version", false, "print the version, revision and Go version, and exit"),
	}
}

// run is the whole program; ready, when set, is told the bound addresses
// (admin is nil without ADMIN_ADDR). It returns the exit code: 0 after a
// clean shutdown, 1 when serving failed, 2 for a bad configuration.
func run(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer, ready func(public, admin net.Addr)) int {
	cfg, exitCode, exit := parseArgs(ctx, args, env, stdout, stderr)
	if exit {
		return exitCode
	}
	logger := newLogger(cfg, stderr)
	if cfg.Environment == envDevelopment {
		logger.Warn("ENVIRONMENT=development: embedded in-memory engine, one node, no Host or Origin checks; " +
			"set ENVIRONMENT=production (with IP_REDIS and ALLOWED_HOSTS) on a server")
	}

	fdLimit, err := conn.RaiseFileLimit()
	if err != nil {
		logger.Warn("cannot raise the open-file limit; fewer connections fit", "err", err)
	}

	hub, err := room.NewHub(cfg.Room, logger)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 2
	}
	var engine stream.Engine
	fatal := make(chan error, 1)
	switch cfg.Environment {
	case envDevelopment:
		// REDIS_MAXLEN, REDIS_TTL and REDIS_DEDUPE_WINDOW size the
		// embedded engine's history as they size Redis's.
		engine, err = stream.NewMemoryWith(hub.Deliver, cfg.Redis.MemoryConfig())
		if err != nil {
			fmt.Fprintf(stderr, "gateway: %v\nRun gateway -h for the variables.\n", err)
			return 2
		}
	case envProduction:
		engine, err = stream.ConnectRedis(cfg.Redis, cfg.StartTimeout, hub.Deliver, logger, func(err error) { fatal <- err })
		if err != nil {
			fmt.Fprintf(stderr, "gateway: %v\nRun gateway -h for the variables.\n", err)
			return 2
		}
	}
	hub.SetEngine(engine)

	var shuttingDown atomic.Bool
	var srv *conn.Server
	ep := &endpoints{engine: engine, hub: hub, connStats: func() conn.Stats { return srv.Stats() }, shuttingDown: &shuttingDown, log: logger}
	cfg.Conn.HTTPHandler = ep.public(cfg)
	srv, err = conn.NewServer(cfg.Conn, hub, logger)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 2
	}
	if err := srv.Listen(net.JoinHostPort(cfg.ListenHost, strconv.Itoa(cfg.Port))); err != nil {
		logger.Error("cannot listen", "err", err)
		return 1
	}
	var admin *http.Server
	var adminAddr net.Addr
	if cfg.AdminAddr != "" {
		ln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			logger.Error("cannot listen on ADMIN_ADDR", "err", err)
			_ = srv.Shutdown(context.Background())
			return 1
		}
		adminAddr = ln.Addr()
		admin = adminServer(ep.admin(cfg), logger)
		go func() { _ = admin.Serve(ln) }()
		logger.Info("admin endpoints listening (/stats, /readyz, /healthz, pprof with DEBUG_PPROF)", "addr", adminAddr.String())
	}
	logListening(logger, cfg, srv, engine, fdLimit)
	if ready != nil {
		ready(srv.Addr(), adminAddr)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()

	code := 0
	select {
	case <-ctx.Done():
		shuttingDown.Store(true)
		drain(cfg, srv, logger)
	case err := <-served:
		logger.Error("accept loop stopped", "err", err)
		code = 1
	case err := <-fatal:
		logger.Error("giving up", "err", err)
		code = 1
	}
	shuttingDown.Store(true)
	shutdown(cfg, srv, hub, engine, admin, logger)
	return code
}

// logListening writes the start line: where the gateway listens, what it
// runs, and the connection caps in force (the server's Config, after the
// descriptor budget lowered them to fit the open-file limit).
func logListening(logger *slog.Logger, cfg Config, srv *conn.Server, engine stream.Engine, fdLimit uint64) {
	bi := buildInfo()
	inForce := srv.Config()
	logger.Info("gateway listening",
		"addr", srv.Addr().String(),
		"environment", cfg.Environment,
		"engine", engineName(engine),
		"version", bi.Version,
		"revision", bi.Revision,
		"go", bi.Go,
		"open_file_limit", fdLimit,
		"max_connections", inForce.MaxConnections,
		"max_connections_per_ip", inForce.MaxConnectionsPerIP,
		"event_loops", inForce.EventLoops,
	)
}

// shutdown is the end of every stop, after the drain or a failure: what
// is left is closed with 1001 within SHUTDOWN_TIMEOUT, then the hub, the
// engine (which first publishes what its queues still hold) and the admin
// listener are closed, in that order.
func shutdown(cfg Config, srv *conn.Server, hub *room.Hub, engine stream.Engine, admin *http.Server, logger *slog.Logger) {
	logger.Info("shutting down: closing what is left with 1001", "open", srv.Stats().WebSockets, "wait", cfg.ShutdownWait)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownWait)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, conn.ErrServerClosed) {
		logger.Warn("shutdown incomplete", "err", err)
	}
	hub.Close()
	if err := engine.Close(sctx); err != nil {
		logger.Warn("engine close", "err", err)
	}
	if admin != nil {
		if err := admin.Shutdown(sctx); err != nil {
			logger.Warn("admin listener shutdown", "err", err)
		}
	}
	logger.Info("gateway stopped", "accepted", srv.Stats().Accepted)
}

// drain is the first part of a graceful stop (SIGTERM): /readyz already
// answers 503; for DRAIN_DELAY everything else goes on, so load balancers
// stop sending new clients; then upgrades are refused and connections are
// closed with 1001 in batches over DRAIN_WINDOW. With no WebSocket open
// there is nothing to drain and it returns at once (in development both
// delays are 0 unless set: see loadConfig). A second signal ends the
// process at once (see main).
func drain(cfg Config, srv *conn.Server, logger *slog.Logger) {
	open := srv.Stats().WebSockets
	if open == 0 {
		logger.Info("stopping: no connection open, nothing to drain")
		return
	}
	logger.Info("draining: /readyz answers 503", "open", open,
		"drain_delay", cfg.DrainDelay, "drain_window", cfg.DrainWindow, "shutdown_timeout", cfg.ShutdownWait)
	time.Sleep(cfg.DrainDelay)
	logger.Info("draining: refusing upgrades, closing connections with 1001", "open", srv.Stats().WebSockets, "over", cfg.DrainWindow)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainWindow+time.Second)
	defer cancel()
	if err := srv.Drain(ctx, cfg.DrainWindow); err != nil {
		logger.Warn("drain incomplete", "err", err)
	}
}

// parseArgs handles the flags and reads the configuration. With exit set
// run returns code at once: -h, -version, -healthcheck and -readycheck are
// answered, or a flag or variable is bad (2, the error on stderr).
func parseArgs(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer) (cfg Config, code int, exit bool) {
	fs, fl := newFlags(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout, fs)
			return cfg, 0, true
		}
		return cfg, 2, true
	}
	if *fl.version {
		fmt.Fprintln(stdout, versionString())
		return cfg, 0, true
	}
	cfg, err := loadConfig(ctx, env)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\nRun gateway -h for the variables.\n", err)
		return cfg, 2, true
	}
	switch {
	case *fl.healthcheck:
		return cfg, checkEndpoint(cfg, "/healthz", stderr), true
	case *fl.readycheck:
		return cfg, checkEndpoint(cfg, "/readyz", stderr), true
	}
	return cfg, 0, false
}

// engineName names the engine for logs and metrics.
func engineName(e stream.Engine) string {
	switch e.(type) {
	case *stream.Memory:
		return "memory"
	default:
		return "redis"
	}
}

// humanDurations writes durations in logs as Go writes them ("1.5s"), not
// as nanoseconds, in both the JSON and the text handler.
func humanDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel) // checked by loadConfig
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: humanDurations}
	if cfg.Environment == envProduction {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkEndpoint asks the local gateway for path (/healthz or /readyz),
// for container health checks in images without curl. It dials where the
// gateway listens: LISTEN_HOST when that is a specific address, else
// loopback; the Host header is one that ALLOWED_HOSTS accepts.
func checkEndpoint(cfg Config, path string, stderr io.Writer) int {
	host := "127.0.0.1"
	if ip := net.ParseIP(cfg.ListenHost); cfg.ListenHost != "" && (ip == nil || !ip.IsUnspecified()) {
		host = cfg.ListenHost
	}
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(cfg.Port)) + path
	client := http.Client{Timeout: 2 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: check %s: %v\n", url, err)
		return 1
	}
	if h := healthHost(cfg.Conn.AllowedHosts); h != "" {
		req.Host = h
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: check %s: %v\n", url, err)
		return 1
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "gateway: check %s: %s: %s\n", url, resp.Status, bytes.TrimSpace(body))
		return 1
	}
	return 0
}
