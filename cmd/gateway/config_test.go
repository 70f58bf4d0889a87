package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/chatgw/gateway/pkg/room"
	"github.com/chatgw/gateway/pkg/stream"
	"github.com/sethvargo/go-envconfig"
)

// runOnce runs the gateway with env and args until it exits by itself and
// returns its exit code and output.
func runOnce(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := run(ctx, args, envconfig.MapLookuper(env), &out, &out, func(net.Addr, net.Addr) {
		t.Errorf("gateway started listening; want it to exit at once")
		cancel()
	})
	return code, out.String()
}

func TestBadConfigExits2NamingTheVariable(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"port not a number", map[string]string{"PORT": "eighty"}, `PORT="eighty"`},
		{"port out of range", map[string]string{"PORT": "70000"}, "PORT"},
		{"bad duration", map[string]string{"PING_INTERVAL": "5"}, `PING_INTERVAL="5"`},
		{"bad bool", map[string]string{"REUSE_PORT": "maybe"}, `REUSE_PORT="maybe"`},
		{"unknown environment", map[string]string{"ENVIRONMENT": "staging"}, "ENVIRONMENT"},
		{"bad log level", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"queue smaller than two messages", map[string]string{"MAX_QUEUE_BYTES": "1000"}, "MAX_QUEUE_BYTES"},
		{"negative publish queue", map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "h", "PUBLISH_QUEUE": "-1"}, "PUBLISH_QUEUE"},
		{"production without hosts", map[string]string{"ENVIRONMENT": "production", "IP_REDIS": "127.0.0.1"}, "ALLOWED_HOSTS"},
		{"production without Redis", map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*"}, "IP_REDIS"},
		{"bad Redis port", map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "h", "PORT_REDIS": "x"}, `PORT_REDIS="x"`},
		{"bad Redis shards", map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*", "IP_REDIS": "h", "REDIS_READ_SHARDS": "-2"}, "REDIS_READ_SHARDS"},
		{"negative rate limit", map[string]string{"RATE_LIMIT": "-1"}, "RATE_LIMIT"},
		{"rate limit not a number", map[string]string{"RATE_LIMIT": "fast"}, `RATE_LIMIT="fast"`},
		{"bad burst", map[string]string{"RATE_BURST": "x"}, `RATE_BURST="x"`},
		{"negative burst", map[string]string{"RATE_BURST": "-5"}, "RATE_BURST"},
		{"negative close after", map[string]string{"RATE_CLOSE_AFTER": "-1"}, "RATE_CLOSE_AFTER"},
		{"negative history max", map[string]string{"HISTORY_MAX": "-1"}, "HISTORY_MAX"},
		{"history max too large", map[string]string{"HISTORY_MAX": "1001"}, "HISTORY_MAX"},
		{"history max not a number", map[string]string{"HISTORY_MAX": "many"}, `HISTORY_MAX="many"`},
		{"admin address without port", map[string]string{"ADMIN_ADDR": "localhost"}, "ADMIN_ADDR"},
		{"admin port out of range", map[string]string{"ADMIN_ADDR": "127.0.0.1:70000"}, "ADMIN_ADDR"},
		{"short HS256 secret", map[string]string{"AUTH_HS256_SECRET": "short"}, "AUTH_HS256_SECRET"},
		{"two auth keys", map[string]string{"AUTH_HS256_SECRET": strings.Repeat("s", 32), "AUTH_PUBLIC_KEY": "x"}, "AUTH_PUBLIC_KEY"},
		{"bad public key", map[string]string{"AUTH_PUBLIC_KEY": "not pem"}, "AUTH_PUBLIC_KEY"},
		{"missing key file", map[string]string{"AUTH_PUBLIC_KEY_FILE": "/nonexistent/key.pem"}, "AUTH_PUBLIC_KEY_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runOnce(t, tc.env)
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, output %q; want exit 2 naming %s", code, out, tc.want)
			}
		})
	}
}

// TestProductionNamesEveryMissingVariable: a production start that lacks
// several required variables names all of them in one error, not only
// the first one checked.
func TestProductionNamesEveryMissingVariable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		want    []string
		notWant []string
	}{
		{"nothing set", map[string]string{"ENVIRONMENT": "production"}, []string{"IP_REDIS", "REDIS_ADDRS", "ALLOWED_HOSTS", "2 more"}, nil},
		{"hosts only", map[string]string{"ENVIRONMENT": "production", "ALLOWED_HOSTS": "*"}, []string{"IP_REDIS", "1 more"}, []string{"ALLOWED_HOSTS ("}},
		{"cluster seeds, no hosts", map[string]string{"ENVIRONMENT": "production", "REDIS_ADDRS": "r1:6379"}, []string{"ALLOWED_HOSTS", "1 more"}, []string{"IP_REDIS ("}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := runOnce(t, tc.env)
			if code != 2 {
				t.Fatalf("exit %d, want 2; output %q", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not name %s:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output names %s, which is set:\n%s", w, out)
				}
			}
		})
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	code, out := runOnce(t, nil, "-h")
	if code != 0 {
		t.Fatalf("gateway -h exit %d", code)
	}
	vars := envVars(reflect.ValueOf(defaultConfig()))
	if len(vars) < 30 {
		t.Fatalf("found only %d variables in Config", len(vars))
	}
	for _, v := range vars {
		if v.help == "" {
			t.Errorf("%s has no help text (add a help tag)", v.name)
		}
		if !strings.Contains(out, v.name) {
			t.Errorf("gateway -h does not list %s", v.name)
		}
	}
	// Every flag, with its usage text: -h is the one place they are listed.
	fs, _ := newFlags(io.Discard)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !regexp.MustCompile(`(?m)^  -` + f.Name + ` +` + regexp.QuoteMeta(f.Usage) + `$`).MatchString(out) {
			t.Errorf("gateway -h does not list the flag -%s with its usage", f.Name)
		}
	})
	if n < 3 {
		t.Errorf("found %d flags, want at least -healthcheck, -readycheck and -version", n)
	}
	for _, legacy := range []string{"ENVIRONMENT", "IP_REDIS", "PORT_REDIS", "ALLOWED_HOSTS"} {
		if !strings.Contains(out, "\n  "+legacy+" ") {
			t.Errorf("gateway -h does not list the original variable %s", legacy)
		}
	}
}

// TestHelpShowsRealDefaults: gateway -h prints the defaults the packages
// apply, not a copy kept in tags.
func TestHelpShowsRealDefaults(t *testing.T) {
	_, out := runOnce(t, nil, "-h")
	for name, want := range map[string]string{
		"PORT":               "8000",
		"ENVIRONMENT":        "development",
		"MAX_MESSAGE_BYTES":  strconv.Itoa(64 << 10),
		"PING_INTERVAL":      "30s",
		"EVENT_LOOPS":        strconv.Itoa(runtime.GOMAXPROCS(0)),
		"PORT_REDIS":         strconv.Itoa(stream.DefaultRedisPort),
		"REDIS_MAXLEN":       strconv.Itoa(stream.DefaultRedisMaxLen),
		"REDIS_TTL":          "24h",
		"REDIS_BATCH_WINDOW": stream.DefaultRedisBatchWindow.String(),
		"REDIS_FLUSH_DELAY":  stream.DefaultRedisFlushDelay.String(),
		"PUBLISH_QUEUE":      strconv.Itoa(stream.DefaultPublishQueue),
		"IP_REDIS":           "-",
		"RATE_LIMIT":         fmt.Sprint(room.DefaultRateLimit),
		"RATE_BURST":         strconv.Itoa(room.DefaultRateBurst),
		"RATE_CLOSE_AFTER":   strconv.Itoa(room.DefaultRateCloseAfter),
		"HISTORY_MAX":        strconv.Itoa(room.DefaultHistoryMax),
		"ADMIN_ADDR":         "-",
		"AUTH_HS256_SECRET":  "-",
		"AUTH_PUBLIC_KEY":    "-",
	} {
		re := regexp.MustCompile(`(?m)^  ` + name + ` +(\S+) `)
		m := re.FindStringSubmatch(out)
		if m == nil || m[1] != want {
			t.Errorf("gateway -h shows %s default %q, want %q", name, m, want)
		}
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Environment != "development" || cfg.Port != 8000 || cfg.Conn.Defaulted().MaxMessageBytes != 64<<10 {
		t.Fatalf("defaults: %+v", cfg)
	}
	if cfg.Conn.AllowedHosts != nil {
		t.Fatalf("development must not check Host headers")
	}
	cfg, err = loadConfig(context.Background(), envconfig.MapLookuper(map[string]string{
		"ENVIRONMENT": "production", "IP_REDIS": "redis", "ALLOWED_HOSTS": "chat.example.com,api.example.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Conn.AllowedHosts, []string{"chat.example.com", "api.example.com"}) {
		t.Fatalf("production config: hosts %v", cfg.Conn.AllowedHosts)
	}
}

// TestOriginDefaults: in production ALLOWED_ORIGINS defaults to the
// ALLOWED_HOSTS names (conn matches a bare name against any scheme and
// port); set, it is kept; in development it stays empty (any origin).
func TestOriginDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"development", nil, nil},
		{"development, set", map[string]string{"ALLOWED_ORIGINS": "https://a.example"}, []string{"https://a.example"}},
		{"production", map[string]string{"ENVIRONMENT": "production", "IP_REDIS": "redis", "ALLOWED_HOSTS": "chat.example.com,.example.org"}, []string{"chat.example.com", ".example.org"}},
		{"production, any host", map[string]string{"ENVIRONMENT": "production", "IP_REDIS": "redis", "ALLOWED_HOSTS": "*"}, []string{"*"}},
		{"production, set", map[string]string{"ENVIRONMENT": "production", "IP_REDIS": "redis", "ALLOWED_HOSTS": "chat.example.com", "ALLOWED_ORIGINS": "https://app.example.net"}, []string{"https://app.example.net"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Conn.AllowedOrigins, tc.want) {
				t.Fatalf("AllowedOrigins %q, want %q", cfg.Conn.AllowedOrigins, tc.want)
			}
		})
	}
}

func TestAdminAddrDefaultsToLoopback(t *testing.T) {
	for in, want := range map[string]string{":8001": "127.0.0.1:8001", "0.0.0.0:9": "0.0.0.0:9", "[::1]:8001": "[::1]:8001"} {
		cfg, err := loadConfig(context.Background(), envconfig.MapLookuper(map[string]string{"ADMIN_ADDR": in}))
		if err != nil || cfg.AdminAddr != want {
			t.Errorf("ADMIN_ADDR=%s: %q, %v; want %q", in, cfg.AdminAddr, err, want)
		}
	}
}

func TestHealthcheckFlag(t *testing.T) {
	g := startGateway(t, nil)
	_, port, _ := net.SplitHostPort(g.addr)
	if code, out := runOnce(t, map[string]string{"PORT": port}, "-healthcheck"); code != 0 {
		t.Fatalf("-healthcheck against a running gateway: exit %d %q", code, out)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	_, free, _ := net.SplitHostPort(l.Addr().String())
	l.Close()
	if code, _ := runOnce(t, map[string]string{"PORT": free}, "-healthcheck"); code != 1 {
		t.Fatalf("-healthcheck with no gateway: exit %d, want 1", code)
	}
}
