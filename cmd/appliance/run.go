package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/appliance"
	"github.com/nsappliance/appliance/capture"
	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/emulate"
	"github.com/nsappliance/appliance/metrics"
	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
	"github.com/nsappliance/appliance/tun"
)

type runFlags struct {
	netns        string
	pid          int
	tunName      string
	mtu          int
	cidr         string
	cidr6        string
	noIPv6       bool
	dnsUpstreams []string
	allowLoop    bool
	publish      []string
	cc           string
	ccRoutes     []string
	name         string
	grace        time.Duration
	noOffload    bool
	readerFilter bool
	maxPending   int
	udpIdle      time.Duration
	maxUDP       int
	pcap         string
	metrics      string
	emulate      string
	rules        string
	rules6       string
}

func newRunCmd() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] [-- COMMAND [ARG...]]",
		Short: "Gateway mode: relay a namespace's traffic through netstack and host sockets",
		Long: `Gateway mode. Creates a TUN device inside the target network namespace
(--netns, --pid, or a new one for COMMAND), gives it the container address
(.100 of --cidr, ::100 of --cidr6) and a default route through the gateway
(.2 / ::2), and terminates everything the namespace sends in netstack,
re-originating it from this process's own namespace through ordinary
sockets. DNS at .3 / ::3 forwards to --dns-upstream. The host's loopback is
unreachable unless --allow-host-loopback. SIGINT/SIGTERM stop accepting,
drain for --grace, and exit 0. With COMMAND, it exits with COMMAND's status.`,
		Example: `  appliance run --netns /run/netns/ctr
  appliance run --pid 1234 -p 8080:80 --dns-upstream 192.0.2.53
  appliance run -- curl -sI http://example.test/`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() < 0 && len(args) > 0 {
				return usagef("unexpected argument %q (put COMMAND after --)", args[0])
			}
			return runGateway(cmd.Context(), f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.netns, "netns", "", "attach to an existing network namespace (/run/netns/NAME or /proc/PID/ns/net)")
	fl.IntVar(&f.pid, "pid", 0, "attach to the network namespace of process PID")
	fl.StringVar(&f.tunName, "tun", "tun0", "name of the TUN device inside the namespace")
	fl.IntVar(&f.mtu, "mtu", 65520, "MTU of the TUN device (1280..65535)")
	fl.StringVar(&f.cidr, "cidr", "10.0.2.0/24", "IPv4 subnet: container .100, gateway .2, DNS .3")
	fl.StringVar(&f.cidr6, "cidr6", "fd00:0:0:2::/64", "IPv6 subnet: container ::100, gateway ::2, DNS ::3")
	fl.BoolVar(&f.noIPv6, "no-ipv6", false, "do not configure IPv6 on the container link")
	fl.StringArrayVar(&f.dnsUpstreams, "dns-upstream", nil, "ADDR[:PORT] the DNS address forwards to (repeatable; default: nameservers in /etc/resolv.conf)")
	fl.BoolVar(&f.allowLoop, "allow-host-loopback", false, "let the gateway address reach the host's 127.0.0.1 / ::1 (denied by default)")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "[IP:]HOSTPORT:PORT[/tcp|/udp]: publish a container port on the host (repeatable)")
	fl.StringVar(&f.cc, "cc", "cubic", "default TCP congestion control of netstack (see net.ipv4.tcp_available_congestion_control)")
	fl.StringArrayVar(&f.ccRoutes, "cc-route", nil, "CIDR=NAME: TCP connections whose host-side destination is in CIDR use congestion control NAME (repeatable; longest prefix wins; like ip route ... congctl)")
	fl.StringVar(&f.name, "name", "default", "instance name; the control socket is /run/appliance/NAME.sock")
	fl.DurationVar(&f.grace, "grace", 10*time.Second, "on SIGINT/SIGTERM, how long open connections may drain before they are cut")
	fl.BoolVar(&f.noOffload, "no-offload", false, "open the TUN without virtio-net header offloads (checksum, TSO, USO)")
	fl.BoolVar(&f.readerFilter, "reader-early-filter", false, "run the early filter (raw PREROUTING drop rules) only on the TUN reader, not as a kernel BPF program on the TUN (which drops before the reader is woken)")
	fl.IntVar(&f.maxPending, "max-pending-syn", 4096, "connections whose host-side dial may be under way at once")
	fl.DurationVar(&f.udpIdle, "udp-timeout", 60*time.Second, "idle timeout of a UDP flow")
	fl.IntVar(&f.maxUDP, "max-udp-flows", 4096, "concurrent UDP flows; new flows beyond it are dropped")
	fl.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics on ADDR (host:port, in the appliance's own namespace) at /metrics")
	fl.StringVar(&f.emulate, "emulate", "", "link emulation on the container link (netem's meanings), e.g. delay=20ms,jitter=2ms,loss=1%,rate=100mbit,limit=1000; see `appliance emulate --help`; in = container to world, out = world to container")
	fl.StringVar(&f.pcap, "pcap", "", "write every packet on the container link to FILE (pcap, tcpdump-readable)")
	fl.StringVar(&f.rules, "rules", "", "iptables-save text applied before traffic flows (checked before anything starts)")
	fl.StringVar(&f.rules6, "rules6", "", "ip6tables-save text applied before traffic flows")
	return cmd
}

// parseRun validates every flag before anything changes on the machine.
func parseRun(f runFlags) (appliance.Options, error) {
	var o appliance.Options
	if err := control.ValidateName(f.name); err != nil {
		return o, usageError{fmt.Errorf("--name: %w", err)}
	}
	if f.mtu < 1280 || f.mtu > 65535 {
		return o, usagef("--mtu %d: want 1280..65535", f.mtu)
	}
	var err error
	if o.Rules, err = readRules(f.rules, f.rules6); err != nil {
		return o, err
	}
	if o.IPv4, err = parseLayout("--cidr", f.cidr, true); err != nil {
		return o, err
	}
	if !f.noIPv6 {
		if o.IPv6, err = parseLayout("--cidr6", f.cidr6, false); err != nil {
			return o, err
		}
	}
	for _, s := range f.dnsUpstreams {
		ap, err := parseHostPort(s, 53)
		if err != nil {
			return o, usagef("--dns-upstream %q: %v", s, err)
		}
		o.DNSUpstreams = append(o.DNSUpstreams, ap)
	}
	for _, s := range f.publish {
		p, err := appliance.ParsePublish(s)
		if err != nil {
			return o, usagef("--publish %q: %v", s, err)
		}
		o.Publish = append(o.Publish, p)
	}
	if f.maxPending <= 0 {
		return o, usagef("--max-pending-syn %d: must be positive", f.maxPending)
	}
	if f.maxUDP <= 0 {
		return o, usagef("--max-udp-flows %d: must be positive", f.maxUDP)
	}
	if f.udpIdle <= 0 {
		return o, usagef("--udp-timeout %v: must be positive", f.udpIdle)
	}
	if f.metrics != "" {
		if _, _, err := net.SplitHostPort(f.metrics); err != nil {
			return o, usagef("--metrics %q: want HOST:PORT", f.metrics)
		}
	}
	if f.grace < 0 {
		return o, usagef("--grace %v: must not be negative", f.grace)
	}
	o.AllowHostLoopback = f.allowLoop
	o.MaxPendingSYN = f.maxPending
	o.MaxUDPFlows = f.maxUDP
	o.UDPIdleTimeout = f.udpIdle
	o.Stack = netstack.Options{CongestionControl: f.cc}
	for _, s := range f.ccRoutes {
		r, err := appliance.ParseCCRoute(s)
		if err != nil {
			return o, usagef("--cc-route %q: %v", s, err)
		}
		if err := netstack.CongestionControls().Check(r.CC); err != nil {
			return o, usagef("--cc-route %q: %v", s, err)
		}
		o.CCRoutes = append(o.CCRoutes, r)
	}
	return o, checkCC(f.cc)
}

// parseHostPort parses ADDR, ADDR:PORT or [V6]:PORT.
func parseHostPort(s string, defPort uint16) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.AddrPort{}, errors.New("want IP, IP:PORT or [IPv6]:PORT")
	}
	return netip.AddrPortFrom(a, defPort), nil
}

// readerHeldWait is how long the gateway's TUN reader waits with its P
// held before it blocks the usual way (tun.EndpointOptions.HeldWait).
const readerHeldWait = time.Millisecond

func runGateway(ctx context.Context, f runFlags, command []string) error {
	opts, err := parseRun(f)
	if err != nil {
		return err
	}
	spec, err := parseEmulate(f.emulate)
	if err != nil {
		return err
	}
	modes := 0
	if f.netns != "" {
		modes++
	}
	if f.pid != 0 {
		modes++
	}
	if len(command) > 0 {
		modes++
	}
	if modes != 1 {
		return usagef("give exactly one of --netns PATH, --pid PID or -- COMMAND")
	}
	if err := checkNetAdmin(); err != nil {
		return usageError{err}
	}
	log := slog.Default().With("instance", f.name)
	opts.Logger = log
	opts.Stack.Logger = log

	nsPath := f.netns
	var ownNS netns.NsHandle = -1
	switch {
	case f.pid != 0:
		nsPath = fmt.Sprintf("/proc/%d/ns/net", f.pid)
		if _, err := os.Stat(nsPath); err != nil {
			return usagef("--pid %d: no such process", f.pid)
		}
	case len(command) > 0:
		ownNS, err = newNetns()
		if err != nil {
			return err
		}
		defer ownNS.Close()
		nsPath = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ownNS))
	default:
		if err := checkNetnsPath("--netns", nsPath); err != nil {
			return err
		}
	}

	addrs, gws := tunPlan(opts.IPv4, opts.IPv6)
	dev, err := tun.Create(nsPath, tun.Config{
		Name: f.tunName, MTU: f.mtu, Addresses: addrs, Gateways: gws,
		DisableOffload: f.noOffload, Logger: log,
	})
	if err != nil {
		return err
	}
	// netstack's TCP handles inbound segments on the TUN reader after each
	// batch instead of waking a processor goroutine per segment (patch
	// 0004): all of gateway mode's inbound TCP comes through this reader.
	deferTCP := os.Getenv("APPLIANCE_PROCESSOR_TCP") == ""
	tcp.SetDeferredProcessing(deferTCP)
	early := appliance.NewEarlyFilter()
	opts.EarlyFilters = []*appliance.EarlyFilter{early}
	// The readers bracket each batch they deliver, so the relay work a
	// batch starts runs on them afterwards (appliance.LinkBatch).
	batch := appliance.NewLinkBatch(deferTCP)
	opts.Batch = batch
	// The reader also serves the host sockets' epoll instance, so a reply
	// is relayed by the thread its request came through.
	epOpts := tun.EndpointOptions{Logger: log, Filter: early.Filter, BeforeBatch: batch.Begin, AfterBatch: batch.End}
	if os.Getenv("APPLIANCE_HOST_POLLER") == "" {
		hp, err := appliance.NewReaderHostPoll()
		if err != nil {
			dev.File.Close()
			return err
		}
		defer hp.Close() // the reader and the gateway hold their own
		opts.HostPoll = hp
		epOpts.Also = hp
		// The reader keeps its P through a wait of up to a millisecond
		// (the gaps in a transfer), so sysmon does not hand the P to
		// another thread at every wait: download CPU per GB -15-30%.
		// Not with one P, which the rest of the process would lose.
		if runtime.GOMAXPROCS(0) >= 2 {
			epOpts.HeldWait = readerHeldWait
		}
	}
	ep, err := tun.NewEndpoint(dev, epOpts)
	if err != nil {
		dev.File.Close()
		return err
	}
	if !f.readerFilter {
		early.UseKernel(ep, log)
	}
	// Packet outcomes: the TUN edge counts what is transmitted, the
	// emulation what it drops, netstack the rest (see outcome).
	outcomes := outcome.NewTable()
	opts.Stack.Outcomes = outcomes
	linkOut := outcomes.Link(appliance.NICName)
	early.SetOutcomes(linkOut)
	var link stack.LinkEndpoint = netstack.EdgeLink(ep, linkOut)
	if f.pcap != "" {
		var pf *capture.File
		if link, pf, err = capture.Wrap(link, f.pcap, log); err != nil {
			ep.Close()
			return err
		}
		defer pf.Close() // after the gateway (deferred below) is closed
	}
	// Always wrapped, so `appliance emulate` can turn emulation on later;
	// an empty spec passes packets straight through.
	// Delayed inbound segments (ACKs) are handled when they arrive.
	emOpts := emulate.Options{Logger: log, Outcomes: linkOut, BeforeDeliver: batch.Begin, AfterDeliver: batch.End}
	em, err := emulate.New(link, spec, emOpts)
	if err != nil {
		ep.Close()
		return err
	}
	gw, err := appliance.NewGateway(em, opts)
	if err != nil {
		em.Close()
		return err
	}
	defer gw.Close()

	if f.metrics != "" {
		reg, err := metrics.New(
			metrics.Source{Name: "netstack", Help: "netstack counter (tcpip.Stats)", Read: gw.Stack().Counters},
			metrics.Source{Name: "link", Help: "container TUN link counters", Read: ep.Stats().Map},
			metrics.Source{Name: "gateway", Help: "gateway relay counters", Read: gw.Counters},
			outcomeSource(outcomes),
			metrics.Source{Name: "tcp_mem", Help: "TCP memory accounting (net.ipv4.tcp_mem, pages; pressure state)", Kind: metrics.Gauge,
				Read: func() map[string]uint64 { return memStateMap(gw.Stack().MemState()) }},
			metrics.Source{Name: "flows", Help: "open relayed flows", Kind: metrics.Gauge, Read: func() map[string]uint64 {
				fc := gw.Flows()
				return map[string]uint64{"tcp": uint64(fc.TCP), "udp": uint64(fc.UDP), "icmp": uint64(fc.ICMP)}
			}})
		if err != nil {
			return err
		}
		ms, err := metrics.Serve(f.metrics, reg, log)
		if err != nil {
			return err
		}
		defer ms.Close()
	}

	mux := http.NewServeMux()
	control.HandleSysctl(mux, gw.Stack().Sysctl())
	control.HandleMemStats(mux)
	mux.HandleFunc("GET /v1/sockets", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, gw.Sockets())
	})
	mux.HandleFunc("GET /v1/sockstat", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, gw.SockStat())
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		gw.Firewall().SyncEarly() // kernel early-filter drops into the outcomes
		control.WriteJSON(w, http.StatusOK, map[string]map[string]uint64{
			"netstack": gw.Stack().Counters(), "link": ep.Stats().Map(), "gateway": gw.Counters(),
			"emulate": em.Stats(), "skb": outcomes.Counters(),
		})
	})
	handleEmulate(mux, em)
	handleIptables(mux, gw.Firewall())
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, status{
			Name: f.name, Mode: "gateway", PID: os.Getpid(), Goroutines: runtime.NumGoroutine(),
			Flows: gw.Flows(), Tun: dev.Name, MTU: dev.MTU, Offloads: dev.OffloadString(),
			Link: ep.Stats().Map(), Counters: gw.Counters(),
		})
	})
	srv, err := control.Listen(f.name, mux, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	log.Info("appliance ready", "mode", "gateway", "netns", nsPath, "control", srv.Path(),
		"container", opts.IPv4.Container, "gateway", opts.IPv4.Gateway, "dns", opts.IPv4.DNS)

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	var child *exec.Cmd
	childDone := make(chan error, 1)
	if len(command) > 0 {
		child, err = startIn(ownNS, command)
		if err != nil {
			return err
		}
		go func() { childDone <- child.Wait() }()
	}

	drain := func() {
		sctx, cancel := context.WithTimeout(context.Background(), f.grace)
		defer cancel()
		if err := gw.Shutdown(sctx); err != nil {
			log.Warn("drain cut short", "err", err)
		}
	}
	select {
	case s := <-sigs:
		log.Info("signal received, draining", "signal", s.String(), "grace", f.grace)
		if child != nil {
			_ = child.Process.Signal(s)
			select {
			case <-childDone:
			case <-time.After(f.grace):
				_ = child.Process.Kill()
				<-childDone
			}
		}
		drain()
		return nil
	case err := <-childDone:
		drain()
		var xe *exec.ExitError
		if errors.As(err, &xe) {
			if ws, ok := xe.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return exitError{128 + int(ws.Signal())}
			}
			return exitError{xe.ExitCode()}
		}
		if err != nil {
			return err
		}
		return nil
	case <-ep.Done():
		if child != nil {
			_ = child.Process.Kill()
			<-childDone
		}
		return deviceGone(dev, nsPath, ep)
	}
}

type status struct {
	Name       string               `json:"name"`
	Mode       string               `json:"mode"`
	PID        int                  `json:"pid"`
	Goroutines int                  `json:"goroutines"`
	Flows      appliance.FlowCounts `json:"flows"`
	Tun        string               `json:"tun"`
	MTU        int                  `json:"mtu"`
	Offloads   string               `json:"offloads"`
	Link       map[string]uint64    `json:"link"`
	Counters   map[string]uint64    `json:"counters"`
}

// checkNetAdmin tells whether this process has CAP_NET_ADMIN.
func checkNetAdmin() error {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil // cannot tell; let the first privileged call fail
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err == nil && caps&(1<<unix.CAP_NET_ADMIN) == 0 {
				return errors.New("missing privileges: needs CAP_NET_ADMIN (run as root)")
			}
		}
	}
	return nil
}

// newNetns makes a new, unnamed network namespace with loopback up. It lives
// as long as the returned handle or a process in it.
func newNetns() (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("get netns: %w", err)
	}
	defer orig.Close()
	ns, err := netns.New() // unshare(CLONE_NEWNET) on this thread
	if err != nil {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("new netns: %w", err)
	}
	if err := netns.Set(orig); err != nil {
		ns.Close()
		return -1, fmt.Errorf("return to own netns: %w", err) // thread stays locked and dies
	}
	runtime.UnlockOSThread()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return -1, fmt.Errorf("netlink in new netns: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		ns.Close()
		return -1, fmt.Errorf("loopback up in new netns: %w", err)
	}
	return ns, nil
}

// startIn starts command with its network namespace set to ns: the fork
// happens on a thread that has entered ns, and the child inherits it.
func startIn(ns netns.NsHandle, command []string) (*exec.Cmd, error) {
	c := exec.Command(command[0], command[1:]...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("get netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns: %w", err)
	}
	startErr := c.Start()
	if err := netns.Set(orig); err != nil {
		return nil, fmt.Errorf("return to own netns: %w", err)
	}
	runtime.UnlockOSThread()
	if startErr != nil {
		return nil, fmt.Errorf("start %s: %w", command[0], startErr)
	}
	return c, nil
}
