package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// testSummary returns a one-process summary whose histogram holds lat.
func testSummary(t *testing.T, m MessageStats, c ConnStats, procs []ProcStats, lat ...int64) *Summary {
	t.Helper()
	h := newLatencyHistogram()
	for _, v := range lat {
		if err := h.RecordValue(v); err != nil {
			t.Fatal(err)
		}
	}
	s := &Summary{Version: summaryVersion, Processes: 1, Targets: []string{"ws://127.0.0.1:8000"}, Rooms: 2,
		Messages: m, Conns: c, Procs: procs, Errors: map[string]int64{"close_1008": 1}}
	if err := s.setLatency(h); err != nil {
		t.Fatal(err)
	}
	s.derive()
	return s
}

func TestMergeSummaries(t *testing.T) {
	sample := func(at, rss, cpu int64) procSample { return procSample{AtUnixMs: at, RSSBytes: rss, CPUTicks: cpu} }
	a := testSummary(t,
		MessageStats{Sent: 10, Received: 90, Expected: 90, Delivered: 89, Lost: 1, SendSeconds: 10},
		ConnStats{Target: 10, Opened: 10, ConnectSeconds: 1, ConnectRate: 10},
		[]ProcStats{{PID: 7, Start: sample(100, 1000, 0), Connected: sample(200, 3000, 50), SendStart: sample(200, 3000, 50), End: sample(400, 4000, 150)}},
		100, 200, 300)
	b := testSummary(t,
		MessageStats{Sent: 20, Received: 180, Expected: 180, Delivered: 180, Duplicated: 2, SendSeconds: 12},
		ConnStats{Target: 10, Opened: 9, Failed: 1, ConnectSeconds: 2, ConnectRate: 4.5},
		[]ProcStats{{PID: 7, Start: sample(110, 1100, 1), Connected: sample(250, 5000, 60), SendStart: sample(250, 5000, 60), End: sample(390, 4500, 140)}},
		1000, 2000)

	// Through files, as the many-process script does.
	dir := t.TempDir()
	var files []string
	for i, s := range []*Summary{a, b} {
		var buf bytes.Buffer
		if err := s.writeJSON(&buf); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, []string{"a.json", "b.json"}[i])
		if err := os.WriteFile(f, buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	m, err := merge(files)
	if err != nil {
		t.Fatal(err)
	}

	want := MessageStats{Sent: 30, Received: 270, Expected: 270, Delivered: 269, Lost: 1, Duplicated: 2, SendSeconds: 12}
	if m.Messages != want {
		t.Errorf("messages %+v, want %+v", m.Messages, want)
	}
	wantConns := ConnStats{Target: 20, Opened: 19, Failed: 1, ConnectSeconds: 2, ConnectRate: 9.5} // 19 opened over 2 s: a total, not a sum of rates
	if m.Conns != wantConns {
		t.Errorf("conns %+v, want %+v", m.Conns, wantConns)
	}
	if m.Processes != 2 || m.Rooms != 4 || len(m.Targets) != 1 || m.Errors["close_1008"] != 2 {
		t.Errorf("processes %d rooms %d targets %v errors %v", m.Processes, m.Rooms, m.Targets, m.Errors)
	}
	if m.Latency.Count != 5 || m.Latency.Max < 2000 || m.Latency.Max > 2002 || m.Latency.P50 != 300 {
		t.Errorf("latency %+v, want 5 values, p50 300, max ~2000", m.Latency)
	}
	h, err := hdr.Decode([]byte(m.Latency.Histogram))
	if err != nil || h.TotalCount() != 5 {
		t.Errorf("merged histogram does not decode to 5 values: %v", err)
	}

	if len(m.Procs) != 1 {
		t.Fatalf("procs %+v, want one entry for pid 7", m.Procs)
	}
	p := m.Procs[0]
	// Earliest start, latest connected, earliest send start, latest end.
	if p.Start.AtUnixMs != 100 || p.Connected.AtUnixMs != 250 || p.SendStart.AtUnixMs != 200 || p.End.AtUnixMs != 400 {
		t.Errorf("samples chosen: %+v", p)
	}
	if p.CPUSendSeconds != 1.0 { // (150-50) ticks
		t.Errorf("CPU %v s, want 1", p.CPUSendSeconds)
	}
	if want := float64(5000-1000) / 19; p.RSSPerConnBytes != want {
		t.Errorf("RSS/conn %v, want %v", p.RSSPerConnBytes, want)
	}
	if want := 1e6 / 270.0; p.CPUMicrosPerDelivery != want {
		t.Errorf("CPU µs/delivery %v, want %v", p.CPUMicrosPerDelivery, want)
	}
	if pr := m.problems(); len(pr) != 3 { // failed, lost, duplicated
		t.Errorf("problems %v, want conns_failed, lost, duplicated", pr)
	}
}

func TestMergeRejects(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		file string
	}{
		{"not JSON", write("bad.json", "x")},
		{"old version", write("v0.json", map[string]any{"version": 0})},
		{"bad histogram", write("h.json", map[string]any{"version": summaryVersion, "latency_us": map[string]any{"histogram": "!!"}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := merge([]string{tt.file}); err == nil {
				t.Error("merge accepted it")
			}
		})
	}
}

func TestProblems(t *testing.T) {
	tests := []struct {
		name string
		s    Summary
		want int
	}{
		{"clean", Summary{}, 0},
		{"dropped", Summary{Conns: ConnStats{Dropped: 1}}, 1},
		{"out of order and echo", Summary{Messages: MessageStats{OutOfOrder: 1, Echoed: 1}}, 2},
		{"error frames", Summary{Messages: MessageStats{ErrorFrames: 3}}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.problems(); len(got) != tt.want {
				t.Errorf("problems() = %v, want %d", got, tt.want)
			}
		})
	}
}

// TestNothingSentFails: a run meant to send that sent or expected nothing
// is a failure, never OK; an idle run (-rate 0) is not.
func TestNothingSentFails(t *testing.T) {
	s := &Summary{Rate: 1, Senders: 1}
	if p := s.problems(); len(p) != 1 || p[0] != "nothing_sent" {
		t.Errorf("nothing sent: problems %v, want nothing_sent", p)
	}
	s.Messages.Sent = 5
	if p := s.problems(); len(p) != 1 || p[0] != "nothing_expected" {
		t.Errorf("nothing expected: problems %v, want nothing_expected", p)
	}
	idle := &Summary{Rate: 0, Senders: 1}
	if p := idle.problems(); len(p) != 0 {
		t.Errorf("idle run: problems %v, want none", p)
	}
}

// TestReport: -report writes one self-contained page with the verdict,
// the latency curve and the time series (sent and received on their own
// axes, the -pid process's CPU and memory), and nothing fetched from
// elsewhere.
func TestReport(t *testing.T) {
	f := startFloor(t)
	path := filepath.Join(t.TempDir(), "r.html")
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-url", "ws://" + f.Addr().String(), "-conns", "8", "-rooms", "2", "-senders", "1",
		"-rate", "50", "-duration", "2500ms", "-hold", "0s", "-drain", "300ms", "-quiet", "-pid", "self", "-report", path}, &out, io.Discard); code != exitOK {
		t.Fatalf("run exit %d: %s", code, out.String())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	for _, want := range []string{"Verdict: OK", "latency by percentile", "Messages sent per second", "Messages received per second",
		"Connections open", "CPU of the gateway (-pid)", "Resident memory (RSS) of the gateway (-pid)"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(page, "<svg"); n != 7 {
		t.Errorf("report has %d plots, want 7: latency by percentile, sent, received, p99, connections, CPU, RSS", n)
	}
	// The SVG namespaces name, they fetch nothing.
	rest := strings.NewReplacer(`"http://www.w3.org/2000/svg"`, "", `"http://www.w3.org/1999/xlink"`, "").Replace(page)
	for _, bad := range []string{"http://", "https://", "<script", "url("} {
		if strings.Contains(rest, bad) {
			t.Errorf("report contains %q: it must be self-contained", bad)
		}
	}
}

// TestMergeCountsEachGatewayOnce: loadgen processes that all sample the
// same gateways (scripts/loadtest.sh) merge into one reading per gateway
// and second, not one per loadgen process.
func TestMergeCountsEachGatewayOnce(t *testing.T) {
	h := newLatencyHistogram()
	_ = h.RecordValue(100)
	var in []*Summary
	for i := range 3 {
		s := &Summary{Version: summaryVersion, Timeline: []TimePoint{{Seconds: 1, Connected: 10, Procs: []ProcPoint{
			{PID: 100, CPU: 0.5 + float64(i)/10, RSSBytes: 1 << 20}, {PID: 200, CPU: 0.25, RSSBytes: 2 << 20}}}}}
		if err := s.setLatency(h); err != nil {
			t.Fatal(err)
		}
		in = append(in, s)
	}
	m, err := mergeSummaries(in)
	if err != nil {
		t.Fatal(err)
	}
	tp := m.Timeline[0]
	if tp.Connected != 30 {
		t.Errorf("connected %d, want 30 (added over loadgen processes)", tp.Connected)
	}
	want := []ProcPoint{{PID: 100, CPU: 0.7, RSSBytes: 1 << 20}, {PID: 200, CPU: 0.25, RSSBytes: 2 << 20}}
	if len(tp.Procs) != 2 || tp.Procs[0] != want[0] || tp.Procs[1] != want[1] {
		t.Errorf("procs %+v, want each gateway once with its largest reading: %+v", tp.Procs, want)
	}
}
