package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
)

// Names of router mode's NICs in netstack (shown by iptables -i/-o).
const (
	RouterNICA = "a"
	RouterNICB = "b"
)

// RouterOptions configures NewRouter. The zero value of each field is the
// documented default.
type RouterOptions struct {
	// Stack configures netstack.
	Stack netstack.Options
	// IPv4A and IPv4B are the IPv4 layouts of links a and b (required);
	// the router takes the Gateway address (.2) on each.
	IPv4A, IPv4B Layout
	// IPv6A and IPv6B are the IPv6 layouts; both zero turns IPv6 off.
	IPv6A, IPv6B Layout
	// Rules is iptables-save / ip6tables-save text applied before the
	// first packet (--rules); a parse error fails NewRouter.
	Rules RuleText
	// EarlyFilters are early filters on the links' readers, compiled from
	// the raw table.
	EarlyFilters []*EarlyFilter
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
}

// Router forwards IP between two links inside netstack, as a Linux router
// with ip_forward=1 would: netstack decrements TTL / hop limit and answers
// with ICMP time exceeded, unreachable and fragmentation needed / packet too
// big. Create it with NewRouter; stop it with Close.
type Router struct {
	stack      *netstack.Stack
	fw         *Firewall
	nicA, nicB tcpip.NICID
	links      []*ownedLink
	log        *slog.Logger
	closeOnce  sync.Once
}

// NewRouter validates opts and builds a netstack with epA and epB as its
// non-promiscuous NICs RouterNICA and RouterNICB (a promiscuous NIC would
// take every packet as local and forward nothing), the gateway addresses of
// each layout on its link, a route for each subnet through its NIC, and
// forwarding on for IPv4 and IPv6. On error nothing is left running and the
// endpoints are not closed. On success the router owns both: Close closes
// them.
func NewRouter(epA, epB stack.LinkEndpoint, opts RouterOptions) (*Router, error) {
	if epA == nil || epB == nil {
		return nil, errors.New("router: nil link endpoint")
	}
	if err := checkRouterOptions(&opts); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Stack.Logger == nil {
		opts.Stack.Logger = opts.Logger
	}
	s, err := netstack.New(opts.Stack)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	r := &Router{stack: s, log: opts.Logger.With("component", "router")}
	if r.fw, err = newFirewallWith(s, opts.Rules, opts.EarlyFilters, opts.Logger); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("router: %w", err)
	}
	links := []struct {
		name   string
		ep     stack.LinkEndpoint
		v4, v6 Layout
		id     *tcpip.NICID
	}{
		{RouterNICA, epA, opts.IPv4A, opts.IPv6A, &r.nicA},
		{RouterNICB, epB, opts.IPv4B, opts.IPv6B, &r.nicB},
	}
	for _, l := range links {
		addrs := []tcpip.AddressWithPrefix{addrWithPrefix(l.v4.Gateway, l.v4.Prefix)}
		if l.v6.Prefix.IsValid() {
			addrs = append(addrs, addrWithPrefix(l.v6.Gateway, l.v6.Prefix))
		}
		link := newOwnedLink(l.ep)
		r.links = append(r.links, link)
		id, err := s.AttachNIC(link, netstack.NICOptions{Name: l.name, Addresses: addrs})
		if err != nil {
			return r.fail(fmt.Errorf("router: nic %s: %w", l.name, err))
		}
		*l.id = id
		for _, p := range []Layout{l.v4, l.v6} {
			if p.Prefix.IsValid() {
				s.AddRoute(tcpip.Route{Destination: subnet(p), NIC: id})
			}
		}
	}
	for _, p := range []tcpip.NetworkProtocolNumber{ipv4.ProtocolNumber, ipv6.ProtocolNumber} {
		if err := s.SetForwardingDefaultAndAllNICs(p, true); err != nil {
			return r.fail(fmt.Errorf("router: %w", netstack.Error("enable forwarding", err)))
		}
	}
	r.log.Info("router started", "a", opts.IPv4A.Prefix, "b", opts.IPv4B.Prefix,
		"a6", opts.IPv6A.Prefix, "b6", opts.IPv6B.Prefix)
	return r, nil
}

func checkRouterOptions(o *RouterOptions) error {
	if err := checkLayout("IPv4A", o.IPv4A, true); err != nil {
		return err
	}
	if err := checkLayout("IPv4B", o.IPv4B, true); err != nil {
		return err
	}
	if o.IPv4A.Prefix.Overlaps(o.IPv4B.Prefix) {
		return fmt.Errorf("options: IPv4A %v and IPv4B %v overlap", o.IPv4A.Prefix, o.IPv4B.Prefix)
	}
	v6a, v6b := o.IPv6A.Prefix.IsValid(), o.IPv6B.Prefix.IsValid()
	if v6a != v6b {
		return errors.New("options: give both IPv6A and IPv6B, or neither")
	}
	if v6a {
		if err := checkLayout("IPv6A", o.IPv6A, false); err != nil {
			return err
		}
		if err := checkLayout("IPv6B", o.IPv6B, false); err != nil {
			return err
		}
		if o.IPv6A.Prefix.Overlaps(o.IPv6B.Prefix) {
			return fmt.Errorf("options: IPv6A %v and IPv6B %v overlap", o.IPv6A.Prefix, o.IPv6B.Prefix)
		}
	}
	return nil
}

func subnet(l Layout) tcpip.Subnet {
	sn, err := tcpip.NewSubnet(tcpip.AddrFromSlice(l.Prefix.Addr().AsSlice()),
		tcpip.MaskFromBytes(netMask(l.Prefix)))
	if err != nil {
		panic(fmt.Sprintf("subnet of %v: %v", l.Prefix, err)) // Layout prefixes are masked
	}
	return sn
}

func netMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// fail tears down a router NewRouter could not finish, leaving the link
// endpoints open: the caller still owns them.
func (r *Router) fail(err error) (*Router, error) {
	for _, l := range r.links {
		l.keepOpen()
	}
	r.stack.Destroy()
	return nil, err
}

// Stack returns the router's netstack.
func (r *Router) Stack() *netstack.Stack { return r.stack }

// Firewall returns the router's iptables.
func (r *Router) Firewall() *Firewall { return r.fw }

// Close destroys the stack, closing both link endpoints. It is idempotent
// and always returns nil.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.stack.Destroy()
		r.log.Info("router closed")
	})
	return nil
}

// Counters returns netstack's forwarding counters (tcpip.IPForwardingStats
// as forwarding_*, e.g. forwarding_exhausted_ttl, forwarding_packet_too_big),
// the IP packet counts (ip_packets_received, ip_packets_sent, which includes
// forwarded packets, ...) and the ICMP messages netstack sent
// (icmp4_sent_time_exceeded, icmp6_sent_packet_too_big, ...), picked from
// netstack.Stack.Counters.
func (r *Router) Counters() map[string]uint64 {
	m := make(map[string]uint64)
	for k, v := range r.stack.Counters() {
		switch {
		case strings.HasPrefix(k, "ip_forwarding_"):
			m[strings.TrimPrefix(k, "ip_")] = v
		case routerIPCounters[k]:
			m[k] = v
		case strings.HasPrefix(k, "icmp_v4_packets_sent_"):
			m["icmp4_sent_"+strings.TrimPrefix(k, "icmp_v4_packets_sent_")] = v
		case strings.HasPrefix(k, "icmp_v6_packets_sent_"):
			m["icmp6_sent_"+strings.TrimPrefix(k, "icmp_v6_packets_sent_")] = v
		}
	}
	return m
}

var routerIPCounters = map[string]bool{
	"ip_packets_received": true, "ip_packets_sent": true, "ip_packets_delivered": true,
	"ip_invalid_destination_addresses_received": true, "ip_outgoing_packet_errors": true,
}
