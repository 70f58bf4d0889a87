package stream

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// configDocs returns the doc comment and tags of each field of the
// struct type named typ in file, by field name.
func configDocs(t *testing.T, file, typ string) (docs map[string]string, tags map[string]reflect.StructTag, consts map[string]bool) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs, tags, consts = map[string]string{}, map[string]reflect.StructTag{}, map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			for _, name := range n.Names {
				consts[name.Name] = true
			}
		case *ast.TypeSpec:
			st, ok := n.Type.(*ast.StructType)
			if !ok || n.Name.Name != typ {
				return true
			}
			for _, fld := range st.Fields.List {
				for _, name := range fld.Names {
					docs[name.Name] = fld.Doc.Text()
					if fld.Tag != nil {
						tag, _ := strconv.Unquote(fld.Tag.Value)
						tags[name.Name] = reflect.StructTag(tag)
					}
				}
			}
		}
		return true
	})
	if len(docs) == 0 {
		t.Fatalf("no struct %s in %s", typ, file)
	}
	return docs, tags, consts
}

// fmtDur formats d the way the doc comments write durations: "24h", "2m",
// "5s", "20µs".
func fmtDur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// zeroMeans matches "Zero means DefaultX (value)" in a field's doc.
var zeroMeans = regexp.MustCompile(`Zero\s+means\s+(Default\w+)\s+\(([^)]*)\)`)

// checkZeroMeans checks that doc names a declared default constant and
// states its value, want.
func checkZeroMeans(t *testing.T, field, doc string, consts map[string]bool, want string) {
	t.Helper()
	m := zeroMeans.FindStringSubmatch(doc)
	switch {
	case m == nil:
		t.Errorf("%s: doc comment does not say \"Zero means Default… (value)\":\n%s", field, doc)
	case !consts[m[1]]:
		t.Errorf("%s: doc comment names %s, which is not declared in redis_config.go", field, m[1])
	case m[2] != want:
		t.Errorf("%s: doc comment says %s is %s; the constant is %s: fix the comment", field, m[1], m[2], want)
	}
}

// TestRedisConfigDocsStateTheDefaults: each default and bound is a
// constant; the doc comments and help texts that state its value must
// state the constant's, so that they cannot drift from it.
func TestRedisConfigDocsStateTheDefaults(t *testing.T) {
	docs, tags, consts := configDocs(t, "redis_config.go", "RedisConfig")
	var c RedisConfig
	byEnv := map[string]string{}
	for name, tag := range tags {
		byEnv[tag.Get("env")] = name
	}
	field := func(env string) string {
		t.Helper()
		name, ok := byEnv[env]
		if !ok {
			t.Fatalf("no RedisConfig field has env:%q", env)
		}
		return name
	}
	for _, f := range c.durations() {
		name := field(f.name)
		doc := strings.Join(strings.Fields(docs[name]), " ")
		checkZeroMeans(t, name, doc, consts, fmtDur(f.def))
		if want := "at most " + fmtDur(f.max); f.off && !strings.Contains(doc, want) {
			t.Errorf("%s: doc comment does not say %q", name, want)
		}
		if want := "at least " + fmtDur(minRedisDuration); !f.off && !strings.Contains(doc, want) {
			t.Errorf("%s: doc comment does not say %q", name, want)
		}
	}
	for _, f := range c.counts() {
		name := field(f.name)
		doc := strings.Join(strings.Fields(docs[name]), " ")
		checkZeroMeans(t, name, doc, consts, strconv.FormatInt(f.def, 10))
		if want := "at most " + strconv.FormatInt(f.max, 10); f.max > 0 && !strings.Contains(doc, want) {
			t.Errorf("%s: doc comment does not say %q", name, want)
		}
	}
	checkZeroMeans(t, "Port", docs["Port"], consts, strconv.Itoa(DefaultRedisPort))
	checkZeroMeans(t, "Prefix", docs["Prefix"], consts, strconv.Quote(DefaultRedisPrefix))

	// Numbers of the mechanisms that the docs and `gateway -h` state.
	for _, tc := range []struct {
		field, in, want string
	}{
		{"TTL", "doc", fmt.Sprintf("min(TTL/%d, %s)", ttlRefreshDivisor, fmtDur(maxTTLRefresh))},
		{"TTL", "help", fmt.Sprintf("min(TTL/%d, %s)", ttlRefreshDivisor, fmtDur(maxTTLRefresh))},
		{"BatchWindow", "doc", fmt.Sprintf("at most %d times", maxWindowFactor)},
		{"BatchWindow", "help", fmt.Sprintf("up to %dx", maxWindowFactor)},
		{"PresenceInterval", "doc", fmt.Sprintf("within %d intervals", presenceLapse+1)},
		{"PresenceInterval", "help", fmt.Sprintf("within %d intervals", presenceLapse+1)},
	} {
		text := tags[tc.field].Get("help")
		if tc.in == "doc" {
			text = strings.Join(strings.Fields(docs[tc.field]), " ")
		}
		if !strings.Contains(text, tc.want) {
			t.Errorf("%s: %s text does not say %q, as the code does:\n%s", tc.field, tc.in, tc.want, text)
		}
	}
}

// TestMemoryConfigDocsStateTheDefaults: MemoryConfig's fields take the
// Redis defaults, and their doc comments say so with the same values.
func TestMemoryConfigDocsStateTheDefaults(t *testing.T) {
	docs, _, _ := configDocs(t, "memory.go", "MemoryConfig")
	_, _, consts := configDocs(t, "redis_config.go", "RedisConfig")
	d := RedisConfig{}.Defaulted()
	checkZeroMeans(t, "MaxLen", docs["MaxLen"], consts, strconv.FormatInt(d.MaxLen, 10))
	checkZeroMeans(t, "TTL", docs["TTL"], consts, fmtDur(d.TTL))
	checkZeroMeans(t, "DedupeWindow", docs["DedupeWindow"], consts, fmtDur(d.DedupeWindow))
}

// TestRedisConfigLogValueNamesEveryField: the logged configuration shows
// every field (passwords redacted), so that none is forgotten again.
func TestRedisConfigLogValueNamesEveryField(t *testing.T) {
	got := len(RedisConfig{}.LogValue().Group())
	if want := reflect.TypeFor[RedisConfig]().NumField(); got != want {
		t.Fatalf("LogValue has %d attributes; RedisConfig has %d fields: add the missing ones", got, want)
	}
}
