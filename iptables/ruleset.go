package iptables

import (
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
)

// Ruleset is a complete set of tables for one address family, as the
// kernel holds it. It is immutable once built; editing methods return a new
// Ruleset. Eval, Save and List may be called concurrently.
type Ruleset struct {
	family Family
	// tables by index (tRaw...); nil when the table is not loaded.
	tables [numTables]*Table
	shared *shared
}

// shared is what every rule set derived from one New (by editing or
// Restore) has in common: the LOG logger and the hashlimit tables, which
// the kernel keys by name and keeps across table replacements.
type shared struct {
	log atomic.Pointer[slog.Logger]

	mu sync.Mutex
	// +checklocks:mu
	hashTables map[string]*hashTable
}

// hashTable returns the hashlimit table called name, creating it.
func (s *shared) hashTable(name string) *hashTable {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hashTables == nil {
		s.hashTables = make(map[string]*hashTable)
	}
	t := s.hashTables[name]
	if t == nil {
		t = new(hashTable)
		s.hashTables[name] = t
	}
	return t
}

// New returns an empty rule set of family f: no table is loaded, so every
// packet is accepted. Tables are loaded (with their built-in chains and
// ACCEPT policies) when first edited, as the kernel loads a table module
// on first use.
func New(f Family) *Ruleset {
	rs := &Ruleset{family: f, shared: new(shared)}
	return rs
}

// Family returns the rule set's address family.
func (rs *Ruleset) Family() Family { return rs.family }

// SetLogger sets where LOG rules write (nil: slog.Default()). It applies to
// this rule set and to every rule set derived from it by editing.
func (rs *Ruleset) SetLogger(l *slog.Logger) { rs.shared.log.Store(l) }

func (rs *Ruleset) logger() *slog.Logger {
	if l := rs.shared.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// Table returns the loaded table called name, or nil.
func (rs *Ruleset) Table(name string) *Table {
	ti := tableIndex(name)
	if ti < 0 {
		return nil
	}
	return rs.tables[ti]
}

// saveOrder is the order iptables-save (nf_tables backend) prints tables
// in, whatever order they were loaded in.
var saveOrder = [numTables]int{tMangle, tRaw, tFilter, tNAT}

// Tables returns the loaded tables in iptables-save's order (mangle, raw,
// filter, nat).
func (rs *Ruleset) Tables() []*Table {
	var out []*Table
	for _, ti := range saveOrder {
		if rs.tables[ti] != nil {
			out = append(out, rs.tables[ti])
		}
	}
	return out
}

// Table is one table (filter, nat, mangle, raw): its chains and the
// compiled program Eval runs. Do not modify.
type Table struct {
	Name string
	// Chains are the built-in chains in hook order followed by the user
	// chains sorted by name (the order iptables-save and -L print).
	Chains []*Chain
	index  int
	prog   program
}

// Chain returns the chain called name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Chain is a built-in or user-defined chain. Do not modify.
type Chain struct {
	Name string
	// Policy is PolicyAccept or PolicyDrop for a built-in chain and
	// PolicyNone for a user-defined chain.
	Policy Policy
	Rules  []*Rule
	// Counters of a built-in chain count packets its policy decided.
	Counters *Counters
	builtin  bool
	hook     Hook
}

// Builtin reports whether the chain is one of the table's built-in chains.
func (c *Chain) Builtin() bool { return c.builtin }

// Rule is one rule: the fixed IP part (-s -d -i -o -p -f), the matches in
// order, and the target. A Rule is immutable after parsing and may be
// shared by several rule sets, which then share its counters and the state
// of its stateful matches.
type Rule struct {
	// Src and Dst match addresses (-s, -d); an invalid prefix matches any.
	Src, Dst             netip.Prefix
	SrcInvert, DstInvert bool
	// InIface and OutIface match interface names (-i, -o); a trailing "+"
	// matches any name with that prefix; empty matches any.
	InIface, OutIface   string
	InInvert, OutInvert bool
	// Proto matches the transport protocol (-p); 0 is any ("all").
	Proto       uint8
	ProtoInvert bool
	// Fragment is -f: match only non-first fragments (FragmentInvert:
	// only non-fragments and first fragments).
	Fragment, FragmentInvert bool
	// Matches are the -m matches (and implicit protocol matches) in order.
	Matches []Match
	// Target is what happens when the rule matches; nil for a rule with no
	// -j (it only counts).
	Target Target
	// Counters are the rule's packet and byte counters.
	Counters *Counters
	// Line is the input line the rule came from (0 if not from a file).
	Line int

	// Compiled IP part, for Eval.
	srcNet, srcMask, dstNet, dstMask addr128
}

// addr128 is an address as two 64-bit halves (IPv4 in the low 32 bits).
type addr128 struct{ hi, lo uint64 }

func toAddr128(a netip.Addr) addr128 {
	if a.Is4() {
		b := a.As4()
		return addr128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var x addr128
	for i := 0; i < 8; i++ {
		x.hi = x.hi<<8 | uint64(b[i])
		x.lo = x.lo<<8 | uint64(b[8+i])
	}
	return x
}

func prefixMask(p netip.Prefix) addr128 {
	if !p.IsValid() {
		return addr128{}
	}
	bits := p.Bits()
	if p.Addr().Is4() {
		if bits == 0 {
			return addr128{}
		}
		return addr128{lo: uint64(0xffffffff) << (32 - bits) & 0xffffffff}
	}
	var m addr128
	switch {
	case bits == 0:
	case bits <= 64:
		m.hi = ^uint64(0) << (64 - bits)
	default:
		m.hi = ^uint64(0)
		m.lo = ^uint64(0) << (128 - bits)
	}
	return m
}

func (r *Rule) compileIP() {
	if r.Counters == nil {
		r.Counters = new(Counters)
	}
	if r.Src.IsValid() {
		r.srcMask = prefixMask(r.Src)
		r.srcNet = toAddr128(r.Src.Addr())
	}
	if r.Dst.IsValid() {
		r.dstMask = prefixMask(r.Dst)
		r.dstNet = toAddr128(r.Dst.Addr())
	}
}

// Match is one -m match (or an implicit protocol match such as -p tcp's
// tcp match) with its options. The concrete types (*TCPMatch, ...) are
// exported so callers can inspect rules; they are immutable after parsing.
type Match interface {
	// Name is the match's -m name ("tcp", "multiport", ...).
	Name() string
	parse(p *ruleParser, opt string, invert bool) (bool, error)
	finish(p *ruleParser) error
	appendSave(b []byte) []byte
	appendList(b []byte, numeric bool) []byte
	match(p *Packet, x *evalPacket) bool
}

// Target is a rule's -j or -g target. Like matches, the concrete types are
// exported for inspection and immutable.
type Target interface {
	// Name is the target's name as -j names it ("ACCEPT", "DNAT", or a
	// user chain's name).
	Name() string
	parse(p *ruleParser, opt string, invert bool) (bool, error)
	finish(p *ruleParser) error
	appendSave(b []byte) []byte
	appendList(b []byte, numeric bool) []byte
}

// sortUserChains orders chains built-ins first (hook order), then user
// chains by name, as libiptc does.
func sortChains(cs []*Chain) {
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.builtin != b.builtin {
			return a.builtin
		}
		if a.builtin {
			return a.hook < b.hook
		}
		return a.Name < b.Name
	})
}
