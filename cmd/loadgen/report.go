package main

import (
	"fmt"
	"html"
	"image/color"
	"io"
	"math"
	"os"
	"strings"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// TimePoint is one second of a run, as the progress line shows it.
type TimePoint struct {
	Seconds   float64 `json:"s"`         // since the run started
	Phase     string  `json:"phase"`     // connect, hold, send, drain, close
	Connected int64   `json:"connected"` // connections open
	OutPerSec float64 `json:"out"`       // chat frames sent per second
	InPerSec  float64 `json:"in"`        // stamped chat frames received per second
	P99Micros int64   `json:"p99_us"`    // latency p99 over the second
	// Procs are the -pid processes (the gateways) as sampled at the end
	// of this second.
	Procs []ProcPoint `json:"procs,omitempty"`
}

// ProcPoint is one -pid process in one second of a run.
type ProcPoint struct {
	PID      int     `json:"pid"`
	CPU      float64 `json:"cpu"` // CPU time used over the second, in cores (1 = one core busy)
	RSSBytes int64   `json:"rss"` // resident memory at the end of the second
}

// writeReport writes s as a self-contained HTML page to path: the verdict,
// the numbers, and plots drawn by gonum.org/v1/plot as inline SVG (no
// script, no network): latency by percentile and over time, messages sent
// and received per second (each on its own axis), connections, and the
// -pid processes' CPU and memory over time.
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
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}.ok{color:#080}.fail{color:#b00}
table{border-collapse:collapse}td{padding:.15em .8em .15em 0}
svg{width:100%%;height:auto;margin:.3em 0}
svg text{font-family:"Liberation Sans",Arial,Helvetica,sans-serif !important}
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
%s</table>
`, class, html.EscapeString(verdict), html.EscapeString(strings.Join(s.Targets, ", ")),
		c.Opened, c.Target, c.Failed, c.Dropped, c.ConnectRate, s.Rooms, s.Senders, s.Rate,
		m.Sent, m.Expected, m.Delivered, m.Lost, m.Duplicated, m.OutOfOrder,
		html.EscapeString(latencyLine(s.Latency)), html.EscapeString(fmtCounts(s.Errors)), procRows(s))

	section := func(title string, svg string, err error) {
		fmt.Fprintf(&b, "<h2>%s</h2>\n", html.EscapeString(title))
		if err != nil {
			fmt.Fprintf(&b, "<p>%s</p>\n", html.EscapeString(err.Error()))
			return
		}
		b.WriteString(svg)
		b.WriteString("\n")
	}
	svg, err := percentilePlot(s.Latency)
	section(fmt.Sprintf("Send-to-receive latency by percentile (%d messages)", s.Latency.Count), svg, err)
	tl := s.Timeline
	if len(tl) < 2 {
		b.WriteString("<p>No time series: the run was shorter than two seconds.</p>\n")
	} else {
		for _, p := range timePlots(tl) {
			svg, err := p.draw()
			section(p.title, svg, err)
		}
	}
	b.WriteString("</body></html>\n")
	_, err = io.WriteString(w, b.String())
	return err
}

// procRows are the summary table's lines about the -pid processes.
func procRows(s *Summary) string {
	var b strings.Builder
	for _, p := range s.Procs {
		fmt.Fprintf(&b, "<tr><td>pid %d</td><td>RSS %s at start, %s connected, %s at the end; CPU %.2f s in the send phase</td></tr>\n",
			p.PID, fmtBytes(p.Start.RSSBytes), fmtBytes(p.Connected.RSSBytes), fmtBytes(p.End.RSSBytes), p.CPUSendSeconds)
	}
	return b.String()
}

func latencyLine(l LatencyStats) string {
	if l.Count == 0 {
		return "nothing received"
	}
	return fmt.Sprintf("n %d, p50 %s, p90 %s, p99 %s, p99.9 %s, max %s", l.Count,
		fmtMicros(l.P50), fmtMicros(l.P90), fmtMicros(l.P99), fmtMicros(l.P999), fmtMicros(l.Max))
}

// percentilePlot draws latency against percentile, the percentile axis
// stretched towards the tail (x = log10(1/(1-q)): 90 % at 1, 99 % at 2),
// as HdrHistogram plots do, up to the percentile the sample count
// resolves (99.999 % at most).
func percentilePlot(l LatencyStats) (string, error) {
	if l.Count == 0 || l.Histogram == "" {
		return "", fmt.Errorf("no latency recorded")
	}
	h, err := hdr.Decode([]byte(l.Histogram))
	if err != nil {
		return "", fmt.Errorf("decode the latency histogram: %w", err)
	}
	xMax := math.Min(5, math.Max(1, math.Ceil(math.Log10(float64(h.TotalCount())))))
	var xys plotter.XYs
	for x := 0.0; x <= xMax+1e-9; x += 0.02 {
		q := 100 * (1 - math.Pow(10, -x))
		xys = append(xys, plotter.XY{X: x, Y: float64(h.ValueAtQuantile(q))})
	}
	p := plot.New()
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency"
	p.Add(plotter.NewGrid())
	var xt []plot.Tick
	for i, label := range []string{"0 %", "90 %", "99 %", "99.9 %", "99.99 %", "99.999 %"}[:int(xMax)+1] {
		xt = append(xt, plot.Tick{Value: float64(i), Label: label})
	}
	setTicks(&p.X, xt)
	setTicks(&p.Y, axisTicks(float64(h.Max()), durationUnits))
	line, err := plotter.NewLine(xys)
	if err != nil {
		return "", err
	}
	line.Color, line.Width = colorBlue, vg.Points(1.5)
	p.Add(line)
	return renderSVG(p)
}

// timePlot is one plot over the run's seconds.
type timePlot struct {
	title, yLabel string
	yUnits        []unit
	series        []series
}

func (t timePlot) draw() (string, error) {
	return linePlot("time since the start", secondUnits, t.yLabel, t.yUnits, t.series...)
}

// timePlots are the plots over time: sent and received each on its own
// axis (they differ by the fan-out, often 100×), connections, latency p99,
// and the -pid processes' CPU and memory when they were sampled.
func timePlots(tl []TimePoint) []timePlot {
	line := func(name string, c color.Color, f func(TimePoint) (float64, bool)) series {
		s := series{name: name, c: c}
		for _, p := range tl {
			if v, ok := f(p); ok {
				s.xys = append(s.xys, plotter.XY{X: p.Seconds, Y: v})
			}
		}
		return s
	}
	always := func(f func(TimePoint) float64) func(TimePoint) (float64, bool) {
		return func(p TimePoint) (float64, bool) { return f(p), true }
	}
	plots := []timePlot{
		{"Messages sent per second (all senders)", "sent/s", countUnits,
			[]series{line("sent", colorBlue, always(func(p TimePoint) float64 { return p.OutPerSec }))}},
		{"Messages received per second (all receivers)", "received/s", countUnits,
			[]series{line("received", colorOrange, always(func(p TimePoint) float64 { return p.InPerSec }))}},
		{"Latency p99, second by second", "latency p99", durationUnits,
			[]series{line("p99", colorBlue, always(func(p TimePoint) float64 { return float64(p.P99Micros) }))}},
		{"Connections open", "connections", countUnits,
			[]series{line("open", colorBlue, always(func(p TimePoint) float64 { return float64(p.Connected) }))}},
	}
	sampled := false
	for _, p := range tl {
		sampled = sampled || len(p.Procs) > 0
	}
	if !sampled {
		return plots
	}
	// The -pid processes together: with several gateways, their sum.
	sum := func(f func(ProcPoint) float64) func(TimePoint) (float64, bool) {
		return func(p TimePoint) (float64, bool) {
			var v float64
			for _, q := range p.Procs {
				v += f(q)
			}
			return v, len(p.Procs) > 0
		}
	}
	what := "gateway (-pid)"
	if n := maxProcs(tl); n > 1 {
		what = fmt.Sprintf("%d gateway processes (-pid), together", n)
	}
	return append(plots,
		timePlot{"CPU of the " + what + "; 100 % is one core", "CPU", percentUnits,
			[]series{line("CPU", colorBlue, sum(func(q ProcPoint) float64 { return 100 * q.CPU }))}},
		timePlot{"Resident memory (RSS) of the " + what, "RSS", byteUnits,
			[]series{line("RSS", colorOrange, sum(func(q ProcPoint) float64 { return float64(q.RSSBytes) }))}},
	)
}

// maxProcs is the largest number of -pid processes sampled in one second.
func maxProcs(tl []TimePoint) int {
	n := 0
	for _, p := range tl {
		n = max(n, len(p.Procs))
	}
	return n
}
