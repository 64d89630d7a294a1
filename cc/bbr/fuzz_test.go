package bbr_test

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/bbr"
	"github.com/nsappliance/appliance/cc/cctest"
)

// play interprets data as a stream of callbacks and sender changes, with
// odd values on purpose (zero and negative RTTs and intervals, invalid
// samples, huge counts, MSS 0, clock standing still), and checks that BBR
// neither panics nor leaves its invariants.
func play(t *testing.T, data []byte) {
	s := cctest.NewSender()
	b := bbr.NewWithOptions(bbr.Options{Rand: func(n uint32) uint32 { return uint32(len(data)) % n }})
	b.Init(s)
	for len(data) >= 16 {
		op, a := data[0], data[1:16]
		data = data[16:]
		u64 := binary.LittleEndian.Uint64(a[0:8])
		u32 := binary.LittleEndian.Uint32(a[8:12])
		small := uint32(a[12])
		switch op % 12 {
		case 0, 1, 2, 3, 4:
			acked := small
			if op&0x80 != 0 {
				acked = u32
			}
			s.DeliveredV += uint64(acked)
			s.InFlightV = uint32(a[13]) * uint32(a[14])
			rs := cc.RateSample{
				PriorDelivered: s.DeliveredV - u64%(s.DeliveredV+1),
				Delivered:      int64(u64) >> (a[13] % 64),
				Interval:       time.Duration(int32(u32)) * time.Microsecond,
				RTT:            time.Duration(int32(u32^uint32(a[14])<<24)) * time.Microsecond,
				Losses:         uint32(a[14] % 8),
				AckedSacked:    acked,
				PriorInFlight:  s.InFlightV + acked,
				IsAppLimited:   a[13]&1 != 0,
				IsRetrans:      a[13]&2 != 0,
			}
			if op&0x40 != 0 {
				rs = cc.RateSample{Delivered: -1, Interval: -1, RTT: -1, AckedSacked: acked}
			}
			s.LostTotalV += uint64(rs.Losses)
			b.CongControl(&rs)
			if acked > 0 && s.CwndV < 1 {
				t.Fatalf("cwnd %d after an ACK", s.CwndV)
			}
		case 5:
			b.SetState(cc.State(small % 6))
		case 6:
			s.AppLimitedV = small&1 != 0
			b.CwndEvent(cc.Event(small % 5))
		case 7:
			if got := b.UndoCwnd(); got != s.CwndV {
				t.Fatalf("UndoCwnd() = %d, cwnd %d", got, s.CwndV)
			}
		case 8:
			b.SSThresh()
		case 9:
			s.Advance(time.Duration(u32) * time.Microsecond)
		case 10:
			s.SRTTV = time.Duration(int32(u32)) * time.Microsecond
			s.MinRTTV = time.Duration(small) * time.Millisecond
			s.MSSV = uint32(a[13]) * uint32(a[14])
		case 11:
			s.MaxPacingV = u64 >> (small % 64)
			if s.MaxPacingV > 0 { // SO_MAX_PACING_RATE lowers the current rate too
				s.PacingV = min(s.PacingV, s.MaxPacingV)
			}
			s.CwndV = uint32(a[13])
			s.ClampV = max(u32, 1)
		}
		in := b.Info()
		if in.Mode > bbr.ProbeRTT {
			t.Fatalf("mode %d", in.Mode)
		}
		if in.CycleIdx < 0 || in.CycleIdx > 7 {
			t.Fatalf("cycle index %d", in.CycleIdx)
		}
		if s.MaxPacingV > 0 && s.PacingV > s.MaxPacingV {
			t.Fatalf("pacing %d above max %d", s.PacingV, s.MaxPacingV)
		}
	}
}

func FuzzCallbacks(f *testing.F) {
	seed := func(ops ...[]byte) []byte {
		var out []byte
		for _, o := range ops {
			op := make([]byte, 16)
			copy(op, o)
			out = append(out, op...)
		}
		return out
	}
	f.Add([]byte{})
	f.Add(seed([]byte{0}))                                                                                                 // empty sample, nothing acked
	f.Add(seed([]byte{0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}))                                                       // invalid sample
	f.Add(seed([]byte{1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 1, 1}))                                                  // zero interval and RTT
	f.Add(seed([]byte{10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{2, 9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1, 2, 3})) // MSS 0
	f.Add(seed([]byte{5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4}, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, data []byte) { play(t, data) })
}

// A long deterministic random stream, so every `go test` run covers far
// more than the seed corpus.
func TestRandomCallbackStreams(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 42))
	for range 200 {
		data := make([]byte, 16*(1+r.IntN(400)))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		play(t, data)
	}
}

// Extreme but valid inputs keep the arithmetic saturating, not wrapping.
func TestExtremeRates(t *testing.T) {
	s := cctest.NewSender()
	s.MSSV = 65535
	b := bbr.New().(*bbr.BBR)
	b.Init(s)
	for range 50 {
		s.Advance(time.Microsecond)
		s.DeliveredV += math.MaxUint32
		b.CongControl(&cc.RateSample{
			PriorDelivered: s.DeliveredV - 1, Delivered: math.MaxInt64, Interval: time.Microsecond,
			RTT: time.Microsecond, AckedSacked: math.MaxUint32,
		})
	}
	// 256 packets/µs (the u32 bw ceiling) x 64 KiB x gain ≈ 1.7e13 B/s.
	if s.PacingV < 1e13 {
		t.Fatalf("pacing at an absurd bw = %d, want saturated high, not wrapped", s.PacingV)
	}
	if s.CwndV < 4 {
		t.Fatalf("cwnd %d", s.CwndV)
	}
}
