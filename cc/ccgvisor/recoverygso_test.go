package ccgvisor_test

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestRecoveryNewDataGSO: in SACK recovery an unpaced sender sends new
// data as GSO packets (patch 0031, as Linux's tcp_write_xmit does in
// recovery), not one segment per packet as RFC 6675's NextSeg does. A
// fixed cwnd of 120 over 100 Mbit/s and 10 ms loses one segment every
// 512 KiB, so it spends much of the transfer in recovery. Without the
// patch most packets sent in recovery, a few hundred per episode, are
// single segments.
func TestRecoveryNewDataGSO(t *testing.T) {
	const total = 16 << 20
	d := &dropper{}
	for off := uint32(512 << 10); off < total-(256<<10); off += 512 << 10 {
		d.targets = append(d.targets, &dropTarget{off: off, drops: 1})
	}
	g := &gsoLink{}
	p := bulkFixedPair(t, func(l stack.LinkEndpoint) stack.LinkEndpoint {
		d.LinkEndpoint = l
		g.LinkEndpoint = d
		return g
	}, nil)
	p.transfer(t, 0, 1500*time.Millisecond, nil)
	st := p.a.Stack.Stats().TCP
	g.mu.Lock()
	defer g.mu.Unlock()
	single := 0
	for _, n := range g.sizes {
		if n <= 1448 {
			single++
		}
	}
	t.Logf("%d data packets after the warm-up, %d of one segment; SACK recoveries %d, retransmits %d",
		len(g.sizes), single, st.SACKRecovery.Value(), st.Retransmits.Value())
	if got := st.SACKRecovery.Value(); got < 5 {
		t.Fatalf("SACK recoveries = %d, want at least 5 (the test needs the sender in recovery)", got)
	}
	// Retransmissions are single segments; allow them and a few more per
	// episode.
	if limit := int(st.Retransmits.Value()) + 20*int(st.SACKRecovery.Value()); single > limit {
		t.Errorf("%d single-segment packets, want at most %d (retransmissions + 20 per recovery)", single, limit)
	}
}
