package bbr

import (
	"math"
	"time"

	"github.com/nsappliance/appliance/cc"
)

// maxBW is the windowed max recent bandwidth, pkts/µs << 24 (bbr_max_bw).
func (b *BBR) maxBW() uint32 { return b.bw.get() }

// bwEstimate is the path's estimated bandwidth: the long-term rate while a
// policer is suspected, otherwise the windowed max (bbr_bw).
func (b *BBR) bwEstimate() uint32 {
	if b.ltUseBW {
		return b.ltBW
	}
	return b.maxBW()
}

// extraAckedMax is the max extra data acked in the past 5-10 rounds
// (bbr_extra_acked).
func (b *BBR) extraAckedMax() uint32 { return max(b.extraAcked[0], b.extraAcked[1]) }

// rateBytesPerSec converts a rate in pkts/µs << 24 and a gain to bytes/s,
// paced 1% below it (bbr_rate_bytes_per_sec). The kernel's order of
// operations is kept (it truncates the same way); products saturate
// instead of wrapping.
func (b *BBR) rateBytesPerSec(rate uint64, gain uint32) uint64 {
	mss := uint64(max(b.s.MSS(), 1))
	rate = mulShift(rate, mss, 0)
	rate = mulShift(rate, uint64(gain), bbrScale)
	rate = mulShift(rate, usPerSec/100*(100-pacingMarginPercent), bwScale)
	return rate
}

// bwToPacingRate converts bw and gain to a pacing rate capped by the
// socket's max pacing rate (bbr_bw_to_pacing_rate).
func (b *BBR) bwToPacingRate(bw uint32, gain uint32) uint64 {
	rate := b.rateBytesPerSec(uint64(bw), gain)
	if m := b.s.MaxPacingRate(); m > 0 {
		rate = min(rate, m)
	}
	return rate
}

// initPacingRateFromRTT paces at high_gain × cwnd / srtt, or over a
// nominal 1 ms before any RTT sample (bbr_init_pacing_rate_from_rtt).
func (b *BBR) initPacingRateFromRTT() {
	rttUs := uint64(1000) // USEC_PER_MSEC: nominal default RTT
	if srtt := b.s.SRTT(); srtt > 0 {
		rttUs = max(uint64(srtt.Microseconds()), 1)
		b.hasSeenRTT = true
	}
	bw := uint64(b.s.Cwnd()) * bwUnit / rttUs
	b.s.SetPacingRate(b.bwToPacingRate(sat32(bw), highGain))
}

// setPacingRate paces at gain × bw; before the pipe is full it only ever
// raises the rate (bbr_set_pacing_rate).
func (b *BBR) setPacingRate(bw uint32, gain uint32) {
	rate := b.bwToPacingRate(bw, gain)
	if !b.hasSeenRTT && b.s.SRTT() > 0 {
		b.initPacingRateFromRTT()
	}
	if b.fullBWReached || rate > b.s.PacingRate() {
		b.s.SetPacingRate(rate)
	}
}

// minTSOSegs is 1 below 1.2 Mbit/s, else 2 (bbr_min_tso_segs).
func (b *BBR) minTSOSegs() uint32 {
	if b.s.PacingRate() < minTSORate>>3 {
		return 1
	}
	return 2
}

// tsoSegsGoal is the number of segments per TSO burst: about 1 ms of data
// at the pacing rate, at most 64 KiB and 127 segments (bbr_tso_segs_goal).
func (b *BBR) tsoSegsGoal() uint32 {
	mss := uint64(max(b.s.MSS(), 1))
	bytes := min(b.s.PacingRate()>>pacingShift, gsoMaxSize-1-maxTCPHeader)
	segs := max(uint32(bytes/mss), b.minTSOSegs())
	return min(segs, 0x7F)
}

// saveCwnd remembers the last known good cwnd, to restore it after loss
// recovery or PROBE_RTT (bbr_save_cwnd).
func (b *BBR) saveCwnd() {
	if b.prevCAState < cc.StateRecovery && b.mode != ProbeRTT {
		b.priorCwnd = b.s.Cwnd() // this cwnd is good enough
	} else {
		// Loss recovery or PROBE_RTT have temporarily cut cwnd.
		b.priorCwnd = max(b.priorCwnd, b.s.Cwnd())
	}
}

// bdp is ceil(bw × min_rtt × gain) in packets, or the initial window
// before any RTT sample (bbr_bdp).
func (b *BBR) bdp(bw uint32, gain uint32) uint32 {
	if b.minRTTUs == noMinRTT {
		return initCwnd // no valid RTT samples yet: cap at the initial window
	}
	w := uint64(bw) * uint64(b.minRTTUs)
	// Apply the gain, remove the BW_SCALE shift and round up.
	return sat32((mulShift(w, uint64(gain), bbrScale) + bwUnit - 1) / bwUnit)
}

// quantizationBudget adds room for full-sized TSO bursts in the sender's
// qdisc, its TSO engine and the receiver's GRO/delayed ACK, rounds up to
// an even count and keeps the 5/4 phase above BDP even for tiny BDPs
// (bbr_quantization_budget).
func (b *BBR) quantizationBudget(cwnd uint32) uint32 {
	c := uint64(cwnd) + 3*uint64(b.tsoSegsGoal())
	c = (c + 1) &^ 1
	if b.mode == ProbeBW && b.cycleIdx == 0 {
		c += 2
	}
	return sat32(c)
}

// inflight is the in-flight target for a bw and gain (bbr_inflight).
func (b *BBR) inflight(bw uint32, gain uint32) uint32 {
	return b.quantizationBudget(b.bdp(bw, gain))
}

// packetsInNetAtEDT estimates how many of our packets are in the network
// when the next paced segment leaves (bbr_packets_in_net_at_edt).
func (b *BBR) packetsInNetAtEDT(inflightNow uint32) uint32 {
	now := b.s.Now()
	edt := now
	if d, ok := b.s.(DepartureTimer); ok {
		edt = max(d.EarliestDeparture(), now)
	}
	intervalUs := uint64((edt - now).Microseconds())
	delivered := mulShift(uint64(b.bwEstimate()), intervalUs, bwScale)
	atEDT := uint64(inflightNow)
	if b.pacingGain > bbrUnit { // increasing inflight: include the EDT burst
		atEDT += uint64(b.tsoSegsGoal())
	}
	if delivered >= atEDT {
		return 0
	}
	return sat32(atEDT - delivered)
}

// ackAggregationCwnd is the cwnd allowance for ACK aggregation, capped at
// 100 ms of data (bbr_ack_aggregation_cwnd).
func (b *BBR) ackAggregationCwnd() uint32 {
	if extraAckedGain == 0 || !b.fullBWReached {
		return 0
	}
	maxAggr := sat32(uint64(b.bwEstimate()) * extraAckedMaxUs / bwUnit)
	aggr := sat32(uint64(extraAckedGain) * uint64(b.extraAckedMax()) >> bbrScale)
	return min(aggr, maxAggr)
}

// setCwndToRecoverOrRestore applies packet conservation in the first
// round of recovery and restores the saved cwnd when recovery ends
// (bbr_set_cwnd_to_recover_or_restore). It reports whether packet
// conservation decided the window.
func (b *BBR) setCwndToRecoverOrRestore(rs *cc.RateSample, acked uint32) (uint32, bool) {
	prev, state := b.prevCAState, b.caState
	cwnd := b.s.Cwnd()
	inflight := b.s.InFlight()

	// An ACK for P packets should release at most 2P: first deduct the
	// lost packets, then setCwnd slow-starts toward the target.
	if rs.Losses > 0 {
		if rs.Losses >= cwnd {
			cwnd = 1
		} else {
			cwnd = max(cwnd-rs.Losses, 1)
		}
	}
	if state == cc.StateRecovery && prev != cc.StateRecovery {
		// First round of recovery: packet conservation.
		b.packetConservation = true
		b.nextRTTDelivered = b.s.Delivered() // start the round now
		// Cut unused cwnd from app behaviour or TSO deferral.
		cwnd = sat32(uint64(inflight) + uint64(acked))
	} else if prev >= cc.StateRecovery && state < cc.StateRecovery {
		// Leaving recovery: restore the cwnd saved when it began.
		cwnd = max(cwnd, b.priorCwnd)
		b.packetConservation = false
	}
	b.prevCAState = state

	if b.packetConservation {
		return max(cwnd, sat32(uint64(inflight)+uint64(acked))), true
	}
	return cwnd, false
}

// setCwnd slow-starts cwnd toward the target (gain × BDP + aggregation
// allowance + quantization budget), or snaps down to it once the pipe
// was full; PROBE_RTT caps it at 4 (bbr_set_cwnd).
func (b *BBR) setCwnd(rs *cc.RateSample, acked uint32, bw uint32, gain uint32) {
	cwnd := b.s.Cwnd()
	if acked != 0 { // otherwise no packet fully acked: just apply caps
		var conserving bool
		cwnd, conserving = b.setCwndToRecoverOrRestore(rs, acked)
		if !conserving {
			target := b.bdp(bw, gain)
			// Allow for excess acked data from ACK/data aggregation.
			target = sat32(uint64(target) + uint64(b.ackAggregationCwnd()))
			target = b.quantizationBudget(target)
			switch {
			case b.fullBWReached: // only cut cwnd once the pipe was full
				cwnd = min(sat32(uint64(cwnd)+uint64(acked)), target)
			case cwnd < target || b.s.Delivered() < initCwnd:
				cwnd = sat32(uint64(cwnd) + uint64(acked))
			}
			cwnd = max(cwnd, cwndMinTarget)
		}
	}
	if c := b.s.CwndClamp(); c > 0 {
		cwnd = min(cwnd, c) // apply the global cap
	}
	if b.mode == ProbeRTT { // drain the queue, refresh min_rtt
		cwnd = min(cwnd, cwndMinTarget)
	}
	b.s.SetCwnd(cwnd)
}

// isNextCyclePhase decides whether the gain cycle moves on: after one
// min RTT at gain 1; at 5/4 only once inflight reached 5/4 × BDP or
// packets were lost; at 3/4 as soon as inflight fell to BDP
// (bbr_is_next_cycle_phase).
func (b *BBR) isNextCyclePhase(rs *cc.RateSample) bool {
	isFullLength := b.deliveredMstamp-b.cycleMstamp > time.Duration(b.minRTTUs)*time.Microsecond
	if b.minRTTUs == noMinRTT {
		isFullLength = false
	}
	if b.pacingGain == bbrUnit {
		return isFullLength // just use wall clock time
	}
	inflight := b.packetsInNetAtEDT(rs.PriorInFlight)
	bw := b.maxBW()
	if b.pacingGain > bbrUnit {
		// Probe until inflight reaches pacing_gain × BDP; do not persist
		// if packets are lost (a small buffer may not hold that much).
		return isFullLength && (rs.Losses > 0 || inflight >= b.inflight(bw, b.pacingGain))
	}
	// Drain until inflight falls to BDP; longer would underuse the pipe.
	return isFullLength || inflight <= b.inflight(bw, bbrUnit)
}

// advanceCyclePhase moves to the next gain phase (bbr_advance_cycle_phase).
func (b *BBR) advanceCyclePhase() {
	b.cycleIdx = (b.cycleIdx + 1) & (cycleLen - 1)
	b.cycleMstamp = b.deliveredMstamp
}

// updateCyclePhase is gain cycling in PROBE_BW (bbr_update_cycle_phase).
func (b *BBR) updateCyclePhase(rs *cc.RateSample) {
	if b.mode == ProbeBW && b.isNextCyclePhase(rs) {
		b.advanceCyclePhase()
	}
}

// resetProbeBWMode enters PROBE_BW at a random phase other than the 3/4
// one (bbr_reset_probe_bw_mode).
func (b *BBR) resetProbeBWMode() {
	b.mode = ProbeBW
	b.cycleIdx = cycleLen - 1 - min(b.rand(cycleRand), cycleRand-1)
	b.advanceCyclePhase() // flip to the next phase of the gain cycle
}

// resetMode re-enters STARTUP if the pipe was never full, else PROBE_BW
// (bbr_reset_mode).
func (b *BBR) resetMode() {
	if !b.fullBWReached {
		b.mode = Startup // bbr_reset_startup_mode
	} else {
		b.resetProbeBWMode()
	}
}

// resetLTBWSamplingInterval starts a new long-term sampling interval
// (bbr_reset_lt_bw_sampling_interval).
func (b *BBR) resetLTBWSamplingInterval() {
	b.ltLastStampMs = b.deliveredMstamp.Milliseconds()
	b.ltLastDelivered = b.s.Delivered()
	b.ltLastLost = b.s.LostTotal()
	b.ltRTTCnt = 0
}

// resetLTBWSampling forgets the long-term estimate
// (bbr_reset_lt_bw_sampling).
func (b *BBR) resetLTBWSampling() {
	b.ltBW = 0
	b.ltUseBW = false
	b.ltIsSampling = false
	b.resetLTBWSamplingInterval()
}

// ltBWIntervalDone ends a long-term interval: two consecutive lossy
// intervals with consistent bw mean a policer (bbr_lt_bw_interval_done).
func (b *BBR) ltBWIntervalDone(bw uint32) {
	if b.ltBW != 0 { // bw from a previous interval?
		diff := bw - b.ltBW
		if bw < b.ltBW {
			diff = b.ltBW - bw
		}
		if uint64(diff)*bbrUnit <= uint64(ltBWRatio)*uint64(b.ltBW) ||
			b.rateBytesPerSec(uint64(diff), bbrUnit) <= ltBWDiff {
			// All criteria met: we are policed.
			b.ltBW = sat32((uint64(bw) + uint64(b.ltBW)) >> 1) // average of 2 intervals
			b.ltUseBW = true
			b.pacingGain = bbrUnit // try to avoid drops
			b.ltRTTCnt = 0
			return
		}
	}
	b.ltBW = bw
	b.resetLTBWSamplingInterval()
}

// ltBWSampling detects token-bucket policers: two consecutive sampling
// intervals of 4-16 rounds, each ending in a loss, with ≥20% loss and
// consistent throughput, make BBR pace at their average for 48 rounds
// (bbr_lt_bw_sampling).
func (b *BBR) ltBWSampling(rs *cc.RateSample) {
	if b.ltUseBW { // already using the long-term rate
		if b.mode == ProbeBW && b.roundStart {
			b.ltRTTCnt++
			if b.ltRTTCnt >= ltBWMaxRTTs {
				b.resetLTBWSampling() // stop using lt_bw
				b.resetProbeBWMode()  // restart gain cycling
			}
		}
		return
	}
	// Wait for the first loss before sampling, to let the policer use up
	// its tokens; earlier samples include bursts and overestimate.
	if !b.ltIsSampling {
		if rs.Losses == 0 {
			return
		}
		b.resetLTBWSamplingInterval()
		b.ltIsSampling = true
	}
	// To avoid underestimates, reset sampling if we run out of data.
	if rs.IsAppLimited {
		b.resetLTBWSampling()
		return
	}
	if b.roundStart {
		b.ltRTTCnt++ // count round trips in this interval
	}
	if b.ltRTTCnt < ltIntvlMinRTTs {
		return // the interval needs to be longer
	}
	if b.ltRTTCnt > 4*ltIntvlMinRTTs {
		b.resetLTBWSampling() // interval too long
		return
	}
	// End the interval at a loss: the policer's tokens are used up then.
	if rs.Losses == 0 {
		return
	}
	lost := b.s.LostTotal() - b.ltLastLost
	delivered := b.s.Delivered() - b.ltLastDelivered
	// Is the loss rate lost/delivered >= lt_loss_thresh? If not, wait.
	if delivered == 0 || lost<<bbrScale < ltLossThresh*delivered {
		return
	}
	t := b.deliveredMstamp.Milliseconds() - b.ltLastStampMs
	if t < 1 {
		return // interval shorter than 1 ms: wait
	}
	if t >= math.MaxUint32/1000 {
		b.resetLTBWSampling() // interval too long
		return
	}
	bw := mulShift(delivered, bwUnit, 0) / uint64(t*1000)
	b.ltBWIntervalDone(sat32(bw))
}

// updateBW counts packet-timed rounds and feeds the max bw filter
// (bbr_update_bw).
func (b *BBR) updateBW(rs *cc.RateSample) {
	b.roundStart = false
	intervalUs := rs.Interval.Microseconds()
	if rs.Delivered < 0 || intervalUs <= 0 {
		return // not a valid observation
	}
	// A round ends when a packet sent after the last round's end is
	// delivered.
	if rs.PriorDelivered >= b.nextRTTDelivered {
		b.nextRTTDelivered = b.s.Delivered()
		b.rttCnt++
		b.roundStart = true
		b.packetConservation = false
	}
	b.ltBWSampling(rs)

	// delivered / interval, scaled, is a lower bound of the bottleneck bw.
	delivered := uint64(min(rs.Delivered, math.MaxUint32))
	bw := sat32(delivered * bwUnit / uint64(intervalUs))

	// App-limited samples reflect the application, not the network: use
	// them only when they are at least as high as the model.
	if !rs.IsAppLimited || bw >= b.maxBW() {
		b.bw.runningMax(bwRTTs, b.rttCnt, bw)
	}
}

// updateAckAggregation estimates the windowed max degree of ACK
// aggregation: data acked beyond bw × the epoch's length, kept over 5-10
// rounds (bbr_update_ack_aggregation).
func (b *BBR) updateAckAggregation(rs *cc.RateSample) {
	if extraAckedGain == 0 || rs.AckedSacked == 0 || rs.Delivered < 0 || rs.Interval.Microseconds() <= 0 {
		return
	}
	if b.roundStart {
		b.extraAckedWinRTTs = min(0x1F, b.extraAckedWinRTTs+1)
		if b.extraAckedWinRTTs >= extraAckedWinRTTs {
			b.extraAckedWinRTTs = 0
			b.extraAckedWinIdx ^= 1
			b.extraAcked[b.extraAckedWinIdx] = 0
		}
	}
	// Packets expected to be delivered over the epoch.
	epochUs := max(b.deliveredMstamp-b.ackEpochMstamp, 0).Microseconds()
	expected := sat32(mulShift(uint64(b.bwEstimate()), uint64(epochUs), bwScale))

	// Reset the epoch if the ACK rate fell below the expected rate or the
	// epoch is very old.
	if b.ackEpochAcked <= expected ||
		uint64(b.ackEpochAcked)+uint64(rs.AckedSacked) >= ackEpochResetThresh {
		b.ackEpochAcked = 0
		b.ackEpochMstamp = b.deliveredMstamp
		expected = 0
	}
	// Excess data delivered beyond what was expected.
	b.ackEpochAcked = uint32(min(uint64(b.ackEpochAcked)+uint64(rs.AckedSacked), 0xFFFFF))
	extra := b.ackEpochAcked - expected
	extra = min(extra, b.s.Cwnd(), 0xFFFF) // extra_acked is a u16
	if extra > b.extraAcked[b.extraAckedWinIdx] {
		b.extraAcked[b.extraAckedWinIdx] = extra
	}
}

// checkFullBWReached ends STARTUP's search once bw grew less than 25% in
// three non-app-limited rounds (bbr_check_full_bw_reached).
func (b *BBR) checkFullBWReached(rs *cc.RateSample) {
	if b.fullBWReached || !b.roundStart || rs.IsAppLimited {
		return
	}
	thresh := uint64(b.fullBW) * fullBWThresh >> bbrScale
	if uint64(b.maxBW()) >= thresh {
		b.fullBW = b.maxBW()
		b.fullBWCnt = 0
		return
	}
	b.fullBWCnt++
	b.fullBWReached = b.fullBWCnt >= fullBWCnt
}

// checkDrain enters DRAIN once the pipe is full and PROBE_BW once the
// queue is estimated drained (bbr_check_drain).
func (b *BBR) checkDrain() {
	if b.mode == Startup && b.fullBWReached {
		b.mode = Drain // drain the queue we made
		b.s.SetSsthresh(b.inflight(b.maxBW(), bbrUnit))
	}
	// Fall through: in-flight may already be small.
	if b.mode == Drain && b.packetsInNetAtEDT(b.s.InFlight()) <= b.inflight(b.maxBW(), bbrUnit) {
		b.resetProbeBWMode() // queue estimated drained
	}
}

// checkProbeRTTDone leaves PROBE_RTT after its 200 ms and one round, and
// restores the cwnd from before it (bbr_check_probe_rtt_done).
func (b *BBR) checkProbeRTTDone() {
	now := b.s.Now()
	if !b.probeRTTDoneSet || now <= b.probeRTTDoneStamp {
		return
	}
	b.minRTTStamp = now // wait a while until the next PROBE_RTT
	b.s.SetCwnd(max(b.s.Cwnd(), b.priorCwnd))
	b.resetMode()
}

// updateMinRTT keeps the 10 s windowed min RTT and runs PROBE_RTT when it
// expires: cwnd 4 for at least 200 ms and one round (bbr_update_min_rtt).
func (b *BBR) updateMinRTT(rs *cc.RateSample) {
	now := b.s.Now()
	filterExpired := now > b.minRTTStamp+minRTTWin
	// rs.is_ack_delayed is not in cc.RateSample: treated as false.
	if rs.RTT >= 0 {
		rttUs := durToUs32(rs.RTT)
		if rttUs <= b.minRTTUs || filterExpired {
			b.minRTTUs = rttUs
			b.minRTTStamp = now
		}
	}

	if filterExpired && !b.idleRestart && b.mode != ProbeRTT {
		b.mode = ProbeRTT // dip, drain the queue
		b.saveCwnd()      // to restore it afterwards
		b.probeRTTDoneSet = false
	}

	if b.mode == ProbeRTT {
		// Ignore the low-rate samples of this mode.
		if m, ok := b.s.(AppLimitedMarker); ok {
			m.MarkAppLimited()
		}
		// Keep the minimum in flight for max(200 ms, 1 round).
		if !b.probeRTTDoneSet && b.s.InFlight() <= cwndMinTarget {
			b.probeRTTDoneStamp = now + probeRTTMode
			b.probeRTTDoneSet = true
			b.probeRTTRoundDone = false
			b.nextRTTDelivered = b.s.Delivered()
		} else if b.probeRTTDoneSet {
			if b.roundStart {
				b.probeRTTRoundDone = true
			}
			if b.probeRTTRoundDone {
				b.checkProbeRTTDone()
			}
		}
	}
	// Restart after idle ends only once a new (S)ACK delivers data.
	if rs.Delivered > 0 {
		b.idleRestart = false
	}
}

// updateGains sets the pacing and cwnd gains for the mode
// (bbr_update_gains).
func (b *BBR) updateGains() {
	switch b.mode {
	case Startup:
		b.pacingGain, b.cwndGain = highGain, highGain
	case Drain:
		b.pacingGain, b.cwndGain = drainGain, highGain // slow, to drain; keep cwnd
	case ProbeBW:
		b.pacingGain = pacingGainCycle[b.cycleIdx&(cycleLen-1)]
		if b.ltUseBW {
			b.pacingGain = bbrUnit
		}
		b.cwndGain = steadyCwndGain
	case ProbeRTT:
		b.pacingGain, b.cwndGain = bbrUnit, bbrUnit
	}
}

// updateModel runs the model updates of one ACK in the kernel's order
// (bbr_update_model).
func (b *BBR) updateModel(rs *cc.RateSample) {
	b.updateBW(rs)
	b.updateAckAggregation(rs)
	b.updateCyclePhase(rs)
	b.checkFullBWReached(rs)
	b.checkDrain()
	b.updateMinRTT(rs)
	b.updateGains()
}
