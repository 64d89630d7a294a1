// Package appliance runs the appliance's modes on top of netstack. Gateway
// mode terminates a container's TCP, UDP and ICMP in netstack and relays them
// through host sockets. Start with NewGateway.
package appliance

import (
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/nsappliance/appliance/netstack"
)

// Layout is the address plan of one container link, as slirp4netns lays it
// out: the container at .100, the gateway at .2, DNS at .3 (::100, ::2, ::3
// for IPv6).
type Layout struct {
	Prefix    netip.Prefix
	Container netip.Addr
	Gateway   netip.Addr
	DNS       netip.Addr
}

// NewLayout computes the layout of prefix. The prefix must leave room for
// host number 100.
func NewLayout(prefix netip.Prefix) (Layout, error) {
	if !prefix.IsValid() {
		return Layout{}, fmt.Errorf("cidr %v: invalid", prefix)
	}
	p := prefix.Masked()
	bits := p.Addr().BitLen()
	if need := map[int]int{32: 7, 128: 9}[bits]; bits-p.Bits() < need {
		return Layout{}, fmt.Errorf("cidr %v: too small, need room for host .100 / ::100 (at most /%d)", prefix, bits-need)
	}
	// Host numbers are written the way users read them: .100 in IPv4 is
	// decimal, ::100 in IPv6 is the hex group 0x0100.
	nth := func(v4, v6 uint16) netip.Addr {
		b := p.Addr().AsSlice()
		n := v4
		if bits == 128 {
			n = v6
		}
		b[len(b)-2] |= byte(n >> 8)
		b[len(b)-1] |= byte(n)
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	return Layout{Prefix: p, Container: nth(100, 0x100), Gateway: nth(2, 2), DNS: nth(3, 3)}, nil
}

// Publish is one -p/--publish rule: listen on the host at Host and relay each
// connection (or UDP flow) to the container's port Port.
//
// Host's zero (invalid) Addr, as ParsePublish gives when no IP is written,
// listens on all host addresses, IPv4 and IPv6 (as does an explicit ::); an
// explicit 0.0.0.0 listens on IPv4 only. Host port 0 picks a free port (see
// Gateway.PublishAddrs).
type Publish struct {
	Host  netip.AddrPort // unspecified address means all host addresses
	Port  uint16
	Proto string // "tcp" or "udp"
}

// ParsePublish parses [IP:]HOSTPORT:PORT[/tcp|/udp]; IPv6 hosts are written
// in brackets ([::1]:8080:80).
func ParsePublish(s string) (Publish, error) {
	return parsePublish(s)
}

// Options configures a gateway. The zero value of each field is the
// documented default.
type Options struct {
	// Stack configures netstack.
	Stack netstack.Options
	// IPv4 is the container link's IPv4 layout (required).
	IPv4 Layout
	// IPv6 is the container link's IPv6 layout; the zero Layout turns IPv6
	// off.
	IPv6 Layout
	// DNSUpstreams are the servers the DNS address forwards to, as
	// host:port. Empty means the nameservers in /etc/resolv.conf.
	DNSUpstreams []netip.AddrPort
	// AllowHostLoopback maps the gateway address to the host's 127.0.0.1 /
	// ::1. Off, nothing on the host's loopback is reachable.
	AllowHostLoopback bool
	// Publish lists host ports relayed into the container.
	Publish []Publish
	// MaxPendingSYN bounds connections whose host-side dial is under way.
	// Zero means 4096.
	MaxPendingSYN int
	// DialTimeout bounds a host-side TCP dial. Zero means 10s.
	DialTimeout time.Duration
	// MaxUDPFlows bounds concurrent UDP flows. Zero means 4096.
	MaxUDPFlows int
	// UDPIdleTimeout closes a UDP flow with no traffic either way. Zero
	// means 60s (DNS flows: 10s).
	UDPIdleTimeout time.Duration
	// Rules is iptables-save / ip6tables-save text applied before the
	// first packet (--rules); a parse error fails NewGateway.
	Rules RuleText
	// EarlyFilters are early filters on the container link's reader
	// (tun.EndpointOptions.Filter), compiled from the raw table.
	EarlyFilters []*EarlyFilter
	// Batch, if set, is called by the container link's readers around each
	// batch they deliver (tun.EndpointOptions.BeforeBatch/AfterBatch,
	// emulate.Options.BeforeDeliver/AfterDeliver); small relay work that a
	// batch starts then runs on the reader after the batch instead of on a
	// new goroutine. Nil starts a goroutine every time.
	Batch *LinkBatch
	// HostPoll, if set, is served by the link's reader (given it as
	// tun.EndpointOptions.Also) instead of a host poller goroutine.
	HostPoll *ReaderHostPoll
	// CCRoutes give TCP connections whose host-side destination is in a
	// prefix their own congestion control (Linux: ip route ... congctl).
	CCRoutes []CCRoute
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
}
