package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestSynAckRetransmitFreshTSval loses the first SYN-ACK of a passive
// handshake with timestamps: the retransmitted SYN-ACK must carry the
// time it is sent (gVisor patch 0042), so that the ACK echoing it gives
// the handshake's RTT sample the round trip of the retransmission, not
// the retransmission timeout. Before the patch the echo of the first
// TSval seeded SRTT with about a second: an RTO of seconds.
func TestSynAckRetransmitFreshTSval(t *testing.T) {
	s, ep := rawStack(t)
	ln, err := gonet.ListenTCP(s.Stack, tcpip.FullAddress{Port: localPort}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &rawPeer{t: t, ep: ep, sndNxt: 1000}

	const peerTS = 5000
	opts := make([]byte, 16)
	n := header.EncodeMSSOption(1460, opts)
	n += header.EncodeNOP(opts[n:])
	n += header.EncodeNOP(opts[n:])
	n += header.EncodeTSOption(peerTS, 0, opts[n:])
	p.sendOpts(header.TCPFlagSyn, p.sndNxt, nil, opts[:n])
	p.sndNxt++

	synAckTS := func() (uint32, header.TCP) {
		t.Helper()
		seg := p.read()
		if seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
			t.Fatalf("flags %v, want SYN|ACK", seg.Flags())
		}
		o := header.ParseSynOptions(seg.Options(), true)
		if !o.TS {
			t.Fatal("SYN-ACK without timestamps")
		}
		return o.TSVal, seg
	}
	first, _ := synAckTS()
	// The first SYN-ACK is lost; the handshake resends it after its
	// retransmission timeout (1 s).
	start := time.Now()
	second, seg := synAckTS()
	waited := time.Since(start)
	if second == first {
		t.Fatalf("the SYN-ACK resent after %v carries the first one's TSval %d (patch 0042 missing?)", waited, first)
	}
	if d := time.Duration(second-first) * time.Millisecond; d < waited/2 {
		t.Errorf("TSval advanced %v over a %v retransmission timeout", d, waited)
	}

	// The peer's ACK echoes the TSval it got.
	p.rcvNxt = seqnum.Value(seg.SequenceNumber()) + 1
	ack := make([]byte, 12)
	k := header.EncodeNOP(ack)
	k += header.EncodeNOP(ack[k:])
	k += header.EncodeTSOption(peerTS+1, second, ack[k:])
	p.sendOpts(header.TCPFlagAck, p.sndNxt, nil, ack[:k])
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	// The established endpoint's first RTT sample is the retransmitted
	// SYN-ACK's round trip (microseconds here), not the timeout.
	var info tcpip.TCPInfoOption
	found := false
	for _, e := range s.Stack.RegisteredEndpoints() {
		te, ok := e.(*tcp.Endpoint)
		if !ok || tcp.EndpointState(te.State()) != tcp.StateEstablished {
			continue
		}
		if err := te.GetSockOpt(&info); err != nil {
			t.Fatal(err)
		}
		found = true
	}
	if !found {
		t.Fatal("no established endpoint")
	}
	// (A round trip under the timestamps' millisecond makes no sample:
	// the RTO stays at its initial second.)
	if info.RTT > 200*time.Millisecond || info.RTO > time.Second {
		t.Errorf("after a lost SYN-ACK: srtt %v, rto %v; want the resent SYN-ACK's round trip and at most the initial 1 s RTO", info.RTT, info.RTO)
	}
}
