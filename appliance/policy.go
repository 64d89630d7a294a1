package appliance

import (
	"errors"
	"net/netip"
)

// proto is the transport a policy decision is for.
type proto uint8

const (
	protoTCP proto = iota
	protoUDP
	protoICMP
	numProtos
)

func (p proto) String() string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMP:
		return "icmp"
	}
	return "unknown"
}

var (
	// errDenied means the container may not reach the destination.
	errDenied = errors.New("destination denied by policy")
	// errDNS means the destination is the DNS address's port 53: the flow
	// goes to the DNS forwarder, not to a host address.
	errDNS = errors.New("dns address")
)

var (
	ip4Loopback  = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	ip4Broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	nat64Prefix  = netip.MustParsePrefix("64:ff9b::/96")
)

// policy decides where a container's destination goes on the host. It is a
// value: build it once in NewGateway and share it freely.
type policy struct {
	v4, v6        Layout // v6 is the zero Layout when IPv6 is off
	allowLoopback bool
}

// resolve maps dst, as the container addressed it, to the host address to
// dial (port 0 for ICMP). It returns errDNS for the DNS address's port 53
// over TCP or UDP and errDenied for anything the container may not reach:
// the host's loopback (unless allowLoopback), unspecified, multicast and
// broadcast addresses, the container link itself, and any of those hidden
// in v4-mapped, v4-compatible or NAT64 form.
func (p policy) resolve(dst netip.AddrPort, pr proto) (netip.AddrPort, error) {
	a := dst.Addr().WithZone("")
	port := dst.Port()
	if !a.IsValid() {
		return netip.AddrPort{}, errDenied
	}
	if pr != protoICMP && port == 0 {
		return netip.AddrPort{}, errDenied
	}
	if pr == protoICMP {
		port = 0
	}
	// The link's own addresses, compared as the container wrote them:
	// netstack only sees ::ffff:10.0.2.3 on an IPv6 packet, which is not
	// the DNS address, so that form falls through to the checks below.
	switch a {
	case p.v4.DNS, p.v6.DNS:
		if port == 53 && pr != protoICMP {
			return netip.AddrPort{}, errDNS
		}
		return netip.AddrPort{}, errDenied
	case p.v4.Gateway:
		if !p.allowLoopback {
			return netip.AddrPort{}, errDenied
		}
		return netip.AddrPortFrom(ip4Loopback, port), nil
	case p.v6.Gateway:
		if !p.allowLoopback {
			return netip.AddrPort{}, errDenied
		}
		return netip.AddrPortFrom(netip.IPv6Loopback(), port), nil
	}
	a = a.Unmap()
	if a == metadata4 || a == metadata6 {
		// Also a rule of the built-in policy chain; kept here so no NAT
		// rule can route a flow around it.
		return netip.AddrPort{}, errDenied
	}
	if a.Is6() {
		b := a.As16()
		// ::/96 holds ::, ::1 and the deprecated v4-compatible addresses;
		// only ::1 is ever a real destination.
		if a != netip.IPv6Loopback() && [12]byte(b[:12]) == [12]byte{} {
			return netip.AddrPort{}, errDenied
		}
		if nat64Prefix.Contains(a) && b[12] == 127 && !p.allowLoopback {
			return netip.AddrPort{}, errDenied
		}
		if a.IsLinkLocalUnicast() {
			return netip.AddrPort{}, errDenied // needs a zone we cannot know
		}
	}
	switch {
	case a.IsUnspecified(), a.IsMulticast(), a == ip4Broadcast:
		return netip.AddrPort{}, errDenied
	case a.Is4() && a.As4()[0] == 0: // 0.0.0.0/8: "this host"
		return netip.AddrPort{}, errDenied
	case a.IsLoopback() && !p.allowLoopback:
		return netip.AddrPort{}, errDenied
	case p.v4.Prefix.Contains(a), p.v6.Prefix.Contains(a):
		// The rest of the virtual link: nothing there but the container.
		return netip.AddrPort{}, errDenied
	}
	return netip.AddrPortFrom(a, port), nil
}
