//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/internal/testbed"
)

// Benchmarks of the firewall in router mode (make bench runs them once):
// iperf3 from A to B with 0, 100 and 1000 FORWARD rules that match no
// packet, and iperf3 while a third party floods UDP into the router, with
// the flood dropped by the early filter (raw PREROUTING) or by the filter
// table. Reported as Mbit/s; docs/benchmarks.md has the figures.

// benchTime is each iperf3 run's length.
const benchTime = 5

func iperfMbps(tb testing.TB, ns *testbed.Netns, addr string) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(benchTime+20)*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "iperf3", "-c", addr, "-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(benchTime), "-J").Output()
	var r iperfResult
	if jerr := json.Unmarshal(out, &r); jerr != nil || err != nil || r.Error != "" {
		tb.Fatalf("iperf3: %v %v %s", err, jerr, r.Error)
	}
	return r.End.SumReceived.BitsPerSecond / 1e6
}

func restoreRules(tb testing.TB, app *testbed.Appliance, text string) {
	tb.Helper()
	f := filepath.Join(tb.TempDir(), "rules")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := app.Ctl(ctx, "iptables-restore", f); err != nil {
		tb.Fatalf("%v\n%s", err, out)
	}
}

// nonMatching is n FORWARD rules no packet of the benchmark matches.
func nonMatching(n int) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "-A FORWARD -s 192.0.%d.%d/32 -p tcp -m tcp --dport %d -j DROP\n", 2+i/250, 1+i%250, 1000+i)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func BenchmarkIptablesRules(b *testing.B) {
	requireRoot(b)
	a, bb, host := newNetns(b, "ibra"), newNetns(b, "ibrb"), newNetns(b, "ibrh")
	app := startRouter(b, host, a, bb)
	startIperf3(b, bb)
	base := 0.0
	for _, n := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			restoreRules(b, app, nonMatching(n))
			var sum float64
			for i := 0; i < b.N; i++ {
				sum += iperfMbps(b, a, rtB4)
			}
			mbps := sum / float64(b.N)
			if n == 0 {
				base = mbps
			}
			b.ReportMetric(mbps, "Mbit/s")
			if base > 0 {
				b.ReportMetric(mbps/base, "ratio")
			}
		})
	}
}

func BenchmarkIptablesFlood(b *testing.B) {
	requireRoot(b)
	a, bb, host := newNetns(b, "ibfa"), newNetns(b, "ibfb"), newNetns(b, "ibfh")
	app := startRouter(b, host, a, bb)
	startIperf3(b, bb)
	const floodPort = 9999
	// The flood comes from B towards the router's address on link b, so
	// every flood packet is read from link b's TUN (which also carries
	// the iperf3 ACKs) and nothing of it reaches A.
	target := fmt.Sprintf("10.2.0.2:%d", floodPort)
	cases := []struct {
		name, rules string
		flood       bool
	}{
		{"no-flood", "", false},
		{"flood-no-rule", "", true},
		{"flood-early-filter", "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
			fmt.Sprintf("-A PREROUTING -s 10.2.0.100/32 -p udp -m udp --dport %d -j DROP\nCOMMIT\n", floodPort), true},
		{"flood-filter-table", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
			fmt.Sprintf("-A INPUT -s 10.2.0.100/32 -p udp -m udp --dport %d -j DROP\nCOMMIT\n", floodPort), true},
	}
	base := 0.0
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			empty := "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
			restoreRules(b, app, empty)
			if c.rules != "" {
				restoreRules(b, app, c.rules)
			}
			before := linkStats(b, app)
			var flood *testbed.Proc
			if c.flood {
				flood = startHelper(b, bb, "udpflood", target, "1")
				if err := flood.WaitOutput("ready", 10*time.Second); err != nil {
					b.Fatal(err)
				}
				time.Sleep(500 * time.Millisecond)
			}
			var sum float64
			for i := 0; i < b.N; i++ {
				sum += iperfMbps(b, a, rtB4)
			}
			if flood != nil {
				flood.Stop(5 * time.Second)
				b.Logf("flood: %s", strings.TrimSpace(flood.Stdout()))
			}
			after := linkStats(b, app)
			mbps := sum / float64(b.N)
			if !c.flood {
				base = mbps
			}
			b.ReportMetric(mbps, "Mbit/s")
			if base > 0 {
				b.ReportMetric(mbps/base, "ratio")
			}
			secs := float64(b.N * benchTime)
			b.ReportMetric(float64(after["rx_packets"]-before["rx_packets"])/secs, "rx_pps_b")
			b.ReportMetric(float64(after["rx_filtered"]-before["rx_filtered"])/secs, "early_drop_pps")
		})
	}
}

// linkStats returns link b's TUN counters.
func linkStats(tb testing.TB, app *testbed.Appliance) map[string]uint64 {
	tb.Helper()
	c, err := control.NewClient(app.Name)
	if err != nil {
		tb.Fatal(err)
	}
	var st map[string]map[string]uint64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, "GET", "/v1/stats", nil, &st); err != nil {
		tb.Fatal(err)
	}
	return st["link_b"]
}
