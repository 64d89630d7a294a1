package appliance

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/outcome"
)

// ipv4Packet builds an IPv4 packet from the container to dst carrying
// payload as transport protocol proto.
func ipv4Packet(dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto),
		SrcAddr: tcpip.AddrFrom4(testV4.Container.As4()), DstAddr: tcpip.AddrFrom4(dst.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(b[header.IPv4MinimumSize:], payload)
	return b
}

// tcpSegment builds a checksummed TCP segment from the container's port
// 40000 to dst with flags.
func tcpSegment(dst netip.AddrPort, flags header.TCPFlags) []byte {
	t := header.TCP(make([]byte, header.TCPMinimumSize))
	t.Encode(&header.TCPFields{SrcPort: 40000, DstPort: dst.Port(), SeqNum: 1, AckNum: 1,
		DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
	src := tcpip.AddrFrom4(testV4.Container.As4())
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, tcpip.AddrFrom4(dst.Addr().As4()), uint16(len(t)))
	t.SetChecksum(^checksum.Checksum(t, xsum))
	return t
}

func injectV4(n *testNet, b []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	n.gwEP.InjectInbound(header.IPv4ProtocolNumber, pkt)
	pkt.DecRef()
}

// TestPacketOutcomes injects one packet of each kind into the gateway's
// link and checks that exactly its outcome moved, by one.
func TestPacketOutcomes(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, false)
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	udpPort := uint16(uc.LocalAddr().(*net.UDPAddr).Port)
	link := n.gw.Stack().Outcomes().Link(NICName)
	dst := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 80)
	all := []outcome.Reason{outcome.Delivered, outcome.Malformed, outcome.NoSocket, outcome.BadChecksum, outcome.NotSpecified}
	for _, tc := range []struct {
		name string
		pkt  []byte
		want outcome.Reason
	}{
		// A TCP header cut to 8 bytes.
		{"truncated tcp", ipv4Packet(dst.Addr(), header.TCPProtocolNumber, make([]byte, 8)), outcome.Malformed},
		// An ACK for no connection: netstack answers RST.
		{"ack to no connection", ipv4Packet(dst.Addr(), header.TCPProtocolNumber, tcpSegment(dst, header.TCPFlagAck)), outcome.NoSocket},
		// A UDP datagram to the host's loopback: taken by the UDP relay.
		{"udp datagram", ipv4Packet(testV4.Gateway, header.UDPProtocolNumber, udpDatagram(testV4.Gateway, udpPort)), outcome.Delivered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := map[outcome.Reason]uint64{}
			for _, r := range all {
				before[r] = link.Packets(r)
			}
			injectV4(n, tc.pkt)
			for _, r := range all {
				want := before[r]
				if r == tc.want {
					want++
				}
				if got := link.Packets(r); got != want {
					t.Errorf("%s: %d packets, want %d", n.gw.Stack().Outcomes().Name(r), got, want)
				}
			}
		})
	}
	// The ACK drew a RST: netstack wrote it to the link.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		pkt := n.gwEP.ReadContext(ctx)
		if pkt == nil {
			t.Fatal("no RST written for the ACK to no connection")
		}
		v := pkt.ToView()
		b := append([]byte(nil), v.AsSlice()...)
		v.Release()
		pkt.DecRef()
		ip := header.IPv4(b)
		if ip.Protocol() == uint8(header.TCPProtocolNumber) && header.TCP(ip.Payload()).Flags().Contains(header.TCPFlagRst) {
			break
		}
	}
}

func udpDatagram(dst netip.Addr, port uint16) []byte {
	payload := []byte("x")
	u := header.UDP(make([]byte, header.UDPMinimumSize+len(payload)))
	u.Encode(&header.UDPFields{SrcPort: 40001, DstPort: port, Length: uint16(len(u))})
	copy(u[header.UDPMinimumSize:], payload)
	src := tcpip.AddrFrom4(testV4.Container.As4())
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, tcpip.AddrFrom4(dst.As4()), uint16(len(u)))
	u.SetChecksum(^checksum.Checksum(u, xsum))
	return u
}
