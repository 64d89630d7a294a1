package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// MatrixConfig says what RunCCMatrix measures: for each algorithm and each
// loss rate, one download (iperf3 -R) across Emulate plus loss=L%: in
// gateway mode, where netstack's congestion control is the sender on the
// emulated link, and in router mode, where the kernel's own algorithm
// (iperf3 -C) sends across the same emulated path: the reference.
type MatrixConfig struct {
	// Bin is the appliance binary.
	Bin string
	// Algorithms are congestion-control names; nil means reno, cubic, bbr.
	Algorithms []string
	// Losses are loss percentages; nil means 0, 0.1, 1, 2, 5.
	Losses []float64
	// Emulate is the path without loss; "" means rate=100mbit,delay=20ms.
	Emulate string
	// Extra are more emulation specs measured at loss 0 only (e.g. a deep
	// queue, limit=2000, for RTT inflation).
	Extra []string
	// Time is the iperf3 duration per cell; zero means 10s.
	Time time.Duration
	// Repeat is the number of rounds; zero means 1. Each round measures
	// every cell, the kernel's run and ours back to back, so that a burst
	// of load on the machine meets both sides of a pair; RunCCMatrix
	// returns one row per cell and side with the rounds' medians
	// (mergeMatrixRounds).
	Repeat int
	// Seed, when not 0, seeds the emulation's randomness (loss) of the
	// i-th round (from 0) with Seed+i, the same for the kernel's run and
	// ours: both sides of a pair then meet the same loss realization (the
	// same packets, by their order in each direction, are lost), common
	// random numbers that take the luck of the draw out of each round's
	// ratio. 0 draws independently for every run. A spec that sets seed=
	// keeps its own.
	Seed uint64
	// Progress receives one line per step; nil discards.
	Progress io.Writer
}

// MatrixRow is one cell of the matrix.
type MatrixRow struct {
	Stack   string  `json:"stack"` // "appliance" (gateway mode) or "kernel" (router mode)
	CC      string  `json:"cc"`
	Emulate string  `json:"emulate"`
	Loss    float64 `json:"loss_pct"`
	// Extra marks a --cc-extra cell (MatrixConfig.Extra), not part of
	// the loss series.
	Extra bool    `json:"extra,omitempty"`
	Mbps  float64 `json:"mbps"`
	// PingMeanMs/PingP95Ms: ping's RTT during the transfer.
	PingMeanMs  float64 `json:"ping_mean_ms"`
	PingP95Ms   float64 `json:"ping_p95_ms"`
	Retransmits int     `json:"retransmits"`
	// Netstack* are the appliance's netstack counters during the run
	// (gateway mode only, where netstack sends): retransmission timeouts,
	// retransmitted segments, retransmissions found lost in recovery.
	NetstackTimeouts        uint64 `json:"netstack_timeouts,omitempty"`
	NetstackSpuriousRTOs    uint64 `json:"netstack_spurious_rtos,omitempty"`
	NetstackRetransmits     uint64 `json:"netstack_retransmits,omitempty"`
	NetstackLostRetransmits uint64 `json:"netstack_lost_retransmits,omitempty"`
	// QueueDrops and Lost are the emulation's queue drops and random
	// losses during the run (both directions): Lost over the loss rate
	// estimates the packets sent, so bytes per packet (GSO size) shows.
	QueueDrops uint64 `json:"queue_drops,omitempty"`
	Lost       uint64 `json:"lost,omitempty"`
	// Seed is the emulation's seed for this run (MatrixConfig.Seed).
	Seed  uint64 `json:"seed,omitempty"`
	Error string `json:"error,omitempty"`
	// Retried is the error of a first attempt that measured nothing
	// (measureCell runs such a cell once more); the figures are the
	// second attempt's.
	Retried string `json:"retried,omitempty"`
	// Rounds are the cell's single runs when MatrixConfig.Repeat > 1 (the
	// row's figures are then their medians), in round order.
	Rounds []MatrixRow `json:"rounds,omitempty"`
}

// RunCCMatrix measures every cell, kernel reference first per algorithm.
func RunCCMatrix(ctx context.Context, mc MatrixConfig) ([]MatrixRow, error) {
	if mc.Algorithms == nil {
		mc.Algorithms = []string{"reno", "cubic", "bbr"}
	}
	if mc.Losses == nil {
		mc.Losses = []float64{0, 0.1, 1, 2, 5}
	}
	if mc.Emulate == "" {
		mc.Emulate = "rate=100mbit,delay=20ms"
	}
	if mc.Time <= 0 {
		mc.Time = 10 * time.Second
	}
	if mc.Progress == nil {
		mc.Progress = io.Discard
	}
	type cell struct {
		spec  string
		loss  float64
		extra bool
	}
	var cells []cell
	for _, l := range mc.Losses {
		spec := mc.Emulate
		if l > 0 {
			spec += ",loss=" + strconv.FormatFloat(l, 'f', -1, 64) + "%"
		}
		cells = append(cells, cell{spec, l, false})
	}
	for _, x := range mc.Extra {
		cells = append(cells, cell{x, 0, true})
	}
	if mc.Repeat < 1 {
		mc.Repeat = 1
	}
	var rounds [][]MatrixRow
	for i := range mc.Repeat {
		if mc.Repeat > 1 {
			fmt.Fprintf(mc.Progress, "ccmatrix: round %d of %d\n", i+1, mc.Repeat)
		}
		var rows []MatrixRow
		for _, alg := range mc.Algorithms {
			for _, c := range cells {
				for _, mode := range []string{"router", "gateway"} {
					if ctx.Err() != nil {
						break
					}
					rows = append(rows, measureCell(ctx, &mc, alg, c.spec, c.loss, c.extra, mode, roundSeed(mc.Seed, i, c.spec)))
				}
			}
		}
		if ctx.Err() != nil {
			if i == 0 {
				return rows, ctx.Err() // a partial single round as measured
			}
			break
		}
		rounds = append(rounds, rows)
	}
	return mergeMatrixRounds(rounds), ctx.Err()
}

// roundSeed is the emulation seed of round i (MatrixConfig.Seed): 0 for
// none, or when spec sets its own.
func roundSeed(seed uint64, i int, spec string) uint64 {
	if seed == 0 {
		return 0
	}
	for _, f := range strings.Split(spec, ",") {
		if k, _, _ := strings.Cut(strings.TrimSpace(f), "="); k == "seed" {
			return 0 // emulate.ParseSpec takes a field once
		}
	}
	return seed + uint64(i)
}

// measureCell runs one side of one cell: mode router is the kernel's alg,
// gateway is netstack's; seed, when not 0, is added to spec. The run is
// retried once if it measured nothing (retryUnmeasured).
func measureCell(ctx context.Context, mc *MatrixConfig, alg, spec string, loss float64, extra bool, mode string, seed uint64) MatrixRow {
	row := MatrixRow{Stack: "appliance", CC: alg, Emulate: spec, Loss: loss, Extra: extra, Seed: seed}
	if seed != 0 {
		spec += ",seed=" + strconv.FormatUint(seed, 10)
	}
	if mode == "router" {
		row.Stack = "kernel"
		if ok, avail := KernelCC(alg); !ok {
			row.Error = fmt.Sprintf("kernel has no %s (available: %s)", alg, strings.Join(avail, " "))
			return row
		}
	}
	return retryUnmeasured(ctx, mc.Progress, func() MatrixRow { return measureRun(ctx, mc, row, mode, spec) })
}

// retryUnmeasured runs run, and once more if it measured nothing and
// says why (a set-up step or iperf3 erred), keeping the first error in
// Retried: one flaky step should not leave a hole in a matrix that takes
// half an hour, and the error still shows.
func retryUnmeasured(ctx context.Context, progress io.Writer, run func() MatrixRow) MatrixRow {
	row := run()
	if row.Mbps > 0 || row.Error == "" || ctx.Err() != nil {
		return row
	}
	fmt.Fprintf(progress, "ccmatrix: %s %s %s measured nothing (%s); once more\n", row.Stack, row.CC, row.Emulate, row.Error)
	again := run()
	again.Retried = row.Error
	return again
}

// measureRun is one run of measureCell: row with the download's figures
// across spec (row.Emulate plus the seed) filled in.
func measureRun(ctx context.Context, mc *MatrixConfig, row MatrixRow, mode, spec string) MatrixRow {
	fmt.Fprintf(mc.Progress, "ccmatrix: %s %s %s\n", row.Stack, row.CC, spec)
	res, err := Run(ctx, Config{Bin: mc.Bin, Mode: mode, CC: row.CC, Emulate: spec, Series: true,
		Time: mc.Time, Compare: []string{}, MTUs: []int{1500}, Progress: mc.Progress, downOnly: true})
	if err != nil {
		row.Error = err.Error()
	}
	for _, r := range res {
		if r.Path != PathAppliance {
			continue
		}
		row.Mbps = r.DownGbps * 1000
		if r.Down != nil {
			row.PingMeanMs, row.PingP95Ms, row.Retransmits = r.Down.PingMeanMs, r.Down.PingP95Ms, r.Down.Retransmits
			row.NetstackTimeouts, row.NetstackSpuriousRTOs = r.Down.NetstackTimeouts, r.Down.NetstackSpuriousRTOs
			row.NetstackRetransmits, row.NetstackLostRetransmits = r.Down.NetstackRetransmits, r.Down.NetstackLostRetransmits
			row.QueueDrops, row.Lost = r.Down.QueueDrops, r.Down.Lost
		}
		if len(r.Errors) > 0 {
			row.Error = strings.Join(r.Errors, "; ")
		}
	}
	return row
}

// mergeMatrixRounds turns complete rounds (each the same cells in the same
// order) into one row per cell and side: a single round as it is, several
// as the median of each figure over the rounds that measured it (a failed
// run's 0 left out), the runs kept in Rounds and their errors prefixed
// with the round.
func mergeMatrixRounds(rounds [][]MatrixRow) []MatrixRow {
	if len(rounds) == 0 {
		return nil
	}
	if len(rounds) == 1 {
		return rounds[0]
	}
	out := make([]MatrixRow, len(rounds[0]))
	for j, first := range rounds[0] {
		m := MatrixRow{Stack: first.Stack, CC: first.CC, Emulate: first.Emulate, Loss: first.Loss, Extra: first.Extra}
		var mbps, ping, p95, rtx, rto, spur, nrtx, lost, qd, rl []float64
		var errs, retried []string
		for i, round := range rounds {
			r := round[j]
			m.Rounds = append(m.Rounds, r)
			if r.Error != "" {
				errs = append(errs, fmt.Sprintf("round %d: %s", i+1, r.Error))
			}
			if r.Retried != "" {
				retried = append(retried, fmt.Sprintf("round %d: %s", i+1, r.Retried))
			}
			if r.Mbps == 0 {
				continue // failed: its counters mean nothing either
			}
			mbps, ping, p95 = append(mbps, r.Mbps), appendMeasured(ping, r.PingMeanMs), appendMeasured(p95, r.PingP95Ms)
			rtx = append(rtx, float64(r.Retransmits))
			rto, spur = append(rto, float64(r.NetstackTimeouts)), append(spur, float64(r.NetstackSpuriousRTOs))
			nrtx, lost = append(nrtx, float64(r.NetstackRetransmits)), append(lost, float64(r.NetstackLostRetransmits))
			qd, rl = append(qd, float64(r.QueueDrops)), append(rl, float64(r.Lost))
		}
		m.Mbps, m.PingMeanMs, m.PingP95Ms = median(mbps), median(ping), median(p95)
		m.Retransmits = int(median(rtx))
		m.NetstackTimeouts, m.NetstackSpuriousRTOs = uint64(median(rto)), uint64(median(spur))
		m.NetstackRetransmits, m.NetstackLostRetransmits = uint64(median(nrtx)), uint64(median(lost))
		m.QueueDrops, m.Lost = uint64(median(qd)), uint64(median(rl))
		m.Error, m.Retried = strings.Join(errs, "; "), strings.Join(retried, "; ")
		out[j] = m
	}
	return out
}

// MatrixRatio is the appliance row a's throughput against the kernel row
// k's of the same cell, with the lowest and highest single ratio: with
// rounds on both sides the median of the rounds' own ratios (each round's
// pair measured back to back), else the plain ratio. ok is false when no
// pair has both figures.
func MatrixRatio(a, k MatrixRow) (med, lo, hi float64, ok bool) {
	var rs []float64
	if len(a.Rounds) > 0 && len(a.Rounds) == len(k.Rounds) {
		for i := range a.Rounds {
			if x, y := a.Rounds[i].Mbps, k.Rounds[i].Mbps; x > 0 && y > 0 {
				rs = append(rs, x/y)
			}
		}
	} else if a.Mbps > 0 && k.Mbps > 0 {
		rs = append(rs, a.Mbps/k.Mbps)
	}
	if len(rs) == 0 {
		return 0, 0, 0, false
	}
	return median(rs), slices.Min(rs), slices.Max(rs), true
}

// spread is "lo-hi" of the measured (non-zero) Mbit/s of r's rounds, ""
// without rounds.
func spread(r MatrixRow) string {
	var vs []float64
	for _, x := range r.Rounds {
		vs = appendMeasured(vs, x.Mbps)
	}
	if len(vs) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%.1f-%.1f)", slices.Min(vs), slices.Max(vs))
}

// WriteMatrix prints rows as a Markdown table: per algorithm and path, the
// kernel's and the appliance's throughput, their ratio, and ping's RTT.
func WriteMatrix(w io.Writer, rows []MatrixRow) {
	fmt.Fprintln(w, "| cc | path | kernel Mbit/s | appliance Mbit/s | appliance/kernel | kernel RTT ms (mean/p95) | appliance RTT ms (mean/p95) | retrans k/a | netstack RTOs (spurious) / retrans / lost rtx |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for i := 0; i < len(rows); i++ {
		k := rows[i]
		a := MatrixRow{}
		if i+1 < len(rows) && rows[i+1].CC == k.CC && rows[i+1].Emulate == k.Emulate {
			a = rows[i+1]
			i++
		}
		ratio := "-"
		if med, lo, hi, ok := MatrixRatio(a, k); ok {
			ratio = fmt.Sprintf("%.2f", med)
			if len(a.Rounds) > 1 {
				ratio += fmt.Sprintf(" (%.2f-%.2f)", lo, hi)
			}
		}
		cellOf := func(r MatrixRow, v string) string {
			if r.Error != "" && r.Mbps == 0 {
				return "error: " + r.Error
			}
			return v
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d/%d | %d (%d) / %d / %d |\n", k.CC, k.Emulate,
			cellOf(k, fmt.Sprintf("%.1f", k.Mbps)+spread(k)), cellOf(a, fmt.Sprintf("%.1f", a.Mbps)+spread(a)), ratio,
			fmt.Sprintf("%.1f/%.1f", k.PingMeanMs, k.PingP95Ms), fmt.Sprintf("%.1f/%.1f", a.PingMeanMs, a.PingP95Ms),
			k.Retransmits, a.Retransmits, a.NetstackTimeouts, a.NetstackSpuriousRTOs, a.NetstackRetransmits, a.NetstackLostRetransmits)
	}
	for _, r := range rows {
		if r.Retried != "" {
			fmt.Fprintf(w, "\nRetried: %s %s %s measured nothing the first time: %s\n", r.Stack, r.CC, r.Emulate, r.Retried)
		}
	}
}
