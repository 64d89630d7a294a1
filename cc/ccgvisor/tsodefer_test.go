package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ackSplitter wraps b's link and splits each pure ACK that acknowledges
// more than two segments beyond the previous one into ACKs two segments
// apart: the ACK stream of a Linux receiver (one ACK per two full
// segments) behind a link that segments the sender's GSO packets. b's
// netstack, which takes a GSO packet whole, acks it with one ACK.
type ackSplitter struct {
	stack.LinkEndpoint
	mss uint32

	mu   sync.Mutex
	last seqnum.Value
	have bool
}

func (a *ackSplitter) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	var out stack.PacketBufferList
	var made []*stack.PacketBuffer
	for _, pkt := range pkts.AsSlice() {
		acks := a.split(pkt)
		if acks == nil {
			out.PushBack(pkt)
			continue
		}
		for _, c := range acks {
			out.PushBack(c)
			made = append(made, c)
		}
	}
	_, err := a.LinkEndpoint.WritePackets(out)
	for _, c := range made {
		c.DecRef()
	}
	return pkts.Len(), err
}

// split returns the ACKs that replace pkt, or nil to send pkt as it is.
func (a *ackSplitter) split(pkt *stack.PacketBuffer) []*stack.PacketBuffer {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber {
		return nil
	}
	buf := pkt.ToBuffer()
	data := buf.Flatten()
	buf.Release()
	ip := header.IPv4(data)
	if !ip.IsValid(len(data)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return nil
	}
	h := header.TCP(data[ip.HeaderLength():])
	if len(h) != int(h.DataOffset()) || h.Flags() != header.TCPFlagAck {
		return nil // carries data, or not a pure ACK
	}
	ack := seqnum.Value(h.AckNumber())
	a.mu.Lock()
	defer a.mu.Unlock()
	last := a.last
	if !a.have || !last.LessThan(ack) {
		a.last, a.have = ack, true
		return nil
	}
	a.last = ack
	step := seqnum.Size(2 * a.mss)
	if last.Size(ack) <= step {
		return nil
	}
	var acks []*stack.PacketBuffer
	for v := last.Add(step); ; v = v.Add(step) {
		if !v.LessThan(ack) {
			v = ack
		}
		c := append([]byte(nil), data...)
		ch := header.TCP(c[ip.HeaderLength():])
		ch.SetAckNumber(uint32(v))
		ch.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(ch)))
		ch.SetChecksum(^ch.CalculateChecksum(xsum))
		p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(c)})
		p.NetworkProtocolNumber = header.IPv4ProtocolNumber
		acks = append(acks, p)
		if v == ack {
			return acks
		}
	}
}

// TestTSODefer: an unpaced, cwnd-limited sender's GSO packets grow to
// tcp_tso_autosize's goal instead of carrying what each ACK frees
// (patch 0029, Linux tcp_tso_should_defer). A fixed cwnd of 120 over a
// 100 Mbit/s link with a 10 ms RTT keeps the sender ACK-clocked and
// cwnd-limited with a goal of ~10 segments (1 ms at 120% of cwnd/srtt),
// and the receiver's ACKs come two segments apart. Without the deferral
// each ACK's two segments left at once: a mean of about 2 segments.
func TestTSODefer(t *testing.T) {
	g := &gsoLink{}
	acks := &ackSplitter{mss: 1448}
	p := bulkFixedPair(t, func(l stack.LinkEndpoint) stack.LinkEndpoint {
		g.LinkEndpoint = l
		return g
	}, func(l stack.LinkEndpoint) stack.LinkEndpoint {
		acks.LinkEndpoint = l
		return acks
	})
	p.transfer(t, 0, 2*time.Second, nil)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sizes) < 100 {
		t.Fatalf("%d data packets after the warm-up, want at least 100", len(g.sizes))
	}
	total, small := 0, 0
	for _, n := range g.sizes {
		total += n
		if n <= 2*1448 {
			small++
		}
	}
	mean := float64(total) / float64(len(g.sizes)) / 1448
	t.Logf("%d data packets after the warm-up, mean %.1f segments, %d of at most 2 segments", len(g.sizes), mean, small)
	if mean < 5 {
		t.Errorf("mean data packet %.1f segments, want at least 5 (the goal is ~10; without deferral ~2)", mean)
	}
}
