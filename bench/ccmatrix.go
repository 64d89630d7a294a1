package bench

import (
	"context"
	"fmt"
	"io"
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
	Error                   string `json:"error,omitempty"`
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
	var rows []MatrixRow
	for _, alg := range mc.Algorithms {
		for _, c := range cells {
			for _, mode := range []string{"router", "gateway"} {
				if ctx.Err() != nil {
					return rows, ctx.Err()
				}
				row := MatrixRow{Stack: "appliance", CC: alg, Emulate: c.spec, Loss: c.loss, Extra: c.extra}
				if mode == "router" {
					row.Stack = "kernel"
					if ok, avail := KernelCC(alg); !ok {
						row.Error = fmt.Sprintf("kernel has no %s (available: %s)", alg, strings.Join(avail, " "))
						rows = append(rows, row)
						continue
					}
				}
				fmt.Fprintf(mc.Progress, "ccmatrix: %s %s %s\n", row.Stack, alg, c.spec)
				res, err := Run(ctx, Config{Bin: mc.Bin, Mode: mode, CC: alg, Emulate: c.spec, Series: true,
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
					}
					if len(r.Errors) > 0 {
						row.Error = strings.Join(r.Errors, "; ")
					}
				}
				rows = append(rows, row)
			}
		}
	}
	return rows, nil
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
		if k.Mbps > 0 && a.Mbps > 0 {
			ratio = fmt.Sprintf("%.2f", a.Mbps/k.Mbps)
		}
		cellOf := func(r MatrixRow, v string) string {
			if r.Error != "" && r.Mbps == 0 {
				return "error: " + r.Error
			}
			return v
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d/%d | %d (%d) / %d / %d |\n", k.CC, k.Emulate,
			cellOf(k, fmt.Sprintf("%.1f", k.Mbps)), cellOf(a, fmt.Sprintf("%.1f", a.Mbps)), ratio,
			fmt.Sprintf("%.1f/%.1f", k.PingMeanMs, k.PingP95Ms), fmt.Sprintf("%.1f/%.1f", a.PingMeanMs, a.PingP95Ms),
			k.Retransmits, a.Retransmits, a.NetstackTimeouts, a.NetstackSpuriousRTOs, a.NetstackRetransmits, a.NetstackLostRetransmits)
	}
}
