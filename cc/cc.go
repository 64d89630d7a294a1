// Package cc defines the congestion-control interface of the appliance's
// TCP senders, modelled on Linux's struct tcp_congestion_ops, and the
// registry that names the algorithms. Start with Registry and Algorithm;
// the algorithms live in cc/reno, cc/cubic and cc/bbr, and the adapter
// that plugs them into gVisor's TCP sender lives in cc/ccgvisor.
//
// One Algorithm instance serves one connection (Linux keeps per-connection
// state in icsk_ca_priv; here it is the instance's own fields). All
// callbacks of one instance run on that connection's sender, never
// concurrently.
//
// Units follow Linux: windows and counts are in segments (MSS-sized
// packets), rates in bytes per second, times from Sender.Now (a monotonic
// clock that tests replace with a manual one).
package cc

import "time"

// State is the sender's loss-recovery state (Linux: enum tcp_ca_state).
type State uint8

// The states, in Linux's order.
const (
	StateOpen     State = iota // TCP_CA_Open: no loss suspected
	StateDisorder              // TCP_CA_Disorder: SACKs or dup ACKs seen
	StateCWR                   // TCP_CA_CWR: window reduced (ECN, local congestion)
	StateRecovery              // TCP_CA_Recovery: fast retransmit / fast recovery
	StateLoss                  // TCP_CA_Loss: RTO fired, everything in flight presumed lost
)

func (s State) String() string {
	switch s {
	case StateOpen:
		return "open"
	case StateDisorder:
		return "disorder"
	case StateCWR:
		return "cwr"
	case StateRecovery:
		return "recovery"
	case StateLoss:
		return "loss"
	}
	return "unknown"
}

// Event is a cwnd event (Linux: enum tcp_ca_event).
type Event uint8

// The events.
const (
	EventTxStart     Event = iota // CA_EVENT_TX_START: first transmit when nothing was in flight
	EventCwndRestart              // CA_EVENT_CWND_RESTART: restart after idle
	EventCompleteCWR              // CA_EVENT_COMPLETE_CWR: end of CWR/recovery
	EventLoss                     // CA_EVENT_LOSS: RTO; the sender enters StateLoss
)

// Sender is the view of one TCP sender that a controller reads and steers
// (Linux: the tcp_sock fields that tcp_bbr.c and tcp_cubic.c touch).
type Sender interface {
	// Now is the sender's monotonic clock (Linux: tp->tcp_mstamp).
	Now() time.Duration

	Cwnd() uint32 // tp->snd_cwnd, segments
	SetCwnd(uint32)
	CwndClamp() uint32 // tp->snd_cwnd_clamp
	Ssthresh() uint32  // tp->snd_ssthresh
	SetSsthresh(uint32)

	InFlight() uint32      // tcp_packets_in_flight: sent - sacked - lost + retransmitted
	Sacked() uint32        // tp->sacked_out
	Lost() uint32          // tp->lost_out
	Retransmitted() uint32 // tp->retrans_out
	MSS() uint32           // tp->mss_cache, bytes

	SRTT() time.Duration   // smoothed RTT (per-segment samples, not the 1 ms timestamp clock)
	MinRTT() time.Duration // tcp_min_rtt: windowed minimum RTT, 0 if none yet

	Delivered() uint64 // tp->delivered: segments delivered (acked or sacked) so far
	LostTotal() uint64 // tp->lost: segments marked lost so far
	AppLimited() bool  // tp->app_limited != 0

	PacingRate() uint64 // sk->sk_pacing_rate, bytes/s; 0 = not paced
	SetPacingRate(uint64)
	MaxPacingRate() uint64 // sk->sk_max_pacing_rate; 0 = unlimited
}

// RateSample is one delivery-rate sample, generated once per ACK as in
// Linux's tcp_rate.c (struct rate_sample).
type RateSample struct {
	PriorDelivered uint64        // tp->delivered when the sampled packet was sent
	Delivered      int64         // segments delivered over Interval; <0 if invalid
	Interval       time.Duration // max(send interval, ack interval); <=0 if invalid
	RTT            time.Duration // RTT of the most recently (s)acked never-retransmitted segment; <0 if none
	Losses         uint32        // segments newly marked lost on this ACK
	AckedSacked    uint32        // segments newly acked or sacked on this ACK
	PriorInFlight  uint32        // in flight before this ACK
	IsAppLimited   bool          // the sampled packet was sent while app-limited
	IsRetrans      bool          // the sampled packet was a retransmission
}

// AckSample is what pkts_acked reports (Linux: struct ack_sample).
type AckSample struct {
	PktsAcked uint32        // segments newly acked (cumulatively) on this ACK
	RTT       time.Duration // RTT sample from this ACK; <0 if none
	InFlight  uint32        // in flight before this ACK
}

// Algorithm is one connection's congestion controller. The mandatory
// callbacks are those Linux requires of every tcp_congestion_ops:
// ssthresh, cong_avoid (or CongControl) and undo_cwnd.
type Algorithm interface {
	// Init is called once before the first segment is sent.
	Init(s Sender)
	// Release is called when the connection is done with the algorithm.
	Release()
	// SSThresh returns the slow-start threshold to use on entering
	// recovery or loss (Linux: ssthresh).
	SSThresh() uint32
	// CongAvoid grows the window on an ACK in StateOpen (Linux:
	// cong_avoid(sk, ack, acked)). acked is the number of segments newly
	// delivered. Not called when the algorithm implements CongController.
	CongAvoid(acked uint32)
	// SetState is called on every change of the recovery state.
	SetState(State)
	// CwndEvent reports a cwnd event.
	CwndEvent(Event)
	// PktsAcked is called for every ACK that acks new data.
	PktsAcked(AckSample)
	// UndoCwnd returns the window to restore when a loss turns out to be
	// spurious (Linux: undo_cwnd).
	UndoCwnd() uint32
}

// CongController is implemented by algorithms that take the whole window
// and pacing decision on each ACK from a rate sample (Linux: cong_control,
// used by BBR). The sender then neither calls CongAvoid nor reduces the
// window itself in recovery.
type CongController interface {
	CongControl(rs *RateSample)
}

// Factory makes a fresh Algorithm for one connection.
type Factory func() Algorithm
