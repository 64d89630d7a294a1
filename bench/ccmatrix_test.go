package bench

import (
	"bytes"
	"context"
	"io"
	"math"
	"strings"
	"testing"
)

func TestMergeMatrixRounds(t *testing.T) {
	round := func(k0, a0, k1, a1 float64) []MatrixRow {
		return []MatrixRow{
			{Stack: "kernel", CC: "reno", Emulate: "e", Loss: 0, Mbps: k0, PingMeanMs: 40},
			{Stack: "appliance", CC: "reno", Emulate: "e", Loss: 0, Mbps: a0, PingMeanMs: 45, NetstackRetransmits: uint64(a0)},
			{Stack: "kernel", CC: "reno", Emulate: "e,loss=1%", Loss: 1, Mbps: k1},
			{Stack: "appliance", CC: "reno", Emulate: "e,loss=1%", Loss: 1, Mbps: a1, Lost: uint64(10 * a1)},
		}
	}
	// At loss 1% round 2's kernel run was fast (a burst of luck): the
	// median of the rounds' ratios (0.8, 0.25, 1.5) is 0.8, where the
	// ratio of the medians (6 / 5) would be 1.2. Round 3's appliance run
	// at loss 0 failed: its 0 is left out of the median and the ratios.
	rounds := [][]MatrixRow{round(94, 90, 5, 4), round(90, 80, 20, 5), round(92, 0, 4, 6)}
	rounds[2][1].Error = "iperf3: boom"
	rounds[1][2].Retried = "iperf3: bang"
	got := mergeMatrixRounds(rounds)
	if len(got) != 4 {
		t.Fatalf("%d rows, want 4", len(got))
	}
	for i, want := range []float64{92, 85, 5, 5} {
		if got[i].Mbps != want {
			t.Errorf("row %d (%s %s): median %v Mbit/s, want %v", i, got[i].Stack, got[i].Emulate, got[i].Mbps, want)
		}
	}
	if got[1].NetstackRetransmits != 85 || got[1].PingMeanMs != 45 {
		t.Errorf("appliance loss 0: retrans %d ping %v, want the medians of the measured rounds 85, 45", got[1].NetstackRetransmits, got[1].PingMeanMs)
	}
	if got[3].Lost != 50 {
		t.Errorf("appliance loss 1%%: lost %d, want the median 50", got[3].Lost)
	}
	if len(got[1].Rounds) != 3 || got[1].Error != "round 3: iperf3: boom" {
		t.Errorf("appliance loss 0: %d rounds, error %q; want 3 and the round's error", len(got[1].Rounds), got[1].Error)
	}
	if got[2].Retried != "round 2: iperf3: bang" || got[2].Error != "" {
		t.Errorf("kernel loss 1%%: retried %q, error %q; want the round's first attempt's error in Retried only", got[2].Retried, got[2].Error)
	}
	med, lo, hi, ok := MatrixRatio(got[3], got[2])
	if !ok || med != 0.8 || lo != 0.25 || hi != 1.5 {
		t.Errorf("MatrixRatio at 1%% = %v (%v-%v) %v, want 0.8 (0.25-1.5) true", med, lo, hi, ok)
	}
	med, lo, hi, ok = MatrixRatio(got[1], got[0])
	if want := (90.0/94 + 80.0/90) / 2; !ok || math.Abs(med-want) > 1e-9 || lo != 80.0/90 || hi != 90.0/94 {
		t.Errorf("MatrixRatio at 0 = %v (%v-%v), want %v from two rounds", med, lo, hi, want)
	}
	if one := mergeMatrixRounds(rounds[:1]); one[3].Mbps != 4 || one[3].Rounds != nil {
		t.Errorf("one round: %+v, want it as measured", one[3])
	}
	if _, _, _, ok := MatrixRatio(MatrixRow{}, got[0]); ok {
		t.Error("MatrixRatio without an appliance figure: ok")
	}
	var b bytes.Buffer
	WriteMatrix(&b, got)
	for _, s := range []string{"| 5.0 (4.0-20.0) | 5.0 (4.0-6.0) | 0.80 (0.25-1.50) |", "| 92.0 (90.0-94.0) | 85.0 (80.0-90.0) |", "Retried: kernel reno e,loss=1% measured nothing the first time: round 2: iperf3: bang"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}

func TestRoundSeed(t *testing.T) {
	for _, c := range []struct {
		seed  uint64
		round int
		spec  string
		want  uint64
	}{
		{0, 3, "rate=100mbit,loss=1%", 0},             // unseeded: independent draws
		{1, 0, "rate=100mbit,loss=1%", 1},             // round 1
		{1, 4, "rate=100mbit,loss=1%", 5},             // round 5
		{9, 2, "rate=100mbit, seed=3,loss=1%", 0},     // the spec's own seed wins
		{9, 2, "rate=100mbit,loss=1%,seedless=1", 11}, // not a seed field
		{9, 2, "rate=100mbit,loss=1%,seed=0", 0},      // also seed=0: a field is given once
	} {
		if got := roundSeed(c.seed, c.round, c.spec); got != c.want {
			t.Errorf("roundSeed(%d, %d, %q) = %d, want %d", c.seed, c.round, c.spec, got, c.want)
		}
	}
}

// TestRetryUnmeasured: a run that measured nothing and says why is run
// once more, its error kept in Retried; a measured run, however slow, a
// kernel without the algorithm (measureCell runs nothing) and a second
// failure are not retried.
func TestRetryUnmeasured(t *testing.T) {
	for _, c := range []struct {
		name    string
		runs    []MatrixRow
		calls   int
		mbps    float64
		retried string
	}{
		{"measured", []MatrixRow{{Mbps: 0.05}}, 1, 0.05, ""},
		{"failed then measured", []MatrixRow{{Error: "iperf3: boom"}, {Mbps: 3}}, 2, 3, "iperf3: boom"},
		{"failed twice", []MatrixRow{{Error: "iperf3: boom"}, {Error: "iperf3: bang"}}, 2, 0, "iperf3: boom"},
	} {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			got := retryUnmeasured(context.Background(), io.Discard, func() MatrixRow {
				calls++
				if calls > len(c.runs) {
					t.Fatalf("run %d, want at most %d", calls, len(c.runs))
				}
				return c.runs[calls-1]
			})
			if calls != c.calls || got.Mbps != c.mbps || got.Retried != c.retried {
				t.Errorf("%d runs, %v Mbit/s, retried %q; want %d, %v, %q", calls, got.Mbps, got.Retried, c.calls, c.mbps, c.retried)
			}
			if c.calls == 2 && got.Error != c.runs[1].Error {
				t.Errorf("error %q, want the second run's %q", got.Error, c.runs[1].Error)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	retryUnmeasured(ctx, io.Discard, func() MatrixRow { calls++; return MatrixRow{Error: "interrupted"} })
	if calls != 1 {
		t.Errorf("cancelled: %d runs, want 1", calls)
	}
	mc := &MatrixConfig{Progress: io.Discard}
	row := measureCell(context.Background(), mc, "no-such-cc", "rate=100mbit", 0, false, "router", 0)
	if !strings.HasPrefix(row.Error, "kernel has no no-such-cc") || row.Retried != "" || row.Stack != "kernel" {
		t.Errorf("kernel lacks the algorithm: %+v, want a kernel row with that error, not retried", row)
	}
}
