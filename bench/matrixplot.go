package bench

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
)

// WriteMatrixPlot draws the congestion-control matrix as an SVG image:
// throughput (Mbit/s) against the loss rate, one line per algorithm and
// stack, the appliance's (netstack sending) solid and the kernel's dashed,
// one color per algorithm. The loss rates are evenly spaced categories
// (0, 0.1, 1, 2, 5 % would crowd on a linear axis). Rows of several runs
// of the same matrix are drawn as their mean with a bar from the lowest to
// the highest run. Rows with an error and no throughput, and the --cc-extra
// cells (Extra), are left out.
func WriteMatrixPlot(w io.Writer, title string, rows []MatrixRow) error {
	type key struct {
		stack, cc string
		loss      float64
	}
	vals := map[key][]float64{}
	var algs []string
	var losses []float64
	for _, r := range rows {
		if r.Extra || (r.Mbps == 0 && r.Error != "") {
			continue
		}
		k := key{r.Stack, r.CC, r.Loss}
		vals[k] = append(vals[k], r.Mbps)
		if !slices.Contains(algs, r.CC) {
			algs = append(algs, r.CC)
		}
		if !slices.Contains(losses, r.Loss) {
			losses = append(losses, r.Loss)
		}
	}
	slices.Sort(losses)
	yMax := 0.0
	for _, v := range vals {
		yMax = math.Max(yMax, slices.Max(v))
	}
	yTicks := niceTicks(yMax)
	height := panelTop + panelHeight + 60
	// x: category i of n at plotLeft + (i+0.5)/n of the width.
	xAt := func(loss float64) float64 {
		i := slices.Index(losses, loss)
		return plotLeft + (float64(i)+0.5)/float64(len(losses))*(plotRight-plotLeft)
	}
	pn := panel{top: panelTop, xMax: 1, yMax: yTicks[len(yTicks)-1]}
	yAt := func(v float64) float64 { _, y := pn.at(0, v); return y }

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		plotWidth, height, plotWidth, height)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(b, `<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>`+"\n", plotLeft, esc(title))
	bottom := panelTop + panelHeight
	for _, v := range yTicks {
		y := yAt(v)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", plotLeft, y, plotRight, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-6, y+4, tickLabel(v))
	}
	for _, l := range losses {
		x := xAt(l)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x, panelTop, x, bottom)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x, bottom+16, strconv.FormatFloat(l, 'f', -1, 64))
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n",
		plotLeft, panelTop, plotRight-plotLeft, panelHeight)
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">throughput (Mbit/s)</text>`+"\n", plotLeft, panelTop-8)
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">random loss (%%)</text>`+"\n", (plotLeft+plotRight)/2, bottom+34)

	legend := 0
	for ai, alg := range algs {
		color := plotColors[ai%len(plotColors)]
		for _, stack := range []string{"appliance", "kernel"} {
			dash := ""
			if stack == "kernel" {
				dash = ` stroke-dasharray="6 3"`
			}
			name := alg + " (" + stack + ")"
			var pts []string
			for _, l := range losses {
				v := vals[key{stack, alg, l}]
				if len(v) == 0 {
					continue
				}
				mean := 0.0
				for _, x := range v {
					mean += x
				}
				mean /= float64(len(v))
				x := xAt(l)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, yAt(mean)))
				if len(v) > 1 { // the range over runs
					fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.2"/>`+"\n",
						x, yAt(slices.Min(v)), x, yAt(slices.Max(v)), color)
				}
			}
			if len(pts) == 0 {
				continue
			}
			fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.8"%s points="`, color, dash)
			for i, p := range pts {
				if i > 0 {
					b.WriteByte(' ')
				}
				b.WriteString(p)
			}
			fmt.Fprintf(b, `"><title>%s</title></polyline>`+"\n", esc(name))
			y := panelTop + 10 + legend*20
			legend++
			fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"%s/>`+"\n",
				plotRight+20, y, plotRight+50, y, color, dash)
			fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", plotRight+58, y+4, esc(name))
		}
	}
	if legend == 0 {
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" fill="#888">no results</text>`+"\n",
			(plotLeft+plotRight)/2, panelTop+panelHeight/2)
	}
	fmt.Fprintln(b, `</svg>`)
	return b.Flush()
}
