//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// Router mode's default addresses (CLI.md).
const (
	rtA4, rtGwA4 = "10.1.0.100", "10.1.0.2"
	rtB4         = "10.2.0.100"
	rtA6, rtGwA6 = "fd00:0:0:a::100", "fd00:0:0:a::2"
	rtB6         = "fd00:0:0:b::100"
	rtMTUB       = 1280
)

// startRouter runs `appliance router --name N ARGS... A B` in host, waits
// for its control socket and stops it at cleanup (logging stderr if the
// test failed).
func startRouter(t testing.TB, host, a, b *testbed.Netns, args ...string) *testbed.Appliance {
	t.Helper()
	return startRouterBin(t, applianceBin, host, a, b, args...)
}

// startRouterBin is startRouter with another build of the appliance.
func startRouterBin(t testing.TB, bin string, host, a, b *testbed.Netns, args ...string) *testbed.Appliance {
	t.Helper()
	app, err := testbed.StartMode(bin, host, "router", append(append([]string{"--name", testbed.UniqueName("itr")}, args...), a.Path, b.Path)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-app.Proc.Done():
		default:
			code, err := app.Stop()
			checkLeakExit(t, code, app.Stderr())
			if err != nil || code != 0 {
				t.Logf("stop router: exit %d, %v", code, firstLine(err))
			}
		}
		app.Kill()
		if t.Failed() {
			t.Logf("router %s stderr:\n%s", app.Name, tail(app.Stderr(), 4000))
		}
	})
	return app
}

// TestRouter runs router mode between namespaces A and B (link b narrowed
// to 1280) from a third namespace and checks what a Linux router does:
// forwarding both ways for IPv4 and IPv6, TTL / hop limit exceeded and
// fragmentation needed / packet too big answered from the appliance's
// address, the status endpoint, and a clean SIGTERM.
func TestRouter(t *testing.T) {
	requireRoot(t)
	a, b, host := newNetns(t, "itra"), newNetns(t, "itrb"), newNetns(t, "itrh")
	app := startRouter(t, host, a, b, "--mtu-b", fmt.Sprint(rtMTUB))
	startIperf3(t, b)

	t.Run("ping", func(t *testing.T) {
		run(t, a, 15*time.Second, "ping", "-c", "3", "-i", "0.2", "-W", "2", rtB4)
		run(t, b, 15*time.Second, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", rtA6)
	})
	for _, fam := range []struct{ name, addr string }{{"v4", rtB4}, {"v6", rtB6}} {
		for _, dir := range []struct {
			name  string
			extra []string
		}{{"upload", nil}, {"download", []string{"-R"}}} {
			t.Run("iperf3/"+fam.name+"/"+dir.name, func(t *testing.T) {
				args := append([]string{"-c", fam.addr, "-p", fmt.Sprint(iperfPort), "-t", "2", "-J"}, dir.extra...)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				out, err := a.Command(ctx, "iperf3", args...).Output()
				var r iperfResult
				if jerr := json.Unmarshal(out, &r); jerr != nil {
					t.Fatalf("iperf3 %s: %v; output not JSON (%v): %s", strings.Join(args, " "), err, jerr, tail(string(out), 2000))
				}
				if err != nil || r.Error != "" {
					t.Fatalf("iperf3 %s: %v: %s", strings.Join(args, " "), err, r.Error)
				}
				rcv := r.End.SumReceived
				t.Logf("received %d bytes, %.2f Gbit/s", rcv.Bytes, rcv.BitsPerSecond/1e9)
				if rcv.Bytes == 0 {
					t.Errorf("no data moved across the router")
				}
			})
		}
	}
	// ping exits 1 when an ICMP error comes back instead of a reply.
	icmpErr := func(t *testing.T, want string, args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, _ := a.Command(ctx, "ping", args...).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Errorf("ping %s: want %q in\n%s", strings.Join(args, " "), want, out)
		}
	}
	t.Run("ttl-exceeded", func(t *testing.T) {
		icmpErr(t, "From "+rtGwA4+" icmp_seq=1 Time to live exceeded", "-c", "1", "-W", "2", "-t", "1", rtB4)
		icmpErr(t, "From "+rtGwA6+" icmp_seq=1 Time exceeded: Hop limit", "-6", "-c", "1", "-W", "2", "-t", "1", rtB6)
	})
	t.Run("frag-needed", func(t *testing.T) {
		icmpErr(t, fmt.Sprintf("From %s icmp_seq=1 Frag needed and DF set (mtu = %d)", rtGwA4, rtMTUB),
			"-c", "1", "-W", "2", "-M", "do", "-s", "1400", rtB4)
		icmpErr(t, fmt.Sprintf("From %s icmp_seq=1 Packet too big: mtu=%d", rtGwA6, rtMTUB),
			"-6", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", rtB6)
	})
	t.Run("status", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := app.Ctl(ctx, "status")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Mode  string `json:"mode"`
			Links map[string]struct {
				MTU      int               `json:"mtu"`
				Counters map[string]uint64 `json:"counters"`
			} `json:"links"`
			Counters map[string]uint64 `json:"counters"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		if st.Mode != "router" || st.Links["b"].MTU != rtMTUB || st.Links["a"].Counters["rx_packets"] == 0 {
			t.Errorf("status: mode %q, mtu b %d, rx_packets a %d\n%s", st.Mode, st.Links["b"].MTU, st.Links["a"].Counters["rx_packets"], out)
		}
		for _, k := range []string{"forwarding_exhausted_ttl", "forwarding_packet_too_big", "icmp4_sent_time_exceeded", "icmp6_sent_packet_too_big"} {
			if st.Counters[k] == 0 {
				t.Errorf("status counter %s = 0 after the ICMP tests", k)
			}
		}
		// The same numbers through `appliance stats`.
		stats, err := app.Ctl(ctx, "stats", "netstack_ip_forwarding_exhausted_ttl", "link_a_rx_packets")
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range []string{`(?m)^netstack_ip_forwarding_exhausted_ttl\s+[1-9]`, `(?m)^link_a_rx_packets\s+[1-9]`} {
			if !regexp.MustCompile(re).Match(stats) {
				t.Errorf("appliance stats in router mode lacks %s:\n%s", re, stats)
			}
		}
	})
	t.Run("sigterm", func(t *testing.T) {
		code, err := app.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Errorf("router exit code after SIGTERM = %d, want 0\nstderr: %s", code, tail(app.Stderr(), 2000))
		}
		checkGone(t, app.Name, a)
		checkGone(t, app.Name, b)
	})
}

// TestRouterNamespaceGone deletes one side's namespace: the router must exit
// 1 naming the device that went away.
func TestRouterNamespaceGone(t *testing.T) {
	requireRoot(t)
	a, b, host := newNetns(t, "itra"), newNetns(t, "itrb"), newNetns(t, "itrh")
	app := startRouter(t, host, a, b, "--no-ipv6")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	code, err := app.Proc.Wait(10 * time.Second)
	if err != nil {
		t.Fatalf("router did not exit after its namespace went away: %v", err)
	}
	if code != 1 || !strings.Contains(app.Stderr(), "went away") {
		t.Errorf("router exit %d, want 1 with \"went away\"\nstderr: %s", code, tail(app.Stderr(), 2000))
	}
	checkGone(t, app.Name, a)
}
