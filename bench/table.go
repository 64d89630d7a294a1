package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints results as one table: a row per path and MTU, with
// throughput both ways, RR latency, CRR rate and the ratios to the kernel
// path at the same MTU. Rows that failed are listed with their errors below
// the table. When a path had link emulation, the table gains the iperf3
// runs' RTT (mean, p95), retransmits and the emulation's queue drops and
// losses, each as upload/download.
func WriteTable(w io.Writer, results []Result) error {
	emulated := false
	for _, r := range results {
		emulated = emulated || r.Emulate != ""
	}
	kernel := map[int]Result{}
	for _, r := range results {
		if r.Path == PathKernel && r.Skipped == "" {
			kernel[r.MTU] = r
		}
	}
	// Right-aligned numbers; the path column is padded to read left-aligned.
	pw := len("path")
	for _, r := range results {
		pw = max(pw, len(r.Path))
	}
	left := func(s string) string { return fmt.Sprintf("%-*s", pw, s) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	head := left("path") + "\tMTU\tup Gbit/s\tdown Gbit/s\tup/kernel\tdown/kernel\tRR p50 µs\tRR p99 µs\tCRR conn/s\tCRR/kernel\t"
	if emulated {
		head += "RTT mean ms\tRTT p95 ms\tretrans\tqdrops\tlost\t"
	}
	fmt.Fprintln(tw, head)
	var notes []string
	for _, r := range results {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%d\t%s\t\t\t\t\t\t\t\t\n", left(r.Path), r.MTU, r.Skipped)
			continue
		}
		k, hasK := kernel[r.MTU]
		cols := []string{
			left(r.Path), fmt.Sprint(r.MTU),
			num(r.UpGbps, "%.2f"), num(r.DownGbps, "%.2f"),
			ratio(r, k, hasK, upGbps), ratio(r, k, hasK, downGbps),
			num(r.RR.P50us, "%.0f"), num(r.RR.P99us, "%.0f"),
			num(r.CRR.PerSec, "%.0f"), ratio(r, k, hasK, crrPerSec),
		}
		if emulated {
			cols = append(cols,
				updown(r, func(t *Transfer) string { return num(t.RTTMeanMs, "%.1f") }),
				updown(r, func(t *Transfer) string { return num(t.RTTP95Ms, "%.1f") }),
				updown(r, func(t *Transfer) string { return fmt.Sprint(t.Retransmits) }),
				updown(r, func(t *Transfer) string { return counter(t.Emulated, t.QueueDrops) }),
				updown(r, func(t *Transfer) string { return counter(t.Emulated, t.Lost) }))
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
		for _, e := range r.Errors {
			notes = append(notes, fmt.Sprintf("%s mtu %d: %s", r.Path, r.MTU, e))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		if _, err := fmt.Fprintln(w, "error:", n); err != nil {
			return err
		}
	}
	return nil
}

// updown formats r's upload and download transfers as "up/down", "-" for
// a missing one.
func updown(r Result, f func(*Transfer) string) string {
	g := func(t *Transfer) string {
		if t == nil {
			return "-"
		}
		return f(t)
	}
	return g(r.Up) + "/" + g(r.Down)
}

// counter is an emulation counter, "-" where the path had no emulation.
func counter(emulated bool, v uint64) string {
	if !emulated {
		return "-"
	}
	return fmt.Sprint(v)
}

func num(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// The figures the table gives as ratios to the kernel path.
func upGbps(r Result) float64    { return r.UpGbps }
func downGbps(r Result) float64  { return r.DownGbps }
func crrPerSec(r Result) float64 { return r.CRR.PerSec }

func ratio(r, k Result, hasK bool, figure func(Result) float64) string {
	if !hasK {
		return "-"
	}
	v := Ratio(r, k, figure)
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}
