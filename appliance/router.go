package appliance

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"

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
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
}

// Router forwards IP between two links inside netstack, as a Linux router
// with ip_forward=1 would: netstack decrements TTL / hop limit and answers
// with ICMP time exceeded, unreachable and fragmentation needed / packet too
// big. Create it with NewRouter; stop it with Close.
type Router struct {
	stack      *netstack.Stack
	nicA, nicB tcpip.NICID
	links      []*routerLink
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
		link := &routerLink{LinkEndpoint: l.ep}
		link.noClose.Store(true) // until NewRouter succeeds
		r.links = append(r.links, link)
		id, err := s.AttachNIC(link, netstack.NICOptions{Name: l.name, Addresses: addrs})
		if err != nil {
			s.Destroy()
			return nil, fmt.Errorf("router: nic %s: %w", l.name, err)
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
			s.Destroy()
			return nil, fmt.Errorf("router: %w", netstack.Error("enable forwarding", err))
		}
	}
	// From here on the stack owns the endpoints: Destroy closes them.
	for _, l := range r.links {
		l.noClose.Store(false)
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

// Stack returns the router's netstack.
func (r *Router) Stack() *netstack.Stack { return r.stack }

// Close destroys the stack, closing both link endpoints. It is idempotent
// and always returns nil.
func (r *Router) Close() error {
	r.closeOnce.Do(func() {
		r.stack.Destroy()
		r.log.Info("router closed")
	})
	return nil
}

// Counters returns netstack's forwarding counters (from
// tcpip.IPForwardingStats, e.g. forwarding_exhausted_ttl,
// forwarding_packet_too_big, forwarding_unrouteable) together with the IP
// packet counts (ip_packets_received, ip_packets_sent, which includes
// forwarded packets) and the ICMP errors netstack sent
// (icmp4_sent_time_exceeded, icmp6_sent_packet_too_big, ...).
func (r *Router) Counters() map[string]uint64 {
	st := r.stack.Stats()
	m := make(map[string]uint64)
	addCounters(m, "forwarding_", st.IP.Forwarding)
	m["ip_packets_received"] = st.IP.PacketsReceived.Value()
	m["ip_packets_sent"] = st.IP.PacketsSent.Value()
	m["ip_packets_delivered"] = st.IP.PacketsDelivered.Value()
	m["ip_invalid_destination_addresses_received"] = st.IP.InvalidDestinationAddressesReceived.Value()
	m["ip_outgoing_packet_errors"] = st.IP.OutgoingPacketErrors.Value()
	addCounters(m, "icmp4_sent_", st.ICMP.V4.PacketsSent.ICMPv4PacketStats)
	m["icmp4_sent_rate_limited"] = st.ICMP.V4.PacketsSent.RateLimited.Value()
	addCounters(m, "icmp6_sent_", st.ICMP.V6.PacketsSent.ICMPv6PacketStats)
	m["icmp6_sent_rate_limited"] = st.ICMP.V6.PacketsSent.RateLimited.Value()
	return m
}

// addCounters adds every *tcpip.StatCounter field of the struct v to m,
// named prefix + the field name in snake_case.
func addCounters(m map[string]uint64, prefix string, v any) {
	rv := reflect.ValueOf(v)
	for i := 0; i < rv.NumField(); i++ {
		c, ok := rv.Field(i).Interface().(*tcpip.StatCounter)
		if !ok || c == nil {
			continue
		}
		m[prefix+snake(rv.Type().Field(i).Name)] = c.Value()
	}
}

// snake turns a Go field name into snake_case: PacketTooBig ->
// packet_too_big, ExhaustedTTL -> exhausted_ttl.
func snake(s string) string {
	var b strings.Builder
	rs := []rune(s)
	for i, c := range rs {
		if unicode.IsUpper(c) && i > 0 && (unicode.IsLower(rs[i-1]) || i+1 < len(rs) && unicode.IsLower(rs[i+1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}

// routerLink hands a link endpoint to the stack and holds back its Close
// while noClose is set (NewRouter failed: the caller still owns it). GSO
// passes through, so super-packets are forwarded whole.
type routerLink struct {
	stack.LinkEndpoint
	noClose atomic.Bool
}

var (
	_ stack.LinkEndpoint = (*routerLink)(nil)
	_ stack.GSOEndpoint  = (*routerLink)(nil)
)

// GSOMaxSize implements stack.GSOEndpoint for the wrapped endpoint.
func (l *routerLink) GSOMaxSize() uint32 {
	if g, ok := l.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.GSOMaxSize()
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint for the wrapped endpoint.
func (l *routerLink) SupportedGSO() stack.SupportedGSO {
	if g, ok := l.LinkEndpoint.(stack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return stack.GSONotSupported
}

// Close implements stack.LinkEndpoint.
func (l *routerLink) Close() {
	if !l.noClose.Load() {
		l.LinkEndpoint.Close()
	}
}
