package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// delayer wraps a's link like dropper, but each target lists what
// happens to its transmissions in order: dropped (delay < 0), held back
// for delay, or passed (0, or beyond the list).
type delayer struct {
	stack.LinkEndpoint
	wg sync.WaitGroup

	mu      sync.Mutex
	iss     uint32
	haveISS bool
	targets []*delayTarget
}

type delayTarget struct {
	off   uint32
	fates []time.Duration

	armed bool
	seq   uint32
	sent  int
}

func (d *delayer) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	var keep stack.PacketBufferList
	taken := 0
	for _, pkt := range pkts.AsSlice() {
		switch fate := d.fate(pkt); {
		case fate < 0:
			taken++
		case fate > 0:
			taken++
			pkt.IncRef()
			d.wg.Add(1)
			time.AfterFunc(fate, func() {
				defer d.wg.Done()
				var l stack.PacketBufferList
				l.PushBack(pkt)
				d.LinkEndpoint.WritePackets(l)
				pkt.DecRef()
			})
		default:
			keep.PushBack(pkt)
		}
	}
	n, err := d.LinkEndpoint.WritePackets(keep)
	return n + taken, err
}

func (d *delayer) fate(pkt *stack.PacketBuffer) time.Duration {
	if pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber || pkt.TransportProtocolNumber != header.TCPProtocolNumber {
		return 0
	}
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	seq := h.SequenceNumber()
	if h.Flags().Contains(header.TCPFlagSyn) {
		d.iss, d.haveISS = seq, true
		return 0
	}
	n := uint32(pkt.Data().Size())
	if !d.haveISS || n == 0 {
		return 0
	}
	rel := seq - d.iss - 1
	for _, t := range d.targets {
		if !t.armed && rel <= t.off && t.off < rel+n {
			t.armed, t.seq = true, seq
		}
		if t.armed && seq == t.seq {
			t.sent++
			if t.sent <= len(t.fates) {
				return t.fates[t.sent-1]
			}
			return 0
		}
	}
	return 0
}

// TestEifelStampAcrossEpisodes: a recovery episode that starts while a
// retransmission of the previous one is unacknowledged keeps that
// episode's Eifel stamp (patch 0030, Linux tp->retrans_stamp), so the
// ACK of the older retransmission, echoing its timestamp, does not make
// the new episode look spurious (RFC 3522) and undo its cwnd reduction.
//
// Segment X is lost with its first retransmission, so episode 1 lasts
// two RTTs; Y, new data sent in episode 1 above its recovery point, is
// lost and its retransmission (sent in episode 1) is held back 60 ms.
// Episode 1 ends when X's second retransmission is acked, episode 2
// starts on the dupacks at Y, and Y's retransmission of episode 2 is
// lost, so the held one fills the hole. Without the patch episode 2's
// stamp is newer than that retransmission's timestamp: one spurious
// recovery and an undo.
func TestEifelStampAcrossEpisodes(t *testing.T) {
	const x = 1 << 20
	d := &delayer{targets: []*delayTarget{
		{off: x, fates: []time.Duration{-1, -1}},
		{off: x + 60*1448, fates: []time.Duration{-1, 15 * time.Millisecond, -1}},
	}}
	p := fixedPair(t, func(l stack.LinkEndpoint) stack.LinkEndpoint {
		d.LinkEndpoint = l
		return d
	}, time.Second)
	p.transfer(t, 2<<20, 0, nil)
	d.wg.Wait()
	st := p.a.Stack.Stats().TCP
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, tg := range d.targets {
		if tg.sent < 3 {
			t.Errorf("segment at offset %d: %d transmissions, want at least 3", tg.off, tg.sent)
		}
	}
	t.Logf("SACK recoveries %d, spurious %d, lost retransmits %d, timeouts %d, retransmits %d",
		st.SACKRecovery.Value(), st.SpuriousRecovery.Value(), st.LostRetransmits.Value(), st.Timeouts.Value(), st.Retransmits.Value())
	if got := st.SACKRecovery.Value(); got < 2 {
		t.Errorf("SACK recoveries = %d, want at least 2 (the test needs a second episode)", got)
	}
	if got := st.SpuriousRecovery.Value(); got != 0 {
		t.Errorf("spurious recoveries = %d, want 0 (every hole was a loss)", got)
	}
}
