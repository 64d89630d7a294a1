// Package reno is TCP NewReno congestion avoidance (RFC 5681 §3.1, with
// RFC 6582's recovery done by the sender) with the semantics of Linux's
// net/ipv4/tcp_cong.c: slow start up to ssthresh, then one MSS per RTT,
// and ssthresh = max(cwnd/2, 2) on loss. Start with New. It also exports
// the slow-start and additive-increase steps other algorithms reuse
// (Linux tcp_slow_start and tcp_cong_avoid_ai).
package reno

import "github.com/nsappliance/appliance/cc"

// Reno is one connection's Reno state.
type Reno struct {
	s         cc.Sender
	ai        AI
	priorCwnd uint32
}

var _ cc.Algorithm = (*Reno)(nil)

// New returns a Reno instance; it is a cc.Factory.
func New() cc.Algorithm { return &Reno{} }

// Init implements cc.Algorithm.
func (r *Reno) Init(s cc.Sender) { r.s = s }

// Release implements cc.Algorithm.
func (r *Reno) Release() {}

// SSThresh implements cc.Algorithm: Linux tcp_reno_ssthresh,
// max(cwnd/2, 2) (RFC 5681 equation 4 uses FlightSize; Linux uses cwnd).
func (r *Reno) SSThresh() uint32 {
	r.priorCwnd = r.s.Cwnd()
	return max(r.s.Cwnd()/2, 2)
}

// CongAvoid implements cc.Algorithm: Linux tcp_reno_cong_avoid.
func (r *Reno) CongAvoid(acked uint32) {
	if !cc.IsCwndLimited(r.s) {
		return
	}
	if r.s.Cwnd() < r.s.Ssthresh() {
		// RFC 5681 §3.1: slow start, cwnd += acked (at most to ssthresh).
		if acked = SlowStart(r.s, acked); acked == 0 {
			return
		}
	}
	// RFC 5681 §3.1: congestion avoidance, one MSS per cwnd of ACKs.
	r.ai.Increase(r.s, r.s.Cwnd(), acked)
}

// SetState implements cc.Algorithm: entering recovery or loss restarts
// the additive-increase count (Linux clears snd_cwnd_cnt there).
func (r *Reno) SetState(st cc.State) {
	if st == cc.StateRecovery || st == cc.StateLoss || st == cc.StateCWR {
		r.ai.Reset()
	}
}

// CwndEvent implements cc.Algorithm.
func (r *Reno) CwndEvent(cc.Event) {}

// PktsAcked implements cc.Algorithm.
func (r *Reno) PktsAcked(cc.AckSample) {}

// UndoCwnd implements cc.Algorithm: Linux tcp_reno_undo_cwnd.
func (r *Reno) UndoCwnd() uint32 { return max(r.s.Cwnd(), r.priorCwnd) }

// SlowStart grows cwnd by acked but not beyond ssthresh and returns the
// acked segments left over (Linux tcp_slow_start, RFC 5681 §3.1).
func SlowStart(s cc.Sender, acked uint32) uint32 {
	cwnd := min(s.Cwnd()+acked, s.Ssthresh())
	left := acked - (cwnd - s.Cwnd())
	s.SetCwnd(min(cwnd, s.CwndClamp()))
	return left
}

// AI is the additive-increase credit Linux keeps in tp->snd_cwnd_cnt.
type AI struct {
	cnt uint32
}

// Reset drops the accumulated credit.
func (a *AI) Reset() { a.cnt = 0 }

// Increase adds one segment to cwnd per w segments acked (Linux
// tcp_cong_avoid_ai).
func (a *AI) Increase(s cc.Sender, w, acked uint32) {
	w = max(w, 1)
	cwnd := s.Cwnd()
	// Credits accumulated at a higher w are applied gently now.
	if a.cnt >= w {
		a.cnt = 0
		cwnd++
	}
	a.cnt += acked
	if a.cnt >= w {
		delta := a.cnt / w
		a.cnt -= delta * w
		cwnd += delta
	}
	s.SetCwnd(min(cwnd, s.CwndClamp()))
}
