package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
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
	Environment  string        `env:"ENVIRONMENT, default=development" help:"development: embedded in-memory engine, text logs; production: Redis engine, JSON logs, Host check"`
	Port         int           `env:"PORT, default=8000" help:"TCP port for WebSocket and HTTP"`
	ListenHost   string        `env:"LISTEN_HOST" help:"address to bind; empty means all interfaces"`
	AllowedHosts []string      `env:"ALLOWED_HOSTS" help:"comma-separated Host names accepted for upgrades in production; * accepts any"`
	LogLevel     string        `env:"LOG_LEVEL, default=info" help:"debug, info, warn or error"`
	ShutdownWait time.Duration `env:"SHUTDOWN_TIMEOUT, default=10s" help:"on SIGTERM, time clients get to answer the 1001 close before the process exits"`
	Pprof        bool          `env:"DEBUG_PPROF" help:"serve Go profiles at /debug/pprof/ on the HTTP port (keep it off on public ports)"`
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
	if cfg.Environment == envProduction {
		if len(cfg.AllowedHosts) == 0 {
			return cfg, fmt.Errorf("ALLOWED_HOSTS is empty; in production list the host names clients use (or * for any)")
		}
		cfg.Conn.AllowedHosts = cfg.AllowedHosts
	}
	return cfg, nil
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
			key, _, _ := strings.Cut(tag, ",")
			val, _ := l.Lookup(key)
			return fmt.Errorf("%s=%q is invalid: %s", key, val, tail)
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

// printHelp lists every variable of Config with the default the gateway
// really uses (see defaultConfig) and its meaning (the help tag), so the
// list never drifts from the code.
func printHelp(w io.Writer) {
	fmt.Fprint(w, `gateway: WebSocket chat gateway, ws://HOST:PORT/ws/chat/<room>/

Usage: gateway            run, configured from the environment
       gateway -healthcheck  exit 0 if the local gateway answers /healthz
       gateway -h            this help

Environment (a dash: no default):
`)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
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
