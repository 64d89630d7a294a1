package appliance

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsappliance/appliance/bpffilter"
	"github.com/nsappliance/appliance/iptables"
	"github.com/nsappliance/appliance/outcome"
)

// EarlyFilter is the appliance's XDP: drop rules run on the raw bytes the
// TUN reader just read, before a packet buffer exists or netstack sees the
// packet. It is compiled from the leading rules of the raw table's
// PREROUTING chain that it can express (addresses and prefixes with !,
// protocol, TCP/UDP ports, TCP flags such as --syn, and -m hashlimit
// --hashlimit-above per source prefix, all with -j DROP); the first rule it
// cannot express and everything after it stay in the ordinary (slow) path,
// which then skips the compiled rules so nothing is evaluated twice. A
// compiled rule's iptables counters count what it drops. One EarlyFilter
// serves one link (its reader goroutine): Filter is not safe for concurrent
// use, the rest is.
type EarlyFilter struct {
	out  atomic.Pointer[outcome.Link]
	prog atomic.Pointer[earlyProg]
	now  func() int64

	// Dropped and Passed count packets (Dropped includes KernelDropped
	// as of the last Sync).
	Dropped, Passed atomic.Uint64
	// KernelDropped counts what the kernel program dropped.
	KernelDropped atomic.Uint64

	kmu sync.Mutex
	// +checklocks:kmu
	dev KernelDevice
	// +checklocks:kmu
	kern *kernelProg
	// +checklocks:kmu
	log *slog.Logger
	// stop ends the goroutine that syncs the kernel program's counts
	// (nil while none runs); wg waits for it.
	// +checklocks:kmu
	stop chan struct{}
	wg   sync.WaitGroup
}

// kernelSyncInterval is how often the kernel program's counts reach the
// rules' counters and the outcomes when nothing reads them (metrics
// scrapes read the outcomes directly).
const kernelSyncInterval = 250 * time.Millisecond

type earlyProg struct {
	v4, v6 []*earlyRule
	// skip4 and skip6 leading rules run in the kernel program: a packet
	// that reaches Filter matched none of them.
	skip4, skip6 int
}

// KernelDevice is a link device that runs an eBPF filter program on the
// packets it queues for the reader (tun.Endpoint).
type KernelDevice interface {
	SetKernelFilter(progFD int) error
}

// kernelProg is a loaded kernel program, the early rules it runs (in map
// order) and its counts as of the last sync.
type kernelProg struct {
	prog  *bpffilter.Program
	rules []*earlyRule
	last  []bpffilter.Count
}

type earlyRule struct {
	src, dst         netip.Prefix
	srcInv, dstInv   bool
	proto            uint8
	protoInv         bool
	ports            bool // a tcp/udp match
	sport, dport     iptables.PortRange
	sportInv         bool
	dportInv         bool
	flagsMask, flags uint8
	flagsInv         bool
	limit            *earlyLimit
	counters         *iptables.Counters
}

// earlyLimit is hashlimit --hashlimit-above: a token bucket per masked
// source address in a fixed open-addressed table (no allocation per
// packet; a full table reuses the least recently touched of a probe run).
type earlyLimit struct {
	cost, capacity int64 // nanoseconds per packet, burst * cost
	perSrc         bool
	mask4, mask6   int
	slots          [earlySlots]earlySlot
}

const (
	earlySlots = 4096
	earlyProbe = 8
)

type earlySlot struct {
	key    [16]byte
	used   bool
	credit int64 // nanoseconds of credit
	last   int64
}

// NewEarlyFilter makes an empty filter (everything passes). Hand it to
// the gateway or router (Options.EarlyFilters), which compiles the rules
// into it, and its Filter method to the link's tun.EndpointOptions.
func NewEarlyFilter() *EarlyFilter {
	f := &EarlyFilter{now: func() int64 { return time.Now().UnixNano() }}
	f.prog.Store(&earlyProg{})
	return f
}

// UseKernel makes the filter offload the leading rules the kernel can run
// (all but hashlimit) into an eBPF program attached to dev's transmit path
// (tun.Endpoint.SetKernelFilter): the kernel drops those packets before
// they are queued, so the reader is not even woken for them, as XDP drops
// before the stack. The rules' counters and outcomes are brought up to
// date by Sync (Counters and the firewall's Rules call it). Where the
// kernel refuses the program (no CAP_BPF), the filter logs it and runs
// every rule itself. Call it before rules are installed.
func (f *EarlyFilter) UseKernel(dev KernelDevice, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	f.kmu.Lock()
	defer f.kmu.Unlock()
	f.dev, f.log = dev, log.With("component", "early_filter")
}

// install publishes p, moving its leading stateless rules into a kernel
// program when the filter has a device.
func (f *EarlyFilter) install(p *earlyProg) {
	f.kmu.Lock()
	defer f.kmu.Unlock()
	old := f.kern
	f.kern = nil
	if f.dev != nil {
		k4, k6 := kernelPrefix(p.v4), kernelPrefix(p.v6)
		if k4+k6 > 0 {
			if k, err := f.loadLocked(p, k4, k6); err != nil {
				f.log.Warn("kernel early filter unavailable, filtering in the reader", "err", err)
				if old != nil {
					_ = f.dev.SetKernelFilter(-1)
				}
			} else {
				f.kern = k
				p.skip4, p.skip6 = k4, k6
				if f.stop == nil {
					f.stop = make(chan struct{})
					f.wg.Add(1)
					go f.syncLoop(f.stop)
				}
			}
		} else if old != nil {
			if err := f.dev.SetKernelFilter(-1); err != nil {
				f.log.Warn("detach kernel early filter", "err", err)
			}
		}
	}
	f.prog.Store(p)
	if old != nil {
		f.syncLocked(old)
		old.prog.Close()
	}
}

// loadLocked loads and attaches the kernel program for p's first k4 and
// k6 rules.
func (f *EarlyFilter) loadLocked(p *earlyProg, k4, k6 int) (*kernelProg, error) {
	var v4, v6 []bpffilter.Rule
	for _, r := range p.v4[:k4] {
		v4 = append(v4, r.kernelRule())
	}
	for _, r := range p.v6[:k6] {
		v6 = append(v6, r.kernelRule())
	}
	prog, err := bpffilter.Load(v4, v6)
	if err != nil {
		return nil, err
	}
	if err := f.dev.SetKernelFilter(prog.FD()); err != nil {
		prog.Close()
		return nil, err
	}
	k := &kernelProg{prog: prog, rules: append(append([]*earlyRule(nil), p.v4[:k4]...), p.v6[:k6]...)}
	k.last = make([]bpffilter.Count, len(k.rules)*4)
	return k, nil
}

// kernelPrefix is how many leading rules the kernel program can run.
func kernelPrefix(rules []*earlyRule) int {
	for i, r := range rules {
		if r.limit != nil {
			return i
		}
	}
	return len(rules)
}

func (er *earlyRule) kernelRule() bpffilter.Rule {
	return bpffilter.Rule{
		Src: er.src, Dst: er.dst, SrcInvert: er.srcInv, DstInvert: er.dstInv,
		Proto: er.proto, ProtoInvert: er.protoInv, Ports: er.ports,
		SrcPorts:       bpffilter.PortRange{Min: er.sport.Min, Max: er.sport.Max},
		DstPorts:       bpffilter.PortRange{Min: er.dport.Min, Max: er.dport.Max},
		SrcPortsInvert: er.sportInv, DstPortsInvert: er.dportInv,
		FlagsMask: er.flagsMask, Flags: er.flags, FlagsInvert: er.flagsInv,
	}
}

// Sync adds what the kernel program dropped since the last Sync to the
// rules' iptables counters, Dropped and the packet outcomes.
func (f *EarlyFilter) Sync() {
	f.kmu.Lock()
	defer f.kmu.Unlock()
	if f.kern != nil {
		f.syncLocked(f.kern)
	}
}

// +checklocks:f.kmu
func (f *EarlyFilter) syncLocked(k *kernelProg) {
	counts, err := k.prog.Counts()
	if err != nil {
		f.log.Warn("read kernel early filter counters", "err", err)
		return
	}
	classes := [...]outcome.Proto{outcome.ProtoTCP, outcome.ProtoUDP, outcome.ProtoICMP, outcome.ProtoOther}
	l := f.out.Load()
	for i, c := range counts {
		pk, by := c.Packets-k.last[i].Packets, c.Bytes-k.last[i].Bytes
		if pk == 0 {
			continue
		}
		k.rules[i/4].counters.AddN(pk, by)
		f.Dropped.Add(pk)
		f.KernelDropped.Add(pk)
		if l != nil {
			// Outcomes count one packet at a time; the bytes go with
			// the first.
			for j := uint64(0); j < pk; j++ {
				n := 0
				if j == 0 {
					n = int(by)
				}
				l.Drop(outcome.EarlyFilter, outcome.HookIngress, classes[i%4], n)
			}
		}
	}
	k.last = counts
}

func (f *EarlyFilter) syncLoop(stop chan struct{}) {
	defer f.wg.Done()
	t := time.NewTicker(kernelSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			f.Sync()
		}
	}
}

// Close releases the kernel program after a last Sync. It stays attached
// (the device holds it) until the device goes away: by now the device's
// descriptor may be closed and its number reused.
func (f *EarlyFilter) Close() {
	f.kmu.Lock()
	if f.stop != nil {
		close(f.stop)
		f.stop = nil
	}
	if f.kern != nil {
		f.syncLocked(f.kern)
		f.kern.prog.Close()
		f.kern = nil
	}
	f.kmu.Unlock()
	f.wg.Wait()
}

// SetOutcomes makes the filter count its drops as packet outcomes
// (outcome.EarlyFilter at the ingress hook) on l.
func (f *EarlyFilter) SetOutcomes(l *outcome.Link) { f.out.Store(l) }

// Counters returns the filter's counters.
func (f *EarlyFilter) Counters() map[string]uint64 {
	f.Sync()
	p := f.prog.Load()
	return map[string]uint64{
		"early_dropped": f.Dropped.Load(), "early_passed": f.Passed.Load(),
		"early_kernel_dropped": f.KernelDropped.Load(), "early_kernel_rules": uint64(p.skip4 + p.skip6),
		"early_rules_v4": uint64(len(p.v4)), "early_rules_v6": uint64(len(p.v6)),
	}
}

// Filter reports whether the raw IP packet b must be dropped. It is the
// tun.EndpointOptions.Filter callback.
func (f *EarlyFilter) Filter(b []byte) bool {
	p := f.prog.Load()
	if len(b) < 1 {
		return false
	}
	var rules []*earlyRule
	var src, dst netip.Addr
	var proto uint8
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		rules = p.v4[p.skip4:]
		if len(rules) == 0 || len(b) < 20 {
			f.Passed.Add(1)
			return false
		}
		ihl := int(b[0]&0xf) * 4
		src = netip.AddrFrom4([4]byte(b[12:16]))
		dst = netip.AddrFrom4([4]byte(b[16:20]))
		proto = b[9]
		if binary.BigEndian.Uint16(b[6:])&0x1fff == 0 && ihl >= 20 && len(b) >= ihl {
			l4 = b[ihl:]
		}
	case 6:
		rules = p.v6[p.skip6:]
		if len(rules) == 0 || len(b) < 40 {
			f.Passed.Add(1)
			return false
		}
		src = netip.AddrFrom16([16]byte(b[8:24]))
		dst = netip.AddrFrom16([16]byte(b[24:40]))
		proto = b[6] // extension headers: ports unknown, see below
		l4 = b[40:]
	default:
		return false
	}
	var sport, dport uint16
	var flags uint8
	havePorts := (proto == iptables.ProtoTCP || proto == iptables.ProtoUDP) && len(l4) >= 4
	if havePorts {
		sport = binary.BigEndian.Uint16(l4[0:])
		dport = binary.BigEndian.Uint16(l4[2:])
		if proto == iptables.ProtoTCP && len(l4) >= 14 {
			flags = l4[13]
		}
	}
	for _, r := range rules {
		if r.src.IsValid() && r.src.Contains(src) == r.srcInv {
			continue
		}
		if r.dst.IsValid() && r.dst.Contains(dst) == r.dstInv {
			continue
		}
		if r.proto != 0 && (proto == r.proto) == r.protoInv {
			continue
		}
		if r.ports {
			if !havePorts || proto == iptables.ProtoTCP && len(l4) < 14 && r.flagsMask != 0 {
				continue
			}
			if (sport >= r.sport.Min && sport <= r.sport.Max) == r.sportInv {
				continue
			}
			if (dport >= r.dport.Min && dport <= r.dport.Max) == r.dportInv {
				continue
			}
			if r.flagsMask != 0 && (flags&r.flagsMask == r.flags) == r.flagsInv {
				continue
			}
		}
		if r.limit != nil && !r.limit.above(src, f.now()) {
			continue
		}
		r.counters.Add(uint64(len(b)))
		f.Dropped.Add(1)
		if l := f.out.Load(); l != nil {
			op := outcome.ProtoOther
			switch proto {
			case iptables.ProtoTCP:
				op = outcome.ProtoTCP
			case iptables.ProtoUDP:
				op = outcome.ProtoUDP
			case iptables.ProtoICMP, iptables.ProtoICMPv6:
				op = outcome.ProtoICMP
			}
			l.Drop(outcome.EarlyFilter, outcome.HookIngress, op, len(b))
		}
		return true
	}
	f.Passed.Add(1)
	return false
}

// above takes one packet's worth of credit from src's bucket and reports
// whether there was none (the rate is above the limit).
func (l *earlyLimit) above(src netip.Addr, now int64) bool {
	var key [16]byte
	if l.perSrc {
		if src.Is4() {
			key = maskKey(src, l.mask4)
		} else {
			key = maskKey(src, l.mask6)
		}
	}
	h := uint32(2166136261)
	for _, c := range key {
		h = (h ^ uint32(c)) * 16777619
	}
	var s *earlySlot
	oldest := -1
	for i := 0; i < earlyProbe; i++ {
		c := &l.slots[(int(h)+i)%earlySlots]
		if c.used && c.key == key {
			s = c
			break
		}
		if !c.used {
			if s == nil {
				s = c
			}
			break
		}
		if oldest < 0 || c.last < l.slots[(int(h)+oldest)%earlySlots].last {
			oldest = i
		}
	}
	if s == nil {
		s = &l.slots[(int(h)+oldest)%earlySlots]
		s.used = false
	}
	if !s.used || s.key != key {
		*s = earlySlot{key: key, used: true, credit: l.capacity, last: now}
	}
	s.credit += now - s.last
	s.last = now
	if s.credit > l.capacity {
		s.credit = l.capacity
	}
	if s.credit >= l.cost {
		s.credit -= l.cost
		return false
	}
	return true
}

func maskKey(a netip.Addr, bits int) [16]byte {
	p, _ := a.Prefix(bits)
	if a.Is4() {
		var k [16]byte
		b := p.Addr().As4()
		copy(k[12:], b[:])
		k[0] = 4
		return k
	}
	return p.Addr().As16()
}

// compileEarly turns the leading expressible rules of rs's raw PREROUTING
// chain into early rules (fresh rate-limit state). It returns them and how many
// leading rules they are.
func compileEarly(rs *iptables.Ruleset) ([]*earlyRule, int) {
	t := rs.Table(iptables.TableRaw)
	if t == nil {
		return nil, 0
	}
	c := t.Chain("PREROUTING")
	if c == nil {
		return nil, 0
	}
	var out []*earlyRule
	for _, r := range c.Rules {
		er, ok := compileEarlyRule(r, rs.Family())
		if !ok {
			break
		}
		out = append(out, er)
	}
	return out, len(out)
}

func compileEarlyRule(r *iptables.Rule, fam iptables.Family) (*earlyRule, bool) {
	st, ok := r.Target.(*iptables.StandardTarget)
	// -i stays in the slow path: every link's filter must compile the
	// same leading rules, since the slow path skips them for all links.
	if !ok || st.Verdict != "DROP" || r.Fragment || r.FragmentInvert || r.OutIface != "" || r.InIface != "" {
		return nil, false
	}
	er := &earlyRule{src: r.Src, dst: r.Dst, srcInv: r.SrcInvert, dstInv: r.DstInvert,
		proto: r.Proto, protoInv: r.ProtoInvert, counters: r.Counters}
	if fam == iptables.IPv6 && r.Proto != 0 {
		// Extension headers hide the transport protocol in raw bytes.
		er.proto = r.Proto
	}
	for _, m := range r.Matches {
		switch m := m.(type) {
		case *iptables.TCPMatch:
			er.setPorts(m)
		case *iptables.UDPMatch:
			er.setPorts(&m.TCPMatch)
		case *iptables.CommentMatch:
		case *iptables.HashlimitMatch:
			if !m.Above || er.limit != nil || m.Mode&^iptables.HashSrcIP != 0 || m.Avg == 0 {
				return nil, false
			}
			l := &earlyLimit{cost: int64(m.Avg) * 1000, perSrc: m.Mode&iptables.HashSrcIP != 0,
				mask4: m.SrcMask, mask6: m.SrcMask}
			if l.mask4 > 32 || l.mask4 <= 0 {
				l.mask4 = 32
			}
			if l.mask6 > 128 || l.mask6 <= 0 {
				l.mask6 = 128
			}
			l.capacity = l.cost * int64(max(m.Burst, 1))
			er.limit = l
		default:
			return nil, false
		}
	}
	if er.ports && er.protoInv {
		return nil, false
	}
	return er, true
}

func (er *earlyRule) setPorts(m *iptables.TCPMatch) {
	er.ports = true
	er.sport, er.dport = m.SrcPorts, m.DstPorts
	er.sportInv, er.dportInv = m.SrcInvert, m.DstInvert
	er.flagsMask, er.flags, er.flagsInv = m.FlagsMask, m.FlagsCmp, m.FlagsInvert
}

// withoutLeading returns rs without the first n rules of raw PREROUTING:
// what the slow path evaluates once the early filter has them. The rules
// left are shared with rs (and so are their counters).
func withoutLeading(rs *iptables.Ruleset, n int) *iptables.Ruleset {
	for i := 0; i < n; i++ {
		next, err := rs.DeleteNum(iptables.TableRaw, "PREROUTING", 1)
		if err != nil {
			return rs
		}
		rs = next
	}
	return rs
}
