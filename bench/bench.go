// Package bench measures the appliance against the kernel's own veth path
// and other userspace stacks (pasta, slirp4netns), and against the floor
// of every such stack, a plain userspace TCP relay between kernel sockets
// (Proxy): iperf3 throughput both
// ways, netperf-style request/response latency (RR) and connection rate
// (CRR). It builds throwaway network namespaces and removes them again.
// Start with Run; RR, CRR and Serve are the netperf-style client and server.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// Path names.
const (
	PathKernel      = "kernel"
	PathAppliance   = "appliance"
	PathPasta       = "pasta"
	PathSlirp4netns = "slirp4netns"
	PathProxy       = "proxy"
)

// ComparePaths are the paths --compare may name.
var ComparePaths = []string{PathKernel, PathProxy, PathPasta, PathSlirp4netns}

// Config says what to measure. The zero value of each field is the
// documented default.
type Config struct {
	// Bin is the appliance binary; it must provide `run` and `netperf`.
	Bin string
	// Mode is the appliance mode: "gateway" (the default) or "router". In
	// router mode the appliance forwards between a client and a server
	// namespace (`appliance router`), the kernel path is a router namespace
	// with ip_forward=1 between two veth pairs, and the proxy, pasta and
	// slirp4netns, which terminate TCP and have no router mode, are left
	// out.
	Mode string
	// CC is the appliance's congestion control (--cc); empty leaves the
	// appliance's default. When the kernel offers it (KernelCC), the
	// kernel reference's iperf3 senders use it too (iperf3 -C), and so do
	// the appliance row's in router mode, whose TCP endpoints are the
	// kernel's own sockets in the client and server namespaces.
	CC string
	// Emulate is passed as --emulate when not empty. The kernel path gets
	// no emulation (this kernel has no netem): its row is the un-emulated
	// reference. With Emulate, every run is recorded in detail (Series).
	Emulate string
	// Series records each iperf3 run per Interval (throughput, the
	// sender's RTT), its retransmits and, during it, ping's RTTs: the
	// Result's Up and Down, what a plot draws.
	Series bool
	// Time is the iperf3 duration per direction. Zero means 5s.
	Time time.Duration
	// RRTime is the duration of the RR and of the CRR run. Zero means 2s.
	RRTime time.Duration
	// Compare lists other paths to measure besides the appliance; names
	// from ComparePaths. Nil means all of them.
	Compare []string
	// MTUs are the link MTUs to measure. Nil means 1500 and 65520.
	MTUs []int
	// Repeat measures every path this many times, interleaved (kernel,
	// appliance, ..., kernel, appliance, ...), and reports each figure's
	// median and each ratio as the median of the rounds' own ratios, so a
	// burst of load on a shared machine moves one round, not the table.
	// Zero means 1. Not with Series (a plot draws single runs).
	Repeat int
	// Progress receives one line per step; nil discards.
	Progress io.Writer

	// senderCC is CC when the kernel offers it, for iperf3 -C.
	senderCC string
	// downOnly measures only the download (CC matrix).
	downOnly bool
}

// Result is one row of the table: one path at one MTU.
type Result struct {
	Path string `json:"path"`
	MTU  int    `json:"mtu"`
	// Skipped says why the path was not measured ("not installed").
	Skipped string `json:"skipped,omitempty"`
	// Errors lists the measurements that failed.
	Errors []string `json:"errors,omitempty"`
	// UpGbps is iperf3 from the container to the server, DownGbps the
	// reverse (-R); 0 when failed.
	UpGbps   float64   `json:"up_gbps"`
	DownGbps float64   `json:"down_gbps"`
	RR       RRResult  `json:"rr"`
	CRR      CRRResult `json:"crr"`
	// Emulate is the link emulation on this path ("" for none: always so
	// for the kernel path).
	Emulate string `json:"emulate,omitempty"`
	// Up and Down are the iperf3 runs in detail when Config.Series or
	// Config.Emulate asked for it.
	Up   *Transfer `json:"up_run,omitempty"`
	Down *Transfer `json:"down_run,omitempty"`
	// Rounds are the single measurements when Config.Repeat > 1; the
	// figures above are then their medians.
	Rounds []Result `json:"rounds,omitempty"`
}

func (c *Config) defaults() error {
	if c.Bin == "" {
		return errors.New("bench: no appliance binary")
	}
	if c.Mode == "" {
		c.Mode = "gateway"
	}
	if c.Mode != "gateway" && c.Mode != "router" {
		return fmt.Errorf("bench: mode %q not supported (gateway or router)", c.Mode)
	}
	if c.Time <= 0 {
		c.Time = 5 * time.Second
	}
	if c.RRTime <= 0 {
		c.RRTime = 2 * time.Second
	}
	if c.Compare == nil {
		c.Compare = ComparePaths
	}
	for _, p := range c.Compare {
		if !slices.Contains(ComparePaths, p) {
			return fmt.Errorf("bench: unknown path %q to compare (want %s)", p, strings.Join(ComparePaths, ", "))
		}
	}
	if c.Mode == "router" {
		c.Compare = slices.DeleteFunc(slices.Clone(c.Compare), func(p string) bool { return p != PathKernel })
	}
	if c.MTUs == nil {
		c.MTUs = []int{1500, 65520}
		if c.Mode == "router" {
			c.MTUs = []int{1500}
		}
	}
	for _, m := range c.MTUs {
		if m < 1280 || m > 65520 {
			return fmt.Errorf("bench: mtu %d: want 1280..65520", m)
		}
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Emulate != "" {
		c.Series = true
	}
	if c.Repeat <= 0 {
		c.Repeat = 1
	}
	if c.Repeat > 1 && c.Series {
		return errors.New("bench: repeat only without emulation or a plot (they record single runs)")
	}
	if c.CC != "" {
		if ok, avail := KernelCC(c.CC); ok {
			c.senderCC = c.CC
		} else {
			fmt.Fprintf(c.Progress, "bench: the kernel has no congestion control %q (available: %s): kernel senders keep their default\n",
				c.CC, strings.Join(avail, " "))
		}
	}
	return nil
}

// iperfCC is the congestion control path's iperf3 senders use (-C), or ""
// for the kernel's default. The kernel reference uses CC when the kernel
// has it; in router mode so does the appliance row, whose senders are
// kernel sockets on either side of the router.
func (c *Config) iperfCC(path string) string {
	if path == PathKernel || (c.Mode == "router" && path == PathAppliance) {
		return c.senderCC
	}
	return ""
}

// runCC names the congestion control of path's runs in plots.
func (c *Config) runCC(path string) string {
	if cc := c.iperfCC(path); cc != "" {
		return cc
	}
	if path == PathAppliance && c.CC != "" {
		return c.CC
	}
	return "default"
}

// Run measures every path at every MTU, one at a time, and returns the rows
// in table order (per MTU: kernel, appliance, then the others). Everything it
// creates is removed before it returns, also when ctx is canceled.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench: needs root to create network namespaces")
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("bench: iperf3 not found (apt-get install iperf3)")
	}
	sweepStale()
	var paths []string
	if slices.Contains(cfg.Compare, PathKernel) {
		paths = append(paths, PathKernel)
	}
	paths = append(paths, PathAppliance)
	for _, p := range cfg.Compare {
		if p != PathKernel {
			paths = append(paths, p)
		}
	}
	var results []Result
	for _, mtu := range cfg.MTUs {
		rounds := make([][]Result, 0, cfg.Repeat)
		for i := range cfg.Repeat {
			if cfg.Repeat > 1 {
				fmt.Fprintf(cfg.Progress, "bench: mtu %d: round %d of %d\n", mtu, i+1, cfg.Repeat)
			}
			var round []Result
			for _, p := range paths {
				if ctx.Err() != nil {
					break
				}
				round = append(round, measurePath(ctx, &cfg, p, mtu))
			}
			if len(round) == len(paths) {
				rounds = append(rounds, round)
			}
		}
		results = append(results, mergeRounds(rounds)...)
		if ctx.Err() != nil {
			break
		}
	}
	return results, ctx.Err()
}

// mergeRounds turns complete rounds (each the same paths in the same
// order) into one Result per path: a single round as it is, several as
// the median of each figure with the rounds kept in Rounds.
func mergeRounds(rounds [][]Result) []Result {
	if len(rounds) == 0 {
		return nil
	}
	if len(rounds) == 1 {
		return rounds[0]
	}
	out := make([]Result, len(rounds[0]))
	for j := range rounds[0] {
		m := Result{Path: rounds[0][j].Path, MTU: rounds[0][j].MTU, Skipped: rounds[0][j].Skipped, Emulate: rounds[0][j].Emulate}
		var up, down, p50, p99, crr []float64
		for i, round := range rounds {
			r := round[j]
			m.Rounds = append(m.Rounds, r)
			for _, e := range r.Errors {
				m.Errors = append(m.Errors, fmt.Sprintf("round %d: %s", i+1, e))
			}
			up, down = appendMeasured(up, r.UpGbps), appendMeasured(down, r.DownGbps)
			p50, p99 = appendMeasured(p50, r.RR.P50us), appendMeasured(p99, r.RR.P99us)
			crr = appendMeasured(crr, r.CRR.PerSec)
		}
		m.UpGbps, m.DownGbps = median(up), median(down)
		m.RR.P50us, m.RR.P99us = median(p50), median(p99)
		m.CRR.PerSec = median(crr)
		out[j] = m
	}
	return out
}

// appendMeasured adds v unless it is 0 (a failed or skipped measurement).
func appendMeasured(vs []float64, v float64) []float64 {
	if v == 0 {
		return vs
	}
	return append(vs, v)
}

// median of vs (the mean of the middle two for an even count); 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Ratio is r's figure against the reference k's (the kernel path at the
// same MTU), 0 when either is missing: with rounds on both sides the
// median of the rounds' own ratios, each round's pair having been measured
// back to back.
func Ratio(r, k Result, figure func(Result) float64) float64 {
	if len(r.Rounds) > 0 && len(r.Rounds) == len(k.Rounds) {
		var rs []float64
		for i := range r.Rounds {
			if a, b := figure(r.Rounds[i]), figure(k.Rounds[i]); a != 0 && b != 0 {
				rs = append(rs, a/b)
			}
		}
		return median(rs)
	}
	if a, b := figure(r), figure(k); a != 0 && b != 0 {
		return a / b
	}
	return 0
}

func measurePath(ctx context.Context, cfg *Config, path string, mtu int) Result {
	r := Result{Path: path, MTU: mtu}
	progress := func(format string, a ...any) {
		fmt.Fprintf(cfg.Progress, "bench: %s mtu %d: %s\n", path, mtu, fmt.Sprintf(format, a...))
	}
	if bin := externalBinary(path); bin != "" {
		if _, err := exec.LookPath(bin); err != nil {
			r.Skipped = "not installed"
			progress("not installed")
			return r
		}
	}
	progress("setting up")
	e, err := setup(ctx, cfg, path, mtu)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		r.Errors = append(r.Errors, "setup: "+oneLine(err.Error()))
		progress("setup failed: %v", err)
		return r
	}
	fail := func(what string, err error) {
		if ctx.Err() != nil {
			return // interrupted: not a measurement failure
		}
		r.Errors = append(r.Errors, what+": "+oneLine(err.Error()))
		progress("%s failed: %v", what, err)
	}
	if path == PathAppliance {
		r.Emulate = cfg.Emulate
	}
	for _, dir := range []struct {
		name, short string
		rev         bool
		out         *float64
		run         **Transfer
	}{{"upload", "up", false, &r.UpGbps, &r.Up}, {"download", "down", true, &r.DownGbps, &r.Down}} {
		if ctx.Err() != nil {
			return r
		}
		if cfg.downOnly && !dir.rev {
			continue
		}
		progress("iperf3 %s for %v", dir.name, cfg.Time)
		if !cfg.Series {
			g, err := e.iperf(ctx, cfg.Time, dir.rev)
			if err != nil {
				fail("iperf3 "+dir.name, err)
				continue
			}
			*dir.out = g
			continue
		}
		name := fmt.Sprintf("%s/%d/%s/%s", path, mtu, dir.short, cfg.runCC(path))
		g, run, err := e.iperfRun(ctx, cfg, path, dir.rev)
		if run != nil {
			run.Name = name
			*dir.run = run
		}
		*dir.out = g
		if err != nil {
			fail("iperf3 "+dir.name, err)
		}
	}
	if ctx.Err() != nil || cfg.downOnly {
		return r
	}
	progress("rr for %v", cfg.RRTime)
	if err := e.netperf(ctx, cfg, "rr", &r.RR); err != nil {
		fail("rr", err)
	}
	if ctx.Err() != nil {
		return r
	}
	progress("crr for %v", cfg.RRTime)
	if err := e.netperf(ctx, cfg, "crr", &r.CRR); err != nil {
		fail("crr", err)
	}
	return r
}

func externalBinary(path string) string {
	switch path {
	case PathPasta:
		return "pasta"
	case PathSlirp4netns:
		return "slirp4netns"
	}
	return ""
}

// iperfJSON is the part of `iperf3 -J` we read.
type iperfJSON struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// parseIperf returns the receiver's throughput in Gbit/s.
func parseIperf(out []byte) (float64, error) {
	var j iperfJSON
	if err := json.Unmarshal(out, &j); err != nil {
		return 0, fmt.Errorf("iperf3 output is not JSON: %w: %.200s", err, out)
	}
	if j.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", j.Error)
	}
	if j.End.SumReceived.Bytes == 0 {
		return 0, errors.New("iperf3: no bytes received")
	}
	return j.End.SumReceived.BitsPerSecond / 1e9, nil
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	return s
}

// nsPrefix is the prefix of every namespace a bench run makes: "apb", the
// pid, a role letter. A later run removes namespaces of dead runs.
func nsPrefix(role string) string { return fmt.Sprintf("apb%d%s", os.Getpid(), role) }

var staleRE = regexp.MustCompile(`^apb([0-9]+)[a-z]+-[0-9a-f]{8}$`)

// sweepStale removes namespaces left by bench runs that were killed hard
// (SIGKILL leaves no chance to clean up).
func sweepStale() {
	names, _ := testbed.ListNetns()
	for _, n := range names {
		m := staleRE.FindStringSubmatch(n)
		if m == nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "del", n).Run()
	}
}
