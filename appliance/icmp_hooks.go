package appliance

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/header/parse"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/hooks"
)

// echoHooksIn passes a container's echo request, which the gateway relays
// itself instead of handing it to netstack, through PREROUTING and INPUT
// as netstack would have: rules and conntrack see pings like any other
// terminated traffic. It parses pkt's headers in place (the caller does
// not deliver pkt anywhere else). False means a hook dropped it.
//
// NAT applies as to TCP and UDP: req gets the request's addresses and
// identifier as the hooks left them, so the host pings a DNAT rule's
// destination, and the reply, built from req, is the reply of the NATed
// connection, which OUTPUT and POSTROUTING translate back to what the
// container sent (the pinged address, its own identifier).
func (g *Gateway) echoHooksIn(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer, req *echoRequest) bool {
	if g.fw == nil {
		return true
	}
	switch proto {
	case header.IPv4ProtocolNumber:
		if !parse.IPv4(pkt) || !parse.ICMPv4(pkt) {
			return true // classifyEcho took it as an echo request; leave it be
		}
	case header.IPv6ProtocolNumber:
		if _, _, _, _, ok := parse.IPv6(pkt); !ok || !parse.ICMPv6(pkt) {
			return true
		}
	}
	pkt.NetworkProtocolNumber = proto
	pkt.InputNICID = g.nic
	ns := g.fw.Netstack()
	if !ns.Run(hooks.Prerouting, pkt, g.nic, 0) || !ns.Run(hooks.Input, pkt, g.nic, 0) {
		return false
	}
	nh, th := pkt.NetworkHeader().Slice(), pkt.TransportHeader().Slice()
	if proto == header.IPv4ProtocolNumber && len(nh) >= header.IPv4MinimumSize && len(th) >= header.ICMPv4MinimumSize {
		ip := header.IPv4(nh)
		req.src, req.dst = toAddr(ip.SourceAddress()), toAddr(ip.DestinationAddress())
		req.id = header.ICMPv4(th).Ident()
	} else if proto == header.IPv6ProtocolNumber && len(nh) >= header.IPv6MinimumSize && len(th) >= header.ICMPv6EchoMinimumSize {
		ip := header.IPv6(nh)
		req.src, req.dst = toAddr(ip.SourceAddress()), toAddr(ip.DestinationAddress())
		req.id = header.ICMPv6(th).Ident()
	}
	return true
}

// echoHooksOut passes the relayed echo reply (headers parsed) through
// OUTPUT and POSTROUTING before it is written to the container.
func (g *Gateway) echoHooksOut(pkt *stack.PacketBuffer) bool {
	if g.fw == nil {
		return true
	}
	ns := g.fw.Netstack()
	return ns.Run(hooks.Output, pkt, 0, g.nic) && ns.Run(hooks.Postrouting, pkt, 0, g.nic)
}
