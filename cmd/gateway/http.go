package main

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/room"
	"github.com/chatgw/gateway/pkg/stream"
)

// endpoints is what the plain HTTP side serves: on the public port
// (public) and, when ADMIN_ADDR is set, on the admin listener (admin).
type endpoints struct {
	engine       stream.Engine
	hub          *room.Hub
	connStats    func() conn.Stats
	shuttingDown *atomic.Bool
	log          *slog.Logger

	mu      sync.Mutex
	lastErr string // the engine error /readyz last logged; "" while ready
}

// public returns the handler of the public port: /healthz, /readyz,
// /api/rooms/<room> (presence), the chat page at / and /<room>/, plus /stats, /metrics and pprof (with
// DEBUG_PPROF) when there is no admin listener. /readyz answers a generic reason, never the engine's
// error, which names internal addresses: that is logged. In production
// (allowedHosts set) a request whose Host is not allowed gets 400, probes
// included: orchestrators' probes send an allowed Host header (see
// deploy/k8s), and `gateway -healthcheck` does.
func (e *endpoints) public(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", e.readyz(false))
	mux.HandleFunc("GET /api/rooms/{room}", e.roomInfo)
	mux.HandleFunc("GET /api/rooms/{room}/{$}", e.roomInfo)
	mux.HandleFunc("GET /api/rooms/{$}", e.roomInfo)
	mux.HandleFunc("GET /{$}", chatPage)
	mux.HandleFunc("GET /{room}/{$}", chatPage)
	// Without this, /<name> would redirect to /<name>/ (the page).
	mux.HandleFunc("GET /{name}", http.NotFound)
	mux.HandleFunc("GET /static/{file}", chatAsset)
	if cfg.AdminAddr == "" {
		e.operational(mux, cfg.Pprof)
	}
	if len(cfg.Conn.AllowedHosts) == 0 {
		return mux
	}
	return hostCheck(cfg.Conn.AllowedHosts, mux)
}

// admin returns the handler of the admin listener: /healthz, /readyz
// with the engine's error, /stats, /metrics and pprof (with DEBUG_PPROF). It checks
// no Host: the listener is meant for loopback or a private network.
func (e *endpoints) admin(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", healthz)
	mux.HandleFunc("GET /readyz", e.readyz(true))
	e.operational(mux, cfg.Pprof)
	return mux
}

// operational adds /stats, /metrics and, with pprof, the Go profiles.
func (e *endpoints) operational(mux *http.ServeMux, withPprof bool) {
	mux.Handle("GET /metrics", metricsHandler(statsSource{conn: e.connStats, hub: e.hub.Stats, engine: e.engine}))
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Conn conn.Stats `json:"connections"`
			Hub  room.Stats `json:"rooms"`
		}{e.connStats(), e.hub.Stats()})
	})
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
}

// web holds the chat page: plain HTML, CSS and JavaScript, no build step.
//
//go:embed web/index.html web/chat.js web/chat.css
var web embed.FS

// pageCSP is the Content-Security-Policy of the chat page and its files:
// scripts and styles from this origin only (no inline code), WebSocket
// and fetch to this origin only, nothing else.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// serveWeb writes the embedded file name with its type and the page's
// security headers.
func serveWeb(w http.ResponseWriter, name, ctype string) {
	b, err := web.ReadFile("web/" + name)
	if err != nil {
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}

// chatPage serves the chat page at / (pick a room) and /<room>/ (that
// room). A bad room name gets 400 with the reason the WebSocket upgrade
// gives.
func chatPage(w http.ResponseWriter, r *http.Request) {
	if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "no WebSocket endpoint here; use /ws/chat/<room>/", http.StatusNotFound)
		return
	}
	if r.URL.Path != "/" {
		if err := room.ValidRoomName(r.PathValue("room")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	serveWeb(w, "index.html", "text/html; charset=utf-8")
}

// chatAsset serves the page's script and style sheet under /static/.
func chatAsset(w http.ResponseWriter, r *http.Request) {
	switch f := r.PathValue("file"); f {
	case "chat.js":
		serveWeb(w, f, "text/javascript; charset=utf-8")
	case "chat.css":
		serveWeb(w, f, "text/css; charset=utf-8")
	default:
		http.NotFound(w, r)
	}
}

func healthz(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }

// roomInfoTimeout bounds the engine call of GET /api/rooms/<room>.
const roomInfoTimeout = 5 * time.Second

// roomInfo answers GET /api/rooms/<room> with the room's members on
// every live node: {"room":"<room>","members":N}. A bad room name gets
// 400 with the reason the WebSocket upgrade gives; an engine that is
// unhealthy (what /readyz reports) or cannot answer gets 503. The health
// check comes first: a lone node counts its own members without asking
// Redis, and would otherwise answer a plausible 0 while Redis is down.
func (e *endpoints) roomInfo(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("room")
	if err := room.ValidRoomName(name); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), roomInfoTimeout)
	defer cancel()
	n, err := 0, e.engine.Health()
	if err == nil {
		n, err = e.engine.Members(ctx, name)
	}
	if err != nil {
		if e.log.Enabled(ctx, slog.LevelDebug) {
			e.log.Debug("presence unavailable", "room", name, "err", err)
		}
		http.Error(w, "the message store is unavailable; retry later", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(struct {
		Room    string `json:"room"`
		Members int    `json:"members"`
	}{name, n})
}

// readyz answers 200 while the engine is healthy, else 503. With detail
// the answer carries the engine's error (the admin listener); without,
// only "engine unavailable" (the public port), and the error is logged
// when it changes.
func (e *endpoints) readyz(detail bool) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if e.shuttingDown.Load() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		err := e.engine.Health()
		e.noteHealth(err)
		switch {
		case err == nil:
			_, _ = io.WriteString(w, "ready\n")
		case detail:
			http.Error(w, "engine unavailable: "+err.Error(), http.StatusServiceUnavailable)
		default:
			http.Error(w, "engine unavailable", http.StatusServiceUnavailable)
		}
	}
}

// noteHealth logs the engine's health when it changes, so that /readyz
// probes (or a client polling it) do not repeat the same line.
func (e *endpoints) noteHealth(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	e.mu.Lock()
	changed := msg != e.lastErr
	e.lastErr = msg
	e.mu.Unlock()
	switch {
	case !changed:
	case err != nil:
		e.log.Warn("not ready: engine unhealthy", "err", err)
	default:
		e.log.Info("ready: engine healthy again")
	}
}

// hostCheck answers 400 to requests whose Host is not in allowed, with
// the matcher the upgrade applies (conn.HostList).
func hostCheck(allowed []string, next http.Handler) http.Handler {
	hosts := conn.NewHostList(allowed)
	if hosts.Any() {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hosts.Allows(r.Host) {
			http.Error(w, fmt.Sprintf("host %q is not allowed (ALLOWED_HOSTS)", r.Host), http.StatusBadRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// healthHost returns a Host header that allowed accepts, for the
// -healthcheck request; "" when any host is accepted.
func healthHost(allowed []string) string {
	for _, h := range allowed {
		h = strings.TrimSpace(h)
		if h == "*" {
			return ""
		}
		if h = strings.TrimPrefix(h, "."); h != "" {
			if strings.Contains(h, ":") && !strings.HasPrefix(h, "[") {
				h = "[" + h + "]" // IPv6 literal
			}
			return h
		}
	}
	return ""
}

// adminServer serves the admin endpoints on their own listener: plain
// net/http, with the timeouts of a server not meant for the public.
func adminServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}
