//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// TestTestbed checks the test bed alone: two namespaces, a veth, ping both
// ways over IPv4 and IPv6. If this fails, the other failures say nothing
// about the appliance.
func TestTestbed(t *testing.T) {
	requireRoot(t)
	a, b := newNetns(t, "ita"), newNetns(t, "itb")
	if _, err := testbed.Veth(a, b, []netip.Prefix{hostV4, hostV6}, []netip.Prefix{srvV4, srvV6}); err != nil {
		t.Fatal(err)
	}
	run(t, a, 10*time.Second, "ping", "-c", "1", "-W", "2", "198.18.0.2")
	run(t, b, 10*time.Second, "ping", "-6", "-c", "1", "-W", "2", "fd00:198:18::1")
	if out := run(t, a, 5*time.Second, "ip", "route", "show", "default"); strings.TrimSpace(out) != "" {
		t.Errorf("test namespace has a default route: %s", out)
	}
}

func TestHTTP(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	for _, tc := range []struct{ name, url, want string }{
		{"v4", fmt.Sprintf("http://198.18.0.2:%d/", httpPort), "remote=198.18.0.1:"},
		{"v6", fmt.Sprintf("http://[fd00:198:18::2]:%d/", httpPort), "remote=[fd00:198:18::1]:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := run(t, tp.cont, 20*time.Second, "curl", "-sS", "--max-time", "10", tc.url)
			if !strings.HasPrefix(out, tc.want) {
				t.Errorf("curl %s = %q, want prefix %q", tc.url, out, tc.want)
			}
		})
	}
}

// iperfResult is the part of `iperf3 -J` the tests read.
type iperfResult struct {
	Error string `json:"error"`
	End   struct {
		SumSent struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_sent"`
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// runIperf3 runs iperf3 with args (add -J) in ns until ctx ends, calling
// during, if set, while it runs, and returns its JSON result; it fails t
// if iperf3 fails. The server refuses a test while it still winds down the
// previous one ("the server is busy"): that is retried a few times, with
// during only if replayDuring (a retry cannot replay what a during that
// changes something did to the first attempt).
func runIperf3(t *testing.T, ctx context.Context, ns *testbed.Netns, args []string, during func(), replayDuring bool) iperfResult {
	t.Helper()
	for try := 0; ; try++ {
		cmd := ns.Command(ctx, "iperf3", args...)
		var stdout strings.Builder
		cmd.Stdout = &stdout
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if during != nil {
			during()
		}
		err := cmd.Wait()
		var r iperfResult
		if jerr := json.Unmarshal([]byte(stdout.String()), &r); jerr != nil {
			t.Fatalf("iperf3 %s: %v; output not JSON (%v): %s", strings.Join(args, " "), err, jerr, tail(stdout.String(), 2000))
		}
		if strings.Contains(r.Error, "busy") && try < 10 && (during == nil || replayDuring) {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if err != nil || r.Error != "" {
			t.Fatalf("iperf3 %s: %v: %s", strings.Join(args, " "), err, r.Error)
		}
		return r
	}
}

func TestIperf3(t *testing.T) {
	tp := newTopo(t, topoOpts{iperf: true})
	for _, fam := range []struct{ name, addr string }{{"v4", "198.18.0.2"}, {"v6", "fd00:198:18::2"}} {
		for _, dir := range []struct {
			name  string
			extra []string
		}{{"upload", nil}, {"download", []string{"-R"}}} {
			t.Run(fam.name+"/"+dir.name, func(t *testing.T) {
				args := append([]string{"-c", fam.addr, "-p", fmt.Sprint(iperfPort), "-t", "2", "-J"}, dir.extra...)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				r := runIperf3(t, ctx, tp.cont, args, nil, false)
				s, rcv := r.End.SumSent, r.End.SumReceived
				t.Logf("sent %d bytes, received %d bytes, %.2f Gbit/s", s.Bytes, rcv.Bytes, rcv.BitsPerSecond/1e9)
				if s.Bytes == 0 || rcv.BitsPerSecond == 0 {
					t.Errorf("no data moved: sent %d bytes, received %.0f bit/s", s.Bytes, rcv.BitsPerSecond)
				}
				// iperf3 stops counting at the receiver when the timed
				// interval ends, so what was still in flight (socket
				// buffers on both hosts plus the appliance's queues;
				// tens of MB have been seen) is sent but not received.
				// The kernel path shows the same. Exact integrity is
				// TestTCPIntegrity's job; this only catches gross loss.
				inFlight := s.Bytes - rcv.Bytes
				t.Logf("in flight at the end: %d bytes (%.1f%%)", inFlight, 100*float64(inFlight)/float64(max(s.Bytes, 1)))
				if inFlight < 0 || inFlight > max(s.Bytes/10, 64<<20) {
					t.Errorf("bytes received %d vs bytes sent %d: differ by more than in-flight data could", rcv.Bytes, s.Bytes)
				}
			})
		}
	}
}

// TestTCPIntegrity streams 32 MiB through the appliance to an echo server
// and back and compares checksums, both families.
func TestTCPIntegrity(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	for _, tc := range []struct{ name, addr string }{
		{"v4", fmt.Sprintf("198.18.0.2:%d", echoPort)},
		{"v6", fmt.Sprintf("[fd00:198:18::2]:%d", echoPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 70*time.Second)
			defer cancel()
			const size = 32 << 20
			out, err := runHelper(ctx, tp.cont, "tcpbulk", "-addr", tc.addr, "-bytes", fmt.Sprint(size))
			if err != nil {
				t.Fatal(err)
			}
			var r bulkResult
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("tcpbulk output %q: %v", out, err)
			}
			if r.Bytes != size || !r.Match {
				t.Errorf("echoed %d of %d bytes, checksums match: %v", r.Bytes, size, r.Match)
			}
			t.Logf("%d bytes each way in %d ms", r.Bytes, r.Millis)
		})
	}
}

// TestLayout checks what the appliance sets up in the container namespace:
// tun0 with the slirp4netns-style addresses and default routes (CLI.md).
func TestLayout(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	addrs := run(t, tp.cont, 10*time.Second, "ip", "addr", "show", "tun0")
	for _, want := range []string{"inet " + contV4 + "/24", "inet6 " + contV6 + "/64", "mtu 65520"} {
		if !strings.Contains(addrs, want) {
			t.Errorf("ip addr show tun0: no %q in\n%s", want, addrs)
		}
	}
	for _, tc := range []struct{ fam, via string }{{"-4", gwV4}, {"-6", gwV6}} {
		r := run(t, tp.cont, 10*time.Second, "ip", tc.fam, "route", "show", "default")
		if !strings.Contains(r, "default via "+tc.via+" dev tun0") {
			t.Errorf("ip %s route show default = %q, want default via %s dev tun0", tc.fam, r, tc.via)
		}
	}
}

func TestUDPEcho(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	for _, tc := range []struct{ name, addr string }{
		{"v4", fmt.Sprintf("198.18.0.2:%d", echoPort)},
		{"v6", fmt.Sprintf("[fd00:198:18::2]:%d", echoPort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			msg := "echo-" + tc.name + "-" + strings.Repeat("x", 1000)
			out, err := runHelper(ctx, tp.cont, "udpecho", "-addr", tc.addr, "-msg", msg)
			if err != nil {
				t.Fatal(err)
			}
			if out != msg {
				t.Errorf("udp echo via %s = %q, want %q", tc.addr, tail(out, 40), tail(msg, 40))
			}
		})
	}
}

func TestDNS(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	for _, tc := range []struct {
		name   string
		server string
		qtype  string
		tcp    bool
		want   string
	}{
		{"v4/udp/A", dnsV4, "A", false, dnsA},
		{"v4/udp/AAAA", dnsV4, "AAAA", false, dnsAAAA},
		{"v4/tcp/A", dnsV4, "A", true, dnsA},
		{"v6/udp/A", dnsV6, "A", false, dnsA},
		{"v6/tcp/AAAA", dnsV6, "AAAA", true, dnsAAAA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"@" + tc.server, dnsName, tc.qtype, "+short", "+time=2", "+tries=2"}
			if tc.tcp {
				args = append(args, "+tcp")
			}
			out := strings.TrimSpace(run(t, tp.cont, 20*time.Second, "dig", args...))
			if out != tc.want {
				t.Errorf("dig %s = %q, want %q", strings.Join(args, " "), out, tc.want)
			}
		})
	}
}

func TestPing(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	t.Run("v4", func(t *testing.T) {
		run(t, tp.cont, 20*time.Second, "ping", "-c", "3", "-W", "2", "198.18.0.2")
	})
	t.Run("v6", func(t *testing.T) {
		run(t, tp.cont, 20*time.Second, "ping", "-6", "-c", "3", "-W", "2", "fd00:198:18::2")
	})
}

// TestPublish serves in CONT and connects from SRV to the published host
// port; the server must see SRV's own address, not the gateway's.
func TestPublish(t *testing.T) {
	tp := newTopo(t, topoOpts{args: []string{"-p", "8080:80", "-p", "8081:81/udp"}})
	startHelper(t, tp.cont, "serve", "-http", ":80", "-udpwho", ":81")
	t.Run("tcp", func(t *testing.T) {
		out := run(t, tp.srv, 20*time.Second, "curl", "-sS", "--max-time", "10", "http://198.18.0.1:8080/")
		if want := "remote=198.18.0.2:"; !strings.HasPrefix(out, want) {
			t.Errorf("published http answer = %q, want prefix %q", out, want)
		}
	})
	t.Run("udp", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := runHelper(ctx, tp.srv, "udpecho", "-addr", "198.18.0.1:8081", "-msg", "who")
		if err != nil {
			t.Fatal(err)
		}
		if want := "remote=198.18.0.2:"; !strings.HasPrefix(out, want) {
			t.Errorf("published udp answer = %q, want prefix %q", out, want)
		}
	})
}

// TestHostLoopback serves on HOST's 127.0.0.1 and ::1 and dials the
// gateway and DNS addresses from CONT: denied by default, the gateway
// reaches the host's loopback with --allow-host-loopback.
func TestHostLoopback(t *testing.T) {
	const port = "9000"
	dial := func(tp *topo, host string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err := runHelper(ctx, tp.cont, "tcpecho", "-addr", net.JoinHostPort(host, port), "-msg", "loop", "-timeout", "3s")
		if err == nil && out != "loop" {
			return fmt.Errorf("echo = %q, want %q", out, "loop")
		}
		return err
	}
	setup := func(t *testing.T, args ...string) (*topo, *testbed.Proc) {
		tp := newTopo(t, topoOpts{args: args})
		srv := startHelper(t, tp.host, "serve", "-tcpecho", "127.0.0.1:"+port, "-tcpecho", "[::1]:"+port)
		return tp, srv
	}
	t.Run("denied", func(t *testing.T) {
		tp, srv := setup(t)
		for _, h := range []string{gwV4, dnsV4, gwV6, dnsV6} {
			if err := dial(tp, h); err == nil {
				t.Errorf("dial %s:%s from the container reached the host's loopback without --allow-host-loopback", h, port)
			} else {
				t.Logf("dial %s:%s: %v (refused as it should be)", h, port, err)
			}
		}
		if strings.Contains(srv.Stdout(), "accept") {
			t.Errorf("host loopback server accepted connections: %s", srv.Stdout())
		}
	})
	t.Run("allowed", func(t *testing.T) {
		tp, srv := setup(t, "--allow-host-loopback")
		for _, h := range []string{gwV4, gwV6} {
			if err := dial(tp, h); err != nil {
				t.Errorf("dial %s:%s with --allow-host-loopback: %v", h, port, err)
			}
		}
		// The echo must come from the server on the host's loopback.
		for _, want := range []string{"accept 127.0.0.1:", "accept [::1]:"} {
			if err := srv.WaitOutput(want, 2*time.Second); err != nil {
				t.Errorf("host loopback server: %v", err)
			}
		}
		t.Logf("host loopback server saw: %s", strings.TrimSpace(srv.Stdout()))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := tp.cont.Run(ctx, "ping", "-c", "1", "-W", "2", gwV4); err != nil {
			t.Errorf("ping gateway with --allow-host-loopback: %v", err)
		}
	})
}

func TestSysctl(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	a := tp.app
	ctl := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := a.Ctl(ctx, args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	const key = "net.ipv4.tcp_congestion_control"
	if got, want := ctl("sysctl", key), key+" = cubic"; got != want {
		t.Errorf("sysctl %s = %q, want %q", key, got, want)
	}
	if got, want := ctl("sysctl", "-w", key+"=reno"), key+" = reno"; got != want {
		t.Errorf("sysctl -w %s=reno = %q, want %q", key, got, want)
	}
	if got, want := ctl("sysctl", key), key+" = reno"; got != want {
		t.Errorf("sysctl %s after write = %q, want %q", key, got, want)
	}
	const tw = "net.ipv4.tcp_max_tw_buckets"
	if got, want := ctl("sysctl", "-w", tw+"=4096"), tw+" = 4096"; got != want {
		t.Errorf("sysctl -w %s=4096 = %q, want %q", tw, got, want)
	}
	all := ctl("sysctl", "-a")
	if !strings.Contains(all, tw+" = 4096\n") {
		t.Errorf("sysctl -a after the write has no %q line:\n%s", tw+" = 4096", all)
	}
	re := regexp.MustCompile(`(?m)^net\.ipv4\.tcp_available_congestion_control = .*\bcubic\b`)
	if !re.MatchString(all) {
		t.Errorf("sysctl -a has no line matching %s:\n%s", re, all)
	}
	if !regexp.MustCompile(`(?m)^net\.ipv4\.tcp_rmem = \d+\t\d+\t\d+$`).MatchString(all) {
		t.Errorf("sysctl -a: tcp_rmem not three tab-separated numbers:\n%s", all)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := a.Ctl(ctx, "sysctl", "net.ipv4.no_such_key"); err == nil {
		t.Errorf("sysctl of an unknown key succeeded: %s", out)
	}
	missing := testbed.UniqueName("nobody")
	out, err := exec.CommandContext(ctx, applianceBin, "sysctl", key, "--name", missing).CombinedOutput()
	if err == nil {
		t.Errorf("sysctl --name %s (not running) succeeded: %s", missing, out)
	}
	if re := regexp.MustCompile(`no appliance named "?` + regexp.QuoteMeta(missing) + `"? is running`); !re.Match(out) {
		t.Errorf("sysctl --name %s (not running) = %q, want a match for %s", missing, out, re)
	}
}

// checkGone checks that nothing of the appliance named name is left.
func checkGone(t *testing.T, name string, cont *testbed.Netns) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := testbed.PidsWithArgs("--name", name)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("appliance processes left after exit: %v", pids)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sock := filepath.Join(testbed.SocketDir, name+".sock")
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("control socket %s left after exit", sock)
		_ = os.Remove(sock)
	}
	if cont != nil {
		if err := cont.IP("link", "show", "tun0"); err == nil {
			t.Errorf("tun0 still exists in %s after the appliance exited", cont.Name)
		}
	}
}

// TestSIGTERM stops the appliance idle and during an iperf3 transfer: it
// must exit 0 and leave no process, socket or tun0 behind.
func TestSIGTERM(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		tp := newTopo(t, topoOpts{})
		code, err := tp.app.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Errorf("appliance exit code after SIGTERM = %d, want 0\nstderr: %s", code, tail(tp.app.Stderr(), 2000))
		}
		checkGone(t, tp.app.Name, tp.cont)
	})
	t.Run("transfer", func(t *testing.T) {
		tp := newTopo(t, topoOpts{iperf: true})
		ip, err := tp.cont.Start("iperf3", "-c", "198.18.0.2", "-p", fmt.Sprint(iperfPort), "-t", "20", "-i", "1", "--forceflush")
		if err != nil {
			t.Fatal(err)
		}
		defer ip.Kill()
		// Wait for data to flow: the first interval line.
		if err := ip.WaitOutput("sec", 10*time.Second); err != nil {
			t.Fatal(err)
		}
		code, err := tp.app.Stop()
		if err != nil {
			t.Fatal(err)
		}
		if code != 0 {
			t.Errorf("appliance exit code after SIGTERM during a transfer = %d, want 0\nstderr: %s", code, tail(tp.app.Stderr(), 2000))
		}
		ip.Kill()
		checkGone(t, tp.app.Name, tp.cont)
	})
}

func TestCommandMode(t *testing.T) {
	requireRoot(t)
	host := newNetns(t, "ith")
	before, err := testbed.ListNetns()
	if err != nil {
		t.Fatal(err)
	}
	name := testbed.UniqueName("itcmd")
	t.Cleanup(func() {
		for _, pid := range testbed.PidsWithArgs("--name", name) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.Remove(filepath.Join(testbed.SocketDir, name+".sock"))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := host.Command(ctx, applianceBin, "run", "--name", name, "--", "sh", "-c", "ip addr show tun0 && exit 3")
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 3 {
		t.Errorf("appliance run -- sh -c '...exit 3' exit code = %d (%v), want 3\n%s", code, err, out)
	}
	if !strings.Contains(string(out), contV4) {
		t.Errorf("ip addr show tun0 inside the command's namespace: no %s in\n%s", contV4, out)
	}
	after, err := testbed.ListNetns()
	if err != nil {
		t.Fatal(err)
	}
	if added := diffNames(before, after); len(added) > 0 {
		t.Errorf("command mode left namespaces behind: %v", added)
	}
	checkGone(t, name, nil)
}

func diffNames(before, after []string) []string {
	var added []string
	for _, n := range after {
		if !slices.Contains(before, n) {
			added = append(added, n)
		}
	}
	return added
}

// TestConnChurn opens and closes 1,000 TCP connections through the
// appliance; its goroutine count must return to where it was.
func TestConnChurn(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	addr := fmt.Sprintf("198.18.0.2:%d", echoPort)
	churn := func(n int) churnResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		out, err := runHelper(ctx, tp.cont, "tcpconns", "-addr", addr, "-n", fmt.Sprint(n), "-par", "20", "-total", "80s")
		if err != nil {
			t.Fatal(err)
		}
		var r churnResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("tcpconns output %q: %v", out, err)
		}
		return r
	}
	status := func() testbed.Status {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := tp.app.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Warm up so lazily started goroutines are in the baseline.
	if r := churn(20); r.Failed > 0 {
		t.Fatalf("warm-up: %+v", r)
	}
	time.Sleep(500 * time.Millisecond)
	base := status()
	r := churn(1000)
	t.Logf("1000 connections: %+v; goroutines before %d", r, base.Goroutines)
	if r.OK != 1000 {
		t.Errorf("connections ok = %d, want 1000 (failed %d, first error %q)", r.OK, r.Failed, r.FirstErr)
	}
	const margin = 10
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := status()
		if s.Goroutines <= base.Goroutines+margin {
			t.Logf("goroutines back to %d (flows %d)", s.Goroutines, s.FlowCount())
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines = %d 10s after 1000 connections closed, want <= %d (baseline %d + %d); flows %d",
				s.Goroutines, base.Goroutines+margin, base.Goroutines, margin, s.FlowCount())
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestBadFlag(t *testing.T) {
	requireRoot(t)
	host := newNetns(t, "ith")
	cont := newNetns(t, "itc")
	noCaps := []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all", "--reuid=65534", "--regid=65534", "--clear-groups", applianceBin}
	for _, tc := range []struct {
		args    []string
		mention string
	}{
		{[]string{applianceBin, "run", "--mtu", "abc"}, "mtu"},
		{[]string{applianceBin, "run", "--no-such-flag"}, "no-such-flag"},
		{[]string{applianceBin, "run", "--netns", "/run/netns/no-such-ns-" + cont.Name}, "no-such-ns"},
		{[]string{applianceBin, "run", "--cidr", "10.0.0.0/30", "--netns", cont.Path}, "cidr"},
		{[]string{applianceBin, "run", "--cc", "nosuchcc", "--netns", cont.Path}, "nosuchcc"},
		{[]string{applianceBin, "run", "-p", "8080", "--netns", cont.Path}, "publish"},
		{append(noCaps, "run", "--netns", cont.Path), "CAP_NET_ADMIN"},
	} {
		args := tc.args
		t.Run(strings.Join(args[1:], " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := host.Command(ctx, args[0], args[1:]...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Errorf("appliance %s: exit code %d (%v), want 2", strings.Join(args, " "), code, err)
			}
			msg := strings.TrimSpace(stderr.String())
			if msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("appliance %s: stderr = %q, want one line", strings.Join(args, " "), msg)
			}
			if !strings.Contains(msg, tc.mention) {
				t.Errorf("appliance %s: stderr = %q, want it to name %q", strings.Join(args, " "), msg, tc.mention)
			}
			if out, err := cont.Run(ctx, "ip", "link", "show", "tun0"); err == nil {
				t.Errorf("a rejected run left tun0 in the namespace:\n%s", out)
			}
			if stdout.Len() > 0 {
				t.Errorf("appliance %s: stdout = %q, want none", strings.Join(args, " "), stdout.String())
			}
		})
	}
}

// TestNamespaceGone deletes the container's namespace under a running
// appliance: it must notice, say so, and exit non-zero without spinning.
func TestNamespaceGone(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	if err := tp.cont.Close(); err != nil {
		t.Fatal(err)
	}
	code, err := tp.app.Proc.Wait(10 * time.Second)
	if err != nil {
		t.Fatalf("appliance still running 10s after its namespace was deleted: %v\nstderr: %s", err, tail(tp.app.Stderr(), 2000))
	}
	if code == 0 {
		t.Errorf("exit code = 0 after the namespace died, want non-zero")
	}
	if !strings.Contains(tp.app.Stderr(), "went away") {
		t.Errorf("stderr does not say the tun device went away:\n%s", tail(tp.app.Stderr(), 2000))
	}
	checkGone(t, tp.app.Name, nil)
}

// TestAttachModes covers the other ways in: attaching by --pid, and a plain
// TUN without virtio-net offloads (the github.com/songgao/water path) at
// MTU 1500, where netstack segments everything itself.
func TestAttachModes(t *testing.T) {
	t.Run("pid", func(t *testing.T) {
		tp := newTopo(t, topoOpts{noAppliance: true})
		sleeper, err := tp.cont.Start("sleep", "120")
		if err != nil {
			t.Fatal(err)
		}
		defer sleeper.Kill()
		tp.app = startAppliance(t, tp.host, "--pid", fmt.Sprint(sleeper.Pid()), "--dns-upstream", "198.18.0.2")
		url := fmt.Sprintf("http://198.18.0.2:%d/", httpPort)
		if out := run(t, tp.cont, 20*time.Second, "curl", "-sS", "--max-time", "10", url); !strings.HasPrefix(out, "remote=198.18.0.1:") {
			t.Errorf("curl %s through --pid attach = %q", url, out)
		}
	})
	t.Run("no-offload", func(t *testing.T) {
		tp := newTopo(t, topoOpts{iperf: true, args: []string{"--no-offload", "--mtu", "1500"}})
		st, err := tp.app.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Offloads != "none" {
			t.Errorf("status offloads = %q with --no-offload, want none", st.Offloads)
		}
		run(t, tp.cont, 10*time.Second, "ping", "-c", "2", "-W", "2", "198.18.0.2")
		for _, extra := range [][]string{nil, {"-R"}} {
			args := append([]string{"-c", "198.18.0.2", "-p", fmt.Sprint(iperfPort), "-t", "2", "-J"}, extra...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := tp.cont.Command(ctx, "iperf3", args...).Output()
			cancel()
			var r iperfResult
			if jerr := json.Unmarshal(out, &r); jerr != nil || err != nil || r.Error != "" {
				t.Fatalf("iperf3 %v without offloads: %v %v %s", extra, err, jerr, r.Error)
			}
			// A broken receive path still lets a few KB through in
			// retransmissions; a working one moves hundreds of MB.
			if got := r.End.SumReceived.Bytes; got < 1<<20 {
				t.Errorf("iperf3 %v without offloads: %d bytes received in 2s, want >= 1 MiB", extra, got)
			}
			t.Logf("iperf3 %v without offloads: %.2f Gbit/s", extra, r.End.SumReceived.BitsPerSecond/1e9)
		}
	})
}

// TestPcap: --pcap writes the container link's packets where tcpdump reads
// them, the handshake included.
func TestPcap(t *testing.T) {
	file := filepath.Join(t.TempDir(), "link.pcap")
	tp := newTopo(t, topoOpts{args: []string{"--pcap", file}})
	url := fmt.Sprintf("http://198.18.0.2:%d/", httpPort)
	run(t, tp.cont, 20*time.Second, "curl", "-sS", "--max-time", "10", url)
	if code, err := tp.app.Stop(); err != nil || code != 0 {
		t.Fatalf("stop: %d, %v", code, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "tcpdump", "-nn", "-r", file, "tcp port 8000 and tcp[tcpflags] & tcp-syn != 0").CombinedOutput()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v\n%s", file, err, out)
	}
	syn := regexp.MustCompile(`10\.0\.2\.100\.\d+ > 198\.18\.0\.2\.8000: Flags \[S\]`)
	synack := regexp.MustCompile(`198\.18\.0\.2\.8000 > 10\.0\.2\.100\.\d+: Flags \[S\.\]`)
	if !syn.Match(out) || !synack.Match(out) {
		t.Errorf("pcap lacks the SYN and SYN-ACK of the curl connection:\n%s", out)
	}
}

// TestMetrics: --metrics serves Prometheus text with netstack's, the link's
// and the relay's counters, and they move with traffic.
func TestMetrics(t *testing.T) {
	tp := newTopo(t, topoOpts{args: []string{"--metrics", "127.0.0.1:9469"}})
	url := fmt.Sprintf("http://198.18.0.2:%d/", httpPort)
	run(t, tp.cont, 20*time.Second, "curl", "-sS", "--max-time", "10", url)
	out := run(t, tp.host, 10*time.Second, "curl", "-sS", "--max-time", "5", "http://127.0.0.1:9469/metrics")
	for _, re := range []string{
		`(?m)^appliance_link_rx_packets_total [1-9]`,
		`(?m)^appliance_gateway_tcp_flows_opened_total [1-9]`,
		`(?m)^appliance_netstack_tcp_valid_segments_received_total [1-9]`,
		`(?m)^appliance_flows_tcp \d`,
		`(?m)^go_goroutines \d`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("metrics lack %s", re)
		}
	}
}

// TestStats: `appliance stats` prints nstat-style lines whose counters
// follow the traffic, and filters by glob.
func TestStats(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	run(t, tp.cont, 10*time.Second, "ping", "-c", "3", "-W", "2", "198.18.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := tp.app.Ctl(ctx, "stats")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^#appliance$`, `(?m)^gateway_pings_replied\s+3$`, `(?m)^link_rx_packets\s+[1-9]`, `(?m)^netstack_ip_packets_received\s+[1-9]`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("appliance stats lacks %s:\n%s", re, out)
		}
	}
	out, err = tp.app.Ctl(ctx, "stats", "gateway_ping*")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n")[1:] {
		if !strings.HasPrefix(line, "gateway_ping") {
			t.Errorf("stats 'gateway_ping*' printed %q", line)
		}
	}
}

// TestSS: `appliance ss` lists a held connection with both address pairs,
// and -i/-m add the TCP internals and buffer sizes.
func TestSS(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	hold, err := tp.cont.Start("bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/198.18.0.2/%d; sleep 20", echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Kill()
	row := regexp.MustCompile(fmt.Sprintf(`(?m)^tcp\s+ESTAB\s+\d+\s+\d+\s+198\.18\.0\.2:%d\s+10\.0\.2\.100:\d+\s+198\.18\.0\.1:\d+ -> 198\.18\.0\.2:%d$`, echoPort, echoPort))
	var out []byte
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err = tp.app.Ctl(ctx, "ss", "-tnmi")
		cancel()
		if err == nil && row.Match(out) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !row.Match(out) {
		t.Fatalf("appliance ss -tnmi does not list the held connection with its host pair:\n%s", out)
	}
	for _, re := range []string{`(?m)^\t skmem:\(r\d+,rb[1-9]\d*,t\d+,tb[1-9]\d*,f\d+,w\d+,o\d+,bl\d+,d\d+\)$`, `(?m)^\t cubic wscale:\d+,\d+ rto:\d+ rtt:[\d.]+/[\d.]+ mss:\d+ cwnd:[1-9]\d*`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("appliance ss -tnmi lacks %s:\n%s", re, out)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := tp.app.Ctl(ctx, "ss", "-u"); err != nil || strings.Contains(string(out), "tcp ") {
		t.Errorf("appliance ss -u listed TCP or failed (%v):\n%s", err, out)
	}
}

// TestSockstat: `appliance sockstat` counts held connections and follows
// them when they close.
func TestSockstat(t *testing.T) {
	tp := newTopo(t, topoOpts{})
	script := ""
	for fd := 3; fd < 8; fd++ {
		script += fmt.Sprintf("exec %d<>/dev/tcp/198.18.0.2/%d; ", fd, echoPort)
	}
	hold, err := tp.cont.Start("bash", "-c", script+"sleep 30")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Kill()
	waitSockstat := func(re string) {
		t.Helper()
		var out []byte
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err = tp.app.Ctl(ctx, "sockstat")
			cancel()
			if err == nil && regexp.MustCompile(re).Match(out) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("appliance sockstat never matched %s:\n%s", re, out)
	}
	waitSockstat(`(?m)^sockets: used 5\nTCP: inuse 5 orphan 0 tw 0 alloc 5 mem \d+\nUDP: inuse 0 mem 0$`)
	hold.Kill()
	waitSockstat(`(?m)^TCP: inuse 0 orphan 0 tw \d+ alloc 0 mem 0$`)
}

// TestCustomLayout: --cidr, --no-ipv6, --tun and --cc change what the
// README says they change.
func TestCustomLayout(t *testing.T) {
	tp := newTopo(t, topoOpts{args: []string{"--cidr", "192.168.77.0/24", "--no-ipv6", "--tun", "eth7", "--cc", "reno"}})
	out := run(t, tp.cont, 5*time.Second, "ip", "addr", "show", "eth7")
	if !strings.Contains(out, "inet 192.168.77.100/24") || strings.Contains(out, "fd00:") {
		t.Errorf("eth7 addresses with --cidr 192.168.77.0/24 --no-ipv6:\n%s", out)
	}
	if out := run(t, tp.cont, 5*time.Second, "ip", "route", "show", "default"); !strings.Contains(out, "via 192.168.77.2 dev eth7") {
		t.Errorf("default route = %q, want via 192.168.77.2 dev eth7", out)
	}
	url := fmt.Sprintf("http://198.18.0.2:%d/", httpPort)
	if out := run(t, tp.cont, 20*time.Second, "curl", "-sS", "--max-time", "10", url); !strings.HasPrefix(out, "remote=198.18.0.1:") {
		t.Errorf("curl through the custom layout = %q", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if out, err := tp.app.Ctl(ctx, "sysctl", "net.ipv4.tcp_congestion_control"); err != nil || strings.TrimSpace(string(out)) != "net.ipv4.tcp_congestion_control = reno" {
		t.Errorf("sysctl after --cc reno = %q, %v", out, err)
	}
}

// TestBench runs the README's measuring command in miniature: the kernel,
// appliance and proxy rows must all come out with numbers (throughput,
// RR latency, CRR rate: through the proxy too, whose relay must pass
// CRR's half-close on).
func TestBench(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, applianceBin, "bench", "--time", "1s", "--rr-time", "500ms", "--mtu", "1500", "--compare", "kernel,proxy")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("appliance bench: %v\n%s", err, out)
	}
	// path MTU up down up/kernel down/kernel p50 p99 CRR CRR/kernel
	for _, path := range []string{"kernel", "appliance", "proxy"} {
		re := regexp.MustCompile(`(?m)^\s*` + path + `\s+1500\s+([0-9.]+)\s+([0-9.]+)\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)\s+[0-9.]+\s+([0-9.]+)\s+[0-9.]+\s*$`)
		m := re.FindSubmatch(out)
		if m == nil {
			t.Fatalf("bench output has no %s row with every figure:\n%s", path, out)
		}
		for i, what := range []string{"upload", "download", "RR p50", "CRR"} {
			if v, _ := strconv.ParseFloat(string(m[i+1]), 64); v <= 0 {
				t.Errorf("bench %s row: %s is %s: %s", path, what, m[i+1], m[0])
			}
		}
	}

	// --repeat: every path measured in each round, the figures their
	// medians.
	cmd = exec.CommandContext(ctx, applianceBin, "bench", "--time", "1s", "--rr-time", "300ms", "--mtu", "1500", "--compare", "kernel", "--repeat", "2", "--json")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("appliance bench --repeat 2: %v\n%s", err, out)
	}
	var rows []struct {
		Path   string
		UpGbps float64 `json:"up_gbps"`
		Rounds []struct {
			UpGbps float64 `json:"up_gbps"`
		}
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("bench --repeat --json: %v\n%s", err, out)
	}
	if len(rows) != 2 {
		t.Fatalf("bench --repeat: %d rows, want kernel and appliance:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if len(r.Rounds) != 2 || r.Rounds[0].UpGbps == 0 || r.Rounds[1].UpGbps == 0 {
			t.Errorf("%s: rounds %+v, want 2 that moved data", r.Path, r.Rounds)
			continue
		}
		lo, hi := min(r.Rounds[0].UpGbps, r.Rounds[1].UpGbps), max(r.Rounds[0].UpGbps, r.Rounds[1].UpGbps)
		if r.UpGbps != (lo+hi)/2 {
			t.Errorf("%s: up %v, want the median of its rounds %v and %v", r.Path, r.UpGbps, lo, hi)
		}
	}
}

// TestBenchCCMatrix runs the README's congestion-control matrix in
// miniature: for each cell a kernel run (router mode) and a netstack run
// (gateway mode) that both moved data, two rounds, and each round's pair
// seeded alike (--seed, default 1: round r uses seed r) so that both
// meet the same loss realization; --seed 0 leaves them unseeded.
func TestBenchCCMatrix(t *testing.T) {
	requireRoot(t)
	type run struct {
		Mbps    float64
		Lost    uint64
		Seed    uint64
		Error   string
		Retried string
	}
	type row struct {
		Stack string
		CC    string
		Loss  float64 `json:"loss_pct"`
		run
		Rounds []run
	}
	matrix := func(extra ...string) []row {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		args := append([]string{"bench", "--cc-matrix", "--cc-list", "reno", "--loss-list", "0,5", "--time", "2s", "--json"}, extra...)
		out, err := exec.CommandContext(ctx, applianceBin, args...).Output()
		if err != nil {
			t.Fatalf("appliance %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		var rows []row
		if err := json.Unmarshal(out, &rows); err != nil {
			t.Fatalf("bench --cc-matrix --json: %v\n%s", err, out)
		}
		if len(rows) != 4 {
			t.Fatalf("bench --cc-matrix: %d rows, want kernel and appliance at loss 0 and 5%%:\n%s", len(rows), out)
		}
		return rows
	}
	for i, r := range matrix("--repeat", "2") {
		if want := []string{"kernel", "appliance"}[i%2]; r.Stack != want || r.CC != "reno" {
			t.Errorf("row %d: %s %s, want %s reno", i, r.Stack, r.CC, want)
		}
		if len(r.Rounds) != 2 {
			t.Errorf("%s loss %v%%: %d rounds, want 2", r.Stack, r.Loss, len(r.Rounds))
			continue
		}
		for j, x := range r.Rounds {
			if x.Retried != "" {
				t.Logf("%s loss %v%% round %d measured nothing the first time (%s); the second run: %.1f Mbit/s", r.Stack, r.Loss, j+1, x.Retried, x.Mbps)
			}
			if x.Mbps <= 0 {
				t.Errorf("%s loss %v%% round %d moved nothing: %s", r.Stack, r.Loss, j+1, x.Error)
			}
			if x.Seed != uint64(1+j) {
				t.Errorf("%s loss %v%% round %d: seed %d, want %d", r.Stack, r.Loss, j+1, x.Seed, 1+j)
			}
		}
		if r.Loss == 5 && r.Rounds[0].Lost+r.Rounds[1].Lost == 0 {
			t.Errorf("%s at loss 5%%: the emulation lost nothing in two runs", r.Stack)
		}
	}
	for _, r := range matrix("--seed", "0") {
		if r.Retried != "" {
			t.Logf("--seed 0: %s loss %v%% measured nothing the first time (%s); the second run: %.1f Mbit/s", r.Stack, r.Loss, r.Retried, r.Mbps)
		}
		if r.Seed != 0 || r.Mbps <= 0 {
			t.Errorf("--seed 0: %s loss %v%%: seed %d, %.1f Mbit/s (error %q); want unseeded, data moved", r.Stack, r.Loss, r.Seed, r.Mbps, r.Error)
		}
	}
}
