package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/internal/testbed"
)

// holdBasePort is the first of holdPorts ports the hold server listens
// on: several, so 50,000 connections from one client address do not run
// out of ephemeral ports toward one server port.
const (
	holdBasePort = 20001
	holdPorts    = 4
)

// HoldServe accepts connections on every address and holds them without
// reading until ctx ends, then closes them all.
func HoldServe(ctx context.Context, addrs []string) error {
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	<-ctx.Done()
	for _, l := range lns {
		l.Close()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// HoldResult is what Hold reports once its connections are open.
type HoldResult struct {
	Opened  int     `json:"opened"`
	Failed  int     `json:"failed"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// Hold opens n connections spread over addrs with par dialers, writes one
// byte on each (so every relay has carried data once) and returns them
// open. It stops early when ctx ends.
func Hold(ctx context.Context, addrs []string, n, par int) ([]net.Conn, HoldResult) {
	start := time.Now()
	conns := make([]net.Conn, n)
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				d := net.Dialer{Timeout: 10 * time.Second}
				c, err := d.DialContext(ctx, "tcp", addrs[int(i)%len(addrs)])
				if err == nil {
					_, err = c.Write([]byte{'x'})
					if err != nil {
						c.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	var out []net.Conn
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	r := HoldResult{Opened: len(out), Failed: int(failed.Load()), Seconds: time.Since(start).Seconds()}
	if e, ok := firstErr.Load().(string); ok {
		r.Error = e
	}
	return out, r
}

// RaiseNoFile raises this process's open-file limit (soft and hard) to n
// if it is lower; children inherit it. Raising the hard limit needs root.
func RaiseNoFile(n uint64) error {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= n && rl.Max >= n {
		return nil
	}
	want := rl
	want.Cur, want.Max = max(rl.Cur, n), max(rl.Max, n)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return nil
	}
	// Without CAP_SYS_RESOURCE the hard limit stays: go as far as it.
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return fmt.Errorf("raise open-file limit to %d: %w", rl.Max, err)
	}
	if rl.Max < n {
		return fmt.Errorf("open-file limit: need %d, hard limit %d and raising it is not permitted (CAP_SYS_RESOURCE)", n, rl.Max)
	}
	return nil
}

// ConnsConfig configures Conns.
type ConnsConfig struct {
	// Bin is the appliance binary.
	Bin string
	// Counts are the numbers of idle connections to hold.
	Counts []int
	// Kernel adds the kernel reference (a veth pair, no appliance).
	Kernel bool
	// Progress, when set, receives one line per step.
	Progress io.Writer
	// HeapProfile, when set, is where the appliance's heap profile is
	// saved while the connections are held (FILE.N for count N), for
	// `go tool pprof -top`.
	HeapProfile string
}

// ConnsResult is one held-connections measurement.
type ConnsResult struct {
	Path        string  `json:"path"` // "kernel" or "appliance"
	Conns       int     `json:"conns"`
	OpenSeconds float64 `json:"open_seconds"`
	// Per connection, bytes: the appliance's resident memory, Go heap in
	// use, goroutine stacks; the machine's kernel slab and socket
	// buffer pages (sockstat TCP mem) for every socket of the path.
	RSS, Heap, Stack, Slab, SockMem float64
	Goroutines                      int `json:"goroutines"` // the appliance's, while held
	// After every connection closed, against before they opened: the
	// appliance's heap (bytes) and goroutines.
	HeapGrowth       int64 `json:"heap_growth"`
	GoroutinesGrowth int   `json:"goroutines_growth"`
	// The same for a second open-and-close cycle, against after the
	// first: zero when nothing grows per connection.
	HeapGrowth2       int64 `json:"heap_growth_2"`
	GoroutinesGrowth2 int   `json:"goroutines_growth_2"`
	// The heap growth of each cycle once the closed connections'
	// conntrack entries have expired and been swept (10 s after a RST,
	// 120 s after FINs, Linux's nf_conntrack_tcp_timeout_close and
	// _time_wait; the hold server's close with the byte unread sends a
	// RST); the second cycle starts after the first's have.
	HeapGrowthExpired  int64 `json:"heap_growth_expired"`
	HeapGrowth2Expired int64 `json:"heap_growth_2_expired"`
	// Skipped says why the count was not measured on this machine (the
	// open-file limit); not an error.
	Skipped string `json:"skipped,omitempty"`
	Error   string `json:"error,omitempty"`
}

// Conns measures what idle TCP connections cost: for each count, through
// the appliance (client in a container namespace, hold server on the host
// namespace's address) and, with Kernel, on a plain veth pair.
func Conns(ctx context.Context, cfg ConnsConfig) ([]ConnsResult, error) {
	maxN := 0
	for _, n := range cfg.Counts {
		if n <= 0 {
			return nil, fmt.Errorf("bench conns: count %d: want > 0", n)
		}
		maxN = max(maxN, n)
	}
	// The bench itself holds nothing; the appliance, the hold client and
	// the hold server each need a descriptor per connection and inherit
	// this limit. A count the limit cannot take fails on its own.
	_ = RaiseNoFile(uint64(maxN) + 1024)
	sweepStale()
	var out []ConnsResult
	for _, n := range cfg.Counts {
		paths := []string{PathAppliance}
		if cfg.Kernel {
			paths = []string{PathKernel, PathAppliance}
		}
		for _, p := range paths {
			r := measureConns(ctx, cfg, p, n)
			out = append(out, r)
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
		}
	}
	return out, nil
}

func (cfg *ConnsConfig) progress(format string, a ...any) {
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, format+"\n", a...)
	}
}

func measureConns(ctx context.Context, cfg ConnsConfig, path string, n int) ConnsResult {
	r := ConnsResult{Path: path, Conns: n}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < uint64(n)+256 {
		r.Skipped = fmt.Sprintf("needs %d open files per process, the limit is %d (ulimit -Hn; raising it needs CAP_SYS_RESOURCE)", n+256, rl.Cur)
		cfg.progress("%s %d: skipped: %s", path, n, r.Skipped)
		return r
	}
	if err := measureConnsErr(ctx, &cfg, path, n, &r); err != nil {
		r.Error = oneLine(err.Error())
		cfg.progress("%s %d: %v", path, n, err)
	}
	return r
}

func measureConnsErr(ctx context.Context, cfg *ConnsConfig, path string, n int, r *ConnsResult) error {
	e := &env{bin: cfg.Bin, addr: serverAddr}
	defer e.close()
	var err error
	if path == PathKernel {
		err = e.setupKernel(1500)
	} else {
		err = e.setupAppliance(&Config{Bin: cfg.Bin}, 1500)
	}
	if err != nil {
		return err
	}
	for _, ns := range []*testbed.Netns{e.client, e.server} {
		if _, err := ns.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.core.somaxconn=8192", "net.ipv4.tcp_max_syn_backlog=8192"); err != nil {
			return err
		}
	}
	var base control.MemStats
	if e.app != nil {
		if base, err = memStats(ctx, e.app.Name); err != nil {
			return err
		}
	}
	// The appliance path runs two cycles: the first's growth includes
	// tables that grew to hold n connections and keep their size (Go maps
	// do not shrink); the second shows whether anything grows per cycle.
	cycles := 1
	if e.app != nil {
		cycles = 2
	}
	before := base
	for c := range cycles {
		var entries uint64
		if e.app != nil {
			if entries, err = conntrackEntries(ctx, e.app.Name); err != nil {
				return err
			}
		}
		if err := holdCycle(ctx, cfg, e, path, n, r, c == 0); err != nil {
			return err
		}
		if e.app == nil {
			break
		}
		after, err := memStats(ctx, e.app.Name)
		if err != nil {
			return err
		}
		if cfg.HeapProfile != "" {
			file := fmt.Sprintf("%s.%d.goroutines-after-%d.txt", cfg.HeapProfile, n, c+1)
			_ = exec.CommandContext(ctx, "curl", "-sS", "-o", file, "--unix-socket", control.SocketPath(e.app.Name),
				"http://appliance/debug/pprof/goroutine?debug=1").Run()
			// What is left after the close, for go tool pprof -base.
			file = fmt.Sprintf("%s.%d.after-%d", cfg.HeapProfile, n, c+1)
			_ = exec.CommandContext(ctx, "curl", "-sS", "-o", file, "--unix-socket", control.SocketPath(e.app.Name),
				"http://appliance/debug/pprof/heap?gc=1").Run()
		}
		// Wait for the closed connections' conntrack entries to expire
		// and be swept, then measure again.
		cfg.progress("%s: waiting for the conntrack entries of %d closed connections to expire", path, n)
		waitStart := time.Now()
		if err := waitConntrack(ctx, e.app.Name, entries, conntrackCloseTimeout+30*time.Second); err != nil {
			return err
		}
		cfg.progress("%s: conntrack back to %d entries after %.0f s", path, entries, time.Since(waitStart).Seconds())
		expired, err := memStats(ctx, e.app.Name)
		if err != nil {
			return err
		}
		if c == 0 {
			r.HeapGrowth = int64(after.HeapInuse) - int64(before.HeapInuse)
			r.GoroutinesGrowth = after.Goroutines - before.Goroutines
			r.HeapGrowthExpired = int64(expired.HeapInuse) - int64(before.HeapInuse)
		} else {
			r.HeapGrowth2 = int64(after.HeapInuse) - int64(before.HeapInuse)
			r.GoroutinesGrowth2 = after.Goroutines - before.Goroutines
			r.HeapGrowth2Expired = int64(expired.HeapInuse) - int64(before.HeapInuse)
		}
		before = expired
	}
	return nil
}

// conntrackCloseTimeout is the longest the appliance's conntrack keeps a
// closed TCP connection (after FINs: hooks' timeoutTCPFin, Linux's
// nf_conntrack_tcp_timeout_time_wait).
const conntrackCloseTimeout = 120 * time.Second

// conntrackEntries reads the appliance's conntrack table size.
func conntrackEntries(ctx context.Context, name string) (uint64, error) {
	c, err := control.NewClient(name)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var m map[string]uint64
	if err := c.Do(ctx, "GET", "/v1/iptables/stats", nil, &m); err != nil {
		return 0, err
	}
	v, ok := m["conntrack_entries"]
	if !ok {
		return 0, errors.New("no conntrack_entries in /v1/iptables/stats")
	}
	return v, nil
}

// waitConntrack waits up to d until the appliance's conntrack table holds
// at most want entries.
func waitConntrack(ctx context.Context, name string, want uint64, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		got, err := conntrackEntries(ctx, name)
		if err != nil {
			return err
		}
		if got <= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %d conntrack entries, want at most %d", d, got, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// holdCycle opens n connections, measures them if record, and closes
// them.
func holdCycle(ctx context.Context, cfg *ConnsConfig, e *env, path string, n int, r *ConnsResult, record bool) error {
	var addrs []string
	for i := range holdPorts {
		addrs = append(addrs, fmt.Sprintf("%s:%d", serverAddr, holdBasePort+i))
	}
	srv, err := e.server.Start(cfg.Bin, append([]string{"netperf", "hold-serve"}, addrs...)...)
	if err != nil {
		return err
	}
	defer srv.Kill()
	if err := e.server.WaitListen("tcp", holdBasePort+holdPorts-1, 5*time.Second); err != nil {
		return err
	}
	var base control.MemStats
	if e.app != nil {
		if base, err = memStats(ctx, e.app.Name); err != nil {
			return err
		}
	}
	k0, err := kernelMem()
	if err != nil {
		return err
	}
	cfg.progress("%s: opening %d connections", path, n)
	cl, err := e.client.Start(cfg.Bin, append([]string{"netperf", "hold", "-n", strconv.Itoa(n), "--par", "32"}, addrs...)...)
	if err != nil {
		return err
	}
	defer cl.Kill()
	timeout := 60*time.Second + time.Duration(n)*2*time.Millisecond
	if err := cl.WaitOutput("\n", timeout); err != nil {
		return fmt.Errorf("hold client: %w\nstderr: %s", err, cl.Stderr())
	}
	var hr HoldResult
	if err := json.Unmarshal([]byte(firstLineOf(cl.Stdout())), &hr); err != nil {
		return fmt.Errorf("hold client output %q: %w", cl.Stdout(), err)
	}
	if hr.Failed > 0 {
		return fmt.Errorf("hold client: %d of %d connections failed, first: %s", hr.Failed, n, hr.Error)
	}
	if e.app != nil {
		if err := waitFlows(ctx, e.app, n, 30*time.Second); err != nil {
			return err
		}
	}
	time.Sleep(time.Second) // let the last handshakes' timers and buffers settle
	if record {
		r.OpenSeconds = hr.Seconds
		k1, err := kernelMem()
		if err != nil {
			return err
		}
		r.Slab = float64(k1.slab-k0.slab) / float64(n)
		r.SockMem = float64(k1.sockMem-k0.sockMem) / float64(n)
		if e.app != nil {
			held, err := memStats(ctx, e.app.Name)
			if err != nil {
				return err
			}
			r.RSS = float64(int64(held.RSS)-int64(base.RSS)) / float64(n)
			r.Heap = float64(int64(held.HeapInuse)-int64(base.HeapInuse)) / float64(n)
			r.Stack = float64(int64(held.StackInuse)-int64(base.StackInuse)) / float64(n)
			r.Goroutines = held.Goroutines
			if cfg.HeapProfile != "" {
				file := fmt.Sprintf("%s.%d", cfg.HeapProfile, n)
				out, err := exec.CommandContext(ctx, "curl", "-sS", "-o", file, "--unix-socket", control.SocketPath(e.app.Name),
					"http://appliance/debug/pprof/heap?gc=1").CombinedOutput()
				if err != nil {
					return fmt.Errorf("heap profile: %v: %s", err, out)
				}
			}
		}
	}
	cfg.progress("%s: closing %d connections", path, n)
	_ = cl.Signal(syscall.SIGTERM)
	if _, err := cl.Wait(timeout); err != nil {
		return fmt.Errorf("hold client close: %w", err)
	}
	_ = srv.Signal(syscall.SIGTERM)
	if _, err := srv.Wait(timeout); err != nil {
		return fmt.Errorf("hold server close: %w", err)
	}
	if e.app != nil {
		return waitFlows(ctx, e.app, 0, timeout)
	}
	return nil
}

func firstLineOf(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func memStats(ctx context.Context, name string) (control.MemStats, error) {
	var ms control.MemStats
	c, err := control.NewClient(name)
	if err != nil {
		return ms, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = c.Do(ctx, "GET", "/v1/memstats", nil, &ms)
	return ms, err
}

// waitFlows waits until the appliance relays want TCP flows and netstack
// holds no more than want TCP sockets (none lingering after a close).
func waitFlows(ctx context.Context, app *testbed.Appliance, want int, d time.Duration) error {
	deadline := time.Now().Add(d)
	var st struct {
		Flows struct{ TCP int } `json:"flows"`
	}
	var ss struct {
		InUse int `json:"tcp_inuse"`
		TW    int `json:"tcp_tw"`
	}
	c, err := control.NewClient(app.Name)
	if err != nil {
		return err
	}
	defer c.Close()
	for {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err = c.Do(qctx, "GET", "/v1/status", nil, &st)
		if err == nil {
			err = c.Do(qctx, "GET", "/v1/sockstat", nil, &ss)
		}
		cancel()
		if err != nil {
			return err
		}
		if st.Flows.TCP == want && ss.InUse+ss.TW <= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %d TCP flows, %d netstack sockets + %d TIME-WAIT, want %d", d, st.Flows.TCP, ss.InUse, ss.TW, want)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// kmem is the machine's kernel memory that sockets cost.
type kmem struct {
	slab    int64 // bytes, /proc/meminfo Slab
	sockMem int64 // bytes, /proc/net/sockstat TCP mem (pages)
}

func kernelMem() (kmem, error) {
	var k kmem
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return k, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Slab:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			k.slab = kb << 10
		}
	}
	f, err := os.Open("/proc/net/sockstat")
	if err != nil {
		return k, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 0 && fs[0] == "TCP:" {
			for i := 1; i+1 < len(fs); i += 2 {
				if fs[i] == "mem" {
					p, _ := strconv.ParseInt(fs[i+1], 10, 64)
					k.sockMem = p * int64(os.Getpagesize())
				}
			}
		}
	}
	if k.slab == 0 {
		return k, errors.New("no Slab in /proc/meminfo")
	}
	return k, nil
}

func mib(b int64) string { return fmt.Sprintf("%.1fM", float64(b)/(1<<20)) }

// WriteConnsTable prints results as one table, bytes per connection in
// KiB.
func WriteConnsTable(w io.Writer, rs []ConnsResult) {
	fmt.Fprintf(w, "  %-10s %6s %7s %9s %9s %9s %10s %11s %10s %17s %11s %19s\n",
		"path", "conns", "open s", "RSS KiB", "heap KiB", "stack KiB", "goroutines", "k.slab KiB", "k.mem KiB", "heap growth 1/2", "gor growth", "after ct expiry 1/2")
	kib := func(v float64) string { return fmt.Sprintf("%.2f", v/1024) }
	for _, r := range rs {
		if r.Error != "" {
			fmt.Fprintf(w, "  %-10s %6d  error: %s\n", r.Path, r.Conns, r.Error)
			continue
		}
		if r.Skipped != "" {
			fmt.Fprintf(w, "  %-10s %6d  skipped: %s\n", r.Path, r.Conns, r.Skipped)
			continue
		}
		if r.Path == PathKernel {
			fmt.Fprintf(w, "  %-10s %6d %7.1f %9s %9s %9s %10s %11s %10s %17s %11s\n", r.Path, r.Conns, r.OpenSeconds,
				"-", "-", "-", "-", kib(r.Slab), kib(r.SockMem), "-", "-")
			continue
		}
		fmt.Fprintf(w, "  %-10s %6d %7.1f %9s %9s %9s %10d %11s %10s %17s %11s %19s\n", r.Path, r.Conns, r.OpenSeconds,
			kib(r.RSS), kib(r.Heap), kib(r.Stack), r.Goroutines, kib(r.Slab), kib(r.SockMem),
			fmt.Sprintf("%s/%s", mib(r.HeapGrowth), mib(r.HeapGrowth2)), fmt.Sprintf("%d/%d", r.GoroutinesGrowth, r.GoroutinesGrowth2),
			fmt.Sprintf("%s/%s", mib(r.HeapGrowthExpired), mib(r.HeapGrowth2Expired)))
	}
}
