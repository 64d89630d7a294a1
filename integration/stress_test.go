//go:build integration

package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// TestStressMisbehavingPeers runs an appliance built with the race
// detector through a mix of traffic whose peers misbehave, for a bounded
// time: back-to-back connections (CRR), request/response clients and
// iperf3 transfers both ways killed at random points (so the appliance
// meets resets, half-open connections and abandoned queues), bursts of
// held connections killed before they close, short request/response
// runs that end normally, and pings over both families; in gateway mode
// also clients of a published TCP and UDP port killed the same way, DNS
// over UDP and TCP and killed UDP transfers. The appliance must still
// answer its control socket afterwards, carry a fresh exchange, exit 0
// on SIGTERM with no packet buffer leaked, and have printed no data race
// and no panic. Two bugs this mix found (session 12): a data race on the
// gateway's NIC ID between NewGateway and the link's reader, and the
// delayed-ACK timer's panic on a cleaned-up endpoint (gVisor patch 0045;
// netstack.TestDelayedAckTimerAfterReset covers that one
// deterministically).
func TestStressMisbehavingPeers(t *testing.T) {
	requireRoot(t)
	bctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	raceBin := t.TempDir() + "/appliance-race"
	if err := testbed.BuildRace(bctx, "./cmd/appliance", raceBin); err != nil {
		t.Fatalf("build the appliance with -race: %v", err)
	}
	const netperfPort = 12865

	t.Run("gateway", func(t *testing.T) {
		tp := newTopo(t, topoOpts{iperf: true, noAppliance: true})
		netperfAddr := startNetperfServer(t, tp.srv, srvV4.Addr().String(), netperfPort)
		startIperf3Port(t, tp.srv, iperfPort+1)
		startIperf3Port(t, tp.srv, iperfPort+2)
		app := startApplianceBin(t, raceBin, tp.host, "--netns", tp.cont.Path, "--dns-upstream", srvV4.Addr().String(),
			"-p", "8080:80", "-p", "8081:81/udp")
		startHelper(t, tp.cont, "serve", "-http", ":80", "-udpwho", ":81")

		m := newMix(t)
		m.common(tp.cont, netperfAddr, srvV4.Addr().String(), srvV6.Addr().String(), iperfPort, iperfPort+1)
		m.loop("iperf3-udp-killed", true, 0, func(c context.Context) *exec.Cmd {
			return tp.cont.Command(c, "iperf3", "-u", "-b", "200M", "-c", srvV4.Addr().String(), "-p", fmt.Sprint(iperfPort+2), "-t", "3")
		})
		m.loop("publish-tcp-killed", true, 0, func(c context.Context) *exec.Cmd {
			return tp.srv.Command(c, applianceBin, "netperf", "hold", "-n", "50", "198.18.0.1:8080")
		})
		m.loop("publish-http", false, 10*time.Second, func(c context.Context) *exec.Cmd {
			return tp.srv.Command(c, "curl", "-sS", "--max-time", "5", "http://198.18.0.1:8080/")
		})
		m.loop("publish-udp", false, 10*time.Second, func(c context.Context) *exec.Cmd {
			return helperCommand(c, tp.srv, "udpecho", "-addr", "198.18.0.1:8081", "-msg", "who")
		})
		for _, proto := range []string{"+notcp", "+tcp"} {
			m.loop("dns "+proto, false, 5*time.Second, func(c context.Context) *exec.Cmd {
				return tp.cont.Command(c, "dig", "@"+dnsV4, dnsName, "A", "+short", "+time=1", "+tries=1", proto)
			})
		}
		m.wait()
		m.checkAfter(app, tp.cont, netperfAddr)
	})

	t.Run("router", func(t *testing.T) {
		a, b, host := newNetns(t, "itsa"), newNetns(t, "itsb"), newNetns(t, "itsh")
		// The router gives b its address: the servers come after it.
		app := startRouterBin(t, raceBin, host, a, b)
		netperfAddr := startNetperfServer(t, b, rtB4, netperfPort)
		startIperf3Port(t, b, iperfPort)
		startIperf3Port(t, b, iperfPort+1)
		m := newMix(t)
		m.common(a, netperfAddr, rtB4, rtB6, iperfPort, iperfPort+1)
		m.wait()
		m.checkAfter(app, a, netperfAddr)
	})
}

// mix runs commands in loops until its end, and counts the runs.
type mix struct {
	t    *testing.T
	ctx  context.Context
	end  time.Time
	wg   sync.WaitGroup
	mu   sync.Mutex
	runs map[string]int
}

// mixTime is how long a mix runs.
const mixTime = 20 * time.Second

func newMix(t *testing.T) *mix {
	ctx, cancel := context.WithTimeout(context.Background(), mixTime+time.Minute)
	t.Cleanup(cancel)
	return &mix{t: t, ctx: ctx, end: time.Now().Add(mixTime), runs: map[string]int{}}
}

// loop runs cmd (a fresh command each time, killed after limit, or at a
// random point from 0.2 to 1.5 s when kill is set) until the mix ends,
// at most 1000 times.
func (m *mix) loop(name string, kill bool, limit time.Duration, cmd func(context.Context) *exec.Cmd) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for n := 0; n < 1000 && time.Now().Before(m.end) && m.ctx.Err() == nil; n++ {
			d := limit
			if kill {
				d = time.Duration(200+rand.IntN(1300)) * time.Millisecond
			}
			rctx, rcancel := context.WithTimeout(m.ctx, d)
			_ = cmd(rctx).Run() // killed runs fail: that is the point
			rcancel()
			m.mu.Lock()
			m.runs[name]++
			m.mu.Unlock()
		}
	}()
}

// common adds the loops both modes run from the client namespace cl:
// CRR, RR (whole and killed), held connections killed, iperf3 up and
// down killed (to the servers on the two ports at v4), pings to v4 and v6.
func (m *mix) common(cl *testbed.Netns, netperfAddr, v4, v6 string, upPort, downPort int) {
	for i := range 2 {
		m.loop(fmt.Sprintf("crr%d", i), false, 10*time.Second, func(c context.Context) *exec.Cmd {
			return cl.Command(c, applianceBin, "netperf", "crr", netperfAddr, "1s")
		})
	}
	m.loop("rr", false, 10*time.Second, func(c context.Context) *exec.Cmd {
		return cl.Command(c, applianceBin, "netperf", "rr", netperfAddr, "300ms")
	})
	m.loop("rr-killed", true, 0, func(c context.Context) *exec.Cmd {
		return cl.Command(c, applianceBin, "netperf", "rr", netperfAddr, "3s")
	})
	m.loop("hold-killed", true, 0, func(c context.Context) *exec.Cmd {
		return cl.Command(c, applianceBin, "netperf", "hold", "-n", "200", netperfAddr)
	})
	for _, dir := range []struct {
		name  string
		port  int
		extra []string
	}{{"up", upPort, nil}, {"down", downPort, []string{"-R"}}} {
		m.loop("iperf3-"+dir.name+"-killed", true, 0, func(c context.Context) *exec.Cmd {
			return cl.Command(c, "iperf3", append([]string{"-c", v4, "-p", fmt.Sprint(dir.port), "-t", "3"}, dir.extra...)...)
		})
	}
	for _, dst := range []string{v4, v6} {
		m.loop("ping "+dst, false, 5*time.Second, func(c context.Context) *exec.Cmd {
			return cl.Command(c, "ping", "-n", "-q", "-c", "20", "-i", "0.01", "-W", "1", dst)
		})
	}
}

// wait waits for every loop and logs the runs.
func (m *mix) wait() {
	m.wg.Wait()
	m.t.Logf("runs in %v: %v", mixTime, m.runs)
	if m.ctx.Err() != nil {
		m.t.Fatal("the mix outlived its deadline")
	}
}

// checkAfter checks the appliance after a mix: alive, answering its
// control socket and a fresh RR run from cl, exiting 0 on SIGTERM with
// no leak, no data race and no panic printed.
func (m *mix) checkAfter(app *testbed.Appliance, cl *testbed.Netns, netperfAddr string) {
	t := m.t
	select {
	case <-app.Done():
		t.Fatalf("the appliance died during the mix:\n%s", tail(app.Stderr(), 6000))
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := app.Ctl(ctx, "status"); err != nil {
		t.Errorf("status after the mix: %v", err)
	}
	if out, err := cl.Command(ctx, applianceBin, "netperf", "rr", netperfAddr, "300ms").CombinedOutput(); err != nil {
		t.Errorf("rr after the mix: %v: %s", err, out)
	}
	code, err := app.Stop()
	stderr := app.Stderr()
	checkLeakExit(t, code, stderr)
	if err != nil || code != 0 {
		t.Errorf("SIGTERM after the mix: exit %d, %v", code, err)
	}
	for _, bad := range []string{"WARNING: DATA RACE", "panic:"} {
		if i := strings.Index(stderr, bad); i >= 0 {
			t.Errorf("the appliance printed %q:\n%s", bad, stderr[i:min(len(stderr), i+6000)])
		}
	}
}

// startNetperfServer runs `appliance netperf serve HOST:PORT` in ns until
// the test ends and returns the address.
func startNetperfServer(t *testing.T, ns *testbed.Netns, host string, port int) string {
	t.Helper()
	addr := net.JoinHostPort(host, fmt.Sprint(port))
	p, err := ns.Start(applianceBin, "netperf", "serve", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if err := ns.WaitListen("tcp", port, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return addr
}
