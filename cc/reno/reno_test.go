package reno

import (
	"testing"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/cctest"
)

func newReno(cwnd, ssthresh uint32) (*Reno, *cctest.Sender) {
	s := cctest.NewSender()
	s.CwndV, s.SsthreshV = cwnd, ssthresh
	r := New().(*Reno)
	r.Init(s)
	return r, s
}

// rtt acks one window, one ACK per segment (no delayed ACKs).
func rtt(r *Reno, s *cctest.Sender) {
	n := s.CwndV
	for range n {
		r.CongAvoid(1)
	}
}

func TestSlowStartDoublesPerRTT(t *testing.T) {
	r, s := newReno(10, 0x7fffffff)
	for i, want := range []uint32{20, 40, 80, 160} {
		rtt(r, s)
		if s.CwndV != want {
			t.Fatalf("after RTT %d cwnd = %d, want %d", i+1, s.CwndV, want)
		}
	}
}

func TestSlowStartStopsAtSsthresh(t *testing.T) {
	r, s := newReno(10, 15)
	r.CongAvoid(10) // 5 take cwnd to ssthresh, 5 are credit towards +1
	if s.CwndV != 15 {
		t.Fatalf("cwnd = %d, want 15", s.CwndV)
	}
	r.CongAvoid(10) // credit 15 >= w=15: +1
	if s.CwndV != 16 {
		t.Fatalf("cwnd = %d, want 16", s.CwndV)
	}
}

func TestCongestionAvoidanceOneMSSPerRTT(t *testing.T) {
	r, s := newReno(50, 50)
	for i := range 10 {
		rtt(r, s)
		if want := uint32(51 + i); s.CwndV != want {
			t.Fatalf("after RTT %d cwnd = %d, want %d", i+1, s.CwndV, want)
		}
	}
}

func TestHalvesOnLoss(t *testing.T) {
	for _, tc := range []struct{ cwnd, want uint32 }{{100, 50}, {101, 50}, {3, 2}, {1, 2}} {
		r, s := newReno(tc.cwnd, 0x7fffffff)
		if got := r.SSThresh(); got != tc.want {
			t.Errorf("SSThresh() at cwnd %d = %d, want %d", tc.cwnd, got, tc.want)
		}
		// Undo restores the window the loss took.
		s.CwndV = tc.want
		r.SetState(cc.StateRecovery)
		if got := r.UndoCwnd(); got != max(tc.cwnd, tc.want) {
			t.Errorf("UndoCwnd() = %d, want %d", got, max(tc.cwnd, tc.want))
		}
	}
}

// limited is a sender that is not cwnd-limited.
type limited struct{ *cctest.Sender }

func (limited) IsCwndLimited() bool { return false }

func TestNoGrowthWhenNotCwndLimited(t *testing.T) {
	s := cctest.NewSender()
	r := New()
	r.Init(limited{s})
	r.CongAvoid(10)
	if s.CwndV != 10 {
		t.Fatalf("cwnd grew to %d while application-limited", s.CwndV)
	}
}

func BenchmarkCongAvoid(b *testing.B) {
	r, _ := newReno(50, 50)
	b.ReportAllocs()
	for range b.N {
		r.CongAvoid(2)
	}
}
