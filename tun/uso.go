package tun

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// splitUSO cuts a UDP GSO super-packet (IPv4 or IPv6 header, one UDP header,
// then datagrams of gsoSize bytes, the last possibly shorter) into the
// datagrams it stands for, as the kernel's __udp_gso_segment does, and calls
// emit with each one. emit must copy what it keeps: seg is reused. netstack
// has no UDP GSO type, so these are segmented here on receive.
func splitUSO(pkt []byte, gsoSize int, scratch []byte, emit func(seg []byte)) error {
	if gsoSize <= 0 {
		return fmt.Errorf("uso: gso_size %d", gsoSize)
	}
	var l3 int
	var v4 bool
	switch header.IPVersion(pkt) {
	case header.IPv4Version:
		if len(pkt) < header.IPv4MinimumSize {
			return fmt.Errorf("uso: short ipv4 header")
		}
		l3 = int(header.IPv4(pkt).HeaderLength())
		v4 = true
		if l3 < header.IPv4MinimumSize {
			return fmt.Errorf("uso: ipv4 header length %d", l3)
		}
		if header.IPv4(pkt).Protocol() != uint8(header.UDPProtocolNumber) {
			return fmt.Errorf("uso: ipv4 protocol %d is not udp", header.IPv4(pkt).Protocol())
		}
	case header.IPv6Version:
		l3 = header.IPv6MinimumSize
		if len(pkt) < l3 || header.IPv6(pkt).NextHeader() != uint8(header.UDPProtocolNumber) {
			return fmt.Errorf("uso: ipv6 packet without a plain udp header")
		}
	default:
		return fmt.Errorf("uso: not an ip packet")
	}
	hdrLen := l3 + header.UDPMinimumSize
	if len(pkt) < hdrLen {
		return fmt.Errorf("uso: short udp header")
	}
	payload := pkt[hdrLen:]
	if len(scratch) < hdrLen+gsoSize {
		return fmt.Errorf("uso: gso_size %d too large", gsoSize)
	}
	var src, dst tcpip.Address
	if v4 {
		ip := header.IPv4(pkt)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv6(pkt)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	id := uint16(0)
	if v4 {
		id = header.IPv4(pkt).ID()
	}
	for i := 0; len(payload) > 0; i++ {
		n := min(gsoSize, len(payload))
		seg := scratch[:hdrLen+n]
		copy(seg, pkt[:hdrLen])
		copy(seg[hdrLen:], payload[:n])
		payload = payload[n:]
		udpLen := uint16(header.UDPMinimumSize + n)
		if v4 {
			ip := header.IPv4(seg)
			ip.SetTotalLength(uint16(len(seg)))
			ip.SetID(id + uint16(i))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(seg).SetPayloadLength(udpLen)
		}
		u := header.UDP(seg[l3:])
		u.SetLength(udpLen)
		u.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, udpLen)
		xsum = checksum.Checksum(seg[l3:], xsum)
		if xsum != 0xffff {
			xsum = ^xsum
		}
		u.SetChecksum(xsum)
		emit(seg)
	}
	return nil
}
