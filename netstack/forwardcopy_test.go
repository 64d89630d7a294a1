package netstack

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// gsoPacket is a 64 KiB IPv4/TCP packet as the TUN reader builds it, with
// its network and transport headers consumed.
func gsoPacket(t *testing.T) (*stack.PacketBuffer, []byte) {
	t.Helper()
	const size = 64 << 10
	b := make([]byte, size)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: size - 1, TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 1, 0, 100}), DstAddr: tcpip.AddrFrom4([4]byte{10, 2, 0, 100}),
	})
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: 1, DstPort: 2, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck})
	for i := header.IPv4MinimumSize + header.TCPMinimumSize; i < len(b); i++ {
		b[i] = byte(i)
	}
	want := append([]byte(nil), b...)
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(buffer.NewViewWithData(b))})
	if _, ok := pkt.NetworkHeader().Consume(header.IPv4MinimumSize); !ok {
		t.Fatal("consume network header")
	}
	if _, ok := pkt.TransportHeader().Consume(header.TCPMinimumSize); !ok {
		t.Fatal("consume transport header")
	}
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	return pkt, want
}

// Patch 0008: a header View is a copy, so holding it does not make later
// Slice calls copy the packet's 64 KiB chunk.
func TestHeaderViewDoesNotShareChunk(t *testing.T) {
	pkt, _ := gsoPacket(t)
	defer pkt.DecRef()
	before := &pkt.NetworkHeader().Slice()[0]
	v := pkt.NetworkHeader().View()
	defer v.Release()
	if after := &pkt.NetworkHeader().Slice()[0]; after != before {
		t.Fatal("Slice after View copied the packet's storage (copy-on-write of a shared chunk)")
	}
	v.AsSlice()[8] = 1 // the copy's TTL
	if got := header.IPv4(pkt.NetworkHeader().Slice()).TTL(); got != 64 {
		t.Fatalf("writing the View changed the packet: TTL %d", got)
	}
}

// Patch 0008: the forwarding copy copies the headers and shares the
// payload; rewriting the copy's headers leaves the original intact.
func TestDeepCopyForForwardingSharesPayload(t *testing.T) {
	pkt, want := gsoPacket(t)
	defer pkt.DecRef()
	cp := pkt.DeepCopyForForwarding(0)
	defer cp.DecRef()

	header.IPv4(cp.NetworkHeader().Slice()).SetTTL(63)
	header.TCP(cp.TransportHeader().Slice()).SetChecksum(0xbeef)
	if got := pkt.ToView(); !bytes.Equal(got.AsSlice(), want) {
		got.Release()
		t.Fatal("rewriting the forwarded copy's headers changed the original packet")
	} else {
		got.Release()
	}
	cv := cp.ToView()
	defer cv.Release()
	if c := cv.AsSlice(); len(c) != len(want) || !bytes.Equal(c[40:], want[40:]) || c[8] != 63 {
		t.Fatal("forwarded copy has the wrong bytes")
	}
	if cp.NetworkHeader().View().Size() != header.IPv4MinimumSize || len(cp.TransportHeader().Slice()) != header.TCPMinimumSize {
		t.Fatal("forwarded copy lost its header boundaries")
	}
	// The payload is shared, not copied: the copy's data slices point into
	// the original's chunk.
	shared := false
	for _, s := range cp.AsSlices() {
		if len(s) > 1000 {
			for _, o := range pkt.AsSlices() {
				if len(o) > 1000 && &o[len(o)-1] == &s[len(s)-1] {
					shared = true
				}
			}
		}
	}
	if !shared {
		t.Fatal("forwarding copied the payload instead of sharing it")
	}
}
