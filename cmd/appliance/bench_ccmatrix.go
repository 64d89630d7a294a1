package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nsappliance/appliance/bench"
)

// matrixFlags are bench's --cc-matrix options.
type matrixFlags struct {
	on           bool
	algs, losses string
	extra        []string
	from         []string
	seed         uint64
}

func (m *matrixFlags) flags(fl *pflag.FlagSet) {
	fl.BoolVar(&m.on, "cc-matrix", false, "congestion-control matrix instead of the path table: for each --cc-list algorithm and --loss-list rate, one download (iperf3 -R) across --emulate (default rate=100mbit,delay=20ms) plus loss, netstack sending (gateway mode) vs the kernel sending (router mode, iperf3 -C); prints a Markdown table (--time per cell, default 10s)")
	fl.StringVar(&m.algs, "cc-list", "reno,cubic,bbr", "--cc-matrix: algorithms (comma-separated)")
	fl.StringVar(&m.losses, "loss-list", "0,0.1,1,2,5", "--cc-matrix: loss percentages (comma-separated)")
	fl.StringArrayVar(&m.from, "cc-matrix-from", nil, "--cc-matrix: measure nothing, read the rows of earlier --cc-matrix --json runs from FILE (repeatable: several runs are plotted as their mean and range) and print the table (and --plot)")
	fl.Uint64Var(&m.seed, "seed", 1, "--cc-matrix: seed the emulation's random loss of round r with SEED+r-1, the same for the kernel's run and netstack's, so both meet the same loss realization (0: independent draws for every run; a seed= in the spec wins)")
	fl.StringArrayVar(&m.extra, "cc-extra", nil, "--cc-matrix: another emulation SPEC measured at loss 0, e.g. rate=100mbit,delay=20ms,limit=2000 for RTT inflation (repeatable)")
}

func runCCMatrix(cmd *cobra.Command, m matrixFlags, emulate string, dur time.Duration, durSet bool, repeat int, asJSON bool, plot string) error {
	if durSet && (dur < time.Second || dur%time.Second != 0) {
		return usagef("--time %v: want whole seconds, at least 1s", dur)
	}
	if len(m.from) > 0 {
		if repeat > 1 {
			return usagef("--repeat %d: not with --cc-matrix-from (it measures nothing)", repeat)
		}
		var rows []bench.MatrixRow
		for _, f := range m.from {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("bench: --cc-matrix-from: %w", err)
			}
			var rs []bench.MatrixRow
			if err := json.Unmarshal(b, &rs); err != nil {
				return fmt.Errorf("bench: --cc-matrix-from %s: not the JSON of --cc-matrix --json: %w", f, err)
			}
			rows = append(rows, rs...)
		}
		return writeCCMatrix(cmd, rows, asJSON, plot)
	}
	mc := bench.MatrixConfig{Emulate: emulate, Extra: m.extra, Repeat: repeat, Seed: m.seed, Progress: os.Stderr}
	if durSet {
		mc.Time = dur
	}
	mc.Algorithms = benchSplitList(m.algs)
	if len(mc.Algorithms) == 0 {
		return usagef("--cc-list: empty list")
	}
	for _, s := range benchSplitList(m.losses) {
		l, err := strconv.ParseFloat(s, 64)
		if err != nil || l < 0 || l >= 100 {
			return usagef("--loss-list %q: want percentages in [0, 100)", s)
		}
		mc.Losses = append(mc.Losses, l)
	}
	for _, spec := range append([]string{emulate}, m.extra...) {
		if spec == "" {
			continue
		}
		if _, err := parseEmulate(spec); err != nil {
			return err
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	mc.Bin = exe
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rows, err := bench.RunCCMatrix(ctx, mc)
	if repeat > 1 && !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "bench: --cc-matrix, %d interleaved rounds: medians (range) of each side; appliance/kernel is the median (range) of each round's own ratio\n", repeat)
	}
	if m.seed != 0 && !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "bench: --cc-matrix: the emulation's random loss is seeded per round (round 1: seed %d, round 2: %d, ...; a seed= in the spec instead), the same for both sides of a pair\n", m.seed, m.seed+1)
	}
	if werr := writeCCMatrix(cmd, rows, asJSON, plot); werr != nil {
		return werr
	}
	return err
}

// writeCCMatrix prints rows as the table (or JSON) and, with plot, draws
// them into that SVG file.
func writeCCMatrix(cmd *cobra.Command, rows []bench.MatrixRow, asJSON bool, plot string) error {
	if plot != "" && len(rows) > 0 {
		f, err := os.Create(plot)
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		perr := bench.WriteMatrixPlot(f, "TCP download across the emulated path plus random loss: netstack (solid) vs the kernel (dashed)", rows)
		if cerr := f.Close(); perr == nil {
			perr = cerr
		}
		if perr != nil {
			return fmt.Errorf("bench: plot %s: %w", plot, perr)
		}
		fmt.Fprintf(os.Stderr, "bench: plot written to %s\n", plot)
	}
	if asJSON {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	bench.WriteMatrix(cmd.OutOrStdout(), rows)
	return nil
}
