// Package cubic is CUBIC congestion control (RFC 9438) as Linux's
// net/ipv4/tcp_cubic.c implements it: beta 0.7 (717/1024), C 0.4, fast
// convergence, the TCP-friendly (Reno-emulation) region and HyStart slow
// start exit by ACK-train and delay-increase detection. Start with New.
package cubic

import (
	"math"
	"time"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/reno"
)

// The constants of tcp_cubic.c and RFC 9438.
const (
	// BetaScale and Beta: multiplicative decrease 717/1024 ≈ 0.7
	// (RFC 9438 §4.6 beta_cubic; Linux module parameter beta).
	BetaScale = 1024
	Beta      = 717
	// C is the cubic scaling constant (RFC 9438 §4.2; Linux bic_scale
	// 41 ≈ 0.4 × 1024 / 10).
	C = 0.4
	// AlphaCubic is the Reno-emulation additive increase,
	// 3(1-β)/(1+β) (RFC 9438 §4.3 equation 4).
	AlphaCubic = 3 * (1 - float64(Beta)/BetaScale) / (1 + float64(Beta)/BetaScale)

	hystartLowWindow  = 16                    // hystart_low_window
	hystartAckDelta   = 2 * time.Millisecond  // hystart_ack_delta_us
	hystartMinSamples = 8                     // HYSTART_MIN_SAMPLES
	hystartDelayMin   = 4 * time.Millisecond  // HYSTART_DELAY_MIN
	hystartDelayMax   = 16 * time.Millisecond // HYSTART_DELAY_MAX
	updateInterval    = time.Second / 32      // HZ/32: cnt recomputed at most this often at equal cwnd
	delaySkipAfterCut = time.Second           // delay samples ignored 1 s into an epoch
)

// Options tune CUBIC; the zero value is Linux's default.
type Options struct {
	NoFastConvergence bool // fast_convergence=0
	NoTCPFriendliness bool // tcp_friendliness=0
	NoHyStart         bool // hystart=0
	NoHyStartAckTrain bool // hystart_detect without HYSTART_ACK_TRAIN
	NoHyStartDelay    bool // hystart_detect without HYSTART_DELAY
}

// Cubic is one connection's CUBIC state (Linux struct bictcp).
type Cubic struct {
	opts Options
	s    cc.Sender
	ai   reno.AI

	cnt         uint32        // grow cwnd by 1 after cnt segments acked
	lastMaxCwnd uint32        // W_max
	lastCwnd    uint32        // cwnd at the last update
	lastTime    time.Duration // time of the last update
	originPoint uint32        // origin of the cubic curve
	k           time.Duration // time from the epoch start to the origin
	delayMin    time.Duration // minimum RTT seen
	epochStart  time.Duration // start of the epoch; 0 = none
	ackCnt      uint32        // segments acked, not yet counted in wEst
	wEst        float64       // Reno-emulation window (RFC 9438 W_est)
	priorCwnd   uint32
	lastAck     time.Duration // latest ACK seen (for idle shifts)

	// HyStart.
	found        bool
	roundStart   time.Duration
	hsLastAck    time.Duration
	endDelivered uint64 // the round ends when Delivered passes this
	currRTT      time.Duration
	sampleCnt    int
}

var _ cc.Algorithm = (*Cubic)(nil)

// New returns a CUBIC instance with Linux's defaults; it is a cc.Factory.
func New() cc.Algorithm { return &Cubic{} }

// Factory returns a cc.Factory with opts.
func Factory(opts Options) cc.Factory {
	return func() cc.Algorithm { return &Cubic{opts: opts} }
}

// Init implements cc.Algorithm (cubictcp_init).
func (c *Cubic) Init(s cc.Sender) {
	c.s = s
	c.reset()
	c.hystartReset()
}

// reset is bictcp_reset.
func (c *Cubic) reset() {
	c.cnt, c.lastMaxCwnd, c.lastCwnd, c.lastTime = 0, 0, 0, 0
	c.originPoint, c.k, c.delayMin, c.epochStart = 0, 0, 0, 0
	c.ackCnt, c.wEst = 0, 0
	c.found = false
}

// hystartReset starts a HyStart round (bictcp_hystart_reset). Linux ends
// the round when snd_una passes the snd_nxt of its start; the interface
// counts segments, so the round ends when what is in flight now has been
// delivered.
func (c *Cubic) hystartReset() {
	now := c.s.Now()
	c.roundStart, c.hsLastAck = now, now
	c.endDelivered = c.s.Delivered() + uint64(c.s.InFlight())
	c.currRTT = time.Duration(math.MaxInt64)
	c.sampleCnt = 0
}

// Release implements cc.Algorithm.
func (c *Cubic) Release() {}

// CwndEvent implements cc.Algorithm: after idle, shift the epoch so the
// window keeps following the curve (cubictcp_cwnd_event). Linux measures
// idle from the last send; this uses the last ACK.
func (c *Cubic) CwndEvent(ev cc.Event) {
	if ev != cc.EventTxStart || c.epochStart == 0 {
		return
	}
	now := c.s.Now()
	if delta := now - c.lastAck; delta > 0 && c.lastAck != 0 {
		c.epochStart += delta
		if c.epochStart > now {
			c.epochStart = now
		}
	}
}

// CubicTarget is W_cubic(t) = C·(t−K)³ + origin (RFC 9438 equation 1),
// in segments, for t and k in time units.
func CubicTarget(origin uint32, t, k time.Duration) float64 {
	d := (t - k).Seconds()
	return float64(origin) + C*d*d*d
}

// CubicK is K = ∛((W_max − cwnd_epoch)/C) (RFC 9438 equation 2).
func CubicK(wmax, cwnd uint32) time.Duration {
	if wmax <= cwnd {
		return 0
	}
	return time.Duration(math.Cbrt(float64(wmax-cwnd)/C) * float64(time.Second))
}

// update recomputes cnt (bictcp_update).
func (c *Cubic) update(cwnd, acked uint32) {
	now := c.s.Now()
	c.ackCnt += acked
	if c.lastCwnd == cwnd && now-c.lastTime <= updateInterval {
		return
	}
	if c.epochStart == 0 || now != c.lastTime {
		c.lastCwnd = cwnd
		c.lastTime = now
		if c.epochStart == 0 {
			// A new epoch starts with this ACK (RFC 9438 §4.2).
			c.epochStart = max(now, 1)
			c.ackCnt = acked
			c.wEst = float64(cwnd)
			if c.lastMaxCwnd <= cwnd {
				c.k = 0
				c.originPoint = cwnd
			} else {
				c.k = CubicK(c.lastMaxCwnd, cwnd)
				c.originPoint = c.lastMaxCwnd
			}
		}
		// The target one RTT ahead: t + delay_min (RFC 9438 §4.2 uses
		// W_cubic(t + RTT)).
		t := now - c.epochStart + c.delayMin
		target := CubicTarget(c.originPoint, t, c.k)
		if target > float64(cwnd) {
			c.cnt = uint32(float64(cwnd) / (target - float64(cwnd)))
		} else {
			c.cnt = 100 * cwnd // very small increment
		}
		// Without a W_max yet, grow at least 5% per RTT.
		if c.lastMaxCwnd == 0 && c.cnt > 20 {
			c.cnt = 20
		}
	}
	if !c.opts.NoTCPFriendliness {
		// RFC 9438 §4.3: W_est grows by α_cubic per RTT; where Reno
		// would be faster, grow as fast as W_est.
		c.wEst += AlphaCubic * float64(c.ackCnt) / float64(cwnd)
		c.ackCnt = 0
		if c.wEst > float64(cwnd) {
			maxCnt := uint32(float64(cwnd) / (c.wEst - float64(cwnd)))
			if c.cnt > maxCnt {
				c.cnt = maxCnt
			}
		}
	}
	// At most one segment per two acked: 1.5x per RTT.
	c.cnt = max(c.cnt, 2)
}

// CongAvoid implements cc.Algorithm (cubictcp_cong_avoid).
func (c *Cubic) CongAvoid(acked uint32) {
	c.lastAck = c.s.Now()
	if !cc.IsCwndLimited(c.s) {
		return
	}
	if c.s.Cwnd() < c.s.Ssthresh() {
		if acked = reno.SlowStart(c.s, acked); acked == 0 {
			return
		}
	}
	c.update(c.s.Cwnd(), acked)
	c.ai.Increase(c.s, c.cnt, acked)
}

// SSThresh implements cc.Algorithm (cubictcp_recalc_ssthresh): the epoch
// ends, W_max is remembered (lowered further by fast convergence, RFC
// 9438 §4.7) and the window is cut to β·cwnd (§4.6).
func (c *Cubic) SSThresh() uint32 {
	cwnd := c.s.Cwnd()
	c.priorCwnd = cwnd
	c.epochStart = 0
	if cwnd < c.lastMaxCwnd && !c.opts.NoFastConvergence {
		c.lastMaxCwnd = uint32(uint64(cwnd) * (BetaScale + Beta) / (2 * BetaScale))
	} else {
		c.lastMaxCwnd = cwnd
	}
	return max(uint32(uint64(cwnd)*Beta/BetaScale), 2)
}

// SetState implements cc.Algorithm (cubictcp_state): an RTO resets
// everything and HyStart starts over.
func (c *Cubic) SetState(st cc.State) {
	if st == cc.StateRecovery || st == cc.StateLoss || st == cc.StateCWR {
		c.ai.Reset()
	}
	if st == cc.StateLoss {
		c.reset()
		c.hystartReset()
	}
}

// UndoCwnd implements cc.Algorithm (tcp_reno_undo_cwnd).
func (c *Cubic) UndoCwnd() uint32 { return max(c.s.Cwnd(), c.priorCwnd) }

// PktsAcked implements cc.Algorithm (cubictcp_acked): tracks the minimum
// delay and runs HyStart in slow start.
func (c *Cubic) PktsAcked(a cc.AckSample) {
	now := c.s.Now()
	c.lastAck = now
	if a.RTT < 0 {
		return
	}
	// Discard delay samples right after a window cut.
	if c.epochStart != 0 && now-c.epochStart < delaySkipAfterCut {
		return
	}
	delay := max(a.RTT, time.Microsecond)
	if c.delayMin == 0 || c.delayMin > delay {
		c.delayMin = delay
	}
	if !c.found && !c.opts.NoHyStart && c.s.Cwnd() < c.s.Ssthresh() {
		c.hystartUpdate(delay)
	}
}

// HyStartFound reports whether HyStart has ended slow start.
func (c *Cubic) HyStartFound() bool { return c.found }

// hystartUpdate is hystart_update.
func (c *Cubic) hystartUpdate(delay time.Duration) {
	if c.s.Delivered() > c.endDelivered {
		c.hystartReset()
	}
	cwnd := c.s.Cwnd()
	if cwnd < hystartLowWindow {
		return
	}
	if !c.opts.NoHyStartAckTrain {
		now := c.s.Now()
		// ACK train: closely spaced ACKs keep arriving for longer than
		// half the minimum delay since the round started.
		if now-c.hsLastAck <= hystartAckDelta {
			c.hsLastAck = now
			threshold := c.delayMin + c.ackDelay()
			if c.s.PacingRate() == 0 {
				threshold /= 2
			}
			if now-c.roundStart > threshold {
				c.found = true
				c.s.SetSsthresh(cwnd)
			}
		}
	}
	if !c.opts.NoHyStartDelay {
		// Delay increase: the round's minimum RTT over 8 samples exceeds
		// delay_min by clamp(delay_min/8, 4 ms, 16 ms).
		if c.currRTT > delay {
			c.currRTT = delay
		}
		if c.sampleCnt < hystartMinSamples {
			c.sampleCnt++
		} else if c.currRTT > c.delayMin+min(max(c.delayMin/8, hystartDelayMin), hystartDelayMax) {
			c.found = true
			c.s.SetSsthresh(cwnd)
		}
	}
}

// ackDelay is hystart_ack_delay: a cushion for TSO/GRO aggregation of up
// to 1 ms (four 64 KiB GSO packets at sk_pacing_rate). Linux keeps
// sk_pacing_rate also for a connection nothing paces (no fq), so the
// cushion applies to an unpaced CUBIC too; for one, the rate is
// unpacedRate's.
func (c *Cubic) ackDelay() time.Duration {
	rate := c.s.PacingRate()
	if rate == 0 {
		rate = unpacedRate(c.s)
	}
	if rate == 0 {
		return 0
	}
	return min(time.Millisecond, time.Duration(4*65536*uint64(time.Second)/rate))
}

// unpacedRate is the sk_pacing_rate Linux's tcp_update_pacing_rate keeps
// for a connection that does not pace, bytes/s: mss × max(cwnd, in
// flight) / srtt, ×2 while cwnd < ssthresh/2 (sysctl_tcp_pacing_ss_ratio
// 200), ×1.2 after (tcp_pacing_ca_ratio 120). 0 without an srtt (Linux
// then leaves the product undivided: a rate so high the cushion is 0).
func unpacedRate(s cc.Sender) uint64 {
	srtt := s.SRTT()
	if srtt <= 0 {
		return 0
	}
	ratio := 1.2
	if s.Cwnd() < s.Ssthresh()/2 {
		ratio = 2
	}
	return uint64(float64(s.MSS()) * ratio * float64(max(s.Cwnd(), s.InFlight())) / srtt.Seconds())
}
