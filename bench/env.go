package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// Addresses of the bench topologies. The server side is 198.18.0.1: on the
// kernel path the far end of the veth, on the others an address on the host
// namespace's lo, reached through the stack under test.
const (
	serverAddr  = "198.18.0.1"
	iperfPort   = 5201
	netperfPort = 12865
)

// env is one path's topology: the client runs in client, the servers in
// server. close removes everything.
type env struct {
	bin  string
	addr string // the address the client dials: serverAddr, routerServerAddr or proxyAddr
	// bind is where the servers listen when not at addr (the proxy path's
	// servers are behind the relay at serverAddr).
	bind   string
	client *testbed.Netns
	server *testbed.Netns
	nss    []*testbed.Netns
	app    *testbed.Appliance
}

func (e *env) close() {
	if e.app != nil {
		_, _ = e.app.Stop()
		e.app.Kill()
	}
	for i := len(e.nss) - 1; i >= 0; i-- {
		_ = e.nss[i].Close() // kills what was started in it
	}
}

func (e *env) netns(role string) (*testbed.Netns, error) {
	n, err := testbed.NewNetns(nsPrefix(role))
	if err != nil {
		return nil, err
	}
	e.nss = append(e.nss, n)
	return n, nil
}

// netnses makes one namespace per role, in order.
func (e *env) netnses(roles ...string) ([]*testbed.Netns, error) {
	out := make([]*testbed.Netns, len(roles))
	for i, r := range roles {
		n, err := e.netns(r)
		if err != nil {
			return nil, err
		}
		out[i] = n
	}
	return out, nil
}

// setup builds path's topology at mtu and starts the servers. The caller
// closes the env even when setup fails.
func setup(ctx context.Context, cfg *Config, path string, mtu int) (*env, error) {
	e := &env{bin: cfg.Bin, addr: serverAddr}
	var err error
	switch {
	case cfg.Mode == "router":
		e.addr = routerServerAddr
		if path == PathKernel {
			err = e.setupKernelRouter(mtu)
		} else {
			err = e.setupRouter(cfg, mtu)
		}
	case path == PathKernel:
		err = e.setupKernel(mtu)
	case path == PathAppliance:
		err = e.setupAppliance(cfg, mtu)
	case path == PathPasta:
		err = e.setupPasta(ctx, mtu)
	case path == PathSlirp4netns:
		err = e.setupSlirp(ctx, mtu)
	case path == PathProxy:
		err = e.setupProxy(mtu)
	default:
		err = fmt.Errorf("unknown path %q", path)
	}
	if err != nil {
		return e, err
	}
	if err := e.startServers(cfg.Series); err != nil {
		return e, err
	}
	if path == PathProxy {
		return e, e.startProxy()
	}
	return e, nil
}

// setupKernel: client <-veth-> server, both ends at mtu.
func (e *env) setupKernel(mtu int) error {
	ns, err := e.netnses("c", "s")
	if err != nil {
		return err
	}
	c, s := ns[0], ns[1]
	if err := vethMTU(c, s, "198.18.0.2/24", serverAddr+"/24", mtu); err != nil {
		return err
	}
	e.client, e.server = c, s
	return nil
}

// vethMTU joins a and b with a veth pair, addrA on a's end and addrB on
// b's, both ends at mtu.
func vethMTU(a, b *testbed.Netns, addrA, addrB string, mtu int) error {
	v, err := testbed.Veth(a, b, []netip.Prefix{netip.MustParsePrefix(addrA)}, []netip.Prefix{netip.MustParsePrefix(addrB)})
	if err != nil {
		return err
	}
	if err := a.SetMTU(v.A, mtu); err != nil {
		return err
	}
	return b.SetMTU(v.B, mtu)
}

// hostWithServerAddr makes the host namespace with serverAddr on lo.
func (e *env) hostWithServerAddr() (*testbed.Netns, error) {
	h, err := e.netns("h")
	if err != nil {
		return nil, err
	}
	if err := h.AddAddr("lo", netip.MustParsePrefix(serverAddr+"/32")); err != nil {
		return nil, err
	}
	return h, nil
}

// hostAndContainer makes the host namespace (hostWithServerAddr) and the
// container's.
func (e *env) hostAndContainer() (h, c *testbed.Netns, err error) {
	if h, err = e.hostWithServerAddr(); err != nil {
		return nil, nil, err
	}
	if c, err = e.netns("c"); err != nil {
		return nil, nil, err
	}
	return h, c, nil
}

// setupAppliance: container -tun(mtu)-> appliance in host -> lo.
func (e *env) setupAppliance(cfg *Config, mtu int) error {
	h, c, err := e.hostAndContainer()
	if err != nil {
		return err
	}
	args := []string{"--netns", c.Path, "--mtu", fmt.Sprint(mtu), "--no-ipv6", "--log-level", "warn"}
	if cfg.CC != "" {
		args = append(args, "--cc", cfg.CC)
	}
	if cfg.Emulate != "" {
		args = append(args, "--emulate", cfg.Emulate)
	}
	a, err := testbed.StartAppliance(cfg.Bin, h, args...)
	if err != nil {
		return err
	}
	e.app, e.client, e.server = a, c, h
	return nil
}

// proxyAddr is the proxy path's relay, the host end of the container's veth.
const proxyAddr = "198.18.2.1"

// setupProxy: container -veth(mtu)-> a userspace TCP relay (`netperf
// proxy`, Proxy) in host -> lo. The container dials proxyAddr, the relay
// dials serverAddr on the same port; the servers listen on serverAddr only.
func (e *env) setupProxy(mtu int) error {
	h, c, err := e.hostAndContainer()
	if err != nil {
		return err
	}
	if err := vethMTU(c, h, "198.18.2.2/24", proxyAddr+"/24", mtu); err != nil {
		return err
	}
	e.client, e.server = c, h
	e.addr, e.bind = proxyAddr, serverAddr
	return nil
}

// startProxy starts the relay for the iperf3 and netperf ports and waits
// until it listens.
func (e *env) startProxy() error {
	var args []string
	for _, port := range []int{iperfPort, netperfPort} {
		args = append(args, fmt.Sprintf("%s:%d=%s:%d", e.addr, port, e.bind, port))
	}
	if _, err := e.server.Start(e.bin, append([]string{"netperf", "proxy"}, args...)...); err != nil {
		return err
	}
	for _, port := range []int{iperfPort, netperfPort} {
		if err := e.server.WaitListenOn("tcp", netip.AddrPortFrom(netip.MustParseAddr(e.addr), uint16(port)), 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// setupPasta: container -tap(mtu)-> pasta in host -> lo. pasta copies the
// addresses of the host's default-route interface into the container, so the
// host gets a veth to a sink namespace and a default route into it (the
// sink has no further links: nothing leaves the test's namespaces).
func (e *env) setupPasta(ctx context.Context, mtu int) error {
	h, err := e.hostWithServerAddr()
	if err != nil {
		return err
	}
	k, err := e.netns("k")
	if err != nil {
		return err
	}
	if _, err := testbed.Veth(h, k, []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")},
		[]netip.Prefix{netip.MustParsePrefix("198.18.1.2/24")}); err != nil {
		return err
	}
	if err := h.IP("route", "add", "default", "via", "198.18.1.2"); err != nil {
		return err
	}
	c, err := e.netns("c")
	if err != nil {
		return err
	}
	// --runas 0: as nobody, pasta cannot enter a namespace made by root.
	if _, err := h.Start("pasta", "-f", "-q", "-4", "--runas", "0", "--config-net", "--netns", c.Path,
		"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--mtu", fmt.Sprint(mtu)); err != nil {
		return err
	}
	e.client, e.server = c, h
	if err := waitDefaultRoute(ctx, c); err != nil {
		return err
	}
	// pasta's --mtu is what it advertises; make sure the link has it.
	out, err := c.Run(ctx, "ip", "-o", "-4", "route", "show", "default")
	if err != nil {
		return err
	}
	f := strings.Fields(string(out))
	if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
		return c.SetMTU(f[i+1], mtu)
	}
	return fmt.Errorf("netns %s: no device in %q", c.Name, out)
}

// setupSlirp: container -tap(mtu)-> slirp4netns in host -> lo.
func (e *env) setupSlirp(ctx context.Context, mtu int) error {
	h, c, err := e.hostAndContainer()
	if err != nil {
		return err
	}
	if _, err := h.Start("slirp4netns", "--configure", fmt.Sprintf("--mtu=%d", mtu),
		"--netns-type=path", c.Path, "tap0"); err != nil {
		return err
	}
	e.client, e.server = c, h
	return waitDefaultRoute(ctx, c)
}

// waitDefaultRoute waits until a helper configured the container.
func waitDefaultRoute(ctx context.Context, c *testbed.Netns) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := c.Run(ctx, "ip", "-4", "route", "show", "default")
		if err == nil && strings.Contains(string(out), "default") {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("netns %s: no default route after 10s", c.Name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startServers starts iperf3 and the RR/CRR server. With series, iperf3
// reports in JSON per Interval, so that a client's --get-server-output
// carries the server's intervals: the receiver's throughput of an upload,
// the sender's RTT of a download.
func (e *env) startServers(series bool) error {
	bind := e.addr
	if e.bind != "" {
		bind = e.bind
	}
	args := []string{"-s", "-B", bind, "-p", fmt.Sprint(iperfPort)}
	if series {
		args = append(args, "-J", "-i", fmt.Sprint(Interval.Seconds()))
	}
	if _, err := e.server.Start("iperf3", args...); err != nil {
		return err
	}
	if _, err := e.server.Start(e.bin, "netperf", "serve", fmt.Sprintf("%s:%d", bind, netperfPort)); err != nil {
		return err
	}
	if err := e.server.WaitListen("tcp", iperfPort, 5*time.Second); err != nil {
		return err
	}
	return e.server.WaitListen("tcp", netperfPort, 5*time.Second)
}

// iperf runs one iperf3 test from the client and returns Gbit/s.
func (e *env) iperf(ctx context.Context, d time.Duration, reverse bool) (float64, error) {
	secs := max(1, int(math.Ceil(d.Seconds())))
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	args := []string{"-c", e.addr, "-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(secs), "-J"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := e.client.Command(ctx, "iperf3", args...).Output()
	g, perr := parseIperf(out)
	if perr != nil && err != nil {
		return 0, fmt.Errorf("%w: %v", err, perr)
	}
	return g, perr
}

// iperfRun runs one iperf3 test from the client like iperf, and records
// it in detail: per-Interval throughput and sender RTT, retransmits, ping's
// RTTs through the same path during the run (the fallback when iperf3
// reports no RTT), and on an emulated appliance path the emulation's drops
// during the run. It returns the Gbit/s and the run, which may be partial
// when err is not nil.
func (e *env) iperfRun(ctx context.Context, cfg *Config, path string, reverse bool) (float64, *Transfer, error) {
	secs := max(1, int(math.Ceil(cfg.Time.Seconds())))
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	args := []string{"-c", e.addr, "-p", fmt.Sprint(iperfPort), "-t", fmt.Sprint(secs), "-J",
		"-i", fmt.Sprint(Interval.Seconds()), "--get-server-output"}
	if reverse {
		args = append(args, "-R")
	}
	if cc := cfg.iperfCC(path); cc != "" {
		args = append(args, "-C", cc)
	}
	var errs []error
	var before map[string]uint64
	emulated := path == PathAppliance && cfg.Emulate != "" && e.app != nil
	if emulated {
		var err error
		if before, err = emulationCounters(ctx, e.app.Name); err != nil {
			errs = append(errs, err)
			emulated = false
		}
	}
	var nsBefore map[string]uint64
	if path == PathAppliance && e.app != nil {
		nsBefore, _ = netstackCounters(ctx, e.app.Name)
	}
	// 20 pings 50 ms apart, from half a second into the transfer: the RTT
	// under load, as the transfer's packets see it.
	pings := make(chan []byte, 1)
	go func() {
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			pings <- nil
			return
		}
		out, _ := e.client.Command(ctx, "ping", "-n", "-c", "20", "-i", "0.05", "-W", "2", e.addr).Output()
		pings <- out
	}()
	out, err := e.client.Command(ctx, "iperf3", args...).Output()
	ping := parsePing(<-pings)
	g, perr := parseIperf(out)
	if perr != nil {
		if err != nil {
			perr = fmt.Errorf("%w: %v", err, perr)
		}
		errs = append(errs, perr)
	}
	run, derr := parseIperfDetail(out)
	if derr != nil {
		return g, nil, errors.Join(errs...)
	}
	run.summarizeRTT(ping)
	if emulated {
		after, err := emulationCounters(ctx, e.app.Name)
		if err != nil {
			errs = append(errs, err)
		} else {
			run.Emulated = true
			run.QueueDrops, run.Lost = emulationDrops(before, after)
		}
	}
	if nsBefore != nil {
		if after, err := netstackCounters(ctx, e.app.Name); err == nil {
			run.Netstack = true
			run.NetstackTimeouts = counterDelta(nsBefore, after, "tcp_timeouts")
			run.NetstackSpuriousRTOs = counterDelta(nsBefore, after, "tcp_spurious_rto_recovery")
			run.NetstackRetransmits = counterDelta(nsBefore, after, "tcp_retransmits")
			run.NetstackLostRetransmits = counterDelta(nsBefore, after, "tcp_lost_retransmits")
		}
	}
	return g, &run, errors.Join(errs...)
}

// netperf runs `BIN netperf MODE` in the client and decodes its JSON.
func (e *env) netperf(ctx context.Context, cfg *Config, mode string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.RRTime+30*time.Second)
	defer cancel()
	cmd := e.client.Command(ctx, e.bin, "netperf", mode, fmt.Sprintf("%s:%d", e.addr, netperfPort), cfg.RRTime.String())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return json.Unmarshal(b, out)
}
