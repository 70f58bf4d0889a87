// Command gateway is the WebSocket chat gateway: clients connect to
// ws://HOST:8000/ws/chat/<room>/ and every message they send reaches the
// other members of the room. It is configured from the environment; run
// `gateway -h` for the variables.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
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
	defer stop()
	os.Exit(run(ctx, os.Args[1:], envconfig.OsLookuper(), os.Stdout, os.Stderr, nil))
}

// fdReserve is the number of file descriptors kept for things other than
// client connections (listener, epoll, eventfds, Redis, logs).
const fdReserve = 64

// run is the whole program; ready, when set, is told the bound address.
// It returns the exit code: 0 after a clean shutdown, 1 when serving
// failed, 2 for a bad configuration.
func run(ctx context.Context, args []string, env envconfig.Lookuper, stdout, stderr io.Writer, ready func(net.Addr)) int {
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // -h prints the help below, bad flags only the error
	healthcheck := fs.Bool("healthcheck", false, "exit 0 if the local gateway answers /healthz")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout)
			return 0
		}
		return 2
	}
	cfg, err := loadConfig(ctx, env)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\nRun gateway -h for the variables.\n", err)
		return 2
	}
	if *healthcheck {
		return checkHealth(cfg.Port, stderr)
	}
	logger := newLogger(cfg, stderr)

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
	switch cfg.Environment {
	case envDevelopment:
		engine = stream.NewMemory(hub.Deliver)
	case envProduction:
		r, err := stream.NewRedis(cfg.Redis, hub.Deliver, logger)
		if errors.Is(err, stream.ErrUnavailable) {
			logger.Error("cannot reach Redis; is it running and are IP_REDIS/PORT_REDIS (or REDIS_ADDRS) right?", "err", err)
			return 1
		} else if err != nil {
			fmt.Fprintf(stderr, "gateway: %v\nRun gateway -h for the variables.\n", err)
			return 2
		}
		engine = r
	}
	hub.SetEngine(engine)

	var shuttingDown atomic.Bool
	var srv *conn.Server
	routes := httpRoutes(engine, hub, func() conn.Stats { return srv.Stats() }, &shuttingDown)
	if cfg.Pprof {
		routes.HandleFunc("/debug/pprof/", pprof.Index)
		routes.HandleFunc("/debug/pprof/profile", pprof.Profile)
		routes.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		routes.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	cfg.Conn.HTTPHandler = routes
	srv, err = conn.NewServer(cfg.Conn, hub, logger)
	if err != nil {
		fmt.Fprintf(stderr, "gateway: %v\n", err)
		return 2
	}
	if err := srv.Listen(net.JoinHostPort(cfg.ListenHost, strconv.Itoa(cfg.Port))); err != nil {
		logger.Error("cannot listen", "err", err)
		return 1
	}
	logger.Info("gateway listening",
		"addr", srv.Addr().String(),
		"environment", cfg.Environment,
		"engine", fmt.Sprintf("%T", engine),
		"open_file_limit", fdLimit,
		"max_connections", max(int64(fdLimit)-fdReserve, 0),
		"event_loops", srv.Config().EventLoops,
	)
	if ready != nil {
		ready(srv.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()

	code := 0
	select {
	case <-ctx.Done():
		logger.Info("shutting down: closing connections with 1001", "open", srv.Stats().Open, "wait", cfg.ShutdownWait)
	case err := <-served:
		logger.Error("accept loop stopped", "err", err)
		code = 1
	}
	shuttingDown.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownWait)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, conn.ErrServerClosed) {
		logger.Warn("shutdown incomplete", "err", err)
	}
	// The engine publishes what its queues still hold before it closes.
	if err := engine.Close(sctx); err != nil {
		logger.Warn("engine close", "err", err)
	}
	logger.Info("gateway stopped", "accepted", srv.Stats().Accepted)
	return code
}

// httpRoutes serves the plain HTTP side of the port.
func httpRoutes(engine stream.Engine, hub *room.Hub, connStats func() conn.Stats, shuttingDown *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Conn conn.Stats `json:"connections"`
			Hub  room.Stats `json:"rooms"`
		}{connStats(), hub.Stats()})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if shuttingDown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		if err := engine.Health(); err != nil {
			http.Error(w, "engine: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	return mux
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel) // checked by loadConfig
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Environment == envProduction {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkHealth asks the local gateway's /healthz, for container health
// checks in images without curl.
func checkHealth(port int, stderr io.Writer) int {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz")
	if err != nil {
		fmt.Fprintf(stderr, "gateway: health check: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "gateway: health check: %s\n", resp.Status)
		return 1
	}
	return 0
}
