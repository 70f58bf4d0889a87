package conn

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"
	"time"
)

// configDocs returns the doc comment of each Config field in config.go,
// its lines joined by spaces.
func configDocs(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "config.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok || ts.Name.Name != "Config" {
			return true
		}
		for _, fld := range ts.Type.(*ast.StructType).Fields.List {
			for _, name := range fld.Names {
				docs[name.Name] = strings.Join(strings.Fields(fld.Doc.Text()), " ")
			}
		}
		return false
	})
	if len(docs) == 0 {
		t.Fatal("no Config fields found in config.go")
	}
	return docs
}

// describe writes a value as the comments do: whole seconds as "15s",
// byte counts in KiB or MiB when whole, strings quoted.
func describe(v any) string {
	switch v := v.(type) {
	case time.Duration:
		if v%time.Second == 0 {
			return fmt.Sprintf("%ds", v/time.Second)
		}
		return v.String()
	case int:
		switch {
		case v >= 1<<20 && v%(1<<20) == 0:
			return fmt.Sprintf("%d MiB", v>>20)
		case v >= 1<<10 && v%(1<<10) == 0:
			return fmt.Sprintf("%d KiB", v>>10)
		}
		return fmt.Sprint(v)
	case string:
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprint(v)
}

// TestConfigCommentsStateDefaults: every field whose comment says "Zero means X" gets X
// from Defaulted, so the comment, the code and `gateway -h` (which prints
// Defaulted) agree; the defaults are declared once, in config.go.
func TestConfigCommentsStateDefaults(t *testing.T) {
	docs := configDocs(t)
	d := reflect.ValueOf(Config{}.Defaulted())
	checked := 0
	for i := range d.NumField() {
		name := d.Type().Field(i).Name
		_, said, ok := strings.Cut(docs[name], "Zero means ")
		if !ok || d.Field(i).IsZero() {
			continue // no default, or one NewServer computes (MaxConnectionsPerIP, FileLimit)
		}
		want := describe(d.Field(i).Interface())
		if name == "EventLoops" {
			want = "GOMAXPROCS"
		}
		if !strings.HasPrefix(said, want) {
			t.Errorf("Config.%s: the comment says zero means %q…, Defaulted gives %s", name, said[:min(len(said), 20)], want)
		}
		checked++
	}
	if checked < 15 {
		t.Fatalf("checked %d defaults; the comments lost their \"Zero means\"", checked)
	}
}

// TestConfigHelpStatesBounds: the help tags and comments that state a
// bound or a factor must be literals; they state the constant's value.
func TestConfigHelpStatesBounds(t *testing.T) {
	docs := configDocs(t)
	help := func(field string) string {
		f, ok := reflect.TypeFor[Config]().FieldByName(field)
		if !ok {
			t.Fatalf("no field %s", field)
		}
		return f.Tag.Get("help")
	}
	for _, tc := range []struct{ where, text, want string }{
		{"MaxQueueBytes help", help("MaxQueueBytes"), fmt.Sprintf("at least %dx MAX_MESSAGE_BYTES", minQueueMessages)},
		{"MaxQueueBytes comment", docs["MaxQueueBytes"], fmt.Sprintf("at least %d×MaxMessageBytes", minQueueMessages)},
		{"MaxQueueBytes help bound", help("MaxQueueBytes"), fmt.Sprintf("at most %d GiB", maxQueueBytes>>30)},
		{"MaxQueueBytes comment bound", docs["MaxQueueBytes"], fmt.Sprintf("at most %d GiB", maxQueueBytes>>30)},
		{"CloseTimeout help", help("CloseTimeout"), fmt.Sprintf("up to %dx", closeWaitFactor)},
		{"CloseTimeout comment", docs["CloseTimeout"], fmt.Sprintf("up to %d×CloseTimeout", closeWaitFactor)},
		{"MaxConnectionsPerIP help", help("MaxConnectionsPerIP"), fmt.Sprintf("a quarter of MAX_CONNECTIONS, at least %d", perIPMin)},
		{"MaxConnectionsPerIP comment", docs["MaxConnectionsPerIP"], fmt.Sprintf("a quarter of MaxConnections, at least %d", perIPMin)},
		{"MaxHeaderBytes comment", docs["MaxHeaderBytes"], describe(minHeaderBytes) + " to " + describe(maxHeaderBytes)},
	} {
		if !strings.Contains(tc.text, tc.want) {
			t.Errorf("%s does not say %q: %q", tc.where, tc.want, tc.text)
		}
	}
	if perIPShare != 4 {
		t.Errorf("perIPShare is %d; the MaxConnectionsPerIP help and comment say a quarter", perIPShare)
	}
}
