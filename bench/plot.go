package bench

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Plot geometry: two panels stacked, throughput over RTT, sharing the time
// axis; the legend on the right.
const (
	plotWidth   = 1080
	plotLeft    = 70  // room for the y tick labels
	plotRight   = 730 // the panels' right edge; the legend starts after
	panelTop    = 50
	panelHeight = 230
	panelGap    = 70 // x tick labels and axis title between the panels
)

// plotColors are told apart also by people with the common color
// deficiencies (Okabe-Ito, black last).
var plotColors = []string{"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"}

// Transfers returns the detailed iperf3 runs of results in table order,
// each upload before its download.
func Transfers(results []Result) []Transfer {
	var ts []Transfer
	for _, r := range results {
		for _, t := range []*Transfer{r.Up, r.Down} {
			if t != nil {
				ts = append(ts, *t)
			}
		}
	}
	return ts
}

// WritePlot draws runs as an SVG image: throughput (Mbit/s) over time in
// the upper panel, the sender's RTT (ms) over time in the lower one, one
// polyline per run in each panel where the run has samples, and a legend
// with the runs' names. Downloads are dashed.
func WritePlot(w io.Writer, title string, runs []Transfer) error {
	var tMax, mbpsMax, rttMax float64
	for _, r := range runs {
		for _, p := range r.Mbps {
			tMax, mbpsMax = math.Max(tMax, p.T), math.Max(mbpsMax, p.V)
		}
		for _, p := range r.RTTms {
			tMax, rttMax = math.Max(tMax, p.T), math.Max(rttMax, p.V)
		}
	}
	xTicks := niceTicks(tMax)
	height := panelTop + 2*panelHeight + panelGap + 60
	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		plotWidth, height, plotWidth, height)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", plotLeft, esc(title))
	panels := []struct {
		label  string
		series func(Transfer) []Point
		yMax   float64
	}{
		{"throughput (Mbit/s)", func(t Transfer) []Point { return t.Mbps }, mbpsMax},
		{"RTT (ms)", func(t Transfer) []Point { return t.RTTms }, rttMax},
	}
	for i, p := range panels {
		top := panelTop + i*(panelHeight+panelGap)
		yTicks := niceTicks(p.yMax)
		label := p.label
		pn := panel{top: top, xMax: xTicks[len(xTicks)-1]}
		if logAxis(runs, p.series) {
			yTicks = logTicks(runs, p.series)
			pn.yMin, pn.log = yTicks[0], true
			label += ", log scale"
		}
		pn.yMax = yTicks[len(yTicks)-1]
		pn.axes(b, label, xTicks, yTicks)
		empty := true
		for j, r := range runs {
			pts := p.series(r)
			if len(pts) == 0 {
				continue
			}
			empty = false
			fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="`, plotColors[j%len(plotColors)], dash(r))
			for k, pt := range pts {
				if k > 0 {
					b.WriteByte(' ')
				}
				x, y := pn.at(pt.T, pt.V)
				fmt.Fprintf(b, "%.1f,%.1f", x, y)
			}
			fmt.Fprintf(b, `"><title>%s</title></polyline>`+"\n", esc(r.Name))
		}
		if empty {
			fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" fill="#888">no samples</text>`+"\n",
				(plotLeft+plotRight)/2, top+panelHeight/2)
		}
	}
	for j, r := range runs {
		y := panelTop + 10 + j*20
		fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"%s/>`+"\n",
			plotRight+20, y, plotRight+50, y, plotColors[j%len(plotColors)], dash(r))
		fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", plotRight+58, y+4, esc(r.Name))
	}
	fmt.Fprintln(b, `</svg>`)
	return b.Flush()
}

// panel maps data to one panel's pixels: x from 0 to xMax seconds, y from
// 0 to yMax, or on a log scale from yMin to yMax.
type panel struct {
	top              int
	xMax, yMin, yMax float64
	log              bool
}

func (p panel) at(t, v float64) (x, y float64) {
	x = plotLeft + t/p.xMax*(plotRight-plotLeft)
	f := v / p.yMax
	if p.log {
		v = math.Max(v, p.yMin) // nothing falls out of the frame
		f = math.Log10(v/p.yMin) / math.Log10(p.yMax/p.yMin)
	}
	y = float64(p.top+panelHeight) - f*panelHeight
	return x, y
}

// axes draws the frame, grid lines, tick labels and axis titles.
func (p panel) axes(b *bufio.Writer, label string, xTicks, yTicks []float64) {
	bottom := p.top + panelHeight
	for _, v := range yTicks {
		_, y := p.at(0, v)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", plotLeft, y, plotRight, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, y+4, tickLabel(v))
	}
	for _, t := range xTicks {
		x, _ := p.at(t, 0)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x, p.top, x, bottom)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, bottom+16, tickLabel(t))
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n",
		plotLeft, p.top, plotRight-plotLeft, panelHeight)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", plotLeft, p.top-8, esc(label))
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">time (s)</text>`+"\n", (plotLeft+plotRight)/2, bottom+34)
}

// logAxis says whether a panel reads better on a log scale: when the runs'
// medians differ by more than 20x (a 10 Gbit/s reference beside a 100
// Mbit/s emulated link), a linear axis flattens the smaller ones to 0.
func logAxis(runs []Transfer, series func(Transfer) []Point) bool {
	lo, hi := math.Inf(1), 0.0
	for _, r := range runs {
		var v []float64
		for _, p := range series(r) {
			if p.V > 0 {
				v = append(v, p.V)
			}
		}
		if len(v) == 0 {
			continue
		}
		slices.Sort(v)
		m := v[len(v)/2]
		lo, hi = math.Min(lo, m), math.Max(hi, m)
	}
	return hi > 20*lo
}

// logTicks returns the powers of ten from below the smallest positive value
// of runs' series to above the largest.
func logTicks(runs []Transfer, series func(Transfer) []Point) []float64 {
	lo, hi := math.Inf(1), 0.0
	for _, r := range runs {
		for _, p := range series(r) {
			if p.V > 0 {
				lo, hi = math.Min(lo, p.V), math.Max(hi, p.V)
			}
		}
	}
	var ticks []float64
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		ticks = append(ticks, math.Pow(10, e))
	}
	if len(ticks) < 2 {
		ticks = append(ticks, ticks[0]*10)
	}
	return ticks
}

// niceTicks returns ticks from 0 to at least max in steps of 1, 2 or 5
// times a power of ten, about five of them. max <= 0 gives 0 and 1.
func niceTicks(max float64) []float64 {
	if !(max > 0) || math.IsInf(max, 0) {
		return []float64{0, 1}
	}
	raw := max / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 5} {
		if m*mag >= raw*(1-1e-3) { // 5.0003 s gets steps of 1
			step = m * mag
			break
		}
	}
	n := int(math.Ceil(max/step - 1e-3)) // 5.0003 s is still 5
	ticks := make([]float64, 0, n+1)
	for i := 0; i <= n; i++ {
		ticks = append(ticks, float64(i)*step)
	}
	return ticks
}

func tickLabel(v float64) string {
	s := fmt.Sprintf("%.3f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		s = "0"
	}
	return s
}

func dash(r Transfer) string {
	if strings.Contains(r.Name, "/down/") {
		return ` stroke-dasharray="6 3"`
	}
	return ""
}

func esc(s string) string {
	var sb strings.Builder
	_ = xml.EscapeText(&sb, []byte(s))
	return sb.String()
}
