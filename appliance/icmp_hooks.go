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
func (g *Gateway) echoHooksIn(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
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
	return ns.Run(hooks.Prerouting, pkt, g.nic, 0) && ns.Run(hooks.Input, pkt, g.nic, 0)
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
