//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/internal/testbed"
)

// Benchmarks of the firewall in router mode (make bench runs them once):
// iperf3 from A to B with 0, 100 and 1000 FORWARD rules that match no
// packet, and iperf3 while a third namespace floods UDP or SYNs into the
// router, with the flood dropped by the early filter (raw PREROUTING) or
// by the filter table. Reported as Mbit/s; docs/benchmarks.md has the
// figures.

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

// Flood targets: the router's address on link b, from the flooder
// namespace F behind B.
const (
	floodAddr    = "10.2.0.2"
	udpFloodPort = 9999
	synFloodPort = 9998
)

// floodKind is one kind of flood: how to start it and the rule that
// drops it, as an iptables match.
type floodKind struct {
	name  string
	mode  string   // helper mode
	args  []string // helper arguments
	match string
}

var floodKinds = []floodKind{
	{"udp", "udpflood", []string{fmt.Sprintf("%s:%d", floodAddr, udpFloodPort), "1"},
		fmt.Sprintf("-s 10.9.0.0/24 -p udp -m udp --dport %d", udpFloodPort)},
	{"syn", "synflood", []string{fmt.Sprintf("%s:%d", floodAddr, synFloodPort)},
		fmt.Sprintf("-s 10.9.0.0/24 -p tcp -m tcp --dport %d --tcp-flags FIN,SYN,RST,ACK SYN", synFloodPort)},
}

// BenchmarkIptablesFlood runs iperf3 A -> B through the router while a
// flooder namespace F, linked to B by a veth and routed through it, floods
// the router's address on link b (so the flood shares link b's TUN reader
// with the iperf3 ACKs). Each flood kind (UDP, SYN) runs with the flood
// dropped by B's kernel before it reaches the router (the reference: the
// flooder's and the kernel's own CPU, nothing of the appliance), with no
// rule, with the drop rule in the raw table's PREROUTING (the early
// filter: in the kernel as a BPF program on the TUN, and with
// --reader-early-filter on the TUN reader) and in the filter table's
// INPUT (the slow path). "no-flood" runs iperf3 twice without a flood
// (A/A: the noise floor of the ratio).
//
// APPLIANCE_BENCH_CPUPROFILE=FILE writes the router's CPU profile (of the
// whole run: select cases with -bench).
func BenchmarkIptablesFlood(b *testing.B) {
	requireRoot(b)
	a, bb, host, f := newNetns(b, "ibfa"), newNetns(b, "ibfb"), newNetns(b, "ibfh"), newNetns(b, "ibff")
	var args []string
	if p := os.Getenv("APPLIANCE_BENCH_CPUPROFILE"); p != "" {
		args = append(args, "--cpuprofile", p)
	}
	app := startRouter(b, host, a, bb, args...)
	reader := false
	// setReader restarts the router with the early filter on the TUN
	// reader only (--reader-early-filter) or back with its kernel program.
	setReader := func(on bool) {
		if on == reader {
			return
		}
		if code, err := app.Stop(); err != nil || code != 0 {
			b.Fatalf("stop router: exit %d, %v", code, err)
		}
		a2 := args
		if on {
			a2 = append(append([]string(nil), args...), "--reader-early-filter")
		}
		app, reader = startRouter(b, host, a, bb, a2...), on
	}
	startIperf3(b, bb)
	v, err := testbed.Veth(f, bb, []netip.Prefix{netip.MustParsePrefix("10.9.0.2/24")}, []netip.Prefix{netip.MustParsePrefix("10.9.0.1/24")})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.IP("route", "add", "default", "via", "10.9.0.1"); err != nil {
		b.Fatal(err)
	}
	if out, err := bb.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	type floodCase struct {
		name, rules, kernelRule string
		kind                    *floodKind
		reader                  bool // --reader-early-filter
	}
	cases := []floodCase{{name: "no-flood"}}
	for i := range floodKinds {
		k := &floodKinds[i]
		cases = append(cases,
			floodCase{name: k.name + "-kernel-drop", kind: k, kernelRule: "-A FORWARD -i " + v.B + " " + k.match + " -j DROP"},
			floodCase{name: k.name + "-no-rule", kind: k},
			floodCase{name: k.name + "-early-filter", kind: k, rules: "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
				"-A PREROUTING " + k.match + " -j DROP\nCOMMIT\n"},
			floodCase{name: k.name + "-early-filter-reader", kind: k, reader: true, rules: "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
				"-A PREROUTING " + k.match + " -j DROP\nCOMMIT\n"},
			floodCase{name: k.name + "-filter-table", kind: k, rules: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
				"-A INPUT " + k.match + " -j DROP\nCOMMIT\n"})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			setReader(c.reader)
			empty := "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
			restoreRules(b, app, empty)
			if c.rules != "" {
				restoreRules(b, app, c.rules)
			}
			if c.kernelRule != "" {
				kernelRules(b, bb, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"+c.kernelRule+"\nCOMMIT\n")
				b.Cleanup(func() {
					kernelRules(b, bb, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
				})
			}
			// Each iteration runs iperf3 without the flood, then with it
			// (A/B back to back, so the ratio holds under the shared
			// machine's drifting load); rates are over the flood phases.
			var base, sum, secs float64
			var sent, rx, filtered, kdrop uint64
			var cpu float64
			for i := 0; i < b.N; i++ {
				base += iperfMbps(b, a, rtB4)
				if c.kind == nil {
					sum += iperfMbps(b, a, rtB4)
					continue
				}
				before, kBefore := linkStats(b, app), fwStats(b, app)["link1_early_kernel_dropped"]
				cpuBefore := procCPU(b, app.Proc.Pid())
				flood := startHelper(b, f, c.kind.mode, c.kind.args...)
				if err := flood.WaitOutput("ready", 10*time.Second); err != nil {
					b.Fatal(err)
				}
				start := time.Now()
				time.Sleep(500 * time.Millisecond)
				sum += iperfMbps(b, a, rtB4)
				flood.Stop(5 * time.Second)
				secs += time.Since(start).Seconds()
				cpu += procCPU(b, app.Proc.Pid()) - cpuBefore
				if _, after, ok := strings.Cut(flood.Stdout(), "sent "); ok {
					n, _ := strconv.ParseUint(strings.TrimSpace(after), 10, 64)
					sent += n
				}
				after, kAfter := linkStats(b, app), fwStats(b, app)["link1_early_kernel_dropped"]
				rx += after["rx_packets"] - before["rx_packets"]
				filtered += after["rx_filtered"] - before["rx_filtered"]
				kdrop += kAfter - kBefore
			}
			b.ReportMetric(sum/float64(b.N), "Mbit/s")
			b.ReportMetric(base/float64(b.N), "noflood_Mbit/s")
			b.ReportMetric(sum/base, "ratio")
			if secs > 0 {
				b.ReportMetric(float64(sent)/secs, "flood_pps")
				b.ReportMetric(float64(rx)/secs, "rx_pps_b")
				b.ReportMetric(float64(filtered)/secs, "early_drop_pps")
				b.ReportMetric(float64(kdrop)/secs, "bpf_drop_pps")
				b.ReportMetric(cpu/secs, "appliance_cpus")
			}
		})
	}
}

// procCPU returns the CPU time (user + system, seconds) process pid used
// so far, from /proc/PID/stat.
func procCPU(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 12th and 13th, in clock ticks (USER_HZ, 100).
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		tb.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100
}

// kernelRules loads an iptables-restore text into ns's kernel.
func kernelRules(tb testing.TB, ns *testbed.Netns, text string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, "iptables-restore")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("iptables-restore in %s: %v\n%s", ns.Name, err, out)
	}
}

// fwStats returns the firewall's counters (appliance iptables stats).
func fwStats(tb testing.TB, app *testbed.Appliance) map[string]uint64 {
	tb.Helper()
	c, err := control.NewClient(app.Name)
	if err != nil {
		tb.Fatal(err)
	}
	var st map[string]uint64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, "GET", "/v1/iptables/stats", nil, &st); err != nil {
		tb.Fatal(err)
	}
	return st
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
