package main

import (
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gonum.org/v1/plot"
)

func tickLabels(ticks []plot.Tick) []string {
	var out []string
	for _, t := range ticks {
		out = append(out, t.Label)
	}
	return out
}

// TestAxisTicksAreRound: ticks go from 0 in steps of 1, 2 or 5 × a power
// of ten, up to the first tick at or above the largest value, labelled in
// whole numbers of a unit that fits the step.
func TestAxisTicksAreRound(t *testing.T) {
	for _, tc := range []struct {
		name  string
		max   float64
		units []unit
		want  []string
	}{
		{"648.344 ms", 648_344, durationUnits, []string{"0 ms", "200 ms", "400 ms", "600 ms", "800 ms"}},
		{"97 µs", 97, durationUnits, []string{"0 µs", "20 µs", "40 µs", "60 µs", "80 µs", "100 µs"}},
		{"2.5 s", 2_500_000, durationUnits, []string{"0 ms", "500 ms", "1000 ms", "1500 ms", "2000 ms", "2500 ms"}},
		{"12 s", 12_000_000, durationUnits, []string{"0 s", "5 s", "10 s", "15 s"}},
		{"100 000 msg/s", 100_000, countUnits, []string{"0", "20k", "40k", "60k", "80k", "100k"}},
		{"1 000 msg/s", 1_000, countUnits, []string{"0", "200", "400", "600", "800", "1000"}},
		{"0.5 msg/s", 0.5, countUnits, []string{"0", "0.1", "0.2", "0.3", "0.4", "0.5"}},
		{"nothing", 0, countUnits, []string{"0", "0.2", "0.4", "0.6", "0.8", "1.0"}},
		{"700 MiB", 700 << 20, byteUnits, []string{"0 MiB", "200 MiB", "400 MiB", "600 MiB", "800 MiB"}},
		{"31 s run", 31, secondUnits, []string{"0 s", "10 s", "20 s", "30 s", "40 s"}},
		{"135 % CPU", 135, percentUnits, []string{"0 %", "50 %", "100 %", "150 %"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tickLabels(axisTicks(tc.max, tc.units)); !slices.Equal(got, tc.want) {
				t.Errorf("axisTicks(%v) = %q, want %q", tc.max, got, tc.want)
			}
		})
	}
}

// TestAxisTicksProperties: for any maximum, in any unit set, the ticks
// start at 0, end at or above the maximum, count 3 to 11, are evenly
// spaced by a round step, and each label is the tick's value in its unit.
func TestAxisTicksProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sets := map[string][]unit{"duration": durationUnits, "count": countUnits, "bytes": byteUnits, "seconds": secondUnits, "percent": percentUnits}
	for name, units := range sets {
		for range 2000 {
			max := math.Pow(10, rng.Float64()*12-3) // 0.001 to 1e9
			ticks := axisTicks(max, units)
			if len(ticks) < 3 || len(ticks) > 11 || ticks[0].Value != 0 || ticks[len(ticks)-1].Value < max*(1-1e-9) {
				t.Fatalf("%s: axisTicks(%v) = %v", name, max, ticks)
			}
			step := ticks[1].Value
			mant := step / math.Pow(10, math.Floor(math.Log10(step)+1e-9))
			binary := false
			for _, u := range units {
				if u.size > 1 && math.Mod(u.size, 1024) == 0 {
					binary = binary || math.Abs(step/u.size-math.Round(step/u.size)) < 1e-9
				}
			}
			if !binary && !slices.ContainsFunc([]float64{1, 2, 5, 10}, func(m float64) bool { return math.Abs(mant-m) < 1e-6 }) {
				t.Fatalf("%s: step %v of axisTicks(%v) is not 1, 2 or 5 × 10^k", name, step, max)
			}
			for i, tk := range ticks {
				if math.Abs(tk.Value-float64(i)*step) > 1e-9*step*float64(i+1) {
					t.Fatalf("%s: tick %d of axisTicks(%v) at %v, want %v", name, i, max, tk.Value, float64(i)*step)
				}
				if got := labelValue(t, tk.Label, units); math.Abs(got-tk.Value) > 1e-6*math.Max(step, 1e-9) {
					t.Fatalf("%s: label %q of axisTicks(%v) reads %v, the tick is at %v", name, tk.Label, max, got, tk.Value)
				}
			}
		}
	}
}

// labelValue reads a tick label back into the axis's value.
func labelValue(t *testing.T, label string, units []unit) float64 {
	t.Helper()
	num, name, _ := strings.Cut(label, " ")
	for _, suffix := range []string{"k", "M"} {
		if n, ok := strings.CutSuffix(num, suffix); ok && name == "" {
			num, name = n, suffix
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		t.Fatalf("label %q: %v", label, err)
	}
	for _, u := range units {
		if u.name == name {
			return v * u.size
		}
	}
	t.Fatalf("label %q: unit %q is none of %v", label, name, units)
	return 0
}

// svgText is one text element of a rendered plot.
var (
	svgElem = regexp.MustCompile(`(?s)<svg width="([\d.]+)pt" height="([\d.]+)pt".*?</svg>`)
	svgText = regexp.MustCompile(`<text x="([-\d.e]+)" y="([-\d.e]+)"[^>]*>([^<]*)</text>`)
)

// TestReportLabelsAreWhole renders a report whose latency reaches
// 648.344 ms (the value whose label once lost its first digit, "48.344ms")
// and checks every text of every plot: inside the plot's canvas, end
// included, so no label is cut; and the latency axis in round steps.
func TestReportLabelsAreWhole(t *testing.T) {
	h := newLatencyHistogram()
	for i := int64(1); i <= 1000; i++ {
		_ = h.RecordValue(i * 648)
	}
	_ = h.RecordValue(648_344)
	s := &Summary{Version: summaryVersion, Rate: 1, Senders: 1}
	if err := s.setLatency(h); err != nil {
		t.Fatal(err)
	}
	for i := range 31 {
		s.Timeline = append(s.Timeline, TimePoint{Seconds: float64(i + 1), Connected: 100_000, OutPerSec: 1_000, InPerSec: 99_000,
			P99Micros: 648_344, Procs: []ProcPoint{{PID: 1, CPU: 1.35, RSSBytes: 700 << 20}, {PID: 2, CPU: 0.9, RSSBytes: 650 << 20}}})
	}
	var b strings.Builder
	if err := renderReport(&b, s); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	plots := svgElem.FindAllStringSubmatch(page, -1)
	if len(plots) != 7 {
		t.Fatalf("%d plots, want 7", len(plots))
	}
	style := plot.New().X.Tick.Label // the style of every tick label
	labels := map[string]bool{}
	for i, p := range plots {
		w, _ := strconv.ParseFloat(p[1], 64)
		hgt, _ := strconv.ParseFloat(p[2], 64)
		for _, m := range svgText.FindAllStringSubmatch(p[0], -1) {
			x, _ := strconv.ParseFloat(m[1], 64)
			y, _ := strconv.ParseFloat(m[2], 64)
			text := m[3]
			labels[text] = true
			// x is the left end; y the negated baseline (the canvas is
			// flipped). Tick labels start with a digit; the axis titles
			// (the y one drawn rotated, in another frame) are skipped.
			if !strings.ContainsAny(text[:1], "0123456789") {
				continue
			}
			right := x + style.Width(text).Points()
			if x < 0 || right > w+0.01 || -y < 0 || -y+style.Height(text).Points() > hgt+0.01 {
				t.Errorf("plot %d: label %q at x %.1f..%.1f, baseline %.1f lies outside the %.0f×%.0f pt canvas", i+1, text, x, right, -y, w, hgt)
			}
		}
	}
	for _, want := range []string{"0 ms", "200 ms", "400 ms", "600 ms", "800 ms", "100k", "99.9 %", "150 %", "1500 MiB", "30 s"} {
		if !labels[want] {
			t.Errorf("no label %q among %v", want, labels)
		}
	}
	for l := range labels {
		if strings.Contains(l, "48.344") || strings.Contains(l, "648.3") {
			t.Errorf("label %q: ticks are round values, not data values", l)
		}
	}
}
