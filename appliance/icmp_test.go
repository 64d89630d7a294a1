package appliance

import (
	"bytes"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// echoRequestPacket builds the packet a container sends for req.
func echoRequestPacket(req echoRequest) (tcpip.NetworkProtocolNumber, []byte) {
	// An echo request is an echo reply with the ends swapped and the type
	// changed.
	proto, b := echoReply(echoRequest{src: req.dst, dst: req.src, id: req.id, seq: req.seq, data: req.data})
	if proto == header.IPv4ProtocolNumber {
		m := header.ICMPv4(b[header.IPv4MinimumSize:])
		m.SetType(header.ICMPv4Echo)
		m.SetChecksum(0)
		m.SetChecksum(header.ICMPv4Checksum(m[:header.ICMPv4MinimumSize], checksum.Checksum(req.data, 0)))
		return proto, b
	}
	ip := header.IPv6(b)
	m := header.ICMPv6(b[header.IPv6MinimumSize:])
	m.SetType(header.ICMPv6EchoRequest)
	m.SetChecksum(0)
	m.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m[:header.ICMPv6EchoMinimumSize], Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
		PayloadCsum: checksum.Checksum(req.data, 0), PayloadLen: len(req.data),
	}))
	return proto, b
}

func pktOf(b []byte) *stack.PacketBuffer {
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(bytes.Clone(b))})
}

// checkEchoReply verifies b is a well-formed echo reply answering req.
func checkEchoReply(t *testing.T, b []byte, req echoRequest) {
	t.Helper()
	if req.src.Is4() {
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || !ip.IsChecksumValid() {
			t.Fatalf("bad IPv4 header % x", b[:20])
		}
		if toAddr(ip.SourceAddress()) != req.dst || toAddr(ip.DestinationAddress()) != req.src {
			t.Fatalf("reply %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), req.dst, req.src)
		}
		m := header.ICMPv4(ip.Payload())
		if m.Type() != header.ICMPv4EchoReply || m.Ident() != req.id || m.Sequence() != req.seq || !bytes.Equal(m.Payload(), req.data) {
			t.Fatalf("reply type %d id %d seq %d data %q; want reply id %d seq %d data %q", m.Type(), m.Ident(), m.Sequence(), m.Payload(), req.id, req.seq, req.data)
		}
		if header.ICMPv4Checksum(m[:8], checksum.Checksum(m.Payload(), 0)) != m.Checksum() {
			t.Fatal("bad ICMPv4 checksum")
		}
		return
	}
	ip := header.IPv6(b)
	if !ip.IsValid(len(b)) || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
		t.Fatalf("bad IPv6 header % x", b[:40])
	}
	if toAddr(ip.SourceAddress()) != req.dst || toAddr(ip.DestinationAddress()) != req.src {
		t.Fatalf("reply %v -> %v, want %v -> %v", ip.SourceAddress(), ip.DestinationAddress(), req.dst, req.src)
	}
	m := header.ICMPv6(ip.Payload())
	data := m[header.ICMPv6EchoMinimumSize:]
	if m.Type() != header.ICMPv6EchoReply || m.Ident() != req.id || m.Sequence() != req.seq || !bytes.Equal(data, req.data) {
		t.Fatalf("reply type %d id %d seq %d; want reply id %d seq %d", m.Type(), m.Ident(), m.Sequence(), req.id, req.seq)
	}
	sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: m[:4+4], Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
		PayloadCsum: checksum.Checksum(data, 0), PayloadLen: len(data)})
	if sum != m.Checksum() {
		t.Fatal("bad ICMPv6 checksum")
	}
}

func TestClassifyEcho(t *testing.T) {
	g := &Gateway{opts: Options{IPv4: testV4, IPv6: testV6}}
	a := netip.MustParseAddr
	data := []byte("abcdefgh-payload")
	for _, tc := range []struct {
		name string
		req  echoRequest
		mod  func([]byte)
		want echoVerdict
	}{
		{"v4 remote", echoRequest{src: testV4.Container, dst: a("192.0.2.7"), id: 7, seq: 3, data: data}, nil, echoRelay},
		{"v6 remote", echoRequest{src: testV6.Container, dst: a("2001:db8::7"), id: 7, seq: 3, data: data}, nil, echoRelay},
		{"v4 gateway is local", echoRequest{src: testV4.Container, dst: testV4.Gateway, id: 1, seq: 1, data: data}, nil, echoPass},
		{"v6 dns is local", echoRequest{src: testV6.Container, dst: testV6.DNS, id: 1, seq: 1, data: data}, nil, echoPass},
		{"v4 bad checksum", echoRequest{src: testV4.Container, dst: a("192.0.2.7"), id: 7, seq: 3, data: data},
			func(b []byte) { b[len(b)-1] ^= 1 }, echoDrop},
		{"v6 bad checksum", echoRequest{src: testV6.Container, dst: a("2001:db8::7"), id: 7, seq: 3, data: data},
			func(b []byte) { b[len(b)-1] ^= 1 }, echoDrop},
		{"v4 fragment", echoRequest{src: testV4.Container, dst: a("192.0.2.7"), id: 7, seq: 3, data: data},
			func(b []byte) {
				ip := header.IPv4(b)
				ip.SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}, echoDrop},
		{"v4 broadcast", echoRequest{src: testV4.Container, dst: a("255.255.255.255"), id: 7, seq: 3, data: data}, nil, echoDrop},
		{"v4 reply passes", echoRequest{src: testV4.Container, dst: a("192.0.2.7"), id: 7, seq: 3, data: data},
			func(b []byte) { b[header.IPv4MinimumSize] = byte(header.ICMPv4EchoReply) }, echoPass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proto, b := echoRequestPacket(tc.req)
			if tc.mod != nil {
				tc.mod(b)
			}
			pkt := pktOf(b)
			defer pkt.DecRef()
			got, v := g.classifyEcho(proto, pkt)
			if v != tc.want {
				t.Fatalf("classifyEcho = %v, want %v", v, tc.want)
			}
			if v != echoRelay {
				return
			}
			if got.src != tc.req.src || got.dst != tc.req.dst || got.id != tc.req.id || got.seq != tc.req.seq || !bytes.Equal(got.data, tc.req.data) {
				t.Fatalf("classifyEcho = %+v, want %+v", got, tc.req)
			}
			// The reply answers the request exactly.
			_, rb := echoReply(got)
			checkEchoReply(t, rb, tc.req)
		})
	}
}

// TestPingRelay injects echo requests as a container would send them and
// reads what the gateway writes back to the link. It really pings the host's
// loopback (root may use raw sockets; others need ping_group_range).
func TestPingRelay(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, false)

	send := func(req echoRequest) {
		proto, b := echoRequestPacket(req)
		pkt := pktOf(b)
		n.gwEP.InjectInbound(proto, pkt)
		pkt.DecRef()
	}
	recv := func(wait time.Duration) []byte {
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			if pkt := n.gwEP.Read(); pkt != nil {
				v := pkt.ToView()
				b := bytes.Clone(v.AsSlice())
				v.Release()
				pkt.DecRef()
				return b
			}
			time.Sleep(5 * time.Millisecond)
		}
		return nil
	}

	req := echoRequest{src: testV4.Container, dst: netip.MustParseAddr("127.0.0.1"), id: 0x4242, seq: 9, data: []byte("hello from the container")}
	send(req)
	b := recv(6 * time.Second)
	if b == nil {
		t.Fatalf("no echo reply from 127.0.0.1 (counters %v)", n.gw.Counters())
	}
	checkEchoReply(t, b, req)

	if _, err := netip.ParseAddr("::1"); err == nil {
		req6 := echoRequest{src: testV6.Container, dst: netip.IPv6Loopback(), id: 0x4343, seq: 10, data: []byte("v6 hello")}
		send(req6)
		if b := recv(6 * time.Second); b != nil {
			checkEchoReply(t, b, req6)
		} else {
			t.Logf("no IPv6 loopback echo reply (host without ::1?); counters %v", n.gw.Counters())
		}
	}

	// The gateway address is answered by netstack itself.
	reqGW := echoRequest{src: testV4.Container, dst: testV4.Gateway, id: 1, seq: 1, data: []byte("gw")}
	send(reqGW)
	if b := recv(2 * time.Second); b == nil {
		t.Error("no echo reply from the gateway address")
	} else {
		checkEchoReply(t, b, reqGW)
	}
	if c := n.gw.Counters(); c["pings_replied"] < 1 || c["pings_sent"] < 1 {
		t.Errorf("counters after pings: %v", c)
	}
}

func TestPingDenied(t *testing.T) {
	n := newTestNet(t, testOptions(), false) // loopback denied
	for _, dst := range []string{"127.0.0.1", "::ffff:127.0.0.1"} {
		src := testV4.Container
		if netip.MustParseAddr(dst).Is6() {
			src = testV6.Container
		}
		req := echoRequest{src: src, dst: netip.MustParseAddr(dst), id: 5, seq: 5, data: []byte("x")}
		proto, b := echoRequestPacket(req)
		pkt := pktOf(b)
		n.gwEP.InjectInbound(proto, pkt)
		pkt.DecRef()
	}
	waitFor(t, 2*time.Second, "denials", func() bool { return n.gw.Counters()["icmp_policy_denied"] == 2 })
	time.Sleep(100 * time.Millisecond)
	if pkt := n.gwEP.Read(); pkt != nil {
		pkt.DecRef()
		t.Fatal("denied ping was answered")
	}
}

func TestTCPToLoopbackInjectedNeverDialed(t *testing.T) {
	// A raw SYN to 127.0.0.1 (which a real container's kernel would not
	// even send) must not reach the host's loopback. netstack drops it as
	// martian before the forwarder; the policy would RST it otherwise.
	n := newTestNet(t, testOptions(), false)
	var accepted atomic.Int32
	l := hostServer(t, func(net.Conn) { accepted.Add(1) })
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(b)
	src, dst := tcpip.AddrFromSlice(testV4.Container.AsSlice()), tcpip.AddrFromSlice([]byte{127, 0, 0, 1})
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 40000, DstPort: uint16(tcpPort(l)), SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, header.TCPMinimumSize)
	tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	pkt := pktOf(b)
	n.gwEP.InjectInbound(header.IPv4ProtocolNumber, pkt)
	pkt.DecRef()
	time.Sleep(300 * time.Millisecond)
	if p := n.gwEP.Read(); p != nil {
		v := p.ToView()
		rb := bytes.Clone(v.AsSlice())
		v.Release()
		p.DecRef()
		if r := header.TCP(header.IPv4(rb).Payload()); !r.Flags().Contains(header.TCPFlagRst) {
			t.Fatalf("reply flags %v, want RST or nothing", r.Flags())
		}
	}
	if accepted.Load() != 0 || n.gw.Counters()["tcp_flows_opened"] != 0 {
		t.Fatal("a SYN to 127.0.0.1 reached the host")
	}
}

func TestIPv6Off(t *testing.T) {
	opts := testOptions()
	opts.IPv6 = Layout{}
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, false)
	req := echoRequest{src: testV6.Container, dst: netip.IPv6Loopback(), id: 1, seq: 1, data: []byte("x")}
	proto, b := echoRequestPacket(req)
	pkt := pktOf(b)
	n.gwEP.InjectInbound(proto, pkt)
	pkt.DecRef()
	time.Sleep(200 * time.Millisecond)
	if p := n.gwEP.Read(); p != nil {
		p.DecRef()
		t.Fatal("IPv6 packet answered with IPv6 off")
	}
	if got := n.gw.Counters()["pings_sent"]; got != 0 {
		t.Fatalf("pings_sent = %d with IPv6 off", got)
	}
}

// TestPingRelayNAT: a DNAT rule applies to relayed pings as to TCP and
// UDP: the host pings the rule's destination, and the reply reaches the
// container from the address it pinged, with its own identifier. The
// pinged address is the cloud metadata address, which the relay refuses
// to ping itself, so nothing leaves the host if the rule is not applied.
func TestPingRelayNAT(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.Rules.IPv4 = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" +
		"-A PREROUTING -d 169.254.169.254/32 -p icmp -j DNAT --to-destination 127.0.0.1\nCOMMIT\n"
	n := newTestNet(t, opts, false)
	req := echoRequest{src: testV4.Container, dst: netip.MustParseAddr("169.254.169.254"), id: 0x5151, seq: 4, data: []byte("natted ping")}
	proto, b := echoRequestPacket(req)
	pkt := pktOf(b)
	n.gwEP.InjectInbound(proto, pkt)
	pkt.DecRef()
	waitFor(t, 10*time.Second, "a reply or a refusal", func() bool {
		c := n.gw.Counters()
		return c["pings_replied"]+c["icmp_policy_denied"]+c["pings_failed"]+c["pings_timed_out"] > 0
	})
	if c := n.gw.Counters(); c["pings_replied"] != 1 {
		t.Fatalf("ping not relayed to the DNAT destination: counters %v", c)
	}
	var reply []byte
	waitFor(t, 5*time.Second, "the echo reply", func() bool {
		if p := n.gwEP.Read(); p != nil {
			v := p.ToView()
			reply = bytes.Clone(v.AsSlice())
			v.Release()
			p.DecRef()
		}
		return reply != nil
	})
	checkEchoReply(t, reply, req)
}
