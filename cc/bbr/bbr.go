// Package bbr is BBR v1 congestion control ("BBR: Congestion-Based
// Congestion Control", Cardwell et al., ACM Queue 14(5), 2016) as Linux
// implements it in net/ipv4/tcp_bbr.c (v5.x/v6.x, with ACK aggregation
// compensation and departure-time pacing), for the appliance's TCP senders.
// Start with New, a cc.Factory; Info reads the model the way ss does.
//
// BBR implements cc.CongController: on every ACK it updates a model of the
// path (windowed-max delivery rate over 10 rounds, 10 s windowed-min RTT)
// from the sender's rate sample (Linux tcp_rate.c) and sets both the
// pacing rate (gain × bw) and cwnd (gain × BDP plus allowances). It reacts
// to loss only through packet conservation in the first round of recovery
// and the long-term (policer) bandwidth estimate.
//
// Arithmetic follows the kernel's fixed point so that results match it
// bit for bit: bandwidth in packets per µs << 24 (BW_SCALE), gains << 8
// (BBR_SCALE), times in µs. Every function names its Linux counterpart.
package bbr

import (
	"math"
	"math/bits"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nsappliance/appliance/cc"
)

// Fixed-point scales (tcp_bbr.c: BW_SCALE, BW_UNIT, BBR_SCALE, BBR_UNIT).
const (
	bwScale  = 24
	bwUnit   = 1 << bwScale
	bbrScale = 8
	bbrUnit  = 1 << bbrScale
)

// Parameters, named and valued as the static consts of tcp_bbr.c.
const (
	cycleLen            = 8                      // CYCLE_LEN: phases in the pacing gain cycle
	bwRTTs              = cycleLen + 2           // bbr_bw_rtts: bw filter window, rounds
	minRTTWin           = 10 * time.Second       // bbr_min_rtt_win_sec
	probeRTTMode        = 200 * time.Millisecond // bbr_probe_rtt_mode_ms
	minTSORate          = 1200000                // bbr_min_tso_rate, bit/s
	pacingMarginPercent = 1                      // bbr_pacing_margin_percent
	highGain            = bbrUnit*2885/1000 + 1  // bbr_high_gain: 2/ln(2)
	drainGain           = bbrUnit * 1000 / 2885  // bbr_drain_gain: 1/high_gain
	steadyCwndGain      = bbrUnit * 2            // bbr_cwnd_gain
	cycleRand           = 7                      // bbr_cycle_rand
	cwndMinTarget       = 4                      // bbr_cwnd_min_target
	fullBWThresh        = bbrUnit * 5 / 4        // bbr_full_bw_thresh
	fullBWCnt           = 3                      // bbr_full_bw_cnt
	ltIntvlMinRTTs      = 4                      // bbr_lt_intvl_min_rtts
	ltLossThresh        = 50                     // bbr_lt_loss_thresh: 50/256 ≈ 20%
	ltBWRatio           = bbrUnit / 8            // bbr_lt_bw_ratio
	ltBWDiff            = 4000 / 8               // bbr_lt_bw_diff: 4 kbit/s in bytes/s
	ltBWMaxRTTs         = 48                     // bbr_lt_bw_max_rtts
	extraAckedGain      = bbrUnit                // bbr_extra_acked_gain
	extraAckedWinRTTs   = 5                      // bbr_extra_acked_win_rtts
	ackEpochResetThresh = 1 << 20                // bbr_ack_epoch_acked_reset_thresh
	extraAckedMaxUs     = 100 * 1000             // bbr_extra_acked_max_us
	initCwnd            = 10                     // TCP_INIT_CWND (include/net/tcp.h)
	pacingShift         = 10                     // sk_pacing_shift default: ~1 ms of data per TSO burst
	gsoMaxSize          = 65536                  // GSO_LEGACY_MAX_SIZE
	maxTCPHeader        = 320                    // MAX_TCP_HEADER on a typical x86-64 config
	noMinRTT            = math.MaxUint32         // min_rtt_us == ~0U: no RTT sample yet
	usPerSec            = uint64(time.Second / time.Microsecond)
)

// pacingGainCycle is bbr_pacing_gain[]: probe at 5/4, drain at 3/4, then
// cruise at 1 for six phases.
var pacingGainCycle = [cycleLen]uint32{
	bbrUnit * 5 / 4, bbrUnit * 3 / 4,
	bbrUnit, bbrUnit, bbrUnit, bbrUnit, bbrUnit, bbrUnit,
}

// Mode is BBR's state machine mode (tcp_bbr.c: enum bbr_mode).
type Mode uint8

// The modes.
const (
	Startup  Mode = iota // BBR_STARTUP: ramp up quickly to fill the pipe
	Drain                // BBR_DRAIN: drain the queue STARTUP made
	ProbeBW              // BBR_PROBE_BW: cycle gains around the estimated bw
	ProbeRTT             // BBR_PROBE_RTT: cut inflight to 4 to re-measure min RTT
)

func (m Mode) String() string {
	switch m {
	case Startup:
		return "STARTUP"
	case Drain:
		return "DRAIN"
	case ProbeBW:
		return "PROBE_BW"
	case ProbeRTT:
		return "PROBE_RTT"
	}
	return "UNKNOWN"
}

// AppLimitedMarker is an optional cc.Sender ability BBR uses in PROBE_RTT
// to discard the low-rate samples of that mode (Linux bbr_update_min_rtt:
// tp->app_limited = (tp->delivered + tcp_packets_in_flight(tp)) ?: 1).
// MarkAppLimited marks the connection app-limited until everything now in
// flight has been delivered. Without it PROBE_RTT samples count as
// ordinary ones; the bw filter's max still keeps the right estimate.
type AppLimitedMarker interface {
	MarkAppLimited()
}

// DepartureTimer is an optional cc.Sender ability: the earliest departure
// time of the next segment under pacing, on the Now clock (Linux:
// tp->tcp_wstamp_ns), used by bbr_packets_in_net_at_edt. Without it BBR
// takes the next departure to be now.
type DepartureTimer interface {
	EarliestDeparture() time.Duration
}

// Options tune a BBR instance. The zero value is Linux's behaviour.
type Options struct {
	// Rand returns a uniformly random integer in [0, n) for the random
	// start of the gain cycle (bbr_reset_probe_bw_mode). nil means
	// math/rand/v2's global source. Tests set it to fix the cycle.
	Rand func(n uint32) uint32
}

// BBR is one connection's BBR state (tcp_bbr.c: struct bbr). All methods
// run on the connection's sender, never concurrently (see package cc).
type BBR struct {
	s    cc.Sender
	rand func(n uint32) uint32

	minRTTUs          uint32        // min_rtt_us: min RTT in the 10 s window, noMinRTT if none
	minRTTStamp       time.Duration // min_rtt_stamp
	probeRTTDoneStamp time.Duration // probe_rtt_done_stamp, valid if probeRTTDoneSet
	probeRTTDoneSet   bool          // the kernel's probe_rtt_done_stamp != 0
	bw                minmax        // max recent delivery rate, pkts/µs << 24, over rounds
	rttCnt            uint32        // rtt_cnt: packet-timed rounds elapsed
	nextRTTDelivered  uint64        // next_rtt_delivered: delivered count that ends this round
	cycleMstamp       time.Duration // cycle_mstamp: start of the current gain cycle phase
	deliveredMstamp   time.Duration // tp->delivered_mstamp: time of the last ACK that delivered data

	mode               Mode
	prevCAState        cc.State // prev_ca_state: CA state on the previous ACK
	caState            cc.State // icsk_ca_state, as reported through SetState
	packetConservation bool     // packet_conservation
	roundStart         bool     // round_start
	idleRestart        bool     // idle_restart
	probeRTTRoundDone  bool     // probe_rtt_round_done

	ltIsSampling    bool   // lt_is_sampling
	ltRTTCnt        uint32 // lt_rtt_cnt
	ltUseBW         bool   // lt_use_bw
	ltBW            uint32 // lt_bw, pkts/µs << 24
	ltLastDelivered uint64 // lt_last_delivered
	ltLastStampMs   int64  // lt_last_stamp, ms
	ltLastLost      uint64 // lt_last_lost

	pacingGain    uint32 // pacing_gain << 8
	cwndGain      uint32 // cwnd_gain << 8
	fullBWReached bool   // full_bw_reached
	fullBWCnt     uint32 // full_bw_cnt
	cycleIdx      uint32 // cycle_idx
	hasSeenRTT    bool   // has_seen_rtt
	priorCwnd     uint32 // prior_cwnd
	fullBW        uint32 // full_bw

	ackEpochMstamp    time.Duration // ack_epoch_mstamp
	extraAcked        [2]uint32     // extra_acked[2] (u16 in the kernel; kept ≤ 0xFFFF)
	ackEpochAcked     uint32        // ack_epoch_acked (20 bits)
	extraAckedWinRTTs uint32        // extra_acked_win_rtts (5 bits)
	extraAckedWinIdx  uint32        // extra_acked_win_idx
}

var (
	_ cc.Algorithm      = (*BBR)(nil)
	_ cc.CongController = (*BBR)(nil)
	_ cc.Factory        = New
)

// New returns a fresh BBR instance with Linux's defaults; it is a
// cc.Factory.
func New() cc.Algorithm { return NewWithOptions(Options{}) }

// NewWithOptions returns a fresh BBR instance.
func NewWithOptions(o Options) *BBR {
	r := o.Rand
	if r == nil {
		r = rand.Uint32N
	}
	return &BBR{rand: r, minRTTUs: noMinRTT}
}

// Init resets the state for a new connection (Linux: bbr_init).
func (b *BBR) Init(s cc.Sender) {
	r := b.rand
	*b = BBR{s: s, rand: r}
	s.SetSsthresh(math.MaxInt32) // TCP_INFINITE_SSTHRESH
	b.prevCAState = cc.StateOpen
	b.minRTTUs = noMinRTT
	if m := s.MinRTT(); m > 0 { // tcp_min_rtt(tp)
		b.minRTTUs = durToUs32(m)
	}
	b.minRTTStamp = s.Now()
	b.bw.reset(b.rttCnt, 0)
	b.initPacingRateFromRTT()
	b.resetLTBWSampling()
	b.mode = Startup
	b.updateGains()
	b.ackEpochMstamp = s.Now()
	b.deliveredMstamp = s.Now()
}

// Release does nothing: BBR holds no resources.
func (b *BBR) Release() {}

// SSThresh saves cwnd for when recovery ends or is undone and leaves
// ssthresh alone (Linux: bbr_ssthresh).
func (b *BBR) SSThresh() uint32 {
	if b.s == nil {
		return math.MaxInt32
	}
	b.saveCwnd()
	return b.s.Ssthresh()
}

// CongAvoid is never called for a cc.CongController; it does nothing.
func (b *BBR) CongAvoid(uint32) {}

// PktsAcked does nothing: BBR takes its RTT from the rate sample.
func (b *BBR) PktsAcked(cc.AckSample) {}

// SetState records the recovery state; an RTO ends the round and feeds
// the policer detector a loss (Linux: bbr_set_state).
func (b *BBR) SetState(st cc.State) {
	if b.s == nil {
		return
	}
	if st == cc.StateLoss {
		b.prevCAState = cc.StateLoss
		b.fullBW = 0
		b.roundStart = true // treat RTO like the end of a round
		b.ltBWSampling(&cc.RateSample{Losses: 1})
	}
	b.caState = st
}

// CwndEvent handles a restart from idle (Linux: bbr_cwnd_event).
func (b *BBR) CwndEvent(ev cc.Event) {
	if b.s == nil {
		return
	}
	if ev == cc.EventTxStart && b.s.AppLimited() {
		b.idleRestart = true
		b.ackEpochMstamp = b.s.Now()
		b.ackEpochAcked = 0
		// Pace at the estimated bw when restarting app-limited from idle.
		switch b.mode {
		case ProbeBW:
			b.setPacingRate(b.bwEstimate(), bbrUnit)
		case ProbeRTT:
			b.checkProbeRTTDone()
		}
	}
}

// UndoCwnd resets full-pipe detection and the policer detector after a
// spurious loss and keeps cwnd (Linux: bbr_undo_cwnd).
func (b *BBR) UndoCwnd() uint32 {
	if b.s == nil {
		return initCwnd
	}
	b.fullBW = 0
	b.fullBWCnt = 0
	b.resetLTBWSampling()
	return b.s.Cwnd()
}

// CongControl updates the model from one rate sample and sets pacing rate
// and cwnd (Linux: bbr_main).
func (b *BBR) CongControl(rs *cc.RateSample) {
	if b.s == nil || rs == nil {
		return
	}
	// tcp_rate_gen stamps tp->delivered_mstamp on every ACK that delivers.
	if rs.AckedSacked > 0 {
		b.deliveredMstamp = b.s.Now()
	}
	b.updateModel(rs)
	bw := b.bwEstimate()
	b.setPacingRate(bw, b.pacingGain)
	b.setCwnd(rs, rs.AckedSacked, bw, b.cwndGain)
}

// Info is a read-only snapshot of the model, as Linux's struct
// tcp_bbr_info (bbr_get_info) plus the mode and a few internals.
type Info struct {
	Mode          Mode
	BW            uint64        // estimated bottleneck bandwidth, bytes/s (bbr_bw_lo/hi)
	MinRTT        time.Duration // windowed min RTT; 0 if none yet (bbr_min_rtt)
	PacingGain    uint32        // pacing gain << 8, e.g. 739 = 2.89 (bbr_pacing_gain)
	CwndGain      uint32        // cwnd gain << 8 (bbr_cwnd_gain)
	CycleIdx      int           // PROBE_BW gain cycle phase, 0 = the 5/4 phase
	FullBWReached bool          // STARTUP saw the pipe full
	Rounds        uint32        // packet-timed rounds so far
	LTUseBW       bool          // using the long-term (policer) bw
	LTBW          uint64        // long-term bw, bytes/s
	ExtraAcked    uint32        // ACK aggregation allowance now in cwnd, segments
}

// Info returns the current model.
func (b *BBR) Info() Info {
	in := Info{
		Mode:          b.mode,
		PacingGain:    b.pacingGain,
		CwndGain:      b.cwndGain,
		CycleIdx:      int(b.cycleIdx),
		FullBWReached: b.fullBWReached,
		Rounds:        b.rttCnt,
		LTUseBW:       b.ltUseBW,
	}
	if b.minRTTUs != noMinRTT {
		in.MinRTT = time.Duration(b.minRTTUs) * time.Microsecond
	}
	if b.s != nil {
		mss := uint64(max(b.s.MSS(), 1))
		in.BW = mulShift(uint64(b.bwEstimate()), mss*usPerSec, bwScale)
		in.LTBW = mulShift(uint64(b.ltBW), mss*usPerSec, bwScale)
		in.ExtraAcked = b.ackAggregationCwnd()
	}
	return in
}

// PacingGainFloat returns a gain in Info's << 8 fixed point as a float,
// the way ss prints it.
func PacingGainFloat(g uint32) float64 { return float64(g) / bbrUnit }

// durToUs32 converts a duration to µs, clamped to [0, MaxUint32-1].
func durToUs32(d time.Duration) uint32 {
	us := d.Microseconds()
	if us <= 0 {
		return 0
	}
	if us >= noMinRTT {
		return noMinRTT - 1
	}
	return uint32(us)
}

// mulShift returns a*b >> s, saturating at MaxUint64.
func mulShift(a, b uint64, s uint) uint64 {
	hi, lo := bits.Mul64(a, b)
	if hi>>s != 0 {
		return math.MaxUint64
	}
	if s == 0 {
		return lo
	}
	return hi<<(64-s) | lo>>s
}

// sat32 clamps a uint64 to uint32.
func sat32(v uint64) uint32 {
	if v > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(v)
}

// SSInfo is the get_info of Linux's tcp_congestion_ops as ss shows it:
// Info().SS(). An adapter can probe for it with a type assertion on
// interface{ SSInfo() string } without importing this package. Call it
// where the other callbacks run (it reads the connection's state).
func (b *BBR) SSInfo() string { return b.Info().SS() }

// SS formats the model the way Linux ss -ti prints tcp_bbr_info
// (iproute2 misc/ss.c, tcp_show_info): "bbr:(bw:97.1Mbps,mrtt:40.385,
// pacing_gain:1.25,cwnd_gain:2)", bw in bit/s with three significant
// digits, min RTT in ms, gains as decimals; a zero gain is left out, as
// ss does.
func (in Info) SS() string {
	mrtt := float64(noMinRTT) / 1000 // the kernel reports ~0U before any sample
	if in.MinRTT > 0 {
		mrtt = float64(in.MinRTT.Microseconds()) / 1000
	}
	s := "bbr:(bw:" + ssRate(float64(in.BW)*8) + "bps,mrtt:" + strconv.FormatFloat(mrtt, 'g', 6, 64)
	if in.PacingGain != 0 {
		s += ",pacing_gain:" + strconv.FormatFloat(PacingGainFloat(in.PacingGain), 'g', 6, 64)
	}
	if in.CwndGain != 0 {
		s += ",cwnd_gain:" + strconv.FormatFloat(PacingGainFloat(in.CwndGain), 'g', 6, 64)
	}
	return s + ")"
}

// ssRate prints a rate as iproute2's sprint_bw does without -n: three
// significant digits and a K, M, G or T suffix.
func ssRate(bw float64) string {
	for _, u := range []struct {
		div    float64
		suffix string
	}{{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "K"}} {
		if bw >= u.div {
			return strconv.FormatFloat(bw/u.div, 'g', 3, 64) + u.suffix
		}
	}
	return strconv.FormatFloat(bw, 'g', 6, 64)
}
