//go:build integration

package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
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
// runs that end normally, and pings over both families. The appliance must still answer its control socket
// afterwards, exit 0 on SIGTERM with no packet buffer leaked, and have
// printed no data race and no panic. Two bugs this mix found (session
// 12): a data race on the gateway's NIC ID between NewGateway and the
// link's reader, and the delayed-ACK timer's panic on a cleaned-up
// endpoint (gVisor patch 0045; netstack.TestDelayedAckTimerAfterReset
// covers that one deterministically).
func TestStressMisbehavingPeers(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	raceBin := t.TempDir() + "/appliance-race"
	if err := testbed.BuildRace(ctx, "./cmd/appliance", raceBin); err != nil {
		t.Fatalf("build the appliance with -race: %v", err)
	}
	tp := newTopo(t, topoOpts{iperf: true, noAppliance: true})
	const netperfPort = 12865
	srv, err := tp.srv.Start(applianceBin, "netperf", "serve", fmt.Sprintf("%s:%d", srvV4.Addr(), netperfPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	if err := tp.srv.WaitListen("tcp", netperfPort, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A second iperf3 server, so that uploads and downloads both run
	// (one iperf3 server takes one test at a time).
	iperf2, err := tp.srv.Start("iperf3", "-s", "-p", fmt.Sprint(iperfPort+1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(iperf2.Kill)
	if err := tp.srv.WaitListen("tcp", iperfPort+1, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	app := startApplianceBin(t, raceBin, tp.host, "--netns", tp.cont.Path, "--dns-upstream", srvV4.Addr().String())

	const mix = 20 * time.Second
	end := time.Now().Add(mix)
	netperfAddr := fmt.Sprintf("%s:%d", srvV4.Addr(), netperfPort)
	// loop runs cmd (a fresh command each time, killed after at most
	// limit, or at a random point before it when kill is set) until the
	// mix ends, and counts the runs.
	var wg sync.WaitGroup
	var mu sync.Mutex
	runs := map[string]int{}
	loop := func(name string, kill bool, limit time.Duration, cmd func(context.Context) *exec.Cmd) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 1000 && time.Now().Before(end) && ctx.Err() == nil; n++ {
				d := limit
				if kill {
					d = time.Duration(200+rand.IntN(1300)) * time.Millisecond
				}
				rctx, rcancel := context.WithTimeout(ctx, d)
				_ = cmd(rctx).Run() // killed runs fail: that is the point
				rcancel()
				mu.Lock()
				runs[name]++
				mu.Unlock()
			}
		}()
	}
	for i := range 2 {
		loop(fmt.Sprintf("crr%d", i), false, 10*time.Second, func(c context.Context) *exec.Cmd {
			return tp.cont.Command(c, applianceBin, "netperf", "crr", netperfAddr, "1s")
		})
	}
	loop("rr", false, 10*time.Second, func(c context.Context) *exec.Cmd {
		return tp.cont.Command(c, applianceBin, "netperf", "rr", netperfAddr, "300ms")
	})
	loop("rr-killed", true, 0, func(c context.Context) *exec.Cmd {
		return tp.cont.Command(c, applianceBin, "netperf", "rr", netperfAddr, "3s")
	})
	loop("hold-killed", true, 0, func(c context.Context) *exec.Cmd {
		return tp.cont.Command(c, applianceBin, "netperf", "hold", "-n", "200", netperfAddr)
	})
	for i, dir := range []string{"up", "down"} {
		loop("iperf3-"+dir+"-killed", true, 0, func(c context.Context) *exec.Cmd {
			args := []string{"-c", srvV4.Addr().String(), "-p", fmt.Sprint(iperfPort + i), "-t", "3"}
			if dir == "down" {
				args = append(args, "-R")
			}
			return tp.cont.Command(c, "iperf3", args...)
		})
	}
	for _, dst := range []string{srvV4.Addr().String(), srvV6.Addr().String()} {
		loop("ping "+dst, false, 5*time.Second, func(c context.Context) *exec.Cmd {
			return tp.cont.Command(c, "ping", "-n", "-q", "-c", "20", "-i", "0.01", "-W", "1", dst)
		})
	}
	wg.Wait()
	t.Logf("runs in %v: %v", mix, runs)
	if ctx.Err() != nil {
		t.Fatal("the mix outlived the test's deadline")
	}

	select {
	case <-app.Done():
		t.Fatalf("the appliance died during the mix:\n%s", tail(app.Stderr(), 6000))
	default:
	}
	// It still serves: its control socket and a fresh connection.
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	if _, err := app.Ctl(sctx, "status"); err != nil {
		t.Errorf("status after the mix: %v", err)
	}
	if out, err := tp.cont.Command(sctx, applianceBin, "netperf", "rr", netperfAddr, "300ms").CombinedOutput(); err != nil {
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
