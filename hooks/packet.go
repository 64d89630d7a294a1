package hooks

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Family is an address family.
type Family uint8

// Address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// IP protocol numbers the package looks into.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
)

// TCP flag bits as in the header's flags byte.
const (
	TCPFin uint8 = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
)

// Packet is what a hook function sees: the packet buffer, where it is, its
// parsed addresses and ports, and its conntrack entry. Hook functions may
// read every field and rewrite the packet with SetSrc, SetDst, SetSrcPort
// and SetDstPort, which keep the parsed fields and the checksums right. A
// Packet is only valid during the call.
type Packet struct {
	Hook   Hook
	Family Family
	// Buf is netstack's packet. Rewrite it only through the Set methods
	// or by hand followed by Reparse.
	Buf *stack.PacketBuffer
	// Route is the output route at OUTPUT, FORWARD and POSTROUTING (nil
	// at PREROUTING and INPUT, and at FORWARD for a packet netstack hands
	// to another of its own NICs).
	Route *stack.Route
	// InIface and OutIface are NIC names, empty where Linux has no
	// device: no input at OUTPUT and POSTROUTING, no output at PREROUTING
	// and INPUT.
	InIface, OutIface string
	InNIC, OutNIC     tcpip.NICID

	// Conn is the packet's connection (nil: untracked or invalid), Dir the
	// direction it travels in and State what -m conntrack --ctstate sees.
	Conn  *Conn
	Dir   Dir
	State CTState

	Src, Dst netip.Addr
	// Proto is the transport protocol (IPv6: after extension headers).
	Proto uint8
	// SrcPort and DstPort are TCP/UDP ports; for ICMP echo, SrcPort is
	// the identifier.
	SrcPort, DstPort   uint16
	TCPFlags           uint8
	ICMPType, ICMPCode uint8
	// Length is the IP packet's length (IPv6: payload length + 40).
	Length int
	// Fragment is set for a non-first IPv4 fragment (no transport header).
	Fragment bool
	// HasL4 tells that the transport header is present and long enough
	// for the ports (or ICMP type/code) above.
	HasL4 bool

	net, l4 []byte
}

// reset prepares p for a packet at hook h.
func (p *Packet) reset(h Hook, pkt *stack.PacketBuffer, r *stack.Route) {
	*p = Packet{Hook: h, Buf: pkt, Route: r}
}

// NewPacket parses pkt for a hook function, without conntrack; for tests
// and for packets the appliance builds itself.
func NewPacket(h Hook, pkt *stack.PacketBuffer) *Packet {
	p := &Packet{}
	p.reset(h, pkt, nil)
	if !p.parse() {
		return nil
	}
	return p
}

// parse fills the parsed fields from Buf. It returns false for a packet
// without a usable network header.
func (p *Packet) parse() bool {
	pkt := p.Buf
	p.net = pkt.NetworkHeader().Slice()
	switch pkt.NetworkProtocolNumber {
	case header.IPv4ProtocolNumber:
		if len(p.net) < header.IPv4MinimumSize {
			return false
		}
		h := header.IPv4(p.net)
		p.Family = IPv4
		p.Src = netip.AddrFrom4([4]byte(p.net[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(p.net[16:20]))
		p.Proto = p.net[9]
		p.Length = int(h.TotalLength())
		p.Fragment = h.FragmentOffset() != 0
	case header.IPv6ProtocolNumber:
		if len(p.net) < header.IPv6MinimumSize {
			return false
		}
		p.Family = IPv6
		p.Src = netip.AddrFrom16([16]byte(p.net[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(p.net[24:40]))
		p.Proto = p.net[6]
		if t := pkt.TransportProtocolNumber; t != 0 {
			p.Proto = uint8(t)
		}
		p.Length = int(binary.BigEndian.Uint16(p.net[4:6])) + header.IPv6MinimumSize
	default:
		return false
	}
	p.parseL4()
	return true
}

func (p *Packet) parseL4() {
	p.l4 = nil
	p.HasL4 = false
	if p.Fragment || uint8(p.Buf.TransportProtocolNumber) != p.Proto {
		return
	}
	l4 := p.Buf.TransportHeader().Slice()
	switch p.Proto {
	case ProtoTCP:
		if len(l4) < header.TCPMinimumSize {
			return
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:])
		p.DstPort = binary.BigEndian.Uint16(l4[2:])
		p.TCPFlags = l4[13]
	case ProtoUDP:
		if len(l4) < header.UDPMinimumSize {
			return
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:])
		p.DstPort = binary.BigEndian.Uint16(l4[2:])
	case ProtoICMP, ProtoICMPv6:
		if len(l4) < 4 {
			return
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
		if len(l4) >= 8 && isEcho(p.Proto, p.ICMPType) {
			p.SrcPort = binary.BigEndian.Uint16(l4[4:])
		}
	default:
		return
	}
	p.l4 = l4
	p.HasL4 = true
}

// Reparse refreshes the parsed fields after the packet was changed by hand.
func (p *Packet) Reparse() bool { return p.parse() }

func isEcho(proto, typ uint8) bool {
	if proto == ProtoICMP {
		return typ == uint8(header.ICMPv4Echo) || typ == uint8(header.ICMPv4EchoReply)
	}
	return typ == uint8(header.ICMPv6EchoRequest) || typ == uint8(header.ICMPv6EchoReply)
}

// partial reports whether the L4 checksum holds only the pseudo-header sum
// (a GSO packet the device or kernel completes).
func (p *Packet) partial() bool {
	return p.Proto == ProtoTCP && p.Buf.GSOOptions.NeedsCsum
}

// l4CsumOff is the offset of the checksum in the transport header that
// covers the pseudo-header, or -1.
func (p *Packet) l4CsumOff() int {
	switch p.Proto {
	case ProtoTCP:
		return 16
	case ProtoUDP:
		return 6
	case ProtoICMPv6:
		return 2
	}
	return -1
}

// SetSrc rewrites the source address (same family), fixing the IPv4
// header checksum and the transport checksum incrementally.
func (p *Packet) SetSrc(a netip.Addr) { p.setAddr(true, a) }

// SetDst rewrites the destination address like SetSrc.
func (p *Packet) SetDst(a netip.Addr) { p.setAddr(false, a) }

func (p *Packet) setAddr(src bool, a netip.Addr) {
	var off, n int
	var nb [16]byte
	if p.Family == IPv4 {
		if !a.Is4() {
			return
		}
		off, n = 16, 4
		if src {
			off = 12
		}
		b4 := a.As4()
		copy(nb[:], b4[:])
	} else {
		if !a.Is6() {
			return
		}
		off, n = 24, 16
		if src {
			off = 8
		}
		nb = a.As16()
	}
	var ob [16]byte
	copy(ob[:], p.net[off:off+n])
	if ob == nb {
		return
	}
	copy(p.net[off:off+n], nb[:n])
	if p.Family == IPv4 {
		c := binary.BigEndian.Uint16(p.net[10:])
		binary.BigEndian.PutUint16(p.net[10:], UpdateChecksum(c, ob[:n], nb[:n]))
	}
	if p.HasL4 {
		if co := p.l4CsumOff(); co >= 0 && len(p.l4) >= co+2 {
			c := binary.BigEndian.Uint16(p.l4[co:])
			switch {
			case p.Proto == ProtoUDP && c == 0 && p.Family == IPv4:
				// No checksum: leave it so.
			case p.partial():
				binary.BigEndian.PutUint16(p.l4[co:], UpdatePartial(c, ob[:n], nb[:n]))
			default:
				c = UpdateChecksum(c, ob[:n], nb[:n])
				if c == 0 && p.Proto == ProtoUDP {
					c = 0xffff
				}
				binary.BigEndian.PutUint16(p.l4[co:], c)
			}
		}
	}
	if src {
		p.Src = a
	} else {
		p.Dst = a
	}
}

// SetSrcPort rewrites the TCP/UDP source port (the ICMP echo identifier for
// ICMP echo), fixing the checksum.
func (p *Packet) SetSrcPort(port uint16) { p.setPort(true, port) }

// SetDstPort rewrites the TCP/UDP destination port.
func (p *Packet) SetDstPort(port uint16) { p.setPort(false, port) }

func (p *Packet) setPort(src bool, port uint16) {
	if !p.HasL4 {
		return
	}
	var off, co int
	switch p.Proto {
	case ProtoTCP, ProtoUDP:
		off = 2
		if src {
			off = 0
		}
		co = p.l4CsumOff()
	case ProtoICMP, ProtoICMPv6:
		if !isEcho(p.Proto, p.ICMPType) || !src || len(p.l4) < 8 {
			return
		}
		off, co = 4, 2
	default:
		return
	}
	old := binary.BigEndian.Uint16(p.l4[off:])
	if old == port {
		return
	}
	binary.BigEndian.PutUint16(p.l4[off:], port)
	c := binary.BigEndian.Uint16(p.l4[co:])
	switch {
	case p.Proto == ProtoUDP && c == 0 && p.Family == IPv4:
	case p.partial():
		// Ports are not in the pseudo-header: the device sums them.
	default:
		c = UpdateChecksum16(c, old, port)
		if c == 0 && p.Proto == ProtoUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(p.l4[co:], c)
	}
	if src {
		p.SrcPort = port
	} else {
		p.DstPort = port
	}
}

// Tuple returns the packet's conntrack tuple and whether it has one.
func (p *Packet) Tuple() (Tuple, bool) {
	t := Tuple{Src: p.Src, Dst: p.Dst, Proto: p.Proto}
	switch p.Proto {
	case ProtoTCP, ProtoUDP:
		if !p.HasL4 {
			return t, false
		}
		t.SrcPort, t.DstPort = p.SrcPort, p.DstPort
	case ProtoICMP, ProtoICMPv6:
		if !p.HasL4 || !isEcho(p.Proto, p.ICMPType) {
			return t, false
		}
		t.SrcPort = p.SrcPort
		if isEchoRequest(p.Proto, p.ICMPType) {
			t.DstPort = echoRequestKey
		}
	}
	return t, true
}

// echoRequestKey marks an echo request's tuple (DstPort), so that a request
// and a reply with the same addresses and identifier are told apart.
const echoRequestKey = 8

func isEchoRequest(proto, typ uint8) bool {
	if proto == ProtoICMP {
		return typ == uint8(header.ICMPv4Echo)
	}
	return typ == uint8(header.ICMPv6EchoRequest)
}

// isICMPError reports whether the packet is an ICMP error that quotes
// another packet.
func (p *Packet) isICMPError() bool {
	if !p.HasL4 {
		return false
	}
	if p.Proto == ProtoICMP {
		switch p.ICMPType {
		case 3, 4, 5, 11, 12:
			return true
		}
	}
	if p.Proto == ProtoICMPv6 {
		return p.ICMPType >= 1 && p.ICMPType <= 4
	}
	return false
}

// innerTuple parses the packet an ICMP error quotes.
func (p *Packet) innerTuple() (Tuple, bool) {
	b := p.Buf.Data().AsRange().ToView()
	defer b.Release()
	in := b.AsSlice()
	var t Tuple
	var l4 []byte
	if p.Family == IPv4 {
		if len(in) < header.IPv4MinimumSize {
			return t, false
		}
		ihl := int(in[0]&0xf) * 4
		if ihl < header.IPv4MinimumSize || len(in) < ihl {
			return t, false
		}
		t.Src = netip.AddrFrom4([4]byte(in[12:16]))
		t.Dst = netip.AddrFrom4([4]byte(in[16:20]))
		t.Proto = in[9]
		l4 = in[ihl:]
	} else {
		if len(in) < header.IPv6MinimumSize {
			return t, false
		}
		t.Src = netip.AddrFrom16([16]byte(in[8:24]))
		t.Dst = netip.AddrFrom16([16]byte(in[24:40]))
		t.Proto = in[6]
		l4 = in[header.IPv6MinimumSize:]
	}
	switch t.Proto {
	case ProtoTCP, ProtoUDP:
		if len(l4) < 4 {
			return t, false
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[0:])
		t.DstPort = binary.BigEndian.Uint16(l4[2:])
	case ProtoICMP, ProtoICMPv6:
		if len(l4) < 8 || !isEcho(t.Proto, l4[0]) {
			return t, false
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[4:])
		if isEchoRequest(t.Proto, l4[0]) {
			t.DstPort = echoRequestKey
		}
	}
	return t, true
}

// setAddrRaw rewrites the quoted packet's source (src) or destination
// address with the checksum fixes of setAddr; the quoted packet's
// transport checksum is fixed only if the header is whole.
func (p *Packet) setAddrRaw(src bool, a netip.Addr) { p.setAddr(src, a) }

// setPortRaw rewrites the port at off (0: source, 2: destination) of a
// quoted TCP/UDP header, fixing its checksum if it is there.
func (p *Packet) setPortRaw(off int, port uint16) {
	if !p.HasL4 || len(p.l4) < off+2 {
		return
	}
	old := binary.BigEndian.Uint16(p.l4[off:])
	binary.BigEndian.PutUint16(p.l4[off:], port)
	if co := p.l4CsumOff(); co >= 0 && len(p.l4) >= co+2 {
		c := binary.BigEndian.Uint16(p.l4[co:])
		if !(p.Proto == ProtoUDP && c == 0) {
			binary.BigEndian.PutUint16(p.l4[co:], UpdateChecksum16(c, old, port))
		}
	}
}
