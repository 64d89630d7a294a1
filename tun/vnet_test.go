package tun

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestVnetHdrRoundTrip(t *testing.T) {
	in := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: vnetGSOTCPv6, hdrLen: 74, gsoSize: 1440, csumStart: 40, csumOffset: 16}
	var b [vnetHdrLen]byte
	in.encode(b[:])
	want := []byte{1, 4, 74, 0, 0xa0, 0x05, 40, 0, 16, 0}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("encode = % x, want % x", b, want)
	}
	var out vnetHdr
	if err := out.decode(b[:]); err != nil || out != in {
		t.Fatalf("decode = %+v, %v; want %+v", out, err, in)
	}
	if err := out.decode(b[:5]); err == nil {
		t.Fatalf("decode of 5 bytes: want error")
	}
}

func TestVnetHdrValidate(t *testing.T) {
	tests := []struct {
		name   string
		h      vnetHdr
		pktLen int
		ok     bool
	}{
		{"plain", vnetHdr{}, 60, true},
		{"csum in range", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 16}, 60, true},
		{"csum beyond packet", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 50, csumOffset: 16}, 60, false},
		{"tso without size", vnetHdr{gsoType: vnetGSOTCPv4}, 60, false},
		{"tso ecn", vnetHdr{gsoType: vnetGSOTCPv4 | vnetGSOECN, gsoSize: 1448}, 60, true},
		{"ufo refused", vnetHdr{gsoType: vnetGSOUDP, gsoSize: 1448}, 60, false},
		{"unknown type", vnetHdr{gsoType: 9, gsoSize: 1}, 60, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.validate(tc.pktLen)
			if (err == nil) != tc.ok {
				t.Fatalf("validate(%+v, %d) = %v, want ok=%v", tc.h, tc.pktLen, err, tc.ok)
			}
		})
	}
}

// udpPacket builds an IPv4 or IPv6 UDP packet with payload.
func udpPacket(v6 bool, payload []byte) []byte {
	src4, dst4 := tcpip.AddrFrom4([4]byte{10, 0, 2, 100}), tcpip.AddrFrom4([4]byte{198, 18, 0, 2})
	src6 := tcpip.AddrFrom16([16]byte{0: 0xfd, 15: 0x01})
	dst6 := tcpip.AddrFrom16([16]byte{0: 0xfd, 15: 0x02})
	udpLen := header.UDPMinimumSize + len(payload)
	var b []byte
	var src, dst tcpip.Address
	l3 := header.IPv4MinimumSize
	if v6 {
		l3 = header.IPv6MinimumSize
		b = make([]byte, l3+udpLen)
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(udpLen), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: src6, DstAddr: dst6})
		src, dst = src6, dst6
	} else {
		b = make([]byte, l3+udpLen)
		header.IPv4(b).Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), ID: 7, TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: src4, DstAddr: dst4})
		header.IPv4(b).SetChecksum(^header.IPv4(b).CalculateChecksum())
		src, dst = src4, dst4
	}
	u := header.UDP(b[l3:])
	u.Encode(&header.UDPFields{SrcPort: 5000, DstPort: 53, Length: uint16(udpLen)})
	copy(b[l3+header.UDPMinimumSize:], payload)
	// A GSO packet carries only the pseudo-header sum (CHECKSUM_PARTIAL).
	u.SetChecksum(header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(udpLen)))
	return b
}

func TestSplitUSO(t *testing.T) {
	payload := make([]byte, 2500)
	for i := range payload {
		payload[i] = byte(i)
	}
	for _, v6 := range []bool{false, true} {
		pkt := udpPacket(v6, payload)
		var segs [][]byte
		err := splitUSO(pkt, 1000, make([]byte, maxPacket), func(seg []byte) { segs = append(segs, bytes.Clone(seg)) })
		if err != nil {
			t.Fatalf("v6=%v: splitUSO: %v", v6, err)
		}
		if len(segs) != 3 {
			t.Fatalf("v6=%v: %d segments, want 3", v6, len(segs))
		}
		var got []byte
		for i, s := range segs {
			var l3 int
			var src, dst tcpip.Address
			if v6 {
				ip := header.IPv6(s)
				l3 = header.IPv6MinimumSize
				src, dst = ip.SourceAddress(), ip.DestinationAddress()
				if int(ip.PayloadLength()) != len(s)-l3 {
					t.Errorf("seg %d: payload length %d, want %d", i, ip.PayloadLength(), len(s)-l3)
				}
			} else {
				ip := header.IPv4(s)
				l3 = int(ip.HeaderLength())
				src, dst = ip.SourceAddress(), ip.DestinationAddress()
				if !ip.IsChecksumValid() || int(ip.TotalLength()) != len(s) || ip.ID() != uint16(7+i) {
					t.Errorf("seg %d: bad ipv4 header (len %d id %d)", i, ip.TotalLength(), ip.ID())
				}
			}
			u := header.UDP(s[l3:])
			if int(u.Length()) != len(s)-l3 {
				t.Errorf("seg %d: udp length %d, want %d", i, u.Length(), len(s)-l3)
			}
			xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, u.Length())
			if checksum.Checksum(s[l3:], xsum) != 0xffff {
				t.Errorf("seg %d: udp checksum does not verify", i)
			}
			got = append(got, u.Payload()...)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("v6=%v: reassembled payload differs", v6)
		}
	}
}

func TestSplitUSORejectsGarbage(t *testing.T) {
	for _, b := range [][]byte{nil, {0x45}, make([]byte, 30), udpPacket(false, nil)[:25]} {
		if err := splitUSO(b, 100, make([]byte, maxPacket), func([]byte) {}); err == nil {
			t.Errorf("splitUSO(% x): want error", b)
		}
	}
}

func FuzzSplitUSO(f *testing.F) {
	f.Add(udpPacket(false, make([]byte, 300)), uint16(100))
	f.Add(udpPacket(true, make([]byte, 300)), uint16(7))
	scratch := make([]byte, maxPacket)
	f.Fuzz(func(t *testing.T, b []byte, size uint16) {
		_ = splitUSO(b, int(size), scratch, func(seg []byte) {
			if len(seg) > len(b)+len(scratch) {
				t.Fatalf("segment longer than input")
			}
		})
	})
}
