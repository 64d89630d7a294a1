package bench

import (
	"bytes"
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var d []time.Duration
		for _, x := range v {
			d = append(d, time.Duration(x)*time.Millisecond)
		}
		return d
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one", ms(7), 99, 7 * time.Millisecond},
		{"p50 of 4", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 100", ms(seq(100)...), 99, 99 * time.Millisecond},
		{"p100", ms(1, 2, 3), 100, 3 * time.Millisecond},
		{"p0", ms(1, 2, 3), 0, 1 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.in, tc.p); got != tc.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
			}
		})
	}
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i + 1
	}
	return s
}

func TestParseIperf(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     float64
		wantErr  string
	}{
		{"ok", `{"end":{"sum_received":{"bytes":100,"bits_per_second":2.5e9}}}`, 2.5, ""},
		{"error", `{"error":"unable to connect to server"}`, 0, "unable to connect"},
		{"nothing received", `{"end":{"sum_received":{"bytes":0}}}`, 0, "no bytes"},
		{"not json", `iperf3: error`, 0, "not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIperf([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("parseIperf(%q) error = %v, want %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseIperf(%q) = %v, %v, want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	res := []Result{
		{Path: PathKernel, MTU: 1500, UpGbps: 10, DownGbps: 8, RR: RRResult{P50us: 20, P99us: 40}, CRR: CRRResult{PerSec: 10000}},
		{Path: PathAppliance, MTU: 1500, UpGbps: 5, DownGbps: 2, RR: RRResult{P50us: 50, P99us: 90}, CRR: CRRResult{PerSec: 2500},
			Errors: []string{"crr: boom"}},
		{Path: PathPasta, MTU: 1500, Skipped: "not installed"},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, res); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"up/kernel", "0.50", "0.25", "not installed", "error: appliance mtu 1500: crr: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("WriteTable output lacks %q:\n%s", want, out)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"ok", Config{Bin: "x"}, ""},
		{"no bin", Config{}, "no appliance binary"},
		{"bad mode", Config{Bin: "x", Mode: "bridge"}, "not supported"},
		{"bad compare", Config{Bin: "x", Compare: []string{"gvproxy"}}, "unknown path"},
		{"bad mtu", Config{Bin: "x", MTUs: []int{100}}, "mtu 100"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cfg
			err := c.defaults()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("defaults() = %v", err)
				}
				if c.Time != 5*time.Second || len(c.MTUs) != 2 || !slices.Equal(c.Compare, ComparePaths) {
					t.Errorf("defaults() = %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("defaults() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestConfigDefaultsRouter: router mode measures at 1500 against the kernel
// router only (pasta and slirp4netns have no router mode).
func TestConfigDefaultsRouter(t *testing.T) {
	c := Config{Bin: "x", Mode: "router"}
	if err := c.defaults(); err != nil {
		t.Fatalf("defaults() = %v", err)
	}
	if !slices.Equal(c.MTUs, []int{1500}) || !slices.Equal(c.Compare, []string{PathKernel}) {
		t.Errorf("router defaults: MTUs %v, Compare %v; want [1500], [kernel]", c.MTUs, c.Compare)
	}
	if !slices.Equal(ComparePaths, []string{PathKernel, PathProxy, PathPasta, PathSlirp4netns}) {
		t.Errorf("router defaults changed ComparePaths: %v", ComparePaths)
	}
}

// startServer serves the RR/CRR protocol on loopback until the test ends.
func startServer(tb testing.TB) string {
	tb.Helper()
	return serveLoopback(tb, "Serve", Serve)
}

// serveLoopback runs serve on a loopback listener until the test ends,
// and checks that it returns nil, within 10s, once its context is
// canceled. It returns the listener's address.
func serveLoopback(tb testing.TB, name string, serve func(context.Context, net.Listener) error) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("%s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("%s did not return 10s after its context was canceled", name)
		}
	})
	return ln.Addr().String()
}

func TestRRAndCRRLoopback(t *testing.T) {
	addr := startServer(t)
	ctx := context.Background()
	rr, err := RR(ctx, addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Transactions == 0 || rr.P50us <= 0 || rr.P99us < rr.P50us {
		t.Errorf("RR = %+v", rr)
	}
	crr, err := CRR(ctx, addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if crr.Connections == 0 || crr.Errors != 0 || crr.PerSec <= 0 {
		t.Errorf("CRR = %+v", crr)
	}
}

func TestRRCanceled(t *testing.T) {
	addr := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, _ = RR(ctx, addr, 10*time.Second)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("RR ran %v after its context was canceled", el)
	}
}

// BenchmarkRRLoopback measures one 1-byte transaction over loopback TCP,
// the floor under every RR number the bench table shows.
func BenchmarkRRLoopback(b *testing.B) {
	addr := startServer(b)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req, resp := []byte{rrByte}, make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(resp); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/transaction")
}

func TestMergeRounds(t *testing.T) {
	round := func(kUp, aUp, aP50, aCRR float64) []Result {
		return []Result{
			{Path: PathKernel, MTU: 1500, UpGbps: kUp, DownGbps: 10, CRR: CRRResult{PerSec: 1000}},
			{Path: PathAppliance, MTU: 1500, UpGbps: aUp, DownGbps: 5, RR: RRResult{P50us: aP50}, CRR: CRRResult{PerSec: aCRR}},
			{Path: PathPasta, MTU: 1500, Skipped: "not installed"},
		}
	}
	// Round 2's kernel run met a burst of load: the median of the
	// rounds' ratios (0.5, 0.9, 0.25) is 0.5; the ratio of the medians
	// (3.6 / 8) would be 0.45.
	rounds := [][]Result{round(10, 5, 100, 300), round(4, 3.6, 900, 0), round(8, 2, 200, 500)}
	rounds[1][1].Errors = []string{"crr: boom"}
	got := mergeRounds(rounds)
	if len(got) != 3 {
		t.Fatalf("%d results, want 3", len(got))
	}
	k, a := got[0], got[1]
	if k.UpGbps != 8 || a.UpGbps != 3.6 || a.RR.P50us != 200 {
		t.Errorf("medians: kernel up %v, appliance up %v p50 %v; want 8, 3.6, 200", k.UpGbps, a.UpGbps, a.RR.P50us)
	}
	if a.CRR.PerSec != 400 { // the failed round (0) left out: median of 300 and 500
		t.Errorf("appliance CRR median %v, want 400", a.CRR.PerSec)
	}
	if r := Ratio(a, k, upGbps); r != 0.5 {
		t.Errorf("up ratio %v, want the median of the rounds' ratios 0.5", r)
	}
	if r := Ratio(a, k, crrPerSec); r != 0.4 {
		t.Errorf("CRR ratio %v, want 0.4 (rounds 0.3 and 0.5; the failed one left out)", r)
	}
	if len(a.Rounds) != 3 || len(a.Errors) != 1 || !strings.HasPrefix(a.Errors[0], "round 2: ") {
		t.Errorf("rounds %d, errors %q", len(a.Rounds), a.Errors)
	}
	if got[2].Skipped != "not installed" {
		t.Errorf("skipped path: %+v", got[2])
	}
	if one := mergeRounds(rounds[:1]); one[1].UpGbps != 5 || one[1].Rounds != nil {
		t.Errorf("one round: %+v, want it as measured", one[1])
	}
	var b bytes.Buffer
	if err := WriteTable(&b, got); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "0.50") {
		t.Errorf("table lacks the median ratio 0.50:\n%s", b.String())
	}
}
