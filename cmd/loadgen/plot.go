package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The report's plots are drawn by gonum.org/v1/plot as SVG. Every axis has
// round ticks (1, 2 or 5 × a power of ten of its unit, from zero up to a
// tick at or above the largest value) labelled in whole numbers of a unit
// chosen for the step: "200 ms", "50 k", "256 MiB". The plot library lays
// the axes out around the labels, so none is clipped.

// Plot size in the page (the SVG scales to the page width).
const (
	plotWidth  = 7.5 * vg.Inch
	plotHeight = 2.6 * vg.Inch
)

// Line colours: one per series of a plot.
var (
	colorBlue   = color.RGBA{R: 0x00, G: 0x66, B: 0xcc, A: 0xff}
	colorOrange = color.RGBA{R: 0xcc, G: 0x66, B: 0x00, A: 0xff}
)

// niceStep returns the round step (1, 2 or 5 × 10^k) nearest above raw.
func niceStep(raw float64) float64 {
	if raw <= 0 || math.IsNaN(raw) || math.IsInf(raw, 0) {
		return 1
	}
	exp := math.Floor(math.Log10(raw))
	pow := math.Pow(10, exp)
	switch f := raw / pow; {
	case f <= 1:
		return pow
	case f <= 2:
		return 2 * pow
	case f <= 5:
		return 5 * pow
	default:
		return 10 * pow
	}
}

// unit is one scale an axis can be labelled in: values are divided by
// size and followed by name.
type unit struct {
	size float64
	name string
}

// Units of the report's axes, smallest first. axisTicks picks the largest
// unit not bigger than the step, so every label is a whole number of it.
var (
	durationUnits = []unit{{1, "µs"}, {1e3, "ms"}, {1e6, "s"}} // values in µs
	secondUnits   = []unit{{1, "s"}}
	countUnits    = []unit{{1, ""}, {1e3, "k"}, {1e6, "M"}}
	byteUnits     = []unit{{1, "B"}, {1 << 10, "KiB"}, {1 << 20, "MiB"}, {1 << 30, "GiB"}}
	percentUnits  = []unit{{1, "%"}}
)

// axisTicks returns four to ten round ticks from 0 to a tick at or above
// max, labelled in the largest of units not bigger than the step. Steps
// in binary units are round in that unit (e.g. 50 MiB).
func axisTicks(max float64, units []unit) []plot.Tick {
	if max <= 0 || math.IsNaN(max) || math.IsInf(max, 0) {
		max = 1
	}
	// The unit: the largest whose size the raw step reaches.
	raw := max / 5
	u := units[0]
	for _, c := range units[1:] {
		if raw >= c.size {
			u = c
		}
	}
	step := niceStep(raw/u.size) * u.size
	n := int(math.Ceil(max/step - 1e-9))
	ticks := make([]plot.Tick, 0, n+1)
	for i := 0; i <= n; i++ {
		v := float64(i) * step
		ticks = append(ticks, plot.Tick{Value: v, Label: formatTick(v/u.size, step/u.size, u.name)})
	}
	return ticks
}

// formatTick writes v, a multiple of step, with as many decimals as step
// needs (none for a step of 1 or more) and the unit's name.
func formatTick(v, step float64, name string) string {
	decimals := 0
	if step < 1 {
		decimals = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	if v == 0 {
		s = "0"
	}
	switch {
	case v == 0 && (name == "k" || name == "M"):
		return s
	case name == "":
		return s
	case name == "k" || name == "M":
		return s + name
	default:
		return s + " " + name
	}
}

// setTicks fixes an axis from 0 to its last tick, with those ticks.
func setTicks(a *plot.Axis, ticks []plot.Tick) {
	a.Min, a.Max = 0, ticks[len(ticks)-1].Value
	a.Tick.Marker = plot.ConstantTicks(ticks)
}

// series is one line of a plot.
type series struct {
	name string
	xys  plotter.XYs
	c    color.Color
}

// linePlot draws series against x and y axes with round ticks in the
// given units, and returns the plot as an SVG element (the page gives it
// its title).
func linePlot(xLabel string, xUnits []unit, yLabel string, yUnits []unit, ss ...series) (string, error) {
	p := plot.New()
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	var xMax, yMax float64
	for _, s := range ss {
		for _, xy := range s.xys {
			xMax, yMax = math.Max(xMax, xy.X), math.Max(yMax, xy.Y)
		}
	}
	setTicks(&p.X, axisTicks(xMax, xUnits))
	setTicks(&p.Y, axisTicks(yMax, yUnits))
	for _, s := range ss {
		l, err := plotter.NewLine(s.xys)
		if err != nil {
			return "", fmt.Errorf("plot %s: %w", yLabel, err)
		}
		l.Color = s.c
		l.Width = vg.Points(1.5)
		p.Add(l)
		if len(ss) > 1 {
			p.Legend.Add(s.name, l)
		}
	}
	p.Legend.Top = true
	return renderSVG(p)
}

// renderSVG draws p as an SVG element for inline use in the page (the
// XML declaration dropped). The plot library centres the last x tick's
// label on the right edge and the top y tick's label on the top edge,
// where half of each would be cut off: the drawing area leaves room for
// those halves, so every label shows whole.
func renderSVG(p *plot.Plot) (string, error) {
	c := vgsvg.New(plotWidth, plotHeight)
	var right, top vg.Length
	if ticks := p.X.Tick.Marker.Ticks(p.X.Min, p.X.Max); len(ticks) > 0 {
		right = p.X.Tick.Label.Width(ticks[len(ticks)-1].Label)/2 + vg.Points(2)
	}
	top = p.Y.Tick.Label.Height("0")/2 + vg.Points(2)
	p.Draw(draw.Crop(draw.New(c), 0, -right, 0, -top))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return "", fmt.Errorf("render plot %s: %w", p.Y.Label.Text, err)
	}
	s := b.String()
	if i := strings.Index(s, "<svg"); i > 0 {
		s = s[i:]
	}
	return s, nil
}
