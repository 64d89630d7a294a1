package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/appliance"
	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/emulate"
	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
	"github.com/nsappliance/appliance/tun"
)

type routerFlags struct {
	tunName       string
	mtu           int
	mtuA, mtuB    int
	cidrA, cidrB  string
	cidr6A        string
	cidr6B        string
	noIPv6        bool
	cc            string
	name          string
	noOffload     bool
	readerFilter  bool
	readerPerLink bool
	emulate       string
	rules         string
	rules6        string
}

func newRouterCmd() *cobra.Command {
	var f routerFlags
	cmd := &cobra.Command{
		Use:   "router [flags] NETNS_A NETNS_B",
		Short: "Router mode: forward IP between two namespaces inside netstack",
		Long: `Router mode. Creates a TUN device in each of two network namespaces
(NETNS_A, NETNS_B: /run/netns/NAME or /proc/PID/ns/net paths), gives each
the address .100 of its subnet (--cidr-a, --cidr-b; ::100 of --cidr6-a,
--cidr6-b) and a default route through the appliance at .2 / ::2, and
forwards IP between them inside netstack as a Linux router with
ip_forward=1 would: TTL / hop limit are decremented, and the appliance
answers with ICMP time exceeded, destination unreachable and fragmentation
needed / packet too big from its .2 / ::2 address on the sender's link.

--mtu defaults to 1500, not gateway mode's 65520: the two links are real
IP hops, so path MTU discovery and fragmentation-needed work as they would
between two Ethernet segments. Bulk TCP still moves 64 KiB at a time: the
kernel's TSO super-packets cross the appliance whole (see docs/patches.md).
--mtu-a and --mtu-b set one link's MTU, e.g. a narrower link b.

SIGINT/SIGTERM remove both devices and exit 0. If either device goes away
(its namespace deleted), the appliance exits 1.`,
		Example: `  ip netns add a; ip netns add b
  appliance router /run/netns/a /run/netns/b
  ip netns exec a ping 10.2.0.100`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usagef("want two namespaces, NETNS_A and NETNS_B; got %d argument(s)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRouter(cmd.Context(), f, args[0], args[1])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.tunName, "tun", "tun0", "name of the TUN device inside each namespace")
	fl.IntVar(&f.mtu, "mtu", 1500, "MTU of both TUN devices (1280..65535)")
	fl.IntVar(&f.mtuA, "mtu-a", 0, "MTU of the device in NETNS_A (default: --mtu)")
	fl.IntVar(&f.mtuB, "mtu-b", 0, "MTU of the device in NETNS_B (default: --mtu)")
	fl.StringVar(&f.cidrA, "cidr-a", "10.1.0.0/24", "IPv4 subnet of NETNS_A's link: namespace .100, appliance .2")
	fl.StringVar(&f.cidrB, "cidr-b", "10.2.0.0/24", "IPv4 subnet of NETNS_B's link: namespace .100, appliance .2")
	fl.StringVar(&f.cidr6A, "cidr6-a", "fd00:0:0:a::/64", "IPv6 subnet of NETNS_A's link: namespace ::100, appliance ::2")
	fl.StringVar(&f.cidr6B, "cidr6-b", "fd00:0:0:b::/64", "IPv6 subnet of NETNS_B's link: namespace ::100, appliance ::2")
	fl.BoolVar(&f.noIPv6, "no-ipv6", false, "do not configure or forward IPv6")
	fl.StringVar(&f.cc, "cc", "cubic", "default TCP congestion control of netstack (forwarded traffic does not use it)")
	fl.StringVar(&f.name, "name", "default", "instance name; the control socket is /run/appliance/NAME.sock")
	fl.BoolVar(&f.noOffload, "no-offload", false, "open the TUNs without virtio-net header offloads (checksum, TSO, USO)")
	fl.BoolVar(&f.readerPerLink, "reader-per-link", false, "read each TUN device on a goroutine of its own instead of one reader serving both (slower: every hand-off between the links wakes a thread)")
	_ = fl.MarkHidden("reader-per-link")
	fl.BoolVar(&f.readerFilter, "reader-early-filter", false, "run the early filter (raw PREROUTING drop rules) only on the TUN reader, not as a kernel BPF program on the TUN (which drops before the reader is woken)")
	fl.StringVar(&f.emulate, "emulate", "", "link emulation on the path between the namespaces, both directions (netem's meanings), e.g. delay=20ms,loss=1%,rate=100mbit; see `appliance emulate --help`")
	fl.StringVar(&f.rules, "rules", "", "iptables-save text applied before traffic flows (checked before anything starts); FORWARD sees forwarded traffic")
	fl.StringVar(&f.rules6, "rules6", "", "ip6tables-save text applied before traffic flows")
	return cmd
}

// parseRouter validates every flag before anything changes on the machine.
func parseRouter(f routerFlags) (appliance.RouterOptions, error) {
	var o appliance.RouterOptions
	if err := control.ValidateName(f.name); err != nil {
		return o, usageError{fmt.Errorf("--name: %w", err)}
	}
	for _, m := range []struct {
		flag string
		v    int
	}{{"--mtu", f.mtu}, {"--mtu-a", f.mtuA}, {"--mtu-b", f.mtuB}} {
		if m.v != 0 && (m.v < 1280 || m.v > 65535) || m.flag == "--mtu" && m.v == 0 {
			return o, usagef("%s %d: want 1280..65535", m.flag, m.v)
		}
	}
	var err error
	if o.Rules, err = readRules(f.rules, f.rules6); err != nil {
		return o, err
	}
	if o.IPv4A, err = parseLayout("--cidr-a", f.cidrA, true); err != nil {
		return o, err
	}
	if o.IPv4B, err = parseLayout("--cidr-b", f.cidrB, true); err != nil {
		return o, err
	}
	if o.IPv4A.Prefix.Overlaps(o.IPv4B.Prefix) {
		return o, usagef("--cidr-a %v and --cidr-b %v overlap", o.IPv4A.Prefix, o.IPv4B.Prefix)
	}
	if !f.noIPv6 {
		if o.IPv6A, err = parseLayout("--cidr6-a", f.cidr6A, false); err != nil {
			return o, err
		}
		if o.IPv6B, err = parseLayout("--cidr6-b", f.cidr6B, false); err != nil {
			return o, err
		}
		if o.IPv6A.Prefix.Overlaps(o.IPv6B.Prefix) {
			return o, usagef("--cidr6-a %v and --cidr6-b %v overlap", o.IPv6A.Prefix, o.IPv6B.Prefix)
		}
	}
	o.Stack = netstack.Options{CongestionControl: f.cc}
	return o, checkCC(f.cc)
}

// routerLink is one side of the router: its namespace, device and endpoint.
type routerLink struct {
	ns  string
	dev *tun.Device
	ep  *tun.Endpoint
}

func runRouter(ctx context.Context, f routerFlags, nsA, nsB string) error {
	opts, err := parseRouter(f)
	if err != nil {
		return err
	}
	spec, err := parseEmulate(f.emulate)
	if err != nil {
		return err
	}
	for _, p := range []string{nsA, nsB} {
		if err := checkNetnsPath("namespace", p); err != nil {
			return err
		}
	}
	if err := checkNetAdmin(); err != nil {
		return usageError{err}
	}
	log := slog.Default().With("instance", f.name)
	opts.Logger = log
	opts.Stack.Logger = log

	mtus := [2]int{f.mtu, f.mtu}
	if f.mtuA != 0 {
		mtus[0] = f.mtuA
	}
	if f.mtuB != 0 {
		mtus[1] = f.mtuB
	}
	sides := []struct {
		ns     string
		v4, v6 appliance.Layout
		mtu    int
	}{{nsA, opts.IPv4A, opts.IPv6A, mtus[0]}, {nsB, opts.IPv4B, opts.IPv6B, mtus[1]}}
	// One reader serves both devices (tun.ReaderGroup): what one link's
	// write makes the other kernel answer is read without a wake-up.
	var group *tun.ReaderGroup
	if !f.readerPerLink {
		if group, err = tun.NewReaderGroup(); err != nil {
			return err
		}
		defer func() { _ = group.Close() }()
	}
	var links []*routerLink
	closeLinks := func() {
		for _, l := range links {
			l.ep.Close()
		}
	}
	for _, s := range sides {
		addrs, gws := tunPlan(s.v4, s.v6)
		dev, err := tun.Create(s.ns, tun.Config{
			Name: f.tunName, MTU: s.mtu, Addresses: addrs, Gateways: gws,
			DisableOffload: f.noOffload, Logger: log,
		})
		if err != nil {
			closeLinks()
			return err
		}
		// GRO off: it would merge segments into packets larger than the
		// egress MTU without GSO metadata. Partial checksums are completed
		// because a forwarded packet leaves without the NEEDS_CSUM flag.
		early := appliance.NewEarlyFilter()
		opts.EarlyFilters = append(opts.EarlyFilters, early)
		ep, err := tun.NewEndpoint(dev, tun.EndpointOptions{Logger: log, DisableGRO: true, CompleteChecksums: true, Filter: early.Filter, Group: group})
		if err != nil {
			dev.File.Close()
			closeLinks()
			return err
		}
		if !f.readerFilter {
			early.UseKernel(ep, log)
		}
		links = append(links, &routerLink{ns: s.ns, dev: dev, ep: ep})
	}
	outcomes := outcome.NewTable()
	opts.Stack.Outcomes = outcomes
	linkA := outcomes.Link(appliance.RouterNICA)
	opts.EarlyFilters[0].SetOutcomes(linkA)
	opts.EarlyFilters[1].SetOutcomes(outcomes.Link(appliance.RouterNICB))
	// Link a's endpoint carries every packet between the namespaces once
	// each way (in: A to B, out: B to A), so the emulation wraps it. It is
	// always wrapped, so `appliance emulate` can turn emulation on later.
	em, err := emulate.New(netstack.EdgeLink(links[0].ep, linkA), spec, emulate.Options{Logger: log, Outcomes: linkA})
	if err != nil {
		closeLinks()
		return err
	}
	r, err := appliance.NewRouter(em, netstack.EdgeLink(links[1].ep, outcomes.Link(appliance.RouterNICB)), opts)
	if err != nil {
		em.Close()
		closeLinks()
		return err
	}
	defer r.Close()

	mux := http.NewServeMux()
	control.HandleSysctl(mux, r.Stack().Sysctl())
	handleEmulate(mux, em)
	handleIptables(mux, r.Firewall())
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) {
		r.Firewall().SyncEarly() // kernel early-filter drops into the outcomes
		control.WriteJSON(w, http.StatusOK, map[string]map[string]uint64{
			"netstack": r.Stack().Counters(), "link_a": links[0].ep.Stats().Map(),
			"link_b": links[1].ep.Stats().Map(), "emulate": em.Stats(), "skb": outcomes.Counters(),
		})
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		st := routerStatus{
			Name: f.name, Mode: "router", PID: os.Getpid(), Goroutines: runtime.NumGoroutine(),
			Links: map[string]routerLinkStatus{}, Counters: r.Counters(),
		}
		for i, l := range links {
			st.Links[[]string{appliance.RouterNICA, appliance.RouterNICB}[i]] = routerLinkStatus{
				Netns: l.ns, Tun: l.dev.Name, MTU: l.dev.MTU, Offloads: l.dev.OffloadString(), Counters: l.ep.Stats().Map(),
			}
		}
		control.WriteJSON(w, http.StatusOK, st)
	})
	srv, err := control.Listen(f.name, mux, log)
	if err != nil {
		return err
	}
	defer srv.Close()
	log.Info("appliance ready", "mode", "router", "netns_a", nsA, "netns_b", nsB, "control", srv.Path(),
		"a", opts.IPv4A.Prefix, "b", opts.IPv4B.Prefix, "mtu_a", mtus[0], "mtu_b", mtus[1])

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	gone := func(l *routerLink) error { return deviceGone(l.dev, l.ns, l.ep) }
	select {
	case s := <-sigs:
		log.Info("signal received, stopping", "signal", s.String())
		return nil
	case <-links[0].ep.Done():
		return gone(links[0])
	case <-links[1].ep.Done():
		return gone(links[1])
	case <-ctx.Done():
		return ctx.Err()
	}
}

type routerStatus struct {
	Name       string                      `json:"name"`
	Mode       string                      `json:"mode"`
	PID        int                         `json:"pid"`
	Goroutines int                         `json:"goroutines"`
	Links      map[string]routerLinkStatus `json:"links"`
	Counters   map[string]uint64           `json:"counters"`
}

type routerLinkStatus struct {
	Netns    string            `json:"netns"`
	Tun      string            `json:"tun"`
	MTU      int               `json:"mtu"`
	Offloads string            `json:"offloads"`
	Counters map[string]uint64 `json:"counters"`
}
