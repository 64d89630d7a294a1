package tun

import (
	"bytes"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// partialPacket builds an IP packet carrying an L4 header of l4Len bytes
// (checksum field at csumOff) plus payload, with the L4 checksum left
// partial as the kernel hands it over with NEEDS_CSUM: the field holds the
// folded pseudo-header sum, not complemented. It returns the packet,
// csum_start and the pseudo-header sum.
func partialPacket(v6 bool, proto tcpip.TransportProtocolNumber, l4Len, csumOff int, payload []byte) ([]byte, int, uint16) {
	l3 := header.IPv4MinimumSize
	if v6 {
		l3 = header.IPv6MinimumSize
	}
	b := make([]byte, l3+l4Len+len(payload))
	copy(b[l3+l4Len:], payload)
	for i := l3; i < l3+l4Len; i++ {
		b[i] = byte(i * 7) // arbitrary ports, sequence numbers
	}
	n := len(b) - l3
	var src, dst tcpip.Address
	if v6 {
		src = tcpip.AddrFrom16([16]byte{0: 0xfd, 7: 0xa, 15: 0x01})
		dst = tcpip.AddrFrom16([16]byte{0: 0xfd, 7: 0xb, 14: 0x01})
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(n), TransportProtocol: proto, HopLimit: 64, SrcAddr: src, DstAddr: dst})
	} else {
		src = tcpip.AddrFrom4([4]byte{10, 1, 0, 100})
		dst = tcpip.AddrFrom4([4]byte{10, 2, 0, 100})
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(proto), SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	if proto == header.UDPProtocolNumber {
		binary.BigEndian.PutUint16(b[l3+4:], uint16(n))
	}
	pseudo := header.PseudoHeaderChecksum(proto, src, dst, uint16(n))
	binary.BigEndian.PutUint16(b[l3+csumOff:], pseudo)
	return b, l3, pseudo
}

func TestCompleteChecksum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v6      bool
		proto   tcpip.TransportProtocolNumber
		l4, off int
		payload int
	}{
		{"udp4 odd", false, header.UDPProtocolNumber, header.UDPMinimumSize, 6, 1001},
		{"udp4 empty", false, header.UDPProtocolNumber, header.UDPMinimumSize, 6, 0},
		{"tcp4 ack", false, header.TCPProtocolNumber, header.TCPMinimumSize + 12, 16, 0},
		{"tcp4 full", false, header.TCPProtocolNumber, header.TCPMinimumSize, 16, 1460},
		{"udp6", true, header.UDPProtocolNumber, header.UDPMinimumSize, 6, 1231},
		{"tcp6", true, header.TCPProtocolNumber, header.TCPMinimumSize, 16, 1440},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, tc.payload)
			for i := range payload {
				payload[i] = byte(i*13 + 5)
			}
			b, start, pseudo := partialPacket(tc.v6, tc.proto, tc.l4, tc.off, payload)
			completeChecksum(b, start, tc.off)
			// A complete checksum sums, with the pseudo header, to 0xffff.
			// The field's pseudo-header part must be gone from it.
			l4 := append([]byte(nil), b[start:]...)
			got := binary.BigEndian.Uint16(l4[tc.off:])
			binary.BigEndian.PutUint16(l4[tc.off:], 0)
			want := ^checksum.Checksum(l4, pseudo)
			if want == 0 {
				want = 0xffff
			}
			if got != want {
				t.Fatalf("checksum = %#04x, want %#04x", got, want)
			}
		})
	}
}

// capture is a NetworkDispatcher that keeps a copy of each packet.
type capture struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (c *capture) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	buf := pkt.ToBuffer()
	defer buf.Release()
	c.mu.Lock()
	c.pkts = append(c.pkts, buf.Flatten())
	c.mu.Unlock()
}

func (*capture) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (c *capture) wait(t *testing.T) []byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		if len(c.pkts) > 0 {
			p := c.pkts[0]
			c.mu.Unlock()
			return p
		}
		c.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no packet delivered within 5s")
	return nil
}

// TestEndpointCompletesChecksums sends a small UDP datagram with NEEDS_CSUM,
// as a sender's kernel does: with CompleteChecksums (router mode) the
// endpoint delivers it with a full checksum; without (gateway mode) the
// packet is passed on untouched.
func TestEndpointCompletesChecksums(t *testing.T) {
	for _, complete := range []bool{true, false} {
		t.Run(map[bool]string{true: "complete", false: "untouched"}[complete], func(t *testing.T) {
			dev, peer := fakeDevice(t, true)
			ep, err := NewEndpoint(dev, EndpointOptions{CompleteChecksums: complete})
			if err != nil {
				t.Fatal(err)
			}
			defer ep.Close()
			var c capture
			ep.Attach(&c)
			pkt, start, _ := partialPacket(false, header.UDPProtocolNumber, header.UDPMinimumSize, 6, []byte("hello, router"))
			h := vnetHdr{flags: vnetFlagNeedsCsum, csumStart: uint16(start), csumOffset: 6}
			msg := make([]byte, vnetHdrLen, vnetHdrLen+len(pkt))
			h.encode(msg)
			if _, err := unix.Write(peer, append(msg, pkt...)); err != nil {
				t.Fatal(err)
			}
			got := c.wait(t)
			ip := header.IPv4(got)
			u := header.UDP(ip.Payload())
			valid := u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0))
			if valid != complete {
				t.Errorf("checksum valid = %v, want %v", valid, complete)
			}
			if !complete && !bytes.Equal(got, pkt) {
				t.Errorf("packet changed without CompleteChecksums")
			}
		})
	}
}
