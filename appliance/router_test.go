package appliance

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

var (
	rtA4, _ = NewLayout(netip.MustParsePrefix("10.1.0.0/24"))
	rtB4, _ = NewLayout(netip.MustParsePrefix("10.2.0.0/24"))
	rtA6, _ = NewLayout(netip.MustParsePrefix("fd00:0:0:a::/64"))
	rtB6, _ = NewLayout(netip.MustParsePrefix("fd00:0:0:b::/64"))
)

const rtMTUB = 1280 // link b is narrower than a, for fragmentation-needed

// newTestRouter builds a router between two channel links: a at MTU 1500,
// b at rtMTUB. The test injects into and reads from the channels directly.
func newTestRouter(t *testing.T) (r *Router, a, b *channel.Endpoint) {
	t.Helper()
	a = channel.New(64, 1500, "")
	b = channel.New(64, rtMTUB, "")
	// b takes GSO super-packets, like a TSO TUN.
	b.SupportedGSOKind = stack.HostGSOSupported
	r, err := NewRouter(a, b, RouterOptions{IPv4A: rtA4, IPv4B: rtB4, IPv6A: rtA6, IPv6B: rtB6, Logger: quietLogger()})
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	t.Cleanup(func() {
		r.Close()
		a.Drain()
		b.Drain()
	})
	return r, a, b
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }

// udpPacket4 builds an IPv4/UDP packet with size bytes of payload.
func udpPacket4(src, dst netip.Addr, ttl uint8, df bool, size int) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+size)
	ip := header.IPv4(b)
	f := &header.IPv4Fields{TotalLength: uint16(len(b)), TTL: ttl, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst), ID: 7}
	if df {
		f.Flags = header.IPv4FlagDontFragment
	}
	ip.Encode(f)
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: 4000, DstPort: 5000, Length: uint16(header.UDPMinimumSize + size)})
	return b
}

// udpPacket6 builds an IPv6/UDP packet with size bytes of payload.
func udpPacket6(src, dst netip.Addr, hops uint8, size int) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize+size)
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(header.UDPMinimumSize + size),
		TransportProtocol: header.UDPProtocolNumber, HopLimit: hops, SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(dst)})
	u := header.UDP(b[header.IPv6MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: 4000, DstPort: 5000, Length: uint16(header.UDPMinimumSize + size)})
	u.SetChecksum(^u.CalculateChecksum(header.PseudoHeaderChecksum(header.UDPProtocolNumber,
		tcpipAddr(src), tcpipAddr(dst), uint16(header.UDPMinimumSize+size))))
	return b
}

func inject(ep *channel.Endpoint, b []byte, gso *stack.GSO) {
	proto := header.IPv4ProtocolNumber
	if header.IPVersion(b) == header.IPv6Version {
		proto = header.IPv6ProtocolNumber
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	if gso != nil {
		pkt.GSOOptions = *gso
	}
	ep.InjectInbound(proto, pkt)
	pkt.DecRef()
}

// read takes the one packet the router wrote to ep, flattened.
func read(t *testing.T, ep *channel.Endpoint, what string) ([]byte, stack.GSO) {
	t.Helper()
	pkt := ep.Read()
	if pkt == nil {
		t.Fatalf("%s: no packet", what)
	}
	defer pkt.DecRef()
	buf := pkt.ToBuffer()
	defer buf.Release()
	return buf.Flatten(), pkt.GSOOptions
}

func TestRouterForwards(t *testing.T) {
	r, a, b := newTestRouter(t)

	inject(a, udpPacket4(rtA4.Container, rtB4.Container, 64, true, 100), nil)
	got, _ := read(t, b, "a->b ipv4")
	if ip := header.IPv4(got); ip.TTL() != 63 || !ip.IsChecksumValid() || ip.DestinationAddress() != tcpipAddr(rtB4.Container) {
		t.Errorf("forwarded ipv4: ttl %d (want 63), checksum valid %v, dst %v", ip.TTL(), ip.IsChecksumValid(), ip.DestinationAddress())
	}
	inject(b, udpPacket4(rtB4.Container, rtA4.Container, 10, true, 100), nil)
	got, _ = read(t, a, "b->a ipv4")
	if ttl := header.IPv4(got).TTL(); ttl != 9 {
		t.Errorf("forwarded b->a ttl = %d, want 9", ttl)
	}
	inject(a, udpPacket6(rtA6.Container, rtB6.Container, 64, 100), nil)
	got, _ = read(t, b, "a->b ipv6")
	if hl := header.IPv6(got).HopLimit(); hl != 63 {
		t.Errorf("forwarded ipv6 hop limit = %d, want 63", hl)
	}
	if n := a.NumQueued() + b.NumQueued(); n != 0 {
		t.Errorf("%d unexpected packets queued", n)
	}
	if c := r.Counters(); c["ip_packets_sent"] < 3 || c["forwarding_exhausted_ttl"] != 0 {
		t.Errorf("counters after forwarding: %v", c)
	}
}

// TestRouterICMPErrors checks the answers a Linux router gives, each sent
// back to the source from the router's address on the ingress link.
func TestRouterICMPErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pkt      []byte
		v4Type   header.ICMPv4Type
		v4Code   header.ICMPv4Code
		v6Type   header.ICMPv6Type
		mtu      uint32 // reported next-hop MTU, if any
		counter  string
		wantFrom netip.Addr
	}{
		{name: "ttl exceeded", pkt: udpPacket4(rtA4.Container, rtB4.Container, 1, false, 100),
			v4Type: header.ICMPv4TimeExceeded, v4Code: header.ICMPv4TTLExceeded, counter: "forwarding_exhausted_ttl", wantFrom: rtA4.Gateway},
		{name: "hop limit exceeded", pkt: udpPacket6(rtA6.Container, rtB6.Container, 1, 100),
			v6Type: header.ICMPv6TimeExceeded, counter: "forwarding_exhausted_ttl", wantFrom: rtA6.Gateway},
		{name: "frag needed", pkt: udpPacket4(rtA4.Container, rtB4.Container, 64, true, 1400),
			v4Type: header.ICMPv4DstUnreachable, v4Code: header.ICMPv4FragmentationNeeded, mtu: rtMTUB, counter: "forwarding_packet_too_big", wantFrom: rtA4.Gateway},
		{name: "packet too big", pkt: udpPacket6(rtA6.Container, rtB6.Container, 64, 1400),
			v6Type: header.ICMPv6PacketTooBig, mtu: rtMTUB, counter: "forwarding_packet_too_big", wantFrom: rtA6.Gateway},
		{name: "no route", pkt: udpPacket4(rtA4.Container, netip.MustParseAddr("10.3.0.1"), 64, false, 10),
			v4Type: header.ICMPv4DstUnreachable, v4Code: header.ICMPv4NetUnreachable, counter: "forwarding_unrouteable", wantFrom: rtA4.Gateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, a, b := newTestRouter(t)
			inject(a, tc.pkt, nil)
			got, _ := read(t, a, "icmp error")
			if header.IPVersion(got) == header.IPv4Version {
				ip := header.IPv4(got)
				ic := header.ICMPv4(ip.Payload())
				if ip.SourceAddress() != tcpipAddr(tc.wantFrom) || ic.Type() != tc.v4Type || ic.Code() != tc.v4Code {
					t.Errorf("got ICMP type %d code %d from %v, want type %d code %d from %v",
						ic.Type(), ic.Code(), ip.SourceAddress(), tc.v4Type, tc.v4Code, tc.wantFrom)
				}
				if tc.mtu != 0 && uint32(ic.MTU()) != tc.mtu {
					t.Errorf("frag needed reports mtu %d, want %d", ic.MTU(), tc.mtu)
				}
			} else {
				ip := header.IPv6(got)
				ic := header.ICMPv6(ip.Payload())
				if ip.SourceAddress() != tcpipAddr(tc.wantFrom) || ic.Type() != tc.v6Type {
					t.Errorf("got ICMPv6 type %d from %v, want type %d from %v", ic.Type(), ip.SourceAddress(), tc.v6Type, tc.wantFrom)
				}
				if tc.mtu != 0 && ic.MTU() != tc.mtu {
					t.Errorf("packet too big reports mtu %d, want %d", ic.MTU(), tc.mtu)
				}
			}
			if n := b.NumQueued(); n != 0 {
				t.Errorf("%d packets leaked through to b", n)
			}
			if c := r.Counters()[tc.counter]; c != 1 {
				t.Errorf("counter %s = %d, want 1", tc.counter, c)
			}
		})
	}
}

// TestRouterForwardsGSO checks patches/0001-forward-keeps-gso.patch: a TCP
// super-packet larger than b's MTU that arrived with GSO metadata (as from
// a TSO TUN) leaves whole, metadata intact, instead of drawing frag-needed.
func TestRouterForwardsGSO(t *testing.T) {
	_, a, b := newTestRouter(t)
	const payload = 8000
	p := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+payload)
	ip := header.IPv4(p)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		Flags: header.IPv4FlagDontFragment, SrcAddr: tcpipAddr(rtA4.Container), DstAddr: tcpipAddr(rtB4.Container)})
	ip.SetChecksum(^ip.CalculateChecksum())
	header.TCP(ip.Payload()).Encode(&header.TCPFields{SrcPort: 4000, DstPort: 5201, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagAck, WindowSize: 1000})
	gso := stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1000,
		L3HdrLen: header.IPv4MinimumSize, MaxSize: 1 << 16}
	inject(a, p, &gso)
	got, g := read(t, b, "gso packet")
	if len(got) != len(p) || header.IPv4(got).TTL() != 63 {
		t.Errorf("forwarded %d bytes with ttl %d, want %d bytes with ttl 63", len(got), header.IPv4(got).TTL(), len(p))
	}
	if g.Type != stack.GSOTCPv4 || g.MSS != 1000 || !g.NeedsCsum {
		t.Errorf("forwarded GSO options %+v, want those received (%+v)", g, gso)
	}
	if n := a.NumQueued(); n != 0 {
		t.Errorf("%d packets sent back to a (frag needed?)", n)
	}
}

func TestNewRouterRejects(t *testing.T) {
	other6, _ := NewLayout(netip.MustParsePrefix("fd00:0:0:c::/64"))
	for _, tc := range []struct {
		name string
		opts RouterOptions
	}{
		{"no layouts", RouterOptions{}},
		{"same subnet", RouterOptions{IPv4A: rtA4, IPv4B: rtA4}},
		{"ipv6 on one side", RouterOptions{IPv4A: rtA4, IPv4B: rtB4, IPv6A: rtA6}},
		{"ipv6 same subnet", RouterOptions{IPv4A: rtA4, IPv4B: rtB4, IPv6A: other6, IPv6B: other6}},
		{"ipv4 layout as ipv6", RouterOptions{IPv4A: rtA4, IPv4B: rtB4, IPv6A: rtA4, IPv6B: rtB6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := channel.New(1, 1500, ""), channel.New(1, 1500, "")
			tc.opts.Logger = quietLogger()
			if r, err := NewRouter(a, b, tc.opts); err == nil {
				r.Close()
				t.Fatalf("NewRouter(%s) succeeded, want error", tc.name)
			}
		})
	}
	if _, err := NewRouter(nil, channel.New(1, 1500, ""), RouterOptions{IPv4A: rtA4, IPv4B: rtB4}); err == nil {
		t.Error("NewRouter(nil endpoint) succeeded, want error")
	}
}
