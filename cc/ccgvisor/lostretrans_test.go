package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// dropTarget drops the first drops transmissions of the data segment
// that carries stream offset off (0 is the first byte after the SYN).
type dropTarget struct {
	off   uint32
	drops int

	armed bool
	seq   uint32
	sent  int // transmissions of seq seen, dropped or not
	// rtos is the dropper's count() at each transmission, if it has one.
	rtos []uint64
}

// dropper wraps a's link and drops chosen transmissions of chosen
// segments on their way out of a.
type dropper struct {
	stack.LinkEndpoint

	mu      sync.Mutex
	iss     uint32
	haveISS bool
	targets []*dropTarget
	// count, if set, is read at each transmission of a target (e.g. the
	// sender's RTO count) into dropTarget.rtos.
	count func() uint64
}

// checkSent fails t for each target not sent exactly once more than it
// was dropped: every loss repaired by one retransmission, none sent in
// vain. d.mu must be held.
func (d *dropper) checkSent(t *testing.T) {
	t.Helper()
	for _, tg := range d.targets {
		if want := tg.drops + 1; tg.sent != want {
			t.Errorf("segment at offset %d: %d transmissions, want %d", tg.off, tg.sent, want)
		}
	}
}

// wrap makes d the wrapper of l (pairOpts.wrap).
func (d *dropper) wrap(l stack.LinkEndpoint) stack.LinkEndpoint {
	d.LinkEndpoint = l
	return d
}

func (d *dropper) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	var keep stack.PacketBufferList
	dropped := 0
	for _, pkt := range pkts.AsSlice() {
		if d.drop(pkt) {
			dropped++
			continue
		}
		keep.PushBack(pkt)
	}
	n, err := d.LinkEndpoint.WritePackets(keep)
	return n + dropped, err
}

func (d *dropper) drop(pkt *stack.PacketBuffer) bool {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return false
	}
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	seq := h.SequenceNumber()
	if h.Flags().Contains(header.TCPFlagSyn) {
		d.iss, d.haveISS = seq, true
		return false
	}
	n := uint32(pkt.Data().Size())
	if !d.haveISS || n == 0 {
		return false
	}
	rel := seq - d.iss - 1
	for _, t := range d.targets {
		if !t.armed && rel <= t.off && t.off < rel+n {
			t.armed, t.seq = true, seq
		}
		if t.armed && seq == t.seq {
			t.sent++
			if d.count != nil {
				t.rtos = append(t.rtos, d.count())
			}
			return t.sent <= t.drops
		}
	}
	return false
}

// TestLostRetransmission: a retransmission lost in SACK recovery is
// found lost once later data is SACKed and sent again without a
// retransmission timeout (patch 0009, Linux tcp_mark_lost_retrans).
// Without the patch each case takes an RTO.
func TestLostRetransmission(t *testing.T) {
	for _, tc := range []struct {
		name    string
		targets []dropTarget
	}{
		{"once", []dropTarget{{off: 1 << 20, drops: 2}}},
		{"twice", []dropTarget{{off: 1 << 20, drops: 3}}},
		{"three_episodes", []dropTarget{{off: 1 << 20, drops: 2}, {off: 2 << 20, drops: 3}, {off: 3 << 20, drops: 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &dropper{}
			for i := range tc.targets {
				d.targets = append(d.targets, &tc.targets[i])
			}
			p := fixedPair(t, d.wrap, time.Second)
			p.transfer(t, 4<<20, 0, nil)
			st := p.a.Stack.Stats().TCP
			d.mu.Lock()
			defer d.mu.Unlock()
			wantLost := 0
			for _, tg := range d.targets {
				if tg.sent != tg.drops+1 {
					t.Errorf("segment at offset %d: %d transmissions, want %d (%d dropped, then delivered)", tg.off, tg.sent, tg.drops+1, tg.drops)
				}
				wantLost += tg.drops - 1
			}
			if got := st.Timeouts.Value(); got != 0 {
				t.Errorf("sender timeouts = %d, want 0 (lost retransmissions repaired in recovery)", got)
			}
			if got := st.LostRetransmits.Value(); got != uint64(wantLost) {
				t.Errorf("LostRetransmits = %d, want %d", got, wantLost)
			}
			t.Logf("retransmits %d, fast retransmits %d, SACK recoveries %d, lost retransmits %d",
				st.Retransmits.Value(), st.FastRetransmit.Value(), st.SACKRecovery.Value(), st.LostRetransmits.Value())
		})
	}
}

// TestRTOKeepsSACK: after a retransmission timeout the sender resends
// only what the receiver did not SACK (patch 0011, Linux
// tcp_enter_loss), not the whole flight. Five holes in the last flight
// whose fast retransmissions are lost too, with nothing sent after them,
// leave only the RTO. The receiver then holds four SACKed blocks, more
// than an ACK reports (three with timestamps, the most recent first), so
// the oldest block, between the second and third hole, is known only
// from the scoreboard: a segment in it must be sent once.
func TestRTOKeepsSACK(t *testing.T) {
	const n = 4 << 20
	d := &dropper{targets: []*dropTarget{
		{off: n - 40000, drops: 2},
		{off: n - 32000, drops: 2},
		{off: n - 28000, drops: 0}, // watched, never dropped
		{off: n - 24000, drops: 2},
		{off: n - 16000, drops: 2},
		{off: n - 8000, drops: 2},
	}}
	p := fixedPair(t, d.wrap, 0)
	p.transfer(t, n, 0, nil)
	st := p.a.Stack.Stats().TCP
	d.mu.Lock()
	defer d.mu.Unlock()
	if got := st.Timeouts.Value(); got == 0 {
		t.Fatalf("no RTO: the scenario did not happen (retransmits %d)", st.Retransmits.Value())
	}
	d.checkSent(t)
	t.Logf("timeouts %d, retransmits %d", st.Timeouts.Value(), st.Retransmits.Value())
}

// TestLostRetransmissionAfterRTO: after an RTO, a go-back-N
// retransmission lost again is found lost once retransmissions sent
// after it are SACKed, and sent again before a second RTO (patch 0026,
// Linux's TCP_CA_Loss with RACK: tcp_identify_packet_loss,
// tcp_xmit_retransmit_queue). The scenario of TestRTOKeepsSACK, with the
// second hole's go-back-N retransmission dropped too (the first one's
// would leave nothing in flight at cwnd 1, an RTO in Linux as well).
// Without the patch the second hole waits for a second, doubled RTO.
// (The transfer may still end with one: gVisor's receiver drops the
// go-back-N copy of the FIN that arrives above the hole, and only an RTO
// resends a FIN; so the test checks when the hole was repaired.)
func TestLostRetransmissionAfterRTO(t *testing.T) {
	const n = 4 << 20
	d := &dropper{targets: []*dropTarget{
		{off: n - 40000, drops: 2},
		{off: n - 32000, drops: 3},
		{off: n - 24000, drops: 2},
		{off: n - 16000, drops: 2},
		{off: n - 8000, drops: 2},
	}}
	p := fixedPair(t, d.wrap, 0)
	d.count = p.a.Stack.Stats().TCP.Timeouts.Value
	p.transfer(t, n, 0, nil)
	st := p.a.Stack.Stats().TCP
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checkSent(t)
	if tg := d.targets[1]; len(tg.rtos) == 4 && tg.rtos[3] != 1 {
		t.Errorf("segment at offset %d: last transmission after %d RTOs, want 1 (RTO counts at its transmissions %v)", tg.off, tg.rtos[3], tg.rtos)
	}
	t.Logf("timeouts %d, retransmits %d, lost retransmits %d, RTO counts at the second hole's transmissions %v",
		st.Timeouts.Value(), st.Retransmits.Value(), st.LostRetransmits.Value(), d.targets[1].rtos)
}
