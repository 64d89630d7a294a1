package bench

import (
	"bytes"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestWriteMatrixPlot(t *testing.T) {
	rows := []MatrixRow{
		// Two runs of a reno,bbr x 0,1 matrix, one --cc-extra cell and a
		// failed cell.
		{Stack: "kernel", CC: "reno", Loss: 0, Mbps: 94},
		{Stack: "appliance", CC: "reno", Loss: 0, Mbps: 80},
		{Stack: "kernel", CC: "reno", Loss: 1, Mbps: 4},
		{Stack: "appliance", CC: "reno", Loss: 1, Error: "iperf3 failed"},
		{Stack: "kernel", CC: "bbr", Loss: 0, Mbps: 94},
		{Stack: "appliance", CC: "bbr", Loss: 0, Mbps: 93},
		{Stack: "kernel", CC: "bbr", Loss: 1, Mbps: 90},
		{Stack: "appliance", CC: "bbr", Loss: 1, Mbps: 60},
		{Stack: "appliance", CC: "bbr", Loss: 0, Mbps: 500, Extra: true, Emulate: "rate=1gbit"},
		{Stack: "appliance", CC: "bbr", Loss: 1, Mbps: 70},
		{Stack: "appliance", CC: "bbr", Loss: 1, Mbps: 80},
	}
	var b bytes.Buffer
	if err := WriteMatrixPlot(&b, "cc & loss", rows); err != nil {
		t.Fatal(err)
	}
	names, points, texts := svgPolylines(t, b.Bytes())
	want := []string{"reno (appliance)", "reno (kernel)", "bbr (appliance)", "bbr (kernel)"}
	wantPts := []int{1, 2, 2, 2} // the failed cell has no point
	if !slices.Equal(names, want) || !slices.Equal(points, wantPts) {
		t.Errorf("polylines %v with %v points, want %v with %v", names, points, want, wantPts)
	}
	for _, s := range []string{"cc & loss", "throughput (Mbit/s)", "random loss (%)", "0", "1", "100", "bbr (kernel)"} {
		if !slices.Contains(texts, s) {
			t.Errorf("SVG texts lack %q: %q", s, texts)
		}
	}
	if slices.Contains(texts, "500") {
		t.Error("the --cc-extra cell (500 Mbit/s) set the y axis")
	}
	svg := b.String()
	// Kernel lines dashed, appliance lines solid.
	for _, m := range regexp.MustCompile(`<polyline [^>]*>[^<]*<title>([^<]*)</title>`).FindAllStringSubmatch(svg, -1) {
		if dashed := strings.Contains(m[0], "stroke-dasharray"); dashed != strings.Contains(m[1], "kernel") {
			t.Errorf("%s: dashed = %v", m[1], dashed)
		}
	}
	// bbr appliance at 1% loss: mean of 60, 70, 80 with a range bar from
	// 60 to 80 (the only cell with more than one run).
	if n := strings.Count(svg, `stroke-width="1.2"`); n != 1 {
		t.Errorf("%d range bars, want 1", n)
	}
	b.Reset()
	if err := WriteMatrixPlot(&b, "empty", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, texts := svgPolylines(t, b.Bytes()); !slices.Contains(texts, "no results") {
		t.Errorf("empty plot not labeled: %q", texts)
	}
}
