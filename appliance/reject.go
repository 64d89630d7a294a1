package appliance

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/nsappliance/appliance/hooks"
	"github.com/nsappliance/appliance/iptables"
)

// Sizes Linux quotes in ICMP errors: icmp_send fills a reply up to 576
// bytes, icmp6_send up to the IPv6 minimum MTU.
const (
	icmp4ErrorMax = 576
	icmp6ErrorMax = 1280
	answerTTL     = 64 // net.ipv4.ip_default_ttl, hop_limit
)

// reject answers p as ipt_REJECT / ip6t_REJECT would: a TCP RST for
// tcp-reset (to a TCP packet that is not itself a RST), otherwise an ICMP
// or ICMPv6 destination unreachable of the chosen code. Like Linux it never
// answers an ICMP error, a non-first fragment or a multicast or broadcast
// destination.
//
// A packet netstack itself sent (OUTPUT) is answered back to netstack: the
// answer leaves through OUTPUT and POSTROUTING and is then delivered as if
// received on the packet's outgoing NIC, so the sending endpoint sees the
// RST or ICMP error as a Linux socket does through lo.
func (fw *Firewall) reject(p *hooks.Packet, with iptables.RejectWith) {
	nic, local := p.InNIC, false
	if nic == 0 {
		nic, local = p.OutNIC, true
	}
	if nic == 0 || p.Fragment || p.Dst.IsMulticast() || p.Dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return
	}
	if with == iptables.RejectTCPReset {
		if p.Proto == hooks.ProtoTCP && p.HasL4 && p.TCPFlags&hooks.TCPRst == 0 {
			fw.sendReset(p, nic, local)
		}
		return
	}
	if p.Proto == hooks.ProtoICMP && isICMP4Error(p.ICMPType) || p.Proto == hooks.ProtoICMPv6 && p.ICMPType < 128 {
		return
	}
	fw.sendUnreachable(p, nic, with, local)
}

func isICMP4Error(t uint8) bool {
	switch t {
	case 3, 4, 5, 11, 12:
		return true
	}
	return false
}

// sendReset builds nf_send_reset's RST: addresses and ports swapped; if the
// offending segment had ACK, seq = its ack and no ACK; else ack = its seq +
// SYN + FIN + payload and the ACK flag.
func (fw *Firewall) sendReset(p *hooks.Packet, nic tcpip.NICID, local bool) {
	l4 := p.Buf.TransportHeader().Slice()
	oth := header.TCP(l4)
	payload := p.Buf.Data().Size()
	var f header.TCPFields
	f.SrcPort, f.DstPort = p.DstPort, p.SrcPort
	f.DataOffset = header.TCPMinimumSize
	f.Flags = header.TCPFlagRst
	if oth.Flags()&header.TCPFlagAck != 0 {
		f.SeqNum = oth.AckNumber()
	} else {
		ack := oth.SequenceNumber() + uint32(payload)
		if oth.Flags()&header.TCPFlagSyn != 0 {
			ack++
		}
		if oth.Flags()&header.TCPFlagFin != 0 {
			ack++
		}
		f.AckNum = ack
		f.Flags |= header.TCPFlagAck
	}
	tcp := make([]byte, header.TCPMinimumSize)
	header.TCP(tcp).Encode(&f)
	b, netLen, proto := ipPacket(p.Family, p.Dst, p.Src, hooks.ProtoTCP, tcp)
	src, dst := tcpip.AddrFromSlice(p.Dst.AsSlice()), tcpip.AddrFromSlice(p.Src.AsSlice())
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	header.TCP(b[netLen:]).SetChecksum(^checksum.Checksum(b[netLen:], xsum))
	fw.writeAnswer(nic, proto, b, netLen, header.TCPMinimumSize, p.Buf, true, local)
}

// sendUnreachable builds icmp_send's / icmp6_send's destination
// unreachable, quoting as much of the packet as fits. An answer to
// netstack's own packet (local) comes from the packet's destination.
func (fw *Firewall) sendUnreachable(p *hooks.Packet, nic tcpip.NICID, with iptables.RejectWith, local bool) {
	src := p.Dst
	if p.Hook == hooks.Forward {
		// A forwarded packet is answered from the router's own address on
		// the link back to the sender (Linux routes the error and takes
		// the source the route prefers).
		if a, ok := fw.nicAddr(nic, p.Family); ok {
			src = a
		}
	}
	orig := p.Buf.ToView()
	defer orig.Release()
	quote := orig.AsSlice()
	var icmp []byte
	if p.Family == hooks.IPv4 {
		if max := icmp4ErrorMax - header.IPv4MinimumSize - header.ICMPv4MinimumSize; len(quote) > max {
			quote = quote[:max]
		}
		icmp = make([]byte, header.ICMPv4MinimumSize+len(quote))
		icmp[0] = uint8(header.ICMPv4DstUnreachable)
		icmp[1] = icmp4Code(with)
		copy(icmp[header.ICMPv4MinimumSize:], quote)
		binary.BigEndian.PutUint16(icmp[2:], ^checksum.Checksum(icmp, 0))
		b, netLen, proto := ipPacket(p.Family, src, p.Src, hooks.ProtoICMP, icmp)
		fw.writeAnswer(nic, proto, b, netLen, header.ICMPv4MinimumSize, p.Buf, false, local)
		return
	}
	if max := icmp6ErrorMax - header.IPv6MinimumSize - header.ICMPv6DstUnreachableMinimumSize; len(quote) > max {
		quote = quote[:max]
	}
	icmp = make([]byte, header.ICMPv6DstUnreachableMinimumSize+len(quote))
	icmp[0] = uint8(header.ICMPv6DstUnreachable)
	icmp[1] = icmp6Code(with)
	copy(icmp[header.ICMPv6DstUnreachableMinimumSize:], quote)
	b, netLen, proto := ipPacket(p.Family, src, p.Src, hooks.ProtoICMPv6, icmp)
	s6, d6 := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(p.Src.AsSlice())
	xsum := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, s6, d6, uint16(len(icmp)))
	binary.BigEndian.PutUint16(b[netLen+2:], ^checksum.Checksum(b[netLen:], xsum))
	fw.writeAnswer(nic, proto, b, netLen, header.ICMPv6DstUnreachableMinimumSize, p.Buf, false, local)
}

func icmp4Code(w iptables.RejectWith) uint8 {
	switch w {
	case iptables.RejectICMPNetUnreachable:
		return 0
	case iptables.RejectICMPHostUnreachable:
		return 1
	case iptables.RejectICMPProtoUnreachable:
		return 2
	case iptables.RejectICMPNetProhibited:
		return 9
	case iptables.RejectICMPHostProhibited:
		return 10
	case iptables.RejectICMPAdminProhibited:
		return 13
	}
	return 3 // port unreachable, the default
}

func icmp6Code(w iptables.RejectWith) uint8 {
	switch w {
	case iptables.RejectICMP6NoRoute:
		return 0
	case iptables.RejectICMP6AdmProhibited:
		return 1
	case iptables.RejectICMP6AddrUnreachable:
		return 3
	case iptables.RejectICMP6PolicyFail:
		return 5
	case iptables.RejectICMP6RejectRoute:
		return 6
	}
	return 4 // port unreachable, the default
}

// ipPacket prepends an IPv4 (DF, TTL 64) or IPv6 (hop limit 64) header to
// l4.
func ipPacket(f hooks.Family, src, dst netip.Addr, proto uint8, l4 []byte) ([]byte, int, tcpip.NetworkProtocolNumber) {
	sa, da := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	if f == hooks.IPv4 {
		b := make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), Flags: header.IPv4FlagDontFragment, TTL: answerTTL, Protocol: proto, SrcAddr: sa, DstAddr: da})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], l4)
		return b, header.IPv4MinimumSize, header.IPv4ProtocolNumber
	}
	b := make([]byte, header.IPv6MinimumSize+len(l4))
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4)), TransportProtocol: tcpip.TransportProtocolNumber(proto), HopLimit: answerTTL, SrcAddr: sa, DstAddr: da})
	copy(b[header.IPv6MinimumSize:], l4)
	return b, header.IPv6MinimumSize, header.IPv6ProtocolNumber
}
