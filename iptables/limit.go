package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Rates are kept as xt_limit keeps them: the average period between
// packets in units of 1/scale seconds.
const (
	limitScale     = 10000   // XT_LIMIT_SCALE
	hashlimitScale = 1000000 // XT_HASHLIMIT_SCALE_v2
)

// parseRate parses N[/second|/minute|/hour|/day] (unit prefixes allowed)
// into a period in 1/scale seconds, as libxt_limit's parse_rate.
func parseRate(s string, scale uint64) (uint64, error) {
	num, unit, hasUnit := strings.Cut(s, "/")
	mult := uint64(1)
	if hasUnit {
		switch {
		case unit == "":
			return 0, fmt.Errorf("bad rate %q", s)
		case strings.HasPrefix("second", strings.ToLower(unit)):
			mult = 1
		case strings.HasPrefix("minute", strings.ToLower(unit)):
			mult = 60
		case strings.HasPrefix("hour", strings.ToLower(unit)):
			mult = 3600
		case strings.HasPrefix("day", strings.ToLower(unit)):
			mult = 86400
		default:
			return 0, fmt.Errorf("bad rate %q", s)
		}
	}
	r, err := strconv.ParseUint(num, 10, 32)
	if err != nil || r == 0 {
		return 0, fmt.Errorf("bad rate %q", s)
	}
	v := scale * mult / r
	if v == 0 {
		return 0, fmt.Errorf("rate too fast %q", s)
	}
	return v, nil
}

// appendRate prints a period as libxt_limit's print_rate: the largest unit
// that still divides evenly enough.
func appendRate(b []byte, period, scale uint64) []byte {
	rates := [...]struct {
		name string
		mult uint64
	}{{"day", scale * 86400}, {"hour", scale * 3600}, {"min", scale * 60}, {"sec", scale}}
	if period == 0 {
		return append(b, "inf"...)
	}
	i := 1
	for ; i < len(rates); i++ {
		if period > rates[i].mult || rates[i].mult/period < rates[i].mult%period {
			break
		}
	}
	b = strconv.AppendUint(b, rates[i-1].mult/period, 10)
	b = append(b, '/')
	return append(b, rates[i-1].name...)
}

// rateUnit returns the unit of a rate string in seconds.
func rateUnit(s string) uint32 {
	_, unit, ok := strings.Cut(s, "/")
	if !ok {
		return 1
	}
	switch u := strings.ToLower(unit); {
	case strings.HasPrefix("minute", u):
		return 60
	case strings.HasPrefix("hour", u):
		return 3600
	case strings.HasPrefix("day", u):
		return 86400
	}
	return 1
}

// rateQuantum is the unit appendRate prints period in, in milliseconds
// (print_rate's return value).
func rateQuantum(period, scale uint64) uint32 {
	mults := [...]uint64{86400, 3600, 60, 1}
	if period == 0 {
		return 0
	}
	i := 1
	for ; i < len(mults); i++ {
		m := scale * mults[i]
		if period > m || m/period < m%period {
			break
		}
	}
	return uint32(mults[i-1] * 1000)
}

// bucket is a token bucket as xt_limit's: credit accrues with time up to
// burst packets' worth; a packet costs one period.
type bucket struct {
	last   time.Time
	credit time.Duration
}

// take refills the bucket to now and takes one packet if it can.
func (k *bucket) take(now time.Time, cost, capacity time.Duration) bool {
	if d := now.Sub(k.last); d > 0 {
		k.credit += d
		if k.credit > capacity || k.credit < 0 {
			k.credit = capacity
		}
		k.last = now
	}
	if k.credit >= cost {
		k.credit -= cost
		return true
	}
	return false
}

// LimitMatch is -m limit: a token bucket shared by every packet reaching
// the rule (xt_limit).
type LimitMatch struct {
	// Avg is the period between packets in 1/10000 s (XT_LIMIT_SCALE).
	Avg      uint64
	Burst    uint32
	Invert   bool
	burstSet bool

	mu   sync.Mutex
	init bool
	b    bucket
}

func newLimitMatch() *LimitMatch {
	return &LimitMatch{Avg: limitScale * 3600 / 3, Burst: 5}
}

func (m *LimitMatch) clone() *LimitMatch {
	return &LimitMatch{Avg: m.Avg, Burst: m.Burst, Invert: m.Invert, burstSet: m.burstSet}
}

// Name implements Match.
func (m *LimitMatch) Name() string { return "limit" }

func (m *LimitMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	switch opt {
	case "--limit":
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		if inv {
			return true, p.errf(opt, "option \"--limit\" cannot be inverted")
		}
		avg, err := parseRate(v, limitScale)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		m.Avg = avg
	case "--limit-burst":
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil || n > 10000 {
			return true, p.errf(opt, "bad --limit-burst %q (0-10000)", v)
		}
		if m.burstSet {
			return true, p.errf(opt, "only one --limit-burst allowed")
		}
		m.burstSet = true
		m.Burst = uint32(n)
	default:
		return false, nil
	}
	return true, nil
}

func (m *LimitMatch) finish(*ruleParser) error {
	// iptables-nft turns -m limit into nftables' native limit expression,
	// which takes burst 0 as its default of 5 and has no xt_limit credit
	// overflow check (xt_limit, in iptables-legacy, refuses both).
	if m.Burst == 0 {
		m.Burst = 5
	}
	return nil
}

// kernelHZ is CONFIG_HZ of the reference kernel. hashlimitCredits
// reproduces xt_hashlimit's fixed-point overflow check, which depends on it.
const kernelHZ = 250

// pow2Below returns the largest power of two <= x (x > 0).
func pow2Below(x uint64) uint64 {
	p := uint64(1)
	for p <= x/2 {
		p *= 2
	}
	return p
}

// hashlimitCredits is xt_hashlimit's user2credits for revisions 2 and 3
// (64-bit, wrapping as in the kernel).
func hashlimitCredits(user uint64) uint64 {
	hzcpj := kernelHZ * pow2Below(0xFFFFFFFFFFFFFFFF/(kernelHZ*60*60*24))
	if hashlimitScale >= hzcpj {
		return user / (hashlimitScale / hzcpj)
	}
	return user * (hzcpj / hashlimitScale)
}

func (m *LimitMatch) appendSave(b []byte) []byte {
	b = append(b, " -m limit"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, " --limit "...)
	b = appendRate(b, m.Avg, limitScale)
	if m.Burst != 5 {
		b = fmt.Appendf(b, " --limit-burst %d", m.Burst)
	}
	return b
}

func (m *LimitMatch) appendList(b []byte, _ bool) []byte {
	b = append(b, " limit:"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, " avg "...)
	b = appendRate(b, m.Avg, limitScale)
	return fmt.Appendf(b, " burst %d", m.Burst)
}

func (m *LimitMatch) cost() time.Duration {
	return time.Duration(m.Avg) * (time.Second / limitScale)
}

func (m *LimitMatch) match(p *Packet, x *evalPacket) bool {
	now := x.time(p)
	cost := m.cost()
	m.mu.Lock()
	if !m.init {
		m.init = true
		m.b = bucket{last: now, credit: cost * time.Duration(m.Burst)}
	}
	ok := m.b.take(now, cost, cost*time.Duration(m.Burst))
	m.mu.Unlock()
	return ok != m.Invert
}

// Hashlimit modes.
const (
	HashSrcIP uint8 = 1 << iota
	HashSrcPort
	HashDstIP
	HashDstPort
)

var hashModeNames = []struct {
	name string
	bit  uint8
}{{"srcip", HashSrcIP}, {"srcport", HashSrcPort}, {"dstip", HashDstIP}, {"dstport", HashDstPort}}

// HashlimitMatch is -m hashlimit: a token bucket per flow key (xt_hashlimit
// revision 3, packet mode), with idle buckets expired.
type HashlimitMatch struct {
	// Avg is the period between packets in 1/1000000 s.
	Avg                uint64
	Burst              uint64
	Above              bool
	Mode               uint8
	SrcMask, DstMask   int
	HashName           string
	Size, Max          uint32
	GCInterval, Expire uint32 // milliseconds
	fam                Family
	// unit is the rate's unit in seconds, for the default expiry.
	unit      uint32
	expireSet bool

	// tbl is the table of buckets, shared by name within a rule set
	// family; bound when the rule joins a rule set.
	tbl atomic.Pointer[hashTable]
}

// hashTable is a hashlimit table (/proc/net/ipt_hashlimit/NAME).
type hashTable struct {
	mu sync.Mutex
	// +checklocks:mu
	buckets map[hashKey]*hashBucket
	// +checklocks:mu
	lastGC time.Time
}

type hashKey struct {
	src, dst     addr128
	sport, dport uint16
}

type hashBucket struct {
	bucket
	expires time.Time
}

func newHashlimitMatch(f Family) *HashlimitMatch {
	bits := 32
	if f == IPv6 {
		bits = 128
	}
	return &HashlimitMatch{Burst: 5, SrcMask: bits, DstMask: bits, GCInterval: 1000, fam: f}
}

func (m *HashlimitMatch) clone() *HashlimitMatch {
	return &HashlimitMatch{Avg: m.Avg, Burst: m.Burst, Above: m.Above, Mode: m.Mode, SrcMask: m.SrcMask,
		DstMask: m.DstMask, HashName: m.HashName, Size: m.Size, Max: m.Max, GCInterval: m.GCInterval, Expire: m.Expire, fam: m.fam, unit: m.unit, expireSet: m.expireSet}
}

// Name implements Match.
func (m *HashlimitMatch) Name() string { return "hashlimit" }

func (m *HashlimitMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if !strings.HasPrefix(opt, "--hashlimit") {
		return false, nil
	}
	v, err := "", error(nil)
	if opt != "--hashlimit-rate-match" {
		if v, err = p.arg(opt); err != nil {
			return true, err
		}
	}
	u32 := func() (uint32, error) {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return 0, p.errf(opt, "bad value %q", v)
		}
		return uint32(n), nil
	}
	switch opt {
	case "--hashlimit-upto", "--hashlimit", "--hashlimit-above":
		if m.Avg != 0 {
			return true, p.errf(opt, "only one of --hashlimit-upto / --hashlimit-above allowed")
		}
		if strings.Contains(v, "b/s") {
			return true, p.errf(opt, "byte-based rates are not supported")
		}
		avg, err := parseRate(v, hashlimitScale)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		m.Avg = avg
		m.unit = rateUnit(v)
		m.Above = (opt == "--hashlimit-above") != inv
	case "--hashlimit-burst":
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n < 1 || n > 1000000 {
			return true, p.errf(opt, "bad value %q, or out of range (1-1000000)", v)
		}
		m.Burst = n
	case "--hashlimit-mode":
		m.Mode = 0
		if v != "none" {
			for _, s := range strings.Split(v, ",") {
				found := false
				for _, mn := range hashModeNames {
					if mn.name == s {
						m.Mode |= mn.bit
						found = true
					}
				}
				if !found {
					return true, p.errf(opt, "bad mode %q", s)
				}
			}
		}
	case "--hashlimit-srcmask", "--hashlimit-dstmask":
		n, err := strconv.Atoi(v)
		maxBits := 32
		if p.fam == IPv6 {
			maxBits = 128
		}
		if err != nil || n < 0 || n > maxBits {
			return true, p.errf(opt, "bad prefix length %q", v)
		}
		if opt == "--hashlimit-srcmask" {
			m.SrcMask = n
		} else {
			m.DstMask = n
		}
	case "--hashlimit-name":
		if v == "" || len(v) > 254 || strings.ContainsAny(v, " \t\"'\\/") {
			return true, p.errf(opt, "bad name %q", v)
		}
		m.HashName = v
	case "--hashlimit-htable-size":
		m.Size, err = u32()
	case "--hashlimit-htable-max":
		m.Max, err = u32()
	case "--hashlimit-htable-gcinterval":
		m.GCInterval, err = u32()
	case "--hashlimit-htable-expire":
		m.Expire, err = u32()
		m.expireSet = true
	default:
		return true, p.errf(opt, "unsupported hashlimit option")
	}
	return true, err
}

func (m *HashlimitMatch) finish(p *ruleParser) error {
	if m.Avg == 0 {
		return p.errf("-m hashlimit", "you have to specify --hashlimit-upto or --hashlimit-above")
	}
	if m.HashName == "" {
		return p.errf("-m hashlimit", "you have to specify --hashlimit-name")
	}
	if !m.expireSet {
		// libxt_hashlimit: idle buckets expire after one rate unit.
		m.Expire = m.unit * 1000
	}
	// xt_hashlimit's checkentry: the burst's credits must not overflow.
	if m.Burst == 0 || hashlimitCredits(m.Avg*m.Burst) < hashlimitCredits(m.Avg) {
		return p.errf("-m hashlimit", "overflow, try lower: %d/%d (the kernel refuses it with ERANGE)", m.Avg, m.Burst)
	}
	if m.Expire == 0 || m.GCInterval == 0 {
		return p.errf("-m hashlimit", "--hashlimit-htable-expire and --hashlimit-htable-gcinterval must not be 0")
	}
	return nil
}

func (m *HashlimitMatch) appendSave(b []byte) []byte {
	b = append(b, " -m hashlimit"...)
	if m.Above {
		b = append(b, " --hashlimit-above "...)
	} else {
		b = append(b, " --hashlimit-upto "...)
	}
	b = appendRate(b, m.Avg, hashlimitScale)
	b = fmt.Appendf(b, " --hashlimit-burst %d", m.Burst)
	if m.Mode != 0 {
		b = append(b, " --hashlimit-mode "...)
		b = m.appendMode(b, ',')
	}
	b = append(b, " --hashlimit-name "...)
	b = append(b, m.HashName...)
	return m.appendOptions(b, "--hashlimit-")
}

// appendOptions appends the table options and masks that differ from
// their defaults, as hashlimit_mt_save and hashlimit_mt_print do.
func (m *HashlimitMatch) appendOptions(b []byte, prefix string) []byte {
	if m.Size != 0 {
		b = fmt.Appendf(b, " %shtable-size %d", prefix, m.Size)
	}
	if m.Max != 0 {
		b = fmt.Appendf(b, " %shtable-max %d", prefix, m.Max)
	}
	if m.GCInterval != 1000 {
		b = fmt.Appendf(b, " %shtable-gcinterval %d", prefix, m.GCInterval)
	}
	if m.Expire != rateQuantum(m.Avg, hashlimitScale) {
		b = fmt.Appendf(b, " %shtable-expire %d", prefix, m.Expire)
	}
	full := 32
	if m.fam == IPv6 {
		full = 128
	}
	if m.SrcMask != full {
		b = fmt.Appendf(b, " %ssrcmask %d", prefix, m.SrcMask)
	}
	if m.DstMask != full {
		b = fmt.Appendf(b, " %sdstmask %d", prefix, m.DstMask)
	}
	return b
}

func (m *HashlimitMatch) appendMode(b []byte, sep byte) []byte {
	first := true
	for _, mn := range hashModeNames {
		if m.Mode&mn.bit != 0 {
			if !first {
				b = append(b, sep)
			}
			b = append(b, mn.name...)
			first = false
		}
	}
	return b
}

func (m *HashlimitMatch) appendList(b []byte, _ bool) []byte {
	if m.Above {
		b = append(b, " limit: above "...)
	} else {
		b = append(b, " limit: up to "...)
	}
	b = appendRate(b, m.Avg, hashlimitScale)
	b = fmt.Appendf(b, " burst %d", m.Burst)
	if m.Mode != 0 {
		b = append(b, " mode "...)
		b = m.appendMode(b, '-')
	}
	return m.appendOptions(b, "")
}

// expire is the idle time after which a flow's bucket is forgotten (the
// kernel's default is 10 s in packet mode).
func (m *HashlimitMatch) expire() time.Duration {
	return time.Duration(m.Expire) * time.Millisecond
}

func maskAddr(a addr128, bits int, v6 bool) addr128 {
	if !v6 {
		if bits >= 32 {
			return a
		}
		if bits == 0 {
			return addr128{}
		}
		return addr128{lo: a.lo & (0xffffffff << (32 - bits) & 0xffffffff)}
	}
	m := prefixMask(netip.PrefixFrom(netip.IPv6Unspecified(), bits))
	return addr128{a.hi & m.hi, a.lo & m.lo}
}

func hasPorts(proto uint8) bool {
	switch proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP, 33, 136:
		return true
	}
	return false
}

func (m *HashlimitMatch) match(p *Packet, x *evalPacket) bool {
	var k hashKey
	v6 := p.Family == IPv6
	if m.Mode&HashSrcIP != 0 {
		k.src = maskAddr(x.src, m.SrcMask, v6)
	}
	if m.Mode&HashDstIP != 0 {
		k.dst = maskAddr(x.dst, m.DstMask, v6)
	}
	if hasPorts(p.Protocol) && !p.Fragment {
		if m.Mode&HashSrcPort != 0 {
			k.sport = p.SrcPort
		}
		if m.Mode&HashDstPort != 0 {
			k.dport = p.DstPort
		}
	}
	now := x.time(p)
	cost := time.Duration(m.Avg) * (time.Second / hashlimitScale)
	capacity := cost * time.Duration(m.Burst)
	t := m.tbl.Load()
	if t == nil {
		m.tbl.CompareAndSwap(nil, new(hashTable))
		t = m.tbl.Load()
	}
	t.mu.Lock()
	if t.buckets == nil {
		t.buckets = make(map[hashKey]*hashBucket)
		t.lastGC = now
	}
	if gc := time.Duration(m.GCInterval) * time.Millisecond; now.Sub(t.lastGC) >= gc {
		for key, b := range t.buckets {
			if !now.Before(b.expires) {
				delete(t.buckets, key)
			}
		}
		t.lastGC = now
	}
	b := t.buckets[k]
	if b == nil || !now.Before(b.expires) {
		if b == nil {
			if m.Max != 0 && uint32(len(t.buckets)) >= m.Max {
				t.mu.Unlock()
				// No room for the flow: the kernel drops the packet
				// (hotdrop) whatever the rule says.
				x.hotdrop = true
				return false
			}
			b = new(hashBucket)
			t.buckets[k] = b
		}
		b.bucket = bucket{last: now, credit: capacity}
	}
	b.expires = now.Add(m.expire())
	ok := b.take(now, cost, capacity)
	t.mu.Unlock()
	// upto: matches while under the rate; above: matches when over it.
	return ok != m.Above
}

// ConnlimitMatch is -m connlimit: the number of connections from (or to)
// the packet's address, grouped by a prefix, above or up to a limit. Like
// nf_conncount it remembers the connections it has seen per group and asks
// Packet.Conns which are still alive.
type ConnlimitMatch struct {
	Limit uint32
	// Upto is --connlimit-upto (match while count <= Limit); otherwise
	// --connlimit-above (match when count > Limit).
	Upto bool
	Mask int
	// DAddr groups by destination address (--connlimit-daddr).
	DAddr bool
	fam   Family
	seen  bool

	mu    sync.Mutex
	conns map[addr128]map[uint64]struct{}
}

func newConnlimitMatch(f Family) *ConnlimitMatch {
	bits := 32
	if f == IPv6 {
		bits = 128
	}
	return &ConnlimitMatch{Mask: bits, fam: f}
}

func (m *ConnlimitMatch) clone() *ConnlimitMatch {
	return &ConnlimitMatch{Limit: m.Limit, Upto: m.Upto, Mask: m.Mask, DAddr: m.DAddr, fam: m.fam, seen: m.seen}
}

// Name implements Match.
func (m *ConnlimitMatch) Name() string { return "connlimit" }

func (m *ConnlimitMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	switch opt {
	case "--connlimit-above", "--connlimit-upto":
		if m.seen {
			return true, p.errf(opt, "only one of --connlimit-above / --connlimit-upto allowed")
		}
		m.seen = true
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return true, p.errf(opt, "bad value %q", v)
		}
		m.Limit = uint32(n)
		m.Upto = (opt == "--connlimit-upto") != inv
	case "--connlimit-mask":
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		n, err := strconv.Atoi(v)
		maxBits := 32
		if p.fam == IPv6 {
			maxBits = 128
		}
		if err != nil || n < 0 || n > maxBits {
			return true, p.errf(opt, "bad mask %q", v)
		}
		m.Mask = n
	case "--connlimit-saddr":
		m.DAddr = false
	case "--connlimit-daddr":
		m.DAddr = true
	default:
		return false, nil
	}
	return true, nil
}

func (m *ConnlimitMatch) finish(p *ruleParser) error {
	if !m.seen {
		return p.errf("-m connlimit", "you must specify --connlimit-above or --connlimit-upto")
	}
	return nil
}

func (m *ConnlimitMatch) appendSave(b []byte) []byte {
	if m.Upto {
		b = fmt.Appendf(b, " -m connlimit --connlimit-upto %d", m.Limit)
	} else {
		b = fmt.Appendf(b, " -m connlimit --connlimit-above %d", m.Limit)
	}
	b = fmt.Appendf(b, " --connlimit-mask %d", m.Mask)
	if m.DAddr {
		return append(b, " --connlimit-daddr"...)
	}
	return append(b, " --connlimit-saddr"...)
}

func (m *ConnlimitMatch) appendList(b []byte, _ bool) []byte {
	dir := "src"
	if m.DAddr {
		dir = "dst"
	}
	op := ">"
	if m.Upto {
		op = "<="
	}
	return fmt.Appendf(b, " #conn %s/%d %s %d", dir, m.Mask, op, m.Limit)
}

func (m *ConnlimitMatch) match(p *Packet, x *evalPacket) bool {
	a := x.src
	if m.DAddr {
		a = x.dst
	}
	key := maskAddr(a, m.Mask, p.Family == IPv6)
	m.mu.Lock()
	if m.conns == nil {
		m.conns = make(map[addr128]map[uint64]struct{})
	}
	set := m.conns[key]
	if set == nil {
		set = make(map[uint64]struct{})
		m.conns[key] = set
	}
	if p.Conns != nil {
		for id := range set {
			if id != p.ConnID && !p.Conns.Alive(id) {
				delete(set, id)
			}
		}
	}
	if p.ConnID != 0 {
		set[p.ConnID] = struct{}{}
	}
	n := uint32(len(set))
	if n == 0 {
		delete(m.conns, key)
	}
	m.mu.Unlock()
	if m.Upto {
		return n <= m.Limit
	}
	return n > m.Limit
}
