package cubic

import (
	"math"
	"testing"
	"time"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/cctest"
)

func newCubic(opts Options, cwnd, ssthresh uint32) (*Cubic, *cctest.Sender) {
	s := cctest.NewSender()
	s.Clock = time.Second // a non-zero clock, as a real one
	s.CwndV, s.SsthreshV = cwnd, ssthresh
	c := Factory(opts)().(*Cubic)
	c.Init(s)
	return c, s
}

// ackClock acks for d at the rate of one window per rtt, in steps of
// step, one CongAvoid per step.
func ackClock(c *Cubic, s *cctest.Sender, rtt, d, step time.Duration) {
	var credit float64
	for elapsed := time.Duration(0); elapsed < d; elapsed += step {
		s.Advance(step)
		credit += float64(s.CwndV) * float64(step) / float64(rtt)
		if n := uint32(credit); n > 0 {
			credit -= float64(n)
			c.CongAvoid(n)
		}
	}
}

func TestK(t *testing.T) {
	// K = cbrt((W_max - cwnd_epoch)/C): hand-computed values.
	for _, tc := range []struct {
		wmax, cwnd uint32
		want       float64 // seconds
	}{
		{100, 70, 4.2172},   // cbrt(75)
		{1000, 700, 9.0856}, // cbrt(750)
		{20, 14, 2.4662},    // cbrt(15)
		{70, 100, 0},
	} {
		got := CubicK(tc.wmax, tc.cwnd).Seconds()
		if math.Abs(got-tc.want) > 0.001 {
			t.Errorf("CubicK(%d, %d) = %.4f s, want %.4f", tc.wmax, tc.cwnd, got, tc.want)
		}
	}
}

func TestLossCutsToBetaAndRemembersWmax(t *testing.T) {
	c, s := newCubic(Options{}, 100, 50)
	if got := c.SSThresh(); got != 70 { // 100*717/1024 = 70.02
		t.Fatalf("SSThresh() at cwnd 100 = %d, want 70", got)
	}
	if c.lastMaxCwnd != 100 {
		t.Fatalf("W_max = %d, want 100", c.lastMaxCwnd)
	}
	// Fast convergence: a loss below the last W_max lowers W_max further,
	// to cwnd*(1+beta)/2 (RFC 9438 §4.7).
	s.CwndV = 80
	c.SSThresh()
	if want := uint32(80 * (1024 + 717) / 2048); c.lastMaxCwnd != want {
		t.Fatalf("W_max after a loss below it = %d, want %d", c.lastMaxCwnd, want)
	}
	c2, s2 := newCubic(Options{NoFastConvergence: true}, 100, 50)
	c2.SSThresh()
	s2.CwndV = 80
	c2.SSThresh()
	if c2.lastMaxCwnd != 80 {
		t.Fatalf("W_max without fast convergence = %d, want 80", c2.lastMaxCwnd)
	}
}

// TestFollowsCubicCurve: after a loss at W_max=100 on a 100 ms path the
// window follows W(t) = C(t-K)^3 + W_max: concave up to W_max at t=K,
// then convex. Reno's emulation stays below it on this path (after K it
// is at 70 + 0.53*42 = 92), so the cubic region governs.
func TestFollowsCubicCurve(t *testing.T) {
	c, s := newCubic(Options{}, 100, 0x7fffffff)
	s.SsthreshV = c.SSThresh()
	s.CwndV = s.SsthreshV // the sender sets cwnd to ssthresh after recovery
	k := CubicK(100, s.CwndV)
	const rtt = 100 * time.Millisecond
	start := s.Clock
	for _, at := range []time.Duration{k / 2, k, k + 2*time.Second, 2 * k} {
		ackClock(c, s, rtt, start+at-s.Clock, time.Millisecond)
		// The window aims one RTT ahead (t + delay_min; delay_min is 0
		// here), and lags its target by about one RTT of growth.
		want := CubicTarget(100, at, k)
		if got := float64(s.CwndV); math.Abs(got-want) > 0.05*want+2 {
			t.Errorf("t=%v: cwnd = %.0f, want W(t) = %.1f", at, got, want)
		}
	}
}

// TestTCPFriendlyRegion: on a 1 ms path the cubic curve is nearly flat
// for the first seconds, and CUBIC grows as Reno would:
// W_est = cwnd_epoch + alpha*t/RTT with alpha = 3(1-beta)/(1+beta) = 0.529
// (RFC 9438 §4.3). After 100 RTTs: 14 + 52.9 = 66.9.
func TestTCPFriendlyRegion(t *testing.T) {
	if math.Abs(AlphaCubic-0.5290) > 0.001 {
		t.Fatalf("alpha_cubic = %.4f, want 0.5290", AlphaCubic)
	}
	const rtt = time.Millisecond
	run := func(opts Options) uint32 {
		c, s := newCubic(opts, 20, 0x7fffffff)
		s.SsthreshV = c.SSThresh()
		s.CwndV = s.SsthreshV
		ackClock(c, s, rtt, 100*rtt, rtt/10)
		return s.CwndV
	}
	want := 14 + AlphaCubic*100
	if got := float64(run(Options{})); math.Abs(got-want) > 0.1*want {
		t.Errorf("cwnd after 100 RTTs = %.0f, want W_est = %.1f", got, want)
	}
	// Without the TCP-friendly region the nearly flat cubic curve
	// (W(0.1 s) = 14.7) governs.
	if got := float64(run(Options{NoTCPFriendliness: true})); got > 0.5*want {
		t.Errorf("cwnd without TCP friendliness = %.0f, want far below %.1f", got, want)
	}
}

// slowStartRounds runs rounds of slow start with one ACK per segment,
// ACKs spaced by space, the RTT of round i given by rttOf(i). It returns
// the round in which HyStart fired (or -1) and cwnd then.
func slowStartRounds(c *Cubic, s *cctest.Sender, rounds int, space time.Duration, rttOf func(int) time.Duration) (int, uint32) {
	for i := range rounds {
		n := s.CwndV
		s.InFlightV = n
		for range n {
			s.Advance(space)
			s.DeliveredV++
			c.PktsAcked(cc.AckSample{PktsAcked: 1, RTT: rttOf(i), InFlight: s.InFlightV})
			c.CongAvoid(1)
			if c.HyStartFound() {
				return i, s.CwndV
			}
		}
		// Idle until the next round's ACKs (the window's flight time).
		s.Advance(rttOf(i))
	}
	return -1, s.CwndV
}

func TestHyStartExitsOnDelayIncrease(t *testing.T) {
	c, s := newCubic(Options{NoHyStartAckTrain: true}, 10, 0x7fffffff)
	// 40 ms for five rounds (cwnd 10 -> 320), then 50 ms: more than
	// delay_min + clamp(delay_min/8, 4 ms, 16 ms) = 45 ms.
	rttOf := func(i int) time.Duration {
		if i < 5 {
			return 40 * time.Millisecond
		}
		return 50 * time.Millisecond
	}
	round, cwnd := slowStartRounds(c, s, 8, 100*time.Microsecond, rttOf)
	if round != 5 {
		t.Fatalf("HyStart fired in round %d (cwnd %d), want round 5 (the first at 50 ms)", round, cwnd)
	}
	if s.SsthreshV != cwnd {
		t.Fatalf("ssthresh = %d, want cwnd at exit %d", s.SsthreshV, cwnd)
	}
	// The same stream at a constant 40 ms never fires.
	c2, s2 := newCubic(Options{NoHyStartAckTrain: true}, 10, 0x7fffffff)
	if round, cwnd := slowStartRounds(c2, s2, 8, 100*time.Microsecond, func(int) time.Duration { return 40 * time.Millisecond }); round != -1 {
		t.Fatalf("HyStart fired at a constant RTT, round %d cwnd %d", round, cwnd)
	}
}

func TestHyStartAckTrain(t *testing.T) {
	// ACKs 0.5 ms apart at a 40 ms delay: the train outlasts
	// delay_min/2 = 20 ms in the first round with more than 40 ACKs:
	// round 3 (10, 20, 40, 80), after 41 of them, at cwnd 80+41.
	c, s := newCubic(Options{NoHyStartDelay: true}, 10, 0x7fffffff)
	round, cwnd := slowStartRounds(c, s, 10, 500*time.Microsecond, func(int) time.Duration { return 40 * time.Millisecond })
	if round != 3 || cwnd < 120 || cwnd > 125 {
		t.Fatalf("ack train: fired in round %d at cwnd %d, want round 3 at cwnd about 121", round, cwnd)
	}
}

func TestRTOResets(t *testing.T) {
	c, s := newCubic(Options{}, 100, 50)
	c.SSThresh()
	c.SetState(cc.StateLoss)
	if c.lastMaxCwnd != 0 || c.epochStart != 0 || c.found {
		t.Fatalf("state after RTO: W_max %d epoch %v found %v, want all reset", c.lastMaxCwnd, c.epochStart, c.found)
	}
	_ = s
}

func BenchmarkCongAvoid(b *testing.B) {
	c, s := newCubic(Options{}, 100, 50)
	b.ReportAllocs()
	for range b.N {
		s.Advance(time.Microsecond)
		c.CongAvoid(2)
	}
}

// TestHyStartAckTrainCushion: Linux adds hystart_ack_delay to the ACK
// train's threshold also for a connection nothing paces, from the pacing
// rate tcp_update_pacing_rate keeps anyway, and halves the sum:
// (delay_min + min(1 ms, 4·64 KiB / rate)) / 2.
func TestHyStartAckTrainCushion(t *testing.T) {
	for _, tc := range []struct {
		name      string
		srtt      time.Duration
		cwnd      uint32
		trainEnd  time.Duration // the train's last ACK, after the round's start
		wantFound bool
	}{
		// 2 × 100 × 1448 B / 40 ms = 7.24 MB/s: the cushion is the 1 ms
		// cap, the threshold (40 + 1) / 2 = 20.5 ms.
		{"slow, inside the cushion", 40 * time.Millisecond, 100, 20400 * time.Microsecond, false},
		{"slow, past the cushion", 40 * time.Millisecond, 100, 20600 * time.Microsecond, true},
		// 2 × 1000 × 1448 B / 1 ms = 2.9 GB/s: 4 × 65536 / 2.9e9 s =
		// 90.5 µs, the threshold (40 ms + 90.5 µs) / 2 = 20.045 ms.
		{"fast, past the cushion", time.Millisecond, 1000, 20100 * time.Microsecond, true},
		{"fast, inside the cushion", time.Millisecond, 1000, 20040 * time.Microsecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := newCubic(Options{NoHyStartDelay: true}, tc.cwnd, 0x7fffffff)
			s.SRTTV = tc.srtt
			start := s.Clock
			// The round starts at Init; ACKs every 100 µs, the last at
			// trainEnd.
			for at := 100 * time.Microsecond; ; at += 100 * time.Microsecond {
				s.Clock = start + min(at, tc.trainEnd)
				c.PktsAcked(cc.AckSample{PktsAcked: 2, RTT: 40 * time.Millisecond})
				if at >= tc.trainEnd {
					break
				}
			}
			if c.HyStartFound() != tc.wantFound {
				t.Errorf("ACK train to %v at srtt %v cwnd %d: found = %v, want %v (ssthresh %d)", tc.trainEnd, tc.srtt, tc.cwnd, c.HyStartFound(), tc.wantFound, s.SsthreshV)
			}
		})
	}
}
