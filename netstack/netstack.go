// Package netstack builds the gVisor TCP/IP stack the appliance runs on and
// exposes its tunables under Linux sysctl names. Start with New.
package netstack

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/outcome"
)

// Options configures New. The zero value is the documented default.
type Options struct {
	// CongestionControl is the default TCP congestion control for new
	// connections, a name in CC. Empty means "cubic", or CC's fallback
	// when CC has no cubic.
	CongestionControl string
	// CC supplies the congestion-control algorithms; nil means
	// CongestionControls().
	CC *cc.Registry
	// Sysctl holds initial tunables by Linux name (see Sysctls), applied
	// after the defaults. A bad key or value fails New.
	Sysctl map[string]string
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// Outcomes is the packet-outcome table (see Stack.Outcomes); nil
	// means a new one. Give one when layers below netstack (the TUN
	// edge, emulation) must count on the same links before the stack
	// exists.
	Outcomes *outcome.Table
	// Clock is the stack's clock; nil means the real one. Tests give a
	// fake to decide when timers fire.
	Clock tcpip.Clock
}

// Stack is a gVisor stack with the appliance's defaults applied.
type Stack struct {
	*stack.Stack
	sysctl *Sysctls
	log    *slog.Logger
	// outcomes accounts every packet crossing a NIC (see AttachNIC);
	// classifier decides received packets' outcomes.
	outcomes   *outcome.Table
	classifier *classifier
	// links maps NIC IDs to their outcome links (copy-on-write).
	linksMu sync.Mutex
	links   atomic.Pointer[map[tcpip.NICID]*outcomeLink]
	cc      *cc.Registry
	// mem is the TCP memory accounting (tcp_mem, sockstat mem).
	mem *memAccount
}

// New builds a stack with IPv4, IPv6, TCP, UDP and ICMP, SACK on,
// receive-buffer auto-tuning on, buffers of 4 MiB default and 8 MiB max, and
// RACK off (see docs/design.md: RACK walks the whole flight per ACK).
func New(opts Options) (*Stack, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		Clock:              opts.Clock,
	})
	ns := &Stack{Stack: s, log: log.With("component", "netstack"), outcomes: opts.Outcomes}
	if ns.outcomes == nil {
		ns.outcomes = outcome.NewTable()
	}
	ns.classifier = newClassifier(s.Stats())
	if err := tcp.SetSegmentAccounting(s, segmentAccounting{ns}); err != nil {
		s.Destroy()
		return nil, Error("tcp segment accounting", err)
	}
	ns.mem = newMemAccount(ns)
	ns.sysctl = newSysctls(ns)
	if err := ns.installCC(opts.CC); err != nil {
		ns.Destroy()
		return nil, err
	}
	defaults := []struct{ k, v string }{
		{"net.ipv4.tcp_sack", "1"},
		{"net.ipv4.tcp_moderate_rcvbuf", "1"},
		{"net.ipv4.tcp_recovery", "0"},
		{"net.ipv4.tcp_rmem", "4096 4194304 8388608"},
		// Linux's default send buffer: netstack grows it with the
		// congestion window as Linux's tcp_sndbuf_expand does (2 x
		// max(10, cwnd) x per_mss, up to the max; gVisor patch 0041). A
		// fixed 4 MiB default had every download a container stopped
		// reading pin 4.4 MiB of the appliance
		// (TestStalledDownloadBounded).
		{"net.ipv4.tcp_wmem", "4096 16384 8388608"},
		// Linux sizes it from the established-hash (262144 on a 24 GiB
		// machine); a netstack TIME-WAIT endpoint is a whole endpoint
		// (about 9.5 KiB) against Linux's 200-byte bucket, so 16384
		// caps them near 150 MiB (patch 0022).
		{"net.ipv4.tcp_max_tw_buckets", "16384"},
	}
	for _, d := range defaults {
		if err := ns.sysctl.set(d.k, d.v); err != nil {
			ns.Destroy()
			return nil, fmt.Errorf("netstack default %s: %w", d.k, err)
		}
	}
	ccName := opts.CongestionControl
	if ccName == "" {
		ccName = "cubic"
		if _, ok := ns.cc.Lookup(ccName); !ok {
			ccName = ns.cc.Fallback() // Linux falls back to reno, too
		}
	}
	{
		if err := ns.sysctl.set("net.ipv4.tcp_congestion_control", ccName); err != nil {
			ns.Destroy()
			return nil, err
		}
	}
	for k, v := range opts.Sysctl {
		if err := ns.sysctl.set(k, v); err != nil {
			ns.Destroy()
			return nil, err
		}
	}
	return ns, nil
}

// Outcomes returns the packet-outcome table: every packet a NIC receives
// is accounted there under the NIC's name (see AttachNIC); link layers
// that drop packets before or after netstack count them on the same link
// with Table.Link(name).Drop.
func (s *Stack) Outcomes() *outcome.Table { return s.outcomes }

// AddDropProbe makes every increment of ctr during a packet's delivery
// account that packet to reason r at hook h, for drops netstack does not
// count itself (e.g. a transport handler that refuses a packet). Probes
// added later rank below earlier ones. Call it before traffic flows.
func (s *Stack) AddDropProbe(ctr *tcpip.StatCounter, r outcome.Reason, h outcome.Hook) {
	s.classifier.add(ctr, r, h)
}

// Sysctl returns the stack's tunables.
func (s *Stack) Sysctl() *Sysctls { return s.sysctl }

// outcomeLinkOf returns NIC nic's outcome link, or nil.
func (s *Stack) outcomeLinkOf(nic tcpip.NICID) *outcomeLink {
	if m := s.links.Load(); m != nil {
		return (*m)[nic]
	}
	return nil
}

func (s *Stack) setOutcomeLink(nic tcpip.NICID, o *outcomeLink) {
	s.linksMu.Lock()
	defer s.linksMu.Unlock()
	m := map[tcpip.NICID]*outcomeLink{nic: o}
	if old := s.links.Load(); old != nil {
		for k, v := range *old {
			if k != nic {
				m[k] = v
			}
		}
	}
	s.links.Store(&m)
}

// NICOptions configures AttachNIC.
type NICOptions struct {
	// ID is the NIC's ID; zero means the stack's next (NextNICID). Take
	// one beforehand when code on the link's reader needs it: the reader
	// may deliver packets before AttachNIC returns.
	ID tcpip.NICID
	// Name is the NIC's name in netstack (shown by iptables -i/-o).
	Name string
	// Promiscuous makes the NIC accept packets for any address and send
	// from any address (gateway mode). Router mode leaves it off, because a
	// promiscuous NIC treats every packet as local and forwards nothing.
	Promiscuous bool
	// Addresses are assigned to the NIC.
	Addresses []tcpip.AddressWithPrefix
	// DefaultRoute installs IPv4 and IPv6 default routes through the NIC.
	DefaultRoute bool
}

// AttachNIC creates a NIC on ep and configures it. Every packet the NIC
// receives is accounted to an outcome on Outcomes().Link(opts.Name).
func (s *Stack) AttachNIC(ep stack.LinkEndpoint, opts NICOptions) (tcpip.NICID, error) {
	id := opts.ID
	if id == 0 {
		id = s.NextNICID()
	} else if s.HasNIC(id) {
		return 0, fmt.Errorf("attach nic %q: id %d is in use", opts.Name, id)
	}
	ol := &outcomeLink{WrappedLink: WrappedLink{LinkEndpoint: ep}, s: s, l: s.outcomes.Link(opts.Name), routes: !opts.Promiscuous}
	ol.deferred.c = &ol.queued
	s.setOutcomeLink(id, ol)
	if err := s.CreateNICWithOptions(id, ol, stack.NICOptions{Name: opts.Name}); err != nil {
		return 0, Error("create nic", err)
	}
	if opts.Promiscuous {
		if err := s.SetPromiscuousMode(id, true); err != nil {
			return 0, Error("promiscuous", err)
		}
		if err := s.SetSpoofing(id, true); err != nil {
			return 0, Error("spoofing", err)
		}
	}
	for _, a := range opts.Addresses {
		proto := ipv4.ProtocolNumber
		if a.Address.Len() == header.IPv6AddressSize {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: a}
		if err := s.AddProtocolAddress(id, pa, stack.AddressProperties{}); err != nil {
			return 0, Error(fmt.Sprintf("add address %s", a), err)
		}
	}
	if opts.DefaultRoute {
		s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: id})
		s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: id})
	}
	s.log.Info("nic attached", "nic", id, "name", opts.Name, "promiscuous", opts.Promiscuous)
	return id, nil
}

// ErrNoNIC is returned for a NIC id AttachNIC did not create, or whose
// link is detached.
var ErrNoNIC = errors.New("no such nic")

// DeliverInbound hands pkt (a complete IP packet in its payload) to NIC id
// as if the NIC's link had received it, accounted like any received
// packet, then runs deferred TCP processing. It is how a packet the
// appliance builds for netstack itself reaches netstack's sockets, as
// Linux loops a locally addressed packet back through lo (REJECT at
// OUTPUT). The caller keeps its reference to pkt. It must not be called
// from inside netstack (a hook, an endpoint callback): delivery takes
// locks the caller may hold.
func (s *Stack) DeliverInbound(id tcpip.NICID, proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) error {
	ol := s.outcomeLinkOf(id)
	if ol == nil {
		return fmt.Errorf("deliver to nic %d: %w", id, ErrNoNIC)
	}
	d := ol.disp.Load()
	if d == nil {
		return fmt.Errorf("deliver to nic %d: %w", id, ErrNoNIC)
	}
	d.DeliverNetworkPacket(proto, pkt)
	tcp.ProcessDeferred()
	return nil
}
