package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// proseDefaults are the variables whose documented default is a rule, not
// a value: the gateway works it out at start, so `gateway -h` prints 0 or
// a dash for them.
var proseDefaults = map[string]bool{
	"MAX_CONNECTIONS":        true, // what the open-file limit allows
	"MAX_CONNECTIONS_PER_IP": true, // a quarter of MAX_CONNECTIONS, at least 1000; none in development
	"TRUSTED_PROXIES":        true, // conn.DefaultTrustedProxies
	"ALLOWED_ORIGINS":        true, // the ALLOWED_HOSTS names in production, else any
}

// docDefault is a default as a document states it.
type docDefault struct {
	where, name, value string
}

// docTableDefaults returns the defaults stated in the markdown tables of
// path whose first two columns are "variable" and "default". A cell may
// name several variables (`A`, `B` or `A` / `B`) with as many defaults
// split the same way, or one default for all.
func docTableDefaults(t *testing.T, path string) []docDefault {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile("`([A-Z][A-Z0-9_]+)`")
	var out []docDefault
	inTable := false
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.ReplaceAll(line, `\|`, "¦"), "|")
		if len(cells) < 4 {
			continue
		}
		first, second := strings.TrimSpace(cells[1]), strings.TrimSpace(cells[2])
		if first == "variable" {
			inTable = second == "default"
			continue
		}
		if !inTable || strings.HasPrefix(first, "---") {
			continue
		}
		vars := names.FindAllStringSubmatch(first, -1)
		values := []string{second}
		for _, sep := range []string{" / ", ", "} {
			if parts := strings.Split(second, sep); len(parts) == len(vars) && len(vars) > 1 {
				values = parts
				break
			}
		}
		if len(values) != len(vars) && len(values) != 1 {
			t.Fatalf("%s:%d: %d variables and %d defaults in %q", path, i+1, len(vars), len(values), line)
		}
		for j, v := range vars {
			value := values[0]
			if len(values) > 1 {
				value = values[j]
			}
			out = append(out, docDefault{where: path + ":" + strconv.Itoa(i+1), name: v[1], value: value})
		}
	}
	return out
}

// normalDefault writes a default as `gateway -h` does: "-" for none,
// byte counts in bytes, rates without "/s", numbers without the
// thousands space; durations parsed. ok is false for a rule in words.
func normalDefault(s string) (v string, ok bool) {
	s = strings.TrimSpace(strings.Trim(strings.TrimSpace(s), "`"))
	switch s {
	case "–", "-", "off":
		return "-", true
	}
	s = strings.TrimSuffix(s, "/s")
	s = regexp.MustCompile(`(\d) (\d{3})\b`).ReplaceAllString(s, "$1$2")
	if m := regexp.MustCompile(`^(\d+) (KiB|MiB)$`).FindStringSubmatch(s); m != nil {
		n, _ := strconv.Atoi(m[1])
		shift := map[string]int{"KiB": 10, "MiB": 20}[m[2]]
		return strconv.Itoa(n << shift), true
	}
	if d, err := time.ParseDuration(s); err == nil && s != "0" {
		return d.String(), true
	}
	if regexp.MustCompile(`^(\d+|[a-z]+)$`).MatchString(s) {
		return s, true
	}
	return "", false
}

// TestDocumentedDefaultsMatchHelp: every default README.md's tables state
// is the one `gateway -h` prints (which is what the packages apply), so
// the docs cannot drift from the code. docs/operations.md states no
// default in a table; its prose sums are checked where it gives them.
func TestDocumentedDefaultsMatchHelp(t *testing.T) {
	_, out := runOnce(t, nil, "-h")
	help := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^  ([A-Z][A-Z0-9_]+) +(\S+) `).FindAllStringSubmatch(out, -1) {
		help[m[1]] = m[2]
	}
	docs := append(docTableDefaults(t, "../../README.md"), docTableDefaults(t, "../../docs/operations.md")...)
	if len(docs) < 30 {
		t.Fatalf("found %d documented defaults in README.md's tables; the table format changed", len(docs))
	}
	for _, d := range docs {
		got, listed := help[d.name]
		if !listed {
			t.Errorf("%s: %s is documented but gateway -h does not list it", d.where, d.name)
			continue
		}
		want, ok := normalDefault(d.value)
		if !ok {
			if !proseDefaults[d.name] {
				t.Errorf("%s: %s's documented default %q is not a value gateway -h could print; write the value, or add it to proseDefaults", d.where, d.name, d.value)
			} else if got != "0" && got != "-" {
				t.Errorf("%s: %s's default is documented as a rule (%q) but gateway -h prints %q", d.where, d.name, d.value, got)
			}
			continue
		}
		if g, err := time.ParseDuration(got); err == nil && got != "0" {
			got = g.String()
		}
		if got != want {
			t.Errorf("%s: %s's documented default is %q (%s) but gateway -h prints %q", d.where, d.name, d.value, want, got)
		}
	}
	// docs/operations.md: the stop sequence's total with the defaults.
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var total time.Duration
	for _, name := range []string{"DRAIN_DELAY", "DRAIN_WINDOW", "SHUTDOWN_TIMEOUT"} {
		d, err := time.ParseDuration(help[name])
		if err != nil {
			t.Fatalf("gateway -h prints %s default %q: %v", name, help[name], err)
		}
		total += d
	}
	if want := "(" + strconv.Itoa(int(total/time.Second)) + " s with the defaults)"; !strings.Contains(string(b), want) {
		t.Errorf("docs/operations.md does not state DRAIN_DELAY + DRAIN_WINDOW + SHUTDOWN_TIMEOUT as %q, their sum with gateway -h's defaults", want)
	}
}
