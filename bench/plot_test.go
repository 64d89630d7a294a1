package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// svgPolylines parses an SVG and returns, per polyline, its <title> (the
// run's name) and its number of points.
func svgPolylines(t *testing.T, svg []byte) (names []string, points []int, texts []string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	var inTitle, inText bool
	var cur string
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not XML: %v\n%s", err, svg)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			switch e.Name.Local {
			case "polyline":
				for _, a := range e.Attr {
					if a.Name.Local == "points" {
						cur = a.Value
					}
				}
			case "title":
				inTitle = true
			case "text":
				inText = true
			}
		case xml.CharData:
			if inTitle {
				names = append(names, string(e))
				points = append(points, len(strings.Fields(cur)))
			}
			if inText {
				texts = append(texts, string(e))
			}
		case xml.EndElement:
			inTitle, inText = false, false
		}
	}
	return names, points, texts
}

func TestWritePlot(t *testing.T) {
	runs := []Transfer{
		{Name: "kernel/1500/up/cubic", Mbps: []Point{{0.5, 180}, {1, 190}}, RTTms: []Point{{0.5, 20}, {1, 25}}},
		{Name: "appliance/1500/up/cubic", Mbps: []Point{{0.5, 60}, {1, 95}, {1.5, 96}}, RTTms: []Point{{0.5, 40}, {1, 55}, {1.5, 61}}},
		{Name: "appliance/1500/down/cubic <&>", Mbps: []Point{{0.5, 70}, {1, 94}, {1.5, 95}}, RTTms: []Point{{0.5, 41}, {1, 48}, {1.5, 50}}},
	}
	var b bytes.Buffer
	if err := WritePlot(&b, "router & co", runs); err != nil {
		t.Fatal(err)
	}
	names, points, texts := svgPolylines(t, b.Bytes())
	// One polyline per run in each panel, in run order.
	var want []string
	var wantPts []int
	for range 2 {
		for _, r := range runs {
			want = append(want, r.Name)
			wantPts = append(wantPts, len(r.Mbps))
		}
	}
	if !slices.Equal(names, want) || !slices.Equal(points, wantPts) {
		t.Errorf("polylines %v with %v points, want %v with %v", names, points, want, wantPts)
	}
	for _, s := range []string{"router & co", "throughput (Mbit/s)", "RTT (ms)", "time (s)", "200", "80", "1.5", runs[2].Name} {
		if !slices.Contains(texts, s) {
			t.Errorf("SVG texts lack %q: %q", s, texts)
		}
	}
	if !strings.Contains(b.String(), `stroke-dasharray`) {
		t.Error("downloads are not dashed")
	}
}

// TestWritePlotNoRTT: without RTT samples (no emulation, downloads without
// the server's output) the throughput panel is still drawn.
func TestWritePlotNoRTT(t *testing.T) {
	runs := []Transfer{
		{Name: "appliance/1500/up/default", Mbps: []Point{{0.5, 4000}, {1, 4100}}},
		{Name: "appliance/1500/down/default", Mbps: []Point{{0.5, 3000}}},
	}
	var b bytes.Buffer
	if err := WritePlot(&b, "no rtt", runs); err != nil {
		t.Fatal(err)
	}
	names, _, texts := svgPolylines(t, b.Bytes())
	if !slices.Equal(names, []string{runs[0].Name, runs[1].Name}) {
		t.Errorf("polylines %v, want the two throughput lines", names)
	}
	if !slices.Contains(texts, "no samples") {
		t.Errorf("empty RTT panel not labeled: %q", texts)
	}
	// No runs at all still makes a valid picture.
	b.Reset()
	if err := WritePlot(&b, "empty", nil); err != nil {
		t.Fatal(err)
	}
	svgPolylines(t, b.Bytes())
}

func TestNiceTicks(t *testing.T) {
	for _, tc := range []struct {
		max  float64
		want []float64
	}{
		{0, []float64{0, 1}},
		{5, []float64{0, 1, 2, 3, 4, 5}},
		{5.0004, []float64{0, 1, 2, 3, 4, 5}},
		{96, []float64{0, 20, 40, 60, 80, 100}},
		{9400, []float64{0, 2000, 4000, 6000, 8000, 10000}},
		{0.13, []float64{0, 0.05, 0.1, 0.15}},
	} {
		got := niceTicks(tc.max)
		if len(got) != len(tc.want) {
			t.Errorf("niceTicks(%v) = %v, want %v", tc.max, got, tc.want)
			continue
		}
		for i := range got {
			if d := got[i] - tc.want[i]; d > 1e-9 || d < -1e-9 {
				t.Errorf("niceTicks(%v) = %v, want %v", tc.max, got, tc.want)
				break
			}
		}
	}
}

// TestWritePlotLog: a 10 Gbit/s reference beside 100 Mbit/s runs puts the
// panel on a log scale, with decade ticks, every point inside the frame.
func TestWritePlotLog(t *testing.T) {
	runs := []Transfer{
		{Name: "kernel/1500/up/bbr", Mbps: []Point{{0.5, 9000}, {1, 11000}}, RTTms: []Point{{0.5, 0.08}}},
		{Name: "appliance/1500/up/bbr", Mbps: []Point{{0.5, 0}, {1, 95}}, RTTms: []Point{{0.5, 70}}},
	}
	var b bytes.Buffer
	if err := WritePlot(&b, "log", runs); err != nil {
		t.Fatal(err)
	}
	_, _, texts := svgPolylines(t, b.Bytes())
	for _, s := range []string{"throughput (Mbit/s), log scale", "RTT (ms), log scale", "10", "100000", "0.01", "100"} {
		if !slices.Contains(texts, s) {
			t.Errorf("SVG texts lack %q: %q", s, texts)
		}
	}
}
