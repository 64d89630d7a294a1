package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nsappliance/appliance/bench"
	"github.com/spf13/cobra"
)

// newBenchCmd is `appliance bench`: throwaway namespaces, iperf3 and
// netperf-style RR/CRR across the appliance and the paths it is compared
// with, one table.
func newBenchCmd() *cobra.Command {
	var (
		mode, cc, emulate, compare, mtus, plot string
		dur, rrDur                             time.Duration
		asJSON                                 bool
		repeat                                 int
		conns, connsProfile                    string
		connsKernel                            bool
		mx                                     matrixFlags
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the appliance against the kernel, a plain TCP relay, pasta and slirp4netns (needs root and iperf3)",
		Long: `bench makes throwaway network namespaces and, for each MTU, measures:

  kernel       a client namespace and a server namespace on a veth pair
  appliance    a container namespace behind this appliance (gateway mode),
               the servers on the host namespace's own address
  proxy        the same container on a veth pair to the host namespace,
               where a userspace TCP relay between kernel sockets accepts
               each connection and dials the server: no TUN and no
               userspace TCP, so the floor of any relay that terminates
               TCP (the appliance, pasta, slirp4netns) on this machine
  pasta        the same container behind pasta, when installed
  slirp4netns  the same container behind slirp4netns, when installed

With --mode router, the client and server namespaces sit on either side of
` + "`appliance router`" + `, and the kernel path is a router namespace with
ip_forward=1 between two veth pairs.

Each path runs iperf3 (one stream, upload and download with -R), a
request/response test like netperf TCP_RR (one connection, one byte each way;
p50/p99 latency) and a connection test like TCP_CRR (connect, one byte each
way, close; connections per second). It prints one table with the ratios to
the kernel path and removes everything it made, also on Ctrl-C.

With --emulate, the appliance's path has link emulation and iperf3 reports
every 0.5s; the table gains each run's RTT (mean and p95 of the sender's
TCP_INFO RTT, or of 20 pings during the run when iperf3 has none),
retransmits and the emulation's queue drops (tail drop + CoDel) and losses,
as upload/download. The kernel path has no emulation (this kernel has no
netem): its row is the un-emulated reference. --cc also sets the kernel
senders' congestion control (iperf3 -C) of the kernel path and, in router
mode, of the appliance path, whose TCP endpoints are kernel sockets; it is
skipped with a note when the kernel lacks it. --plot draws every run's
throughput and RTT over time into an SVG file, one line per run; with
--cc-matrix it draws throughput against the loss rate, one line per
algorithm, netstack's solid and the kernel's dashed.`,
		Example: `  appliance bench --mode router --emulate rate=100mbit,delay=20ms --cc cubic --plot cubic.svg
  appliance bench --compare kernel --mtu 1500 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if conns != "" {
				return benchConns(cmd, conns, connsKernel, connsProfile, asJSON)
			}
			if repeat < 1 || repeat > 99 {
				return usagef("--repeat %d: want 1..99", repeat)
			}
			if mx.on {
				return runCCMatrix(cmd, mx, emulate, dur, cmd.Flags().Changed("time"), repeat, asJSON, plot)
			}
			cfg := bench.Config{Mode: mode, CC: cc, Emulate: emulate, Series: plot != "", Time: dur, RRTime: rrDur, Repeat: repeat, Progress: os.Stderr}
			if repeat > 1 && (emulate != "" || plot != "") {
				return usagef("--repeat %d: not with --emulate or --plot (they record single runs)", repeat)
			}
			if emulate != "" {
				if _, err := parseEmulate(emulate); err != nil {
					return err
				}
			}
			if mode != "gateway" && mode != "router" {
				return usagef("--mode %q: want gateway or router", mode)
			}
			if mode == "router" && !cmd.Flags().Changed("mtu") {
				mtus = "1500" // router mode's default link MTU
			}
			if dur <= 0 || rrDur <= 0 {
				return usagef("--time and --rr-time must be positive")
			}
			cfg.Compare = []string{}
			for _, p := range benchSplitList(compare) {
				if !slices.Contains(bench.ComparePaths, p) {
					return usagef("--compare %q: want a list of %s", p, strings.Join(bench.ComparePaths, ","))
				}
				cfg.Compare = append(cfg.Compare, p)
			}
			for _, s := range benchSplitList(mtus) {
				m, err := strconv.Atoi(s)
				if err != nil || m < 1280 || m > 65520 {
					return usagef("--mtu %q: want a list of numbers in 1280..65520", s)
				}
				cfg.MTUs = append(cfg.MTUs, m)
			}
			if len(cfg.MTUs) == 0 {
				return usagef("--mtu: empty list")
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			cfg.Bin = exe
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			results, err := bench.Run(ctx, cfg)
			if plot != "" && len(results) > 0 {
				if perr := benchPlot(plot, cfg, results); perr != nil {
					return perr
				}
				fmt.Fprintf(os.Stderr, "bench: plot written to %s\n", plot)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if jerr := enc.Encode(results); jerr != nil {
					return jerr
				}
			} else if len(results) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "bench: %s mode, cc %s, iperf3 %v per direction, RR/CRR %v each\n",
					mode, benchOr(cc, "default"), dur, rrDur)
				if repeat > 1 {
					fmt.Fprintf(cmd.OutOrStdout(), "bench: %d interleaved rounds: medians, ratios the median of each round's own ratio\n", repeat)
				}
				if emulate != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "bench: emulation %s on the appliance path; the kernel path is the un-emulated reference (no netem); RTT, retrans, qdrops, lost are upload/download\n", emulate)
				}
				if werr := bench.WriteTable(cmd.OutOrStdout(), results); werr != nil {
					return werr
				}
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&mode, "mode", "gateway", "appliance mode to measure: gateway, or router (client and server namespaces on either side of appliance router, against a kernel router namespace; --mtu defaults to 1500; pasta and slirp4netns are left out)")
	fl.StringVar(&cc, "cc", "", "the appliance's TCP congestion control (default: the appliance's default)")
	fl.StringVar(&emulate, "emulate", "", "link emulation SPEC passed to the appliance (--emulate)")
	fl.DurationVar(&dur, "time", 5*time.Second, "iperf3 duration per direction (whole seconds)")
	fl.DurationVar(&rrDur, "rr-time", 2*time.Second, "duration of the RR and of the CRR test")
	fl.IntVar(&repeat, "repeat", 1, "measure every path this many times, interleaved, and report medians (ratios: the median of each round's own ratio to the kernel path), for a shared, noisy machine; with --cc-matrix, every cell this many times in interleaved rounds (per round each cell's kernel run and netstack's back to back), reporting each side's median and range and the median and range of the rounds' ratios")
	fl.StringVar(&compare, "compare", strings.Join(bench.ComparePaths, ","), "other paths to measure: "+strings.Join(bench.ComparePaths, ",")+" (comma-separated; missing tools print \"not installed\")")
	fl.StringVar(&mtus, "mtu", "1500,65520", "MTUs to measure (comma-separated; router mode: 1500)")
	fl.BoolVar(&asJSON, "json", false, "print the results as JSON instead of a table")
	fl.StringVar(&conns, "conns", "", "instead of throughput: hold this many idle TCP connections through the appliance (comma-separated counts, e.g. 10000,50000) and report memory per connection and growth after they close")
	fl.StringVar(&connsProfile, "conns-heap-profile", "", "with --conns, save the appliance's heap profile while the connections are held to FILE.COUNT and after each close to FILE.COUNT.after-1 and .after-2 (go tool pprof -top, -base)")
	fl.BoolVar(&connsKernel, "conns-kernel", true, "with --conns, also measure the kernel's own cost on a veth pair")
	fl.StringVar(&plot, "plot", "", "draw each iperf3 run's throughput and RTT over time into this SVG file (--cc-matrix: throughput against loss per algorithm)")
	mx.flags(fl)
	return cmd
}

// benchConns runs `bench --conns`.
func benchConns(cmd *cobra.Command, list string, kernel bool, profile string, asJSON bool) error {
	cfg := bench.ConnsConfig{Kernel: kernel, Progress: os.Stderr, HeapProfile: profile}
	for _, f := range benchSplitList(list) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return usagef("--conns %q: want positive counts like 10000,50000", list)
		}
		cfg.Counts = append(cfg.Counts, n)
	}
	if len(cfg.Counts) == 0 {
		return usagef("--conns %q: want positive counts like 10000,50000", list)
	}
	if os.Geteuid() != 0 {
		return usagef("bench needs root to create network namespaces")
	}
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.Bin = bin
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rs, err := bench.Conns(ctx, cfg)
	if asJSON {
		if jerr := json.NewEncoder(cmd.OutOrStdout()).Encode(rs); jerr != nil {
			return jerr
		}
	} else {
		bench.WriteConnsTable(cmd.OutOrStdout(), rs)
	}
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.Error != "" {
			return fmt.Errorf("bench --conns: %s %d: %s", r.Path, r.Conns, r.Error)
		}
	}
	return nil
}

// newNetperfCmd is the hidden netperf-style client and server bench runs
// inside namespaces: `netperf serve ADDR`, `netperf rr|crr ADDR [DURATION]`,
// `netperf proxy LISTEN=TARGET...`.
func newNetperfCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "netperf",
		Short:  "netperf-style TCP_RR/TCP_CRR client and server used by bench",
		Hidden: true,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "serve ADDR",
		Short: "answer rr/crr clients on ADDR until SIGINT/SIGTERM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ln, err := net.Listen("tcp", args[0])
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(cmd.OutOrStdout(), "listening %s\n", ln.Addr())
			return bench.Serve(ctx, ln)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "hold-serve ADDR...",
		Short: "accept and hold connections on every ADDR until SIGINT/SIGTERM",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = bench.RaiseNoFile(200000) // as far as the hard limit goes
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return bench.HoldServe(ctx, args)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "proxy LISTEN=TARGET...",
		Short: "relay TCP connections from each LISTEN address to its TARGET until SIGINT/SIGTERM",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var pairs []bench.ProxyPair
			for _, a := range args {
				listen, target, ok := strings.Cut(a, "=")
				if !ok || listen == "" || target == "" {
					return usagef("proxy %q: want LISTEN=TARGET, like 127.0.0.1:8080=192.0.2.1:80", a)
				}
				pairs = append(pairs, bench.ProxyPair{Listen: listen, Target: target})
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return bench.ProxyServe(ctx, pairs)
		},
	})
	var holdN, holdPar int
	hold := &cobra.Command{
		Use:   "hold ADDR...",
		Short: "open -n connections over the ADDRs, print JSON, hold them until SIGINT/SIGTERM, close",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if holdN <= 0 || holdPar <= 0 {
				return usagef("-n and -par must be positive")
			}
			if err := bench.RaiseNoFile(uint64(holdN) + 1024); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			conns, res := bench.Hold(ctx, args, holdN, holdPar)
			if err := json.NewEncoder(cmd.OutOrStdout()).Encode(res); err != nil {
				return err
			}
			<-ctx.Done()
			for _, c := range conns {
				c.Close()
			}
			return nil
		},
	}
	hold.Flags().IntVarP(&holdN, "n", "n", 1000, "connections")
	hold.Flags().IntVar(&holdPar, "par", 32, "parallel dialers")
	cmd.AddCommand(hold)
	for _, mode := range []string{"rr", "crr"} {
		cmd.AddCommand(&cobra.Command{
			Use:   mode + " ADDR [DURATION]",
			Short: "run the " + strings.ToUpper(mode) + " client against ADDR (default 2s) and print JSON",
			Args:  cobra.RangeArgs(1, 2),
			RunE: func(cmd *cobra.Command, args []string) error {
				d := 2 * time.Second
				if len(args) == 2 {
					var err error
					if d, err = time.ParseDuration(args[1]); err != nil || d <= 0 {
						return usagef("duration %q: want a positive Go duration like 2s", args[1])
					}
				}
				ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
				defer stop()
				var res any
				var err error
				if mode == "rr" {
					res, err = bench.RR(ctx, args[0], d)
				} else {
					res, err = bench.CRR(ctx, args[0], d)
				}
				if err != nil {
					return err
				}
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			},
		})
	}
	return cmd
}

// benchPlot writes the runs of results as an SVG plot to file.
func benchPlot(file string, cfg bench.Config, results []bench.Result) error {
	title := fmt.Sprintf("appliance bench: %s mode, cc %s", cfg.Mode, benchOr(cfg.CC, "default"))
	if cfg.Emulate != "" {
		title += ", emulate " + cfg.Emulate + " (kernel: none)"
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	if err := bench.WritePlot(f, title, bench.Transfers(results)); err != nil {
		f.Close()
		return fmt.Errorf("bench: plot %s: %w", file, err)
	}
	return f.Close()
}

func benchSplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func benchOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
