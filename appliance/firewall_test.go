package appliance

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/hooks"
	"github.com/nsappliance/appliance/netstack"
)

func newTestFirewall(tb testing.TB, rules string) *Firewall {
	tb.Helper()
	s, err := netstack.New(netstack.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Destroy)
	fw, err := NewFirewall(s, FirewallOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	if err := fw.Restore(strings.NewReader(rules), RestoreOptions{}); err != nil {
		tb.Fatal(err)
	}
	return fw
}

func nonMatchingRules(n int) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "-A FORWARD -s 192.0.%d.%d/32 -p tcp -m tcp --dport %d -j DROP\n", 2+i/250, 1+i%250, 1000+i)
	}
	b.WriteString("-A FORWARD -p udp -j DROP\nCOMMIT\n")
	return b.String()
}

// TestFirewallVerdicts checks the hook wiring: a FORWARD filter rule drops,
// counts, and an atomic Restore replaces it.
func TestFirewallVerdicts(t *testing.T) {
	fw := newTestFirewall(t, nonMatchingRules(3))
	src, dst := netip.MustParseAddr("10.1.0.100"), netip.MustParseAddr("10.2.0.100")
	run := func(proto uint8) hooks.Verdict {
		pkt := buildTestPacket(t, proto, src, dst, 40000, 80)
		p := hooks.NewPacket(hooks.Forward, pkt)
		p.InIface, p.OutIface = "a", "b"
		return fw.Registry().Run(p)
	}
	if v := run(hooks.ProtoTCP); v != hooks.Accept {
		t.Errorf("tcp: %v, want ACCEPT", v)
	}
	if v := run(hooks.ProtoUDP); v != hooks.Drop {
		t.Errorf("udp: %v, want DROP", v)
	}
	v4, _ := fw.Rules()
	rules := v4.Table("filter").Chain("FORWARD").Rules
	if p, _ := rules[len(rules)-1].Counters.Load(); p != 1 {
		t.Errorf("udp rule counted %d, want 1", p)
	}
	if err := fw.Restore(strings.NewReader("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"), RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := run(hooks.ProtoTCP); v != hooks.Drop {
		t.Errorf("after restore: tcp %v, want DROP (policy)", v)
	}
}

// BenchmarkFirewallForward is the per-packet cost of the FORWARD hook with
// N rules that do not match (the packet walks all of them).
func BenchmarkFirewallForward(b *testing.B) {
	for _, n := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			fw := newTestFirewall(b, nonMatchingRules(n))
			pkt := buildTestPacket(b, hooks.ProtoTCP, netip.MustParseAddr("10.1.0.100"), netip.MustParseAddr("10.2.0.100"), 40000, 80)
			p := hooks.NewPacket(hooks.Forward, pkt)
			p.InIface, p.OutIface = "a", "b"
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if fw.Registry().Run(p) != hooks.Accept {
					b.Fatal("dropped")
				}
			}
		})
	}
}

// buildTestPacket makes a parsed IPv4 TCP (ACK) or UDP packet.
func buildTestPacket(tb testing.TB, proto uint8, src, dst netip.Addr, sport, dport uint16) *stack.PacketBuffer {
	tb.Helper()
	l4len := header.TCPMinimumSize
	if proto == hooks.ProtoUDP {
		l4len = header.UDPMinimumSize
	}
	b := make([]byte, header.IPv4MinimumSize+l4len)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFromSlice(src.AsSlice()), DstAddr: tcpip.AddrFromSlice(dst.AsSlice())})
	ip.SetChecksum(^ip.CalculateChecksum())
	l4 := b[header.IPv4MinimumSize:]
	if proto == hooks.ProtoUDP {
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(l4len)})
	} else {
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck})
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	tb.Cleanup(pkt.DecRef)
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
	pkt.TransportProtocolNumber = tcpip.TransportProtocolNumber(proto)
	pkt.TransportHeader().Consume(l4len)
	return pkt
}

// BenchmarkGatewayInbound is the hook cost of one inbound gateway packet
// of an established connection: PREROUTING (conntrack lookup) and INPUT
// (the built-in policy chain, an empty filter table, confirm), with the
// default policy on (which turns conntrack on) and off.
func BenchmarkGatewayInbound(b *testing.B) {
	v4, err := NewLayout(netip.MustParsePrefix("10.0.2.0/24"))
	if err != nil {
		b.Fatal(err)
	}
	for _, policy := range []bool{false, true} {
		b.Run(fmt.Sprintf("policy=%v", policy), func(b *testing.B) {
			fw := newTestFirewall(b, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
			if policy {
				if err := fw.SetPolicy(policyRules(v4, Layout{}, false)); err != nil {
					b.Fatal(err)
				}
			}
			src, dst := netip.MustParseAddr("10.0.2.100"), netip.MustParseAddr("198.18.0.2")
			pkt := buildTestPacket(b, hooks.ProtoTCP, src, dst, 40000, 80)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pkt.NFConn = nil // a fresh packet of the same connection
				for _, h := range []hooks.Hook{hooks.Prerouting, hooks.Input} {
					if !fw.Netstack().Run(h, pkt, 1, 0) {
						b.Fatal("dropped")
					}
				}
			}
		})
	}
}
