//go:build integration

package integration

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nsappliance/appliance/internal/leakcheck"
	"github.com/nsappliance/appliance/internal/testbed"
)

var (
	// applianceBin is the binary under test, built once by TestMain (or
	// taken from $APPLIANCE_BIN).
	applianceBin string
	buildErr     error
	// selfBin is this test binary, re-run inside namespaces as a helper.
	selfBin string
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain(os.Args[1:]))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse()
	// Every appliance the tests start tracks its packet buffers and exits
	// with leakcheck.ExitCode if one is left when it stops.
	// APPLIANCE_LEAK_CHECK=0 in the environment turns it off.
	if _, ok := os.LookupEnv(leakcheck.Env); !ok {
		os.Setenv(leakcheck.Env, "1")
	}
	var err error
	if selfBin, err = os.Executable(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	if os.Geteuid() == 0 {
		if p := os.Getenv("APPLIANCE_BIN"); p != "" {
			applianceBin = p
		} else {
			dir, err := os.MkdirTemp("", "appliance-it-")
			if err != nil {
				fmt.Fprintln(os.Stderr, "integration:", err)
				return 1
			}
			defer os.RemoveAll(dir)
			applianceBin, buildErr = testbed.BuildAppliance(dir)
		}
	}
	return m.Run()
}

// requireRoot skips loudly without root and fails if the binary did not
// build.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if buildErr != nil {
		t.Fatalf("build appliance: %v", buildErr)
	}
}

// Addresses of the topology. The container side is the appliance's default
// layout (CLI.md).
var (
	hostV4 = netip.MustParsePrefix("198.18.0.1/24")
	srvV4  = netip.MustParsePrefix("198.18.0.2/24")
	hostV6 = netip.MustParsePrefix("fd00:198:18::1/64")
	srvV6  = netip.MustParsePrefix("fd00:198:18::2/64")
)

const (
	contV4 = "10.0.2.100"
	gwV4   = "10.0.2.2"
	dnsV4  = "10.0.2.3"
	contV6 = "fd00:0:0:2::100"
	gwV6   = "fd00:0:0:2::2"
	dnsV6  = "fd00:0:0:2::3"

	httpPort  = 8000
	echoPort  = 7
	iperfPort = 5201
)

// topo is one test's world: CONT (the appliance's tun0), HOST (the
// appliance) and SRV (servers), with a veth HOST<->SRV and no other links.
type topo struct {
	t                *testing.T
	cont, host, srv  *testbed.Netns
	app              *testbed.Appliance
	servers, iperf3s *testbed.Proc
}

type topoOpts struct {
	// args are extra `appliance run` flags.
	args []string
	// iperf starts an iperf3 server in SRV.
	iperf bool
	// noAppliance leaves starting the appliance to the test.
	noAppliance bool
}

func newTopo(t *testing.T, o topoOpts) *topo {
	t.Helper()
	requireRoot(t)
	tp := &topo{t: t}
	tp.cont = newNetns(t, "itc")
	tp.host = newNetns(t, "ith")
	tp.srv = newNetns(t, "its")
	if _, err := testbed.Veth(tp.host, tp.srv, []netip.Prefix{hostV4, hostV6}, []netip.Prefix{srvV4, srvV6}); err != nil {
		t.Fatal(err)
	}
	tp.servers = startHelper(t, tp.srv, "serve",
		"-http", fmt.Sprintf(":%d", httpPort),
		"-tcpecho", fmt.Sprintf(":%d", echoPort),
		"-udpecho", fmt.Sprintf(":%d", echoPort),
		"-dns", ":53")
	if o.iperf {
		tp.iperf3s = startIperf3(t, tp.srv)
	}
	if !o.noAppliance {
		tp.app = startAppliance(t, tp.host, append([]string{"--netns", tp.cont.Path, "--dns-upstream", "198.18.0.2"}, o.args...)...)
	}
	return tp
}

// startIperf3 runs an iperf3 server on iperfPort in ns until the test ends.
func startIperf3(t testing.TB, ns *testbed.Netns) *testbed.Proc {
	t.Helper()
	return startIperf3Port(t, ns, iperfPort)
}

// startIperf3Port is startIperf3 on another port (one iperf3 server runs
// one test at a time).
func startIperf3Port(t testing.TB, ns *testbed.Netns, port int) *testbed.Proc {
	t.Helper()
	p, err := ns.Start("iperf3", "-s", "-p", fmt.Sprint(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if err := ns.WaitListen("tcp", port, 5*time.Second); err != nil {
		t.Fatalf("%v\niperf3 stderr: %s", err, p.Stderr())
	}
	return p
}

func newNetns(t testing.TB, prefix string) *testbed.Netns {
	t.Helper()
	n, err := testbed.NewNetns(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("remove netns: %v", err)
		}
	})
	return n
}

// startAppliance starts the appliance in host and stops it at cleanup,
// logging its stderr if the test failed.
func startAppliance(t *testing.T, host *testbed.Netns, args ...string) *testbed.Appliance {
	t.Helper()
	return startApplianceBin(t, applianceBin, host, args...)
}

// startApplianceBin is startAppliance with another build of the appliance.
func startApplianceBin(t *testing.T, bin string, host *testbed.Netns, args ...string) *testbed.Appliance {
	t.Helper()
	a, err := testbed.StartAppliance(bin, host, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-a.Done():
		default:
			// TestSIGTERM* check the exit strictly; elsewhere a bad
			// shutdown is only logged so it does not mask what the test
			// is about.
			code, err := a.Stop()
			checkLeakExit(t, code, a.Stderr())
			if err != nil || code != 0 {
				t.Logf("stop appliance: exit %d, %v", code, firstLine(err))
			}
		}
		a.Kill() // leftovers of the group and a stale socket
		if t.Failed() {
			t.Logf("appliance %s stderr:\n%s", a.Name, tail(a.Stderr(), 4000))
		}
	})
	return a
}

// checkLeakExit fails the test if the appliance exited reporting leaked
// packet buffers.
func checkLeakExit(t testing.TB, code int, stderr string) {
	t.Helper()
	if code == leakcheck.ExitCode || strings.Contains(stderr, "leak check failed") {
		t.Errorf("appliance leaked packet buffers (exit %d):\n%s", code, tail(stderr, 4000))
	}
}

// helperCmd starts this test binary as a helper in ns.
func startHelper(t testing.TB, ns *testbed.Netns, mode string, args ...string) *testbed.Proc {
	t.Helper()
	cmd := ns.Command(context.Background(), selfBin, append([]string{"helper", mode}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	p, err := testbed.StartCmd(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Own(p); err != nil {
		p.Kill()
		t.Fatal(err)
	}
	if mode == "serve" {
		if err := p.WaitOutput("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// helperCommand is the command that runs a helper client in ns.
func helperCommand(ctx context.Context, ns *testbed.Netns, mode string, args ...string) *exec.Cmd {
	cmd := ns.Command(ctx, selfBin, append([]string{"helper", mode}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	return cmd
}

// runHelper runs a helper client in ns and returns its stdout.
func runHelper(ctx context.Context, ns *testbed.Netns, mode string, args ...string) (string, error) {
	cmd := helperCommand(ctx, ns, mode, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("helper %s %s in %s: %w: %s", mode, strings.Join(args, " "), ns.Name, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// run runs a command in ns with a timeout and fails the test on error.
func run(t *testing.T, ns *testbed.Netns, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := ns.Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

func firstLine(err error) string {
	if err == nil {
		return "<nil>"
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
