//go:build integration

package integration

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCongestionControl runs gateway mode over the built-in emulation
// (rate=100mbit,delay=20ms, both directions: a 40 ms RTT) with netstack as
// the sender (iperf3 -R), switching the algorithm with `appliance sysctl
// -w net.ipv4.tcp_congestion_control` and the loss with `appliance
// emulate`. Short runs with loose bounds for a noisy 2-vCPU machine: at
// loss 0 every algorithm fills a good part of the bottleneck, `appliance
// ss -ti` names the algorithm during the transfer with its pacing and
// delivery rates (and BBR its bbr:(...) block). The full
// table is `appliance bench --cc-matrix` (docs/cc.md).
func TestCongestionControl(t *testing.T) {
	const base = "rate=100mbit,delay=20ms"
	tp := newTopo(t, topoOpts{iperf: true, args: []string{"--mtu", "1500", "--no-ipv6", "--emulate", base}})
	ctl := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := tp.app.Ctl(ctx, args...)
		if err != nil {
			t.Fatalf("appliance %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if got := strings.TrimSpace(ctl("sysctl", "net.ipv4.tcp_available_congestion_control")); !strings.HasSuffix(got, "= reno cubic bbr") {
		t.Fatalf("tcp_available_congestion_control: %q, want reno cubic bbr", got)
	}
	download := func(t *testing.T, secs int, during func()) float64 {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+30)*time.Second)
		defer cancel()
		// during only reads ss: a retry may replay it.
		args := []string{"-c", "198.18.0.2", "-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(secs), "-R", "-J"}
		r := runIperf3(t, ctx, tp.cont, args, during, true)
		return r.End.SumReceived.BitsPerSecond / 1e6
	}
	results := map[string]float64{}
	for _, alg := range []string{"reno", "cubic", "bbr"} {
		for _, loss := range []string{"0", "1"} {
			name := alg + "/loss=" + loss + "%"
			t.Run(name, func(t *testing.T) {
				ctl("sysctl", "-w", "net.ipv4.tcp_congestion_control="+alg)
				spec := base
				if loss != "0" {
					spec += ",loss=" + loss + "%"
				}
				ctl("emulate", spec)
				var ss string
				mbps := download(t, 6, func() {
					time.Sleep(3 * time.Second)
					ss = ctl("ss", "-ti")
				})
				results[name] = mbps
				t.Logf("%s: %.1f Mbit/s; ss -ti:\n%s", name, mbps, ss)
				info := regexp.MustCompile(`(?m)^\t ` + alg + ` wscale:\d+,\d+ rto:\d+ rtt:[\d.]+/[\d.]+ mss:\d+ cwnd:\d+.* pacing_rate [\d.]+[KMG]?bps delivery_rate [\d.]+[KMG]?bps`)
				if !info.MatchString(ss) {
					t.Errorf("ss -ti during the transfer lacks a %s line with pacing_rate and delivery_rate:\n%s", alg, ss)
				}
				// BBR's own block, where Linux's ss prints INET_DIAG_BBRINFO.
				bbrInfo := regexp.MustCompile(`(?m)^\t bbr .* cwnd:\d+( ssthresh:\d+)? bbr:\(bw:[\d.]+[KMG]?bps,mrtt:[\d.]+,pacing_gain:[\d.]+,cwnd_gain:[\d.]+\) pacing_rate `)
				if got := bbrInfo.MatchString(ss); got != (alg == "bbr") {
					t.Errorf("ss -ti during the transfer: bbr:(bw:...,mrtt:...,pacing_gain:...,cwnd_gain:...) block present = %v, want %v:\n%s", got, alg == "bbr", ss)
				}
				if loss == "0" && mbps < 20 {
					t.Errorf("%s at loss 0: %.1f Mbit/s over a 100 Mbit/s bottleneck, want > 20", alg, mbps)
				}
				if mbps > 105 {
					t.Errorf("%s: %.1f Mbit/s over a 100 Mbit/s bottleneck", alg, mbps)
				}
			})
		}
	}
	// The BBR-vs-CUBIC targets under loss (BBR >= 80% of the bottleneck,
	// CUBIC below half of that) are bench figures (appliance bench
	// --cc-matrix, docs/cc.md), not CI assertions: a 6 s run on a shared
	// 2-vCPU machine is too noisy for them. Their order is not: with
	// netstack's loss recovery (patches 0009-0011) BBR moves 45-75
	// Mbit/s at 1% loss and CUBIC 4-11, as with the kernel's.
	bbr, okB := results["bbr/loss=1%"]
	cubic, okC := results["cubic/loss=1%"]
	if okB && okC && bbr <= cubic {
		t.Errorf("at 1%% loss BBR %.1f Mbit/s, CUBIC %.1f: want BBR ahead (loss-resilience)", bbr, cubic)
	}
	t.Logf("throughput (Mbit/s): %v", results)
}

// TestCongestionControlSelection: unknown names are rejected with the
// available list (flags before anything starts, sysctl at runtime), and
// --cc-route gives connections to a prefix their own algorithm.
func TestCongestionControlSelection(t *testing.T) {
	requireRoot(t)
	for _, args := range [][]string{
		{"run", "--cc", "vegas", "--netns", "/nonexistent/x"},
		{"run", "--cc-route", "198.18.0.0/24=vegas", "--netns", "/nonexistent/x"},
		{"run", "--cc-route", "198.18.0.0/24", "--netns", "/nonexistent/x"},
	} {
		out, err := exec.Command(applianceBin, args...).CombinedOutput()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != 2 || !strings.Contains(string(out), args[2]) {
			t.Errorf("appliance %s: exit %d, want 2 naming %q\n%s", strings.Join(args, " "), code, args[2], out)
		}
		if strings.Contains(args[2], "vegas") && !strings.Contains(string(out), "reno cubic bbr") {
			t.Errorf("appliance %s: error does not list the available algorithms\n%s", strings.Join(args, " "), out)
		}
	}

	tp := newTopo(t, topoOpts{args: []string{"--cc", "reno", "--cc-route", "198.18.0.2/32=bbr"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := tp.app.Ctl(ctx, "sysctl", "-w", "net.ipv4.tcp_congestion_control=vegas"); err == nil || !strings.Contains(string(out)+err.Error(), "reno cubic bbr") {
		t.Errorf("sysctl -w tcp_congestion_control=vegas: %v, want an error listing reno cubic bbr\n%s", err, out)
	}
	hold, err := tp.cont.Start("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/198.18.0.2/%d; sleep 20", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Kill()
	var out []byte
	want := regexp.MustCompile(`(?m)^\t bbr wscale:`)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = tp.app.Ctl(ctx, "ss", "-ti")
		cancel()
		if err == nil && want.Match(out) {
			break
		}
	}
	if !want.Match(out) {
		t.Errorf("connection to 198.18.0.2 under --cc reno --cc-route 198.18.0.2/32=bbr: ss -ti does not show bbr:\n%s", out)
	}
}
