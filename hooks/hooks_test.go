package hooks

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestRunOrdersByPriorityThenRegistration(t *testing.T) {
	reg := NewRegistry()
	var got []string
	add := func(name string, prio Priority) Handle {
		h, err := reg.Register(Ops{Name: name, Hook: Forward, Priority: prio, Fn: func(*Packet) Verdict {
			got = append(got, name)
			return Accept
		}})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	add("filter1", PriorityFilter)
	add("snat", PrioritySNAT)
	add("raw", PriorityRaw)
	h := add("mangle", PriorityMangle)
	add("filter2", PriorityFilter)
	add("conntrack", PriorityConntrack)
	add("first", PriorityFirst)
	add("filter3", PriorityFilter)
	p := &Packet{Hook: Forward}
	if v := reg.Run(p); v != Accept {
		t.Fatalf("Run = %v, want ACCEPT", v)
	}
	want := []string{"first", "raw", "conntrack", "mangle", "filter1", "filter2", "filter3", "snat"}
	if !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
	if err := reg.Unregister(h); err != nil {
		t.Fatal(err)
	}
	if err := reg.Unregister(h); err == nil {
		t.Fatal("second Unregister succeeded")
	}
	got = nil
	reg.Run(p)
	if slices.Contains(got, "mangle") || len(got) != len(want)-1 {
		t.Fatalf("after Unregister order = %v", got)
	}
	// Other hooks are untouched.
	got = nil
	if v := reg.Run(&Packet{Hook: Input}); v != Accept || len(got) != 0 {
		t.Fatalf("Run(INPUT) = %v ran %v, want ACCEPT and nothing", v, got)
	}
}

func TestRunStopsAtFirstNonAccept(t *testing.T) {
	for _, stop := range []Verdict{Drop, Stolen} {
		t.Run(stop.String(), func(t *testing.T) {
			reg := NewRegistry()
			ran := 0
			for i, v := range []Verdict{Accept, stop, Accept} {
				v := v
				_, err := reg.Register(Ops{Name: fmt.Sprint(i), Hook: Input, Priority: Priority(i), Fn: func(*Packet) Verdict {
					ran++
					return v
				}})
				if err != nil {
					t.Fatal(err)
				}
			}
			if v := reg.Run(&Packet{Hook: Input}); v != stop {
				t.Fatalf("Run = %v, want %v", v, stop)
			}
			if ran != 2 {
				t.Fatalf("ran %d functions, want 2", ran)
			}
			c := reg.Counters()
			if stop == Drop && c["hook_input_dropped"] != 1 || stop == Stolen && c["hook_input_stolen"] != 1 {
				t.Fatalf("counters %v", c)
			}
		})
	}
}

func TestRegisterRejectsBadOps(t *testing.T) {
	reg := NewRegistry()
	if _, err := reg.Register(Ops{Name: "x", Hook: Input}); err == nil {
		t.Error("nil Fn accepted")
	}
	if _, err := reg.Register(Ops{Name: "x", Hook: NumHooks, Fn: func(*Packet) Verdict { return Accept }}); err == nil {
		t.Error("bad hook accepted")
	}
}

// buildPacket makes a parsed IPv4/IPv6 TCP or UDP packet with valid
// checksums.
func buildPacket(t *testing.T, v6 bool, proto uint8, src, dst netip.Addr, sport, dport uint16, payload []byte) *stack.PacketBuffer {
	t.Helper()
	var l4 []byte
	switch proto {
	case ProtoTCP:
		l4 = make([]byte, header.TCPMinimumSize)
		header.TCP(l4).Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: 1, AckNum: 2, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 1000})
	case ProtoUDP:
		l4 = make([]byte, header.UDPMinimumSize)
		header.UDP(l4).Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(header.UDPMinimumSize + len(payload))})
	}
	sa, da := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	xsum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(proto), sa, da, uint16(len(l4)+len(payload)))
	xsum = checksum.Checksum(payload, xsum)
	csum := ^checksum.Checksum(l4, xsum)
	if proto == ProtoTCP {
		header.TCP(l4).SetChecksum(csum)
	} else {
		header.UDP(l4).SetChecksum(csum)
	}
	var nh []byte
	if v6 {
		nh = make([]byte, header.IPv6MinimumSize)
		header.IPv6(nh).Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4) + len(payload)), TransportProtocol: tcpip.TransportProtocolNumber(proto), HopLimit: 64, SrcAddr: sa, DstAddr: da})
	} else {
		nh = make([]byte, header.IPv4MinimumSize)
		ip := header.IPv4(nh)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(nh) + len(l4) + len(payload)), TTL: 64, Protocol: proto, SrcAddr: sa, DstAddr: da})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	data := slices.Concat(nh, l4, payload)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(data)})
	t.Cleanup(pkt.DecRef)
	if v6 {
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
	} else {
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	}
	pkt.NetworkHeader().Consume(len(nh))
	pkt.TransportProtocolNumber = tcpip.TransportProtocolNumber(proto)
	pkt.TransportHeader().Consume(len(l4))
	return pkt
}

// verify recomputes every checksum of pkt from scratch.
func verify(t *testing.T, pkt *stack.PacketBuffer, proto uint8) {
	t.Helper()
	b := pkt.ToView().AsSlice()
	var src, dst tcpip.Address
	var l4 []byte
	if pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber {
		ip := header.IPv4(b)
		if !ip.IsChecksumValid() {
			t.Fatalf("IPv4 header checksum wrong after rewrite")
		}
		src, dst, l4 = ip.SourceAddress(), ip.DestinationAddress(), b[ip.HeaderLength():]
	} else {
		ip := header.IPv6(b)
		src, dst, l4 = ip.SourceAddress(), ip.DestinationAddress(), b[header.IPv6MinimumSize:]
	}
	xsum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(proto), src, dst, uint16(len(l4)))
	if got := checksum.Checksum(l4, xsum); got != 0xffff {
		t.Fatalf("transport checksum wrong after rewrite: sum %#04x", got)
	}
}

func TestPacketRewriteKeepsChecksumsValid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		v6    bool
		proto uint8
	}{
		{"tcp4", false, ProtoTCP}, {"udp4", false, ProtoUDP}, {"tcp6", true, ProtoTCP}, {"udp6", true, ProtoUDP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := netip.MustParseAddr("10.1.0.100"), netip.MustParseAddr("10.2.0.100")
			nsrc, ndst := netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("198.51.100.255")
			if tc.v6 {
				src, dst = netip.MustParseAddr("fd00:0:0:a::100"), netip.MustParseAddr("fd00:0:0:b::100")
				nsrc, ndst = netip.MustParseAddr("2001:db8::ffff:1"), netip.MustParseAddr("fd00:0:0:b::2")
			}
			pkt := buildPacket(t, tc.v6, tc.proto, src, dst, 40000, 8080, []byte("hello, checksum world!"))
			p := NewPacket(Prerouting, pkt)
			if p == nil || !p.HasL4 || p.SrcPort != 40000 || p.DstPort != 8080 || p.Src != src || p.Dst != dst {
				t.Fatalf("NewPacket parsed %+v", p)
			}
			p.SetDst(ndst)
			p.SetDstPort(80)
			verify(t, pkt, tc.proto)
			p.SetSrc(nsrc)
			p.SetSrcPort(1)
			verify(t, pkt, tc.proto)
			q := NewPacket(Postrouting, pkt)
			if q.Src != nsrc || q.Dst != ndst || q.SrcPort != 1 || q.DstPort != 80 {
				t.Fatalf("after rewrite parsed %v:%d -> %v:%d", q.Src, q.SrcPort, q.Dst, q.DstPort)
			}
		})
	}
}

func TestConntrackFullTableRecovers(t *testing.T) {
	now := time.Unix(1000, 0)
	ct := NewConntrack(ConntrackOptions{Max: 64, Now: func() time.Time { return now }, GCInterval: -1})
	src := netip.MustParseAddr("10.0.0.1")
	dst := netip.MustParseAddr("10.0.0.2")
	newFlow := func(port uint16) CTState {
		pkt := buildPacket(t, false, ProtoUDP, src, dst, port, 53, nil)
		p := NewPacket(Prerouting, pkt)
		ct.In(p)
		st := p.State
		ct.Confirm(p)
		return st
	}
	for i := 0; i < 64; i++ {
		if st := newFlow(uint16(1000 + i)); st != StateNew {
			t.Fatalf("flow %d: %v, want NEW", i, st)
		}
	}
	if st := newFlow(5000); st != StateInvalid {
		t.Fatalf("flow beyond Max: %v, want INVALID", st)
	}
	now = now.Add(time.Hour) // every UDP entry (30 s) expired
	ok := 0
	for i := 0; i < 64; i++ {
		if newFlow(uint16(6000+i)) == StateNew {
			ok++
		}
	}
	if ok < 32 {
		t.Fatalf("after expiry only %d of 64 new flows tracked: the full table did not recover", ok)
	}
}
