package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

// Defaults for the zero values of Options.
const (
	defaultMaxPendingSYN  = 4096
	defaultDialTimeout    = 10 * time.Second
	defaultMaxUDPFlows    = 4096
	defaultUDPIdleTimeout = 60 * time.Second
	dnsUDPIdleTimeout     = 10 * time.Second
	maxConcurrentPings    = 256
	pingTimeout           = 5 * time.Second
)

// NICName is the name of the container link's NIC in netstack.
const NICName = "tun0"

// FlowCounts is the number of relays active at one moment.
type FlowCounts struct {
	TCP, UDP, ICMP int
}

// Gateway terminates a container's TCP, UDP and ICMP echo in netstack and
// relays them through host sockets. Create it with NewGateway; stop it with
// Shutdown or Close. Its methods are safe for concurrent use.
type Gateway struct {
	opts   Options // defaults applied
	log    *slog.Logger
	stack  *netstack.Stack
	nic    tcpip.NICID
	link   *linkTap
	fw     *Firewall
	pol    policy
	dns    []netip.AddrPort
	ctx    context.Context // cancelled by Close: aborts dials and pings
	cancel context.CancelFunc

	mu sync.Mutex
	// +checklocks:mu
	closing bool // Close has begun: start no goroutine, open no flow
	// +checklocks:mu
	draining bool // Shutdown has begun: open no flow
	// +checklocks:mu
	flows map[*flow]struct{}
	// +checklocks:mu
	drained chan struct{} // closed when draining and flows is empty
	// +checklocks:mu
	listeners []io.Closer

	// wg counts every goroutine the gateway owns, including handlers the
	// TCP forwarder starts once they have entered.
	wg        sync.WaitGroup
	closeOnce sync.Once

	active   [numProtos]atomic.Int64
	udpSlots atomic.Int64 // UDP flows set up or being set up, against MaxUDPFlows
	pingSem  chan struct{}
	pubAddrs []net.Addr // set by NewGateway, then read-only
	c        counters

	// outcomes is the container link's packet-outcome counters (the
	// NIC's own, see netstack.Stack.Outcomes); packets the gateway
	// handles before netstack are counted there.
	outcomes *outcome.Link
	// poller watches the TCP relays' host sockets (see tcpRelay).
	poller *hostPoller
	// tcpNoSocket counts TCP segments no connection and no forwarder
	// took (answered with RST): the classifier's no_socket probe.
	tcpNoSocket tcpip.StatCounter
	// tcpMemRefused counts SYNs refused above tcp_mem's max (the
	// classifier's memory_pressure probe).
	tcpMemRefused tcpip.StatCounter
}

// hostAddrs is what Sockets shows of a flow's host socket.
type hostAddrs interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// flow is one active relay; close tears it down from outside. ep and host,
// when set, are its two sockets (for Sockets).
type flow struct {
	proto proto
	close func()
	ep    tcpip.Endpoint
	host  hostAddrs
}

// NewGateway validates opts, builds a netstack with ep as its promiscuous,
// spoofing NIC (named NICName) routing everything, installs the TCP and UDP
// forwarders and the ICMP echo relay, and starts the publish listeners. On
// error nothing is left running and ep is not closed. On success the gateway
// owns ep: Close closes it.
func NewGateway(ep stack.LinkEndpoint, opts Options) (*Gateway, error) {
	if ep == nil {
		return nil, errors.New("gateway: nil link endpoint")
	}
	if err := applyDefaults(&opts); err != nil {
		return nil, err
	}
	var dns []netip.AddrPort
	for _, u := range opts.DNSUpstreams {
		dns = append(dns, netip.AddrPortFrom(u.Addr().Unmap(), u.Port()))
	}
	if len(dns) == 0 {
		dns = resolvConfUpstreams("/etc/resolv.conf")
	}
	log := opts.Logger.With("component", "gateway")

	if opts.Stack.Logger == nil {
		opts.Stack.Logger = opts.Logger
	}
	s, err := netstack.New(opts.Stack)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := validateCCRoutes(opts.CCRoutes, s.CongestionControls().Check); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Gateway{
		opts:    opts,
		log:     log,
		stack:   s,
		pol:     policy{v4: opts.IPv4, v6: opts.IPv6, allowLoopback: opts.AllowHostLoopback},
		dns:     dns,
		ctx:     ctx,
		cancel:  cancel,
		flows:   make(map[*flow]struct{}),
		pingSem: make(chan struct{}, maxConcurrentPings),
	}
	g.outcomes = s.Outcomes().Link(NICName)
	if g.poller, err = newHostPoller(opts.HostPoll); err != nil {
		cancel()
		s.Destroy()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if opts.HostPoll != nil {
		opts.HostPoll.bind(g.poller) // the link's reader serves it
	} else {
		go g.poller.run() // owned: Close stops it and waits
	}
	s.AddDropProbe(&g.tcpMemRefused, outcome.MemoryPressure, outcome.HookNone)
	s.AddDropProbe(&g.tcpNoSocket, outcome.NoSocket, outcome.HookNone)
	g.link = &linkTap{ownedLink: newOwnedLink(ep), g: g}
	if g.fw, err = newFirewallWith(s, opts.Rules, opts.EarlyFilters, opts.Logger); err != nil {
		cancel()
		s.Destroy()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := g.fw.SetPolicy(policyRules(opts.IPv4, opts.IPv6, opts.AllowHostLoopback)); err != nil {
		cancel()
		s.Destroy()
		return nil, fmt.Errorf("gateway: %w", err)
	}

	addrs := []tcpip.AddressWithPrefix{
		addrWithPrefix(opts.IPv4.Gateway, opts.IPv4.Prefix),
		addrWithPrefix(opts.IPv4.DNS, opts.IPv4.Prefix),
	}
	if opts.IPv6.Prefix.IsValid() {
		addrs = append(addrs,
			addrWithPrefix(opts.IPv6.Gateway, opts.IPv6.Prefix),
			addrWithPrefix(opts.IPv6.DNS, opts.IPv6.Prefix))
	}
	// Forwarders go in before the NIC so no early packet misses them.
	tf := tcp.NewForwarder(s.Stack, 0, opts.MaxPendingSYN, g.handleTCP)
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		if isSYN(pkt) && s.RefuseNew() {
			// Above tcp_mem's max: netstack answers the SYN with RST;
			// established connections keep working.
			g.tcpMemRefused.Increment()
			return false
		}
		if tf.HandlePacket(id, pkt) {
			// The handler runs on a goroutine of its own: let the
			// delivering reader yield to it after the batch.
			g.opts.Batch.yieldAfter()
			return true
		}
		// Not a SYN for us: netstack answers with RST (or counts it
		// malformed, which ranks first).
		g.tcpNoSocket.Increment()
		return false
	})
	// Not udp.Forwarder.HandlePacket: it clones pkt into the request and
	// never releases the clone, leaking a reference per datagram it sees.
	// The request can borrow pkt instead: the caller owns it until we
	// return, and CreateEndpoint clones what it queues.
	s.SetTransportProtocolHandler(udp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		return g.handleUDP(udp.NewForwarderRequest(s.Stack, id, pkt))
	})

	// The NIC's ID is known before the link's reader starts: the echo
	// hooks (echoHooksIn) run on the reader and read g.nic, and
	// assigning it after AttachNIC raced with the container's first
	// packets.
	g.nic = s.NextNICID()
	_, err = s.AttachNIC(g.link, netstack.NICOptions{
		ID:           g.nic,
		Name:         NICName,
		Promiscuous:  true,
		Addresses:    addrs,
		DefaultRoute: true,
	})
	if err != nil {
		g.link.keepOpen()
		cancel()
		g.poller.stop()
		s.Destroy()
		return nil, fmt.Errorf("gateway: %w", err)
	}

	for _, p := range opts.Publish {
		if err := g.startPublish(p); err != nil {
			g.link.keepOpen()
			g.Close()
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	log.Info("gateway started", "ipv4", opts.IPv4.Prefix, "ipv6", opts.IPv6.Prefix,
		"dns_upstreams", len(dns), "allow_host_loopback", opts.AllowHostLoopback, "publish", len(opts.Publish))
	if len(dns) == 0 {
		log.Warn("no dns upstreams: dns queries will be dropped")
	}
	return g, nil
}

func applyDefaults(o *Options) error {
	if err := checkLayout("IPv4", o.IPv4, true); err != nil {
		return err
	}
	if o.IPv6 != (Layout{}) {
		if err := checkLayout("IPv6", o.IPv6, false); err != nil {
			return err
		}
	}
	for i, u := range o.DNSUpstreams {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsUnspecified() {
			return fmt.Errorf("options: DNSUpstreams[%d] %v: want a host address and port", i, u)
		}
	}
	for i, p := range o.Publish {
		if p.Proto != "tcp" && p.Proto != "udp" {
			return fmt.Errorf("options: Publish[%d]: proto %q: want tcp or udp", i, p.Proto)
		}
		if p.Port == 0 {
			return fmt.Errorf("options: Publish[%d]: container port 0", i)
		}
	}
	switch {
	case o.MaxPendingSYN < 0:
		return fmt.Errorf("options: MaxPendingSYN %d is negative", o.MaxPendingSYN)
	case o.DialTimeout < 0:
		return fmt.Errorf("options: DialTimeout %v is negative", o.DialTimeout)
	case o.MaxUDPFlows < 0:
		return fmt.Errorf("options: MaxUDPFlows %d is negative", o.MaxUDPFlows)
	case o.UDPIdleTimeout < 0:
		return fmt.Errorf("options: UDPIdleTimeout %v is negative", o.UDPIdleTimeout)
	}
	if o.MaxPendingSYN == 0 {
		o.MaxPendingSYN = defaultMaxPendingSYN
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = defaultDialTimeout
	}
	if o.MaxUDPFlows == 0 {
		o.MaxUDPFlows = defaultMaxUDPFlows
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

func checkLayout(name string, l Layout, want4 bool) error {
	if !l.Prefix.IsValid() {
		return fmt.Errorf("options: %s: prefix %v invalid", name, l.Prefix)
	}
	if l.Prefix.Addr().Is4() != want4 {
		return fmt.Errorf("options: %s: prefix %v is the wrong address family", name, l.Prefix)
	}
	for _, a := range []struct {
		field string
		addr  netip.Addr
	}{{"Container", l.Container}, {"Gateway", l.Gateway}, {"DNS", l.DNS}} {
		if !l.Prefix.Contains(a.addr) {
			return fmt.Errorf("options: %s.%s %v not in %v", name, a.field, a.addr, l.Prefix)
		}
	}
	if l.Container == l.Gateway || l.Container == l.DNS || l.Gateway == l.DNS {
		return fmt.Errorf("options: %s: container, gateway and dns addresses must differ", name)
	}
	return nil
}

func (g *Gateway) hostPoller() *hostPoller { return g.poller }

// isSYN reports whether pkt (its transport header parsed) opens a TCP
// connection.
func isSYN(pkt *stack.PacketBuffer) bool {
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize {
		return false
	}
	f := h.Flags()
	return f.Contains(header.TCPFlagSyn) && !f.Contains(header.TCPFlagAck)
}

// Stack returns the gateway's netstack.
func (g *Gateway) Stack() *netstack.Stack { return g.stack }

// Firewall returns the gateway's iptables.
func (g *Gateway) Firewall() *Firewall { return g.fw }

// Flows returns the number of relays active now.
func (g *Gateway) Flows() FlowCounts {
	return FlowCounts{
		TCP:  int(g.active[protoTCP].Load()),
		UDP:  int(g.active[protoUDP].Load()),
		ICMP: int(g.active[protoICMP].Load()),
	}
}

// Shutdown stops accepting: new SYNs get a RST, new UDP flows and pings are
// dropped and the publish listeners close. Open UDP flows and pings are
// closed at once; open TCP connections may finish until ctx is done. Then
// everything is closed. It returns nil
// on a clean drain and ctx.Err() if it had to cut flows.
func (g *Gateway) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	g.draining = true
	ls := g.listeners
	g.listeners = nil
	if g.drained == nil {
		g.drained = make(chan struct{})
		if len(g.flows) == 0 {
			close(g.drained)
		}
	}
	drained := g.drained
	n := len(g.flows)
	g.mu.Unlock()
	g.log.Info("gateway draining", "flows", n)
	for _, l := range ls {
		l.Close()
	}
	// UDP and ICMP have no end to wait for: close them now and drain only
	// TCP connections, as a host's shutdown does.
	for _, f := range g.snapshotFlows() {
		if f.proto != protoTCP {
			f.close()
		}
	}
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		err = ctx.Err()
		g.log.Warn("drain cut short", "reason", err, "flows", len(g.snapshotFlows()))
	}
	g.Close()
	return err
}

// Close tears the gateway down at once: it aborts dials and pings, closes
// the publish listeners and every flow, waits for every goroutine it
// started, and destroys the stack (closing the link endpoint). It is
// idempotent and always returns nil.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closing = true
		g.draining = true
		ls := g.listeners
		g.listeners = nil
		g.mu.Unlock()

		// Stop input first so no new handler starts.
		if g.nic != 0 {
			g.stack.DisableNIC(g.nic)
		}
		g.cancel()
		for _, l := range ls {
			l.Close()
		}
		for _, f := range g.snapshotFlows() {
			f.close()
		}
		// Abort every netstack endpoint, handshakes in progress included:
		// a forwarder handler blocks in CreateEndpoint until its handshake
		// ends, which with the NIC down would take the SYN-ACK retries
		// (about two minutes).
		for _, e := range g.stack.RegisteredEndpoints() {
			e.Abort()
		}
		g.wg.Wait()
		g.poller.stop()
		g.stack.Destroy()
		g.log.Info("gateway closed")
	})
	return nil
}

func (g *Gateway) snapshotFlows() []*flow {
	g.mu.Lock()
	defer g.mu.Unlock()
	fs := make([]*flow, 0, len(g.flows))
	for f := range g.flows {
		fs = append(fs, f)
	}
	return fs
}

// enter registers the calling goroutine with g.wg; it fails once Close has
// begun. The caller calls g.wg.Done when it returns.
func (g *Gateway) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.wg.Add(1)
	return true
}

// spawn runs fn on a goroutine owned by g. It returns false, without
// running fn, once Close has begun.
func (g *Gateway) spawn(fn func()) bool {
	if !g.enter() {
		return false
	}
	go func() {
		defer g.wg.Done()
		fn()
	}()
	return true
}

func (g *Gateway) isDraining() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.draining
}

// addFlow registers an active relay; closeFn must make its goroutines
// return. It fails while draining or closing: the caller then tears the
// flow down itself.
func (g *Gateway) addFlow(p proto, closeFn func()) (*flow, bool) {
	return g.addFlowWith(&flow{proto: p, close: closeFn})
}

// addFlowWith registers f (see addFlow).
func (g *Gateway) addFlowWith(f *flow) (*flow, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining {
		return nil, false
	}
	g.flows[f] = struct{}{}
	g.active[f.proto].Add(1)
	g.c.opened[f.proto].Add(1)
	return f, true
}

func (g *Gateway) removeFlow(f *flow) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.flows[f]; !ok {
		return
	}
	delete(g.flows, f)
	g.active[f.proto].Add(-1)
	g.c.closed[f.proto].Add(1)
	if len(g.flows) == 0 && g.drained != nil {
		select {
		case <-g.drained:
		default:
			close(g.drained)
		}
	}
}

func (g *Gateway) addListener(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.draining {
		return false
	}
	g.listeners = append(g.listeners, c)
	return true
}

func (g *Gateway) debug(msg string, args ...any) {
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.Debug(msg, args...)
	}
}

func addrWithPrefix(a netip.Addr, p netip.Prefix) tcpip.AddressWithPrefix {
	return tcpip.AddressWithPrefix{Address: tcpip.AddrFromSlice(a.AsSlice()), PrefixLen: p.Bits()}
}

func toAddr(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

func toFull(nic tcpip.NICID, ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}
