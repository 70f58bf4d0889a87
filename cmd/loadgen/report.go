package main

import (
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"strings"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// TimePoint is one second of a run, as the progress line shows it.
type TimePoint struct {
	Seconds   float64 `json:"s"`         // since the run started
	Phase     string  `json:"phase"`     // connect, hold, send, drain, close
	Connected int64   `json:"connected"` // connections open
	OutPerSec float64 `json:"out"`       // chat frames sent per second
	InPerSec  float64 `json:"in"`        // stamped chat frames received per second
	P99Micros int64   `json:"p99_us"`    // latency p99 over the second
}

// writeReport writes s as a self-contained HTML page to path: the verdict,
// the latency percentile curve, throughput and connections over time, as
// inline SVG (no script, no network).
func writeReport(path string, s *Summary) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("-report: %w", err)
	}
	defer f.Close()
	if err := renderReport(f, s); err != nil {
		return fmt.Errorf("-report %s: %w", path, err)
	}
	return f.Close()
}

func renderReport(w io.Writer, s *Summary) error {
	var b strings.Builder
	verdict, class := "OK", "ok"
	if pr := s.problems(); len(pr) > 0 {
		verdict, class = "FAIL: "+strings.Join(pr, " "), "fail"
	}
	m, c := s.Messages, s.Conns
	fmt.Fprintf(&b, `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>loadgen report</title><style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
h1{font-size:1.4em}.ok{color:#080}.fail{color:#b00}
table{border-collapse:collapse}td{padding:.15em .8em .15em 0}
svg{background:#fafafa;border:1px solid #ddd;margin:.5em 0}
.axis{stroke:#999}.grid{stroke:#eee}.l1{fill:none;stroke:#06c;stroke-width:2}.l2{fill:none;stroke:#c60;stroke-width:2}
text{font-size:11px;fill:#555}
</style></head><body>
<h1>loadgen report</h1>
<p class="%s"><b>Verdict: %s</b></p>
<table>
<tr><td>targets</td><td>%s</td></tr>
<tr><td>connections</td><td>%d of %d opened, %d failed, %d dropped, %.0f/s</td></tr>
<tr><td>rooms</td><td>%d, %d sender(s) each at %g msg/s</td></tr>
<tr><td>messages</td><td>%d sent, %d expected, %d delivered, %d lost, %d duplicated, %d out of order</td></tr>
<tr><td>latency</td><td>%s</td></tr>
<tr><td>errors</td><td>%s</td></tr>
</table>
`, class, html.EscapeString(verdict), html.EscapeString(strings.Join(s.Targets, ", ")),
		c.Opened, c.Target, c.Failed, c.Dropped, c.ConnectRate, s.Rooms, s.Senders, s.Rate,
		m.Sent, m.Expected, m.Delivered, m.Lost, m.Duplicated, m.OutOfOrder,
		html.EscapeString(latencyLine(s.Latency)), html.EscapeString(fmtCounts(s.Errors)))

	b.WriteString("<h2>Latency by percentile</h2>\n")
	if curve, err := percentileCurve(s.Latency); err != nil {
		fmt.Fprintf(&b, "<p>%s</p>\n", html.EscapeString(err.Error()))
	} else {
		b.WriteString(curve)
	}
	b.WriteString("<h2>Throughput over time</h2>\n<p><span style=\"color:#06c\">■</span> sent per second <span style=\"color:#c60\">■</span> received per second</p>\n")
	b.WriteString(timeChart(s.Timeline, func(p TimePoint) float64 { return p.OutPerSec }, func(p TimePoint) float64 { return p.InPerSec }, "msg/s"))
	b.WriteString("<h2>Connections over time</h2>\n")
	b.WriteString(timeChart(s.Timeline, func(p TimePoint) float64 { return float64(p.Connected) }, nil, "open"))
	b.WriteString("</body></html>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func latencyLine(l LatencyStats) string {
	if l.Count == 0 {
		return "nothing received"
	}
	return fmt.Sprintf("n %d, p50 %s, p90 %s, p99 %s, p99.9 %s, max %s", l.Count,
		fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99), fmtMicros(l.P999), fmtMicros(l.Max))
}

// Chart geometry, in SVG user units.
const (
	chartW, chartH = 720.0, 260.0
	padL, padB     = 60.0, 30.0
	padT, padR     = 10.0, 10.0
)

// percentileCurve draws latency against percentile, the percentile axis
// stretched towards the tail (x = log10(1/(1-q))), as HdrHistogram plots do.
func percentileCurve(l LatencyStats) (string, error) {
	if l.Count == 0 || l.Histogram == "" {
		return "", fmt.Errorf("no latency recorded")
	}
	h, err := hdr.Decode([]byte(l.Histogram))
	if err != nil {
		return "", fmt.Errorf("decode the latency histogram: %w", err)
	}
	qs := []float64{0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999}
	const xMax = 5.0 // 99.999 %
	yMax := float64(h.Max()) * 1.05
	var pts []string
	for _, q := range qs {
		x := math.Min(math.Log10(1/(1-q/100)), xMax)
		y := float64(h.ValueAtQuantile(q))
		pts = append(pts, point(x/xMax, y/yMax))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %g %g" width="100%%" role="img" aria-label="latency by percentile">`, chartW, chartH)
	for _, t := range []struct {
		x     float64
		label string
	}{{0, "0%"}, {1, "90%"}, {2, "99%"}, {3, "99.9%"}, {4, "99.99%"}, {5, "99.999%"}} {
		px := padL + t.x/xMax*(chartW-padL-padR)
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%g" x2="%.1f" y2="%g"/><text x="%.1f" y="%g" text-anchor="middle">%s</text>`,
			px, padT, px, chartH-padB, px, chartH-padB+15, t.label)
	}
	yAxis(&b, yMax, func(v float64) string { return fmtMicros(int64(v)) })
	fmt.Fprintf(&b, `<polyline class="l1" points="%s"/></svg>`+"\n", strings.Join(pts, " "))
	return b.String(), nil
}

// timeChart draws one or two series over the run's seconds.
func timeChart(tl []TimePoint, a, c func(TimePoint) float64, unit string) string {
	if len(tl) < 2 {
		return "<p>no time series (the run was shorter than two seconds)</p>\n"
	}
	tMax := tl[len(tl)-1].Seconds
	yMax := 1.0
	for _, p := range tl {
		yMax = math.Max(yMax, a(p))
		if c != nil {
			yMax = math.Max(yMax, c(p))
		}
	}
	yMax *= 1.1
	var b strings.Builder
	fmt.Fprintf(&b, `<svg viewBox="0 0 %g %g" width="100%%" role="img" aria-label="%s over time">`, chartW, chartH, unit)
	for i := 0; i <= 4; i++ {
		t := tMax * float64(i) / 4
		px := padL + float64(i)/4*(chartW-padL-padR)
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%g" x2="%.1f" y2="%g"/><text x="%.1f" y="%g" text-anchor="middle">%s</text>`,
			px, padT, px, chartH-padB, px, chartH-padB+15, (time.Duration(t) * time.Second).Round(time.Second))
	}
	yAxis(&b, yMax, func(v float64) string { return fmt.Sprintf("%.0f", v) })
	for k, f := range []func(TimePoint) float64{a, c} {
		if f == nil {
			continue
		}
		pts := make([]string, len(tl))
		for i, p := range tl {
			pts[i] = point(p.Seconds/tMax, f(p)/yMax)
		}
		fmt.Fprintf(&b, `<polyline class="l%d" points="%s"/>`, k+1, strings.Join(pts, " "))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// yAxis draws five horizontal grid lines labelled with format.
func yAxis(b *strings.Builder, yMax float64, format func(float64) string) {
	for i := 0; i <= 4; i++ {
		v := yMax * float64(i) / 4
		py := chartH - padB - float64(i)/4*(chartH-padB-padT)
		fmt.Fprintf(b, `<line class="grid" x1="%g" y1="%.1f" x2="%g" y2="%.1f"/><text x="%g" y="%.1f" text-anchor="end">%s</text>`,
			padL, py, chartW-padR, py, padL-4, py+4, html.EscapeString(format(v)))
	}
	fmt.Fprintf(b, `<line class="axis" x1="%g" y1="%g" x2="%g" y2="%g"/>`, padL, chartH-padB, chartW-padR, chartH-padB)
}

// point maps fractions of the axes (0..1) to SVG coordinates.
func point(fx, fy float64) string {
	x := padL + fx*(chartW-padL-padR)
	y := chartH - padB - fy*(chartH-padB-padT)
	return fmt.Sprintf("%.1f,%.1f", x, y)
}
