package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/cc"
)

// sendLog wraps a's link and records when a sends how many bytes of TCP
// payload.
type sendLog struct {
	stack.LinkEndpoint

	mu    sync.Mutex
	times []time.Time
	bytes []int
}

func (l *sendLog) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	now := time.Now()
	l.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
			continue
		}
		if n := pkt.Data().Size(); n > 0 {
			l.times = append(l.times, now)
			l.bytes = append(l.bytes, n)
		}
	}
	l.mu.Unlock()
	return l.LinkEndpoint.WritePackets(pkts)
}

// maxIn returns the most bytes sent within any window of length w.
func (l *sendLog) maxIn(w time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	best, sum, j := 0, 0, 0
	for i := range l.times {
		sum += l.bytes[i]
		for l.times[i].Sub(l.times[j]) >= w {
			sum -= l.bytes[j]
			j++
		}
		best = max(best, sum)
	}
	return best
}

// TestRecoveryPaced: transmissions in SACK recovery keep to the pacing
// rate (patch 0027, Linux tcp_xmit_retransmit_queue's
// tcp_pacing_check). A paced controller with a cwnd far above the flight
// loses one segment: in recovery RFC 6675 lets it send all that pipe <
// cwnd allows, which without the patch went out back to back (the
// receive window's worth at once). The bound, 1.5 times the pace over
// any 20 ms, leaves room for the pacing clock's 2 ms catch-up after a
// late timer; a slow machine only sends less.
func TestRecoveryPaced(t *testing.T) {
	const rate = 20_000_000 / 8 // bytes/s
	d := &dropper{targets: []*dropTarget{{off: 1 << 20, drops: 1}}}
	log := &sendLog{}
	reg := registry(t, map[string]cc.Factory{"fixed": func() cc.Algorithm { return &fixed{n: 10000, rate: rate} }})
	// No emulated delay: the log must see packets when the sender sends
	// them, not when a delay line releases them.
	p := newPair(t, pairOpts{
		reg:    reg,
		ccName: "fixed",
		wrap: func(l stack.LinkEndpoint) stack.LinkEndpoint {
			log.LinkEndpoint = d.wrap(l)
			return log
		},
	})
	p.transfer(t, 3<<20, 0, nil)
	st := p.a.Stack.Stats().TCP
	if st.SACKRecovery.Value() == 0 {
		t.Fatalf("no SACK recovery: the scenario did not happen (retransmits %d)", st.Retransmits.Value())
	}
	const w = 20 * time.Millisecond
	got, limit := log.maxIn(w), int(1.5*rate*w.Seconds())
	t.Logf("most bytes sent in %v: %d (pace %d), SACK recoveries %d, retransmits %d", w, got, int(rate*w.Seconds()), st.SACKRecovery.Value(), st.Retransmits.Value())
	if got > limit {
		t.Errorf("%d bytes sent within %v, pacing at %d bytes/s allows about %d", got, w, rate, int(rate*w.Seconds()))
	}
}
