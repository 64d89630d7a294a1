package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/emulate"
)

// windowWobbler wraps b's link and raises the advertised window of
// every other pure ACK by one unit, as a Linux receiver's window grows
// ACK by ACK while its out-of-order queue fills (tcp_grow_window).
type windowWobbler struct {
	stack.LinkEndpoint

	mu   sync.Mutex
	acks int
}

func (w *windowWobbler) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber || pkt.Data().Size() != 0 {
			continue
		}
		h := header.TCP(pkt.TransportHeader().Slice())
		if len(h) < header.TCPMinimumSize || h.Flags().Contains(header.TCPFlagSyn) {
			continue
		}
		w.mu.Lock()
		w.acks++
		odd := w.acks%2 == 1
		w.mu.Unlock()
		if !odd {
			continue
		}
		h.SetWindowSize(h.WindowSize() + 1)
		ip := header.IPv4(pkt.NetworkHeader().Slice())
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(h)))
		h.SetChecksum(0)
		h.SetChecksum(^checksum.Combine(xsum, checksum.Checksum(h, 0)))
	}
	return w.LinkEndpoint.WritePackets(pkts)
}

// TestDupAckWindowChanges: one lost segment is repaired by a fast
// retransmission, not by the retransmission timer, when the receiver's
// advertised window changes from ACK to ACK (patch 0025, RFC 6675
// section 2: with SACK, an ACK that SACKs new data is a duplicate
// whatever its window). Without the patch RFC 5681's unchanged-window
// condition kept the sender out of recovery until an RTO.
func TestDupAckWindowChanges(t *testing.T) {
	d := &dropper{targets: []*dropTarget{{off: 1 << 20, drops: 1}}}
	w := &windowWobbler{}
	reg := registry(t, map[string]cc.Factory{"fixed": func() cc.Algorithm { return &fixed{n: 40} }})
	p := newPair(t, pairOpts{
		reg:     reg,
		ccName:  "fixed",
		emulate: emulate.Spec{Delay: 5 * time.Millisecond},
		wrap:    d.wrap,
		wrapB: func(l stack.LinkEndpoint) stack.LinkEndpoint {
			w.LinkEndpoint = l
			return w
		},
	})
	// A 1 s minimum RTO, so that a stalled scheduler on a loaded machine
	// cannot pass for the timeout this test says is not needed.
	o := tcpip.TCPMinRTOOption(time.Second)
	if err := p.a.Stack.SetTransportProtocolOption(tcp.ProtocolNumber, &o); err != nil {
		t.Fatalf("SetTransportProtocolOption(%v): %v", o, err)
	}
	p.transfer(t, 2<<20, 0, nil)
	st := p.a.Stack.Stats().TCP
	d.mu.Lock()
	defer d.mu.Unlock()
	if tg := d.targets[0]; tg.sent != 2 {
		t.Errorf("segment at offset %d: %d transmissions, want 2", tg.off, tg.sent)
	}
	if got := st.Timeouts.Value(); got != 0 {
		t.Errorf("sender timeouts = %d, want 0 (the loss repaired by a fast retransmission)", got)
	}
	if got := st.SACKRecovery.Value(); got != 1 {
		t.Errorf("SACK recoveries = %d, want 1", got)
	}
	w.mu.Lock()
	t.Logf("%d ACKs, every other one with its window raised; retransmits %d, fast retransmits %d", w.acks, st.Retransmits.Value(), st.FastRetransmit.Value())
	w.mu.Unlock()
}
