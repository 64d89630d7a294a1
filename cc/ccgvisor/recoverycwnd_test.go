package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/emulate"
)

// halver is a controller that leaves cwnd to the sender, as Reno and
// CUBIC do: cwnd 40 from the start, ssthresh half of cwnd on a loss, no
// growth. It records the largest cwnd it sees on the ACKs of a
// recovery.
type halver struct {
	s cc.Sender

	mu         sync.Mutex
	state      cc.State
	recoveries int
	maxCwnd    uint32 // on the ACKs of a recovery
}

func (h *halver) Init(s cc.Sender) {
	h.s = s
	s.SetCwnd(40)
}
func (h *halver) Release()               {}
func (h *halver) SSThresh() uint32       { return max(h.s.Cwnd()/2, 2) }
func (h *halver) CongAvoid(uint32)       {}
func (h *halver) CwndEvent(cc.Event)     {}
func (h *halver) UndoCwnd() uint32       { return h.s.Cwnd() }
func (h *halver) PktsAcked(cc.AckSample) { h.observe() }
func (h *halver) SetState(st cc.State) {
	h.mu.Lock()
	if st == cc.StateRecovery && h.state != cc.StateRecovery {
		h.recoveries++
	}
	h.state = st
	h.mu.Unlock()
}

func (h *halver) observe() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state == cc.StateRecovery {
		h.maxCwnd = max(h.maxCwnd, h.s.Cwnd())
	}
}

// TestSACKRecoveryCwndIsSsthresh: one segment lost from a flight of 40
// (cwnd 40, ssthresh 20 after the loss). In SACK recovery cwnd is
// ssthresh, 20 (RFC 6675 section 5 step 4.2; Linux's PRR also brings the
// flight down to ssthresh), not NewReno's ssthresh + 3 (patch 0035).
func TestSACKRecoveryCwndIsSsthresh(t *testing.T) {
	d := &dropper{targets: []*dropTarget{{off: 1 << 20, drops: 1}}}
	var h *halver
	reg := registry(t, map[string]cc.Factory{"halver": func() cc.Algorithm {
		h = &halver{}
		return h
	}})
	p := newPair(t, pairOpts{reg: reg, ccName: "halver", emulate: emulate.Spec{Delay: 5 * time.Millisecond}, wrap: d.wrap})
	p.transfer(t, 2<<20, 0, nil)
	st := p.a.Stack.Stats().TCP
	if got := st.Timeouts.Value(); got != 0 {
		t.Fatalf("sender timeouts = %d, want 0 (one loss, repaired in SACK recovery)", got)
	}
	d.mu.Lock()
	d.checkSent(t)
	d.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.recoveries != 1 {
		t.Fatalf("%d recoveries, want 1", h.recoveries)
	}
	if h.maxCwnd != 20 {
		t.Errorf("largest cwnd in recovery = %d, want ssthresh 20 (NewReno's inflation would make it 23)", h.maxCwnd)
	}
}
