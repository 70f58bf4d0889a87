package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/chatgw/gateway/pkg/conn"
	"github.com/chatgw/gateway/pkg/room"
	"github.com/chatgw/gateway/pkg/stream"
	"github.com/sethvargo/go-envconfig"
)

// Config is everything the gateway reads from the environment. The
// original app's names (ENVIRONMENT, IP_REDIS, PORT_REDIS, ALLOWED_HOSTS)
// keep their meaning.
type Config struct {
	Environment  string   `env:"ENVIRONMENT, default=development" help:"development: embedded in-memory engine, text logs; production: Redis engine, JSON logs, Host check"`
	Port         int      `env:"PORT, default=8000" help:"TCP port for WebSocket and HTTP"`
	ListenHost   string   `env:"LISTEN_HOST" help:"address to bind; empty means all interfaces"`
	AllowedHosts []string `env:"ALLOWED_HOSTS" help:"comma-separated Host names accepted in production, for upgrades and every HTTP endpoint; * accepts any, .example.com a domain and its subdomains"`
	// AdminAddr, when set, moves /stats and pprof off the public port to a
	// plain HTTP listener there (with /healthz and a detailed /readyz).
	AdminAddr    string        `env:"ADMIN_ADDR" help:"host:port of a separate HTTP listener for /stats, pprof, /healthz and a detailed /readyz (then not on PORT); keep it on loopback or a private network; :PORT alone binds 127.0.0.1"`
	LogLevel     string        `env:"LOG_LEVEL, default=info" help:"debug, info, warn or error"`
	ShutdownWait time.Duration `env:"SHUTDOWN_TIMEOUT, default=10s" help:"on SIGTERM, after the drain: time the last clients get to answer the 1001 close and the engine to store what its queues hold"`
	// DrainDelay and DrainWindow serve a load balancer in front of
	// production nodes: in development, unless set, both are 0 (Ctrl-C
	// stops at once), and a node with no connection open skips them.
	DrainDelay   time.Duration `env:"DRAIN_DELAY, default=5s" help:"on SIGTERM, time /readyz answers 503 while everything else goes on, so load balancers stop sending new clients; then new upgrades get 503. Skipped with no connection open; 0 in development unless set"`
	DrainWindow  time.Duration `env:"DRAIN_WINDOW, default=10s" help:"on SIGTERM, after DRAIN_DELAY: connections are closed with 1001 in batches spread over this time, so clients do not all reconnect at once. 0 in development unless set"`
	StartTimeout time.Duration `env:"REDIS_START_TIMEOUT, default=0s" help:"production: give up (exit 1) when Redis has not answered this long after start; 0 retries for ever, serving /healthz and a 503 /readyz meanwhile"`
	Pprof        bool          `env:"DEBUG_PPROF" help:"serve Go profiles at /debug/pprof/ (on ADMIN_ADDR when set, else on PORT: keep it off on public ports)"`
	Conn         conn.Config
	Room         room.Config
	Redis        stream.RedisConfig
}

const (
	envDevelopment = "development"
	envProduction  = "production"
)

// loadConfig reads and checks the configuration. Errors name the variable
// to fix.
func loadConfig(ctx context.Context, l envconfig.Lookuper) (Config, error) {
	var cfg Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &cfg, Lookuper: l}); err != nil {
		return cfg, namedError(err, l)
	}
	switch cfg.Environment {
	case envDevelopment, envProduction:
	default:
		return cfg, fmt.Errorf("ENVIRONMENT is %q; want development or production", cfg.Environment)
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return cfg, fmt.Errorf("PORT is %d; want 0 to 65535", cfg.Port)
	}
	if _, err := parseLevel(cfg.LogLevel); err != nil {
		return cfg, err
	}
	if cfg.ShutdownWait <= 0 {
		return cfg, fmt.Errorf("SHUTDOWN_TIMEOUT is %s; want a positive duration such as 10s", cfg.ShutdownWait)
	}
	if cfg.DrainDelay < 0 || cfg.DrainWindow < 0 || cfg.StartTimeout < 0 {
		return cfg, fmt.Errorf("DRAIN_DELAY (%s), DRAIN_WINDOW (%s) and REDIS_START_TIMEOUT (%s) must not be negative; 0 turns each off",
			cfg.DrainDelay, cfg.DrainWindow, cfg.StartTimeout)
	}
	if cfg.Environment == envDevelopment {
		// No load balancer to wait for: Ctrl-C on `go run` stops at once.
		if _, set := l.Lookup("DRAIN_DELAY"); !set {
			cfg.DrainDelay = 0
		}
		if _, set := l.Lookup("DRAIN_WINDOW"); !set {
			cfg.DrainWindow = 0
		}
	}
	if cfg.AdminAddr != "" {
		addr, err := adminAddr(cfg.AdminAddr)
		if err != nil {
			return cfg, err
		}
		cfg.AdminAddr = addr
	}
	cfg.Room.MaxMessageBytes = cfg.Conn.MaxMessageBytes // the byte buckets hold a few
	if cfg.Environment == envDevelopment && cfg.Conn.MaxConnectionsPerIP == 0 {
		// One machine, load tests from one address: no per-address cap.
		cfg.Conn.MaxConnectionsPerIP = -1
	}
	if cfg.Environment == envProduction {
		if err := missingInProduction(cfg); err != nil {
			return cfg, err
		}
		cfg.Conn.AllowedHosts = cfg.AllowedHosts
		if len(cfg.Conn.AllowedOrigins) == 0 {
			// ALLOWED_ORIGINS unset: browsers may connect from pages
			// served by the allowed hosts. conn matches a bare host name
			// or .domain against any scheme and port, and "*" any origin.
			cfg.Conn.AllowedOrigins = cfg.AllowedHosts
		}
	}
	return cfg, nil
}

// missingInProduction names, in one error, every variable production
// needs that is unset: the Redis address and ALLOWED_HOSTS. A first start
// then shows everything to fill in at once rather than one per try.
func missingInProduction(cfg Config) error {
	var missing []string
	if cfg.Redis.Host == "" && len(cfg.Redis.Addrs) == 0 {
		missing = append(missing, "IP_REDIS (the Redis host; or REDIS_ADDRS for a Cluster or sentinels)")
	}
	if len(cfg.AllowedHosts) == 0 {
		missing = append(missing, "ALLOWED_HOSTS (the host names clients use, comma-separated, or * for any)")
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("ENVIRONMENT=production needs %d more variable(s):\n  %s\n"+
		"set them (see deploy/env.production), or run with ENVIRONMENT=development for one node without Redis",
		len(missing), strings.Join(missing, "\n  "))
}

// adminAddr checks ADMIN_ADDR and completes a bare ":port" with the
// loopback address.
func adminAddr(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", fmt.Errorf("ADMIN_ADDR is %q; want host:port such as 127.0.0.1:8001", s)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return "", fmt.Errorf("ADMIN_ADDR is %q; the port must be 0 to 65535", s)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// namedError rewrites an envconfig error, which names the struct field
// ("Conn: MaxMessageBytes: strconv.ParseInt: …"), so that it names the
// environment variable and its value instead.
func namedError(err error, l envconfig.Lookuper) error {
	t := reflect.TypeFor[Config]()
	rest := err.Error()
	for {
		name, tail, ok := strings.Cut(rest, ": ")
		if !ok {
			break
		}
		f, found := t.FieldByName(name)
		if !found {
			break
		}
		if tag, ok := f.Tag.Lookup("env"); ok {
			variable, _, _ := strings.Cut(tag, ",")
			val, _ := l.Lookup(variable)
			return fmt.Errorf("%s=%q is invalid: %s", variable, val, tail)
		}
		t, rest = f.Type, tail
	}
	return fmt.Errorf("bad environment: %w", err)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("LOG_LEVEL is %q; want debug, info, warn or error", s)
	}
	return l, nil
}

// printHelp lists every flag of fs, then every variable of Config with
// the default the gateway really uses (see defaultConfig) and its meaning
// (the help tag), so the list never drifts from the code.
func printHelp(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, `gateway: WebSocket chat gateway, ws://HOST:PORT/ws/chat/<room>/

Usage: gateway [flag]   run, configured from the environment (below)

Flags:
`)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) { fmt.Fprintf(tw, "  -%s\t%s\n", f.Name, f.Usage) })
	fmt.Fprintf(tw, "  -h\tthis help\n")
	tw.Flush()
	fmt.Fprint(w, `
Environment (a dash: no default):
`)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tMEANING")
	for _, v := range envVars(reflect.ValueOf(defaultConfig())) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.name, v.def, v.help)
	}
	tw.Flush()
}

// defaultConfig is the configuration of an empty environment with every
// package's defaults applied: the one convention is that a zero field
// means "the package's default", which Defaulted methods fill in (the
// gateway's own fields take envconfig defaults).
func defaultConfig() Config {
	var cfg Config
	_ = envconfig.ProcessWith(context.Background(), &envconfig.Config{Target: &cfg, Lookuper: envconfig.MapLookuper(nil)})
	cfg.Conn = cfg.Conn.Defaulted()
	cfg.Room = cfg.Room.Defaulted()
	cfg.Redis = cfg.Redis.Defaulted()
	return cfg
}

type envVar struct{ name, def, help string }

// envVars walks a config struct value for env tags, descending into
// nested structs, and formats each field's value as its default.
func envVars(v reflect.Value) []envVar {
	var vars []envVar
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag, ok := f.Tag.Lookup("env")
		if !ok {
			if f.Type.Kind() == reflect.Struct {
				vars = append(vars, envVars(v.Field(i))...)
			}
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		vars = append(vars, envVar{name: name, def: formatDefault(v.Field(i)), help: f.Tag.Get("help")})
	}
	return vars
}

// formatDefault formats a default for -h: durations as Go writes them in
// the environment ("24h", "2ms"), lists comma-separated, zero strings and
// empty lists as "-".
func formatDefault(v reflect.Value) string {
	if d, ok := v.Interface().(time.Duration); ok {
		s := d.String()
		for _, zero := range []string{"0m0s", "0s"} {
			if t, ok := strings.CutSuffix(s, zero); ok && t != "" && (t[len(t)-1] == 'h' || t[len(t)-1] == 'm') {
				s = t
			}
		}
		return s
	}
	switch v.Kind() {
	case reflect.String:
		return cmp.Or(v.String(), "-")
	case reflect.Slice:
		if v.Len() == 0 {
			return "-"
		}
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}
