package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// reorderer wraps a's link and delays the first transmission of every
// data segment at a multiple of every bytes behind the next data packet:
// the receiver SACKs one segment above a hole that then fills, less than
// RFC 6675's IsLost needs ((DupThresh-1) x SMSS SACKed above), so the
// sender sees a SACK and no loss.
type reorderer struct {
	stack.LinkEndpoint
	every uint32
	end   uint32 // no segment reaching this offset is held: one must follow

	mu      sync.Mutex
	iss     uint32
	haveISS bool
	seen    map[uint32]bool
	held    *stack.PacketBuffer
	after   int // data packets written since held
	events  int
}

func (r *reorderer) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	var out stack.PacketBufferList
	var released []*stack.PacketBuffer
	held := 0
	r.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		if r.held != nil && r.after >= 1 {
			// Released a write after the packet it waited for, so that
			// the receiver has ACKed that one with a SACK.
			out.PushBack(r.held)
			released = append(released, r.held)
			r.held = nil
		}
		if r.hold(pkt) {
			held++
			continue
		}
		out.PushBack(pkt)
		if r.held != nil && dataLen(pkt) > 0 {
			r.after++
		}
	}
	r.mu.Unlock()
	n, err := r.LinkEndpoint.WritePackets(out)
	for _, pkt := range released {
		pkt.DecRef() // the reference hold took; the caller owns the rest
	}
	return n - len(released) + held, err
}

func dataLen(pkt *stack.PacketBuffer) int {
	if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return 0
	}
	return pkt.Data().Size()
}

// hold keeps pkt back if it is the first transmission of a chosen
// segment and nothing is held yet. The caller holds r.mu.
func (r *reorderer) hold(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize {
		return false
	}
	seq := h.SequenceNumber()
	if h.Flags().Contains(header.TCPFlagSyn) {
		r.iss, r.haveISS = seq, true
		return false
	}
	n := uint32(pkt.Data().Size())
	if !r.haveISS || n == 0 || r.held != nil {
		return false
	}
	rel := seq - r.iss - 1
	if rel == 0 || rel+n >= r.end || (rel+n)/r.every == rel/r.every || r.seen[seq] {
		return false // no multiple of every starts in this packet
	}
	r.seen[seq] = true
	pkt.IncRef()
	r.held, r.after = pkt, 0
	r.events++
	return true
}

// TestSACKOutsideRecovery: segments SACKed while the sender is not in
// SACK recovery leave the in-flight count (patch 0014, Linux
// tcp_packets_in_flight = packets_out - sacked_out - lost_out +
// retrans_out). Without the patch each of them stayed counted after its
// cumulative ACK, until the flight drained: with one segment in 7
// reordered behind the next, the count ran up to 22-36 segments above
// unacked - SACKed (cwnd is 40), and after an RTO, which keeps the sender
// out of SACK recovery until its recovery point, it reached cwnd and
// stalled the sender into the next RTO.
func TestSACKOutsideRecovery(t *testing.T) {
	const n = 4 << 20
	r := &reorderer{every: n / 400, end: n - 64<<10, seen: map[uint32]bool{}}
	p := fixedPair(t, func(l stack.LinkEndpoint) stack.LinkEndpoint {
		r.LinkEndpoint = l
		return r
	}, time.Second)
	// A sender that always has full segments queued: the comparison below
	// counts unacked bytes in MSS-sized segments, and a send buffer that
	// runs dry now and then (auto-tuned from 16 KiB) puts short segments
	// in flight, each a whole packet in the in-flight count.
	p.feedSender(t)
	var excess uint32 // the most the in-flight count exceeded unacked - sacked
	var sackedSeen uint32
	done := make(chan struct{})
	var wg sync.WaitGroup
	p.transfer(t, n, 0, func(ep tcpip.Endpoint) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				case <-time.After(2 * time.Millisecond):
				}
				ci, ok := ep.(*tcp.Endpoint).CongestionControlInfo()
				if !ok {
					continue
				}
				sackedSeen = max(sackedSeen, ci.Sacked)
				if ci.InFlight+ci.Sacked > ci.Unacked {
					excess = max(excess, ci.InFlight+ci.Sacked-ci.Unacked)
				}
			}
		}()
	})
	close(done)
	wg.Wait()
	if sackedSeen == 0 {
		t.Fatal("no segment was ever SACKed: the scenario did not happen")
	}
	// One segment of slack: unacked is counted in bytes, rounded up.
	if excess > 1 {
		t.Errorf("in flight exceeded unacked - SACKed by %d segments, want at most 1", excess)
	}
	st := p.a.Stack.Stats().TCP
	r.mu.Lock()
	events := r.events
	if r.held != nil {
		r.held.DecRef()
		r.held = nil
	}
	r.mu.Unlock()
	if events < 380 {
		t.Fatalf("%d reorderings, want about 400: the scenario did not happen", events)
	}
	if got := st.Timeouts.Value(); got != 0 {
		t.Errorf("sender timeouts = %d after %d reorderings, want 0 (the in-flight count stalled the sender)", got, events)
	}
	if got := st.SACKRecovery.Value(); got != 0 {
		t.Errorf("SACK recoveries = %d, want 0 (one SACKed segment is not a loss)", got)
	}
	t.Logf("reorderings %d, in-flight excess %d, timeouts %d, retransmits %d", events, excess, st.Timeouts.Value(), st.Retransmits.Value())
}

// TestLostRetransmissionByTime: a retransmission lost again is found
// lost once a segment sent after it, here the retransmission of a later
// hole, is SACKed (patch 0013, Linux RACK's rule, RFC 8985 6.2). At the
// end of the stream nothing new follows the retransmissions, so patch
// 0009's rule (new data sent after the retransmission SACKed) cannot
// fire: without patch 0013 only the retransmission timeout repairs it.
func TestLostRetransmissionByTime(t *testing.T) {
	const n = 4 << 20
	d := &dropper{targets: []*dropTarget{
		{off: n - 30000, drops: 2}, // the original and the first retransmission
		{off: n - 20000, drops: 1}, // the original only: its retransmission overtakes
	}}
	p := fixedPair(t, d.wrap, time.Second)
	p.transfer(t, n, 0, nil)
	st := p.a.Stack.Stats().TCP
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checkSent(t)
	if got := st.Timeouts.Value(); got != 0 {
		t.Errorf("sender timeouts = %d, want 0 (the lost retransmission repaired in recovery)", got)
	}
	if got := st.LostRetransmits.Value(); got != 1 {
		t.Errorf("LostRetransmits = %d, want 1", got)
	}
	t.Logf("timeouts %d, retransmits %d, lost retransmits %d", st.Timeouts.Value(), st.Retransmits.Value(), st.LostRetransmits.Value())
}
