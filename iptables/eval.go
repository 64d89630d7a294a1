package iptables

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// maxDepth bounds how deeply user chains may jump into each other (Eval's
// return stack lives on the Go stack, so the packet path never allocates).
const maxDepth = 48

// program is a table compiled for Eval: every chain's rules laid out in
// one slice, jumps resolved to chain indices.
type program struct {
	rules     []crule
	cold      []ccold // parallel to rules
	chains    []cchain
	hookChain [NumHooks]int32
}

type cchain struct {
	start, end int32
	policy     Policy
	counters   *Counters
}

// Target kinds the evaluator handles inline.
const (
	tkNone uint8 = iota
	tkAccept
	tkDrop
	tkReturn
	tkJump
	tkGoto
	tkReject
	tkNAT
	tkMark
	tkLog
)

// Flags of a compiled rule's IP part.
const (
	cfProto uint16 = 1 << iota
	cfSrc
	cfDst
	cfIn
	cfOut
	cfFrag
	cfDport // the first match is tcp/udp with a plain --dport: checked inline
	cfSport
	// Inversions.
	cfProtoInv
	cfSrcInv
	cfDstInv
	cfInInv
	cfOutInv
	cfFragInv

	// cfSlow are the checks of the cold part (ip_packet_match's
	// addresses, interfaces and fragment flag).
	cfSlow = cfSrc | cfDst | cfIn | cfOut | cfFrag
)

// crule is a rule compiled for Eval: the checks most rules fail on
// (protocol, a leading tcp/udp port range) in 20 bytes, so rejecting a
// rule usually reads a fraction of a cache line. The rest is in ccold.
type crule struct {
	flags uint16
	proto uint8
	kind  uint8
	jump  int32
	// protoSkip is where to continue when the protocol check fails: past
	// the following rules that require the same protocol (pf's skip
	// steps).
	protoSkip          int32
	dportMin, dportMax uint16
	sportMin, sportMax uint16
}

// ccold is the part of a compiled rule read only by rules that pass the
// checks in crule.
type ccold struct {
	src, srcMask addr128
	dst, dstMask addr128
	in, out      ifacePattern
	matches      []Match
	rule         *Rule
}

// ifaceName is an interface name as the kernel keeps it: IFNAMSIZ bytes,
// NUL padded, compared as two words.
type ifaceName [2]uint64

// ifacePattern is -i/-o: the name and a mask of its significant bytes
// (all 16 for an exact name, the prefix for "eth+").
type ifacePattern struct{ name, mask ifaceName }

func toIfaceName(s string) ifaceName {
	var b [16]byte
	copy(b[:15], s)
	return ifaceName{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

func toIfacePattern(s string) ifacePattern {
	var m [16]byte
	n := len(s)
	if n > 0 && s[n-1] == '+' {
		s = s[:n-1]
		n--
	} else {
		n = 16 // the NUL padding must match too
	}
	for i := 0; i < n && i < 16; i++ {
		m[i] = 0xff
	}
	return ifacePattern{toIfaceName(s), ifaceName{binary.LittleEndian.Uint64(m[:8]), binary.LittleEndian.Uint64(m[8:])}}
}

func (ip *ifacePattern) match(n *ifaceName) bool {
	return (n[0]^ip.name[0])&ip.mask[0] == 0 && (n[1]^ip.name[1])&ip.mask[1] == 0
}

// validate checks the table as the kernel's translate_table does: jump
// targets exist, chains do not loop, nesting fits maxDepth, and every
// target is used only from hooks (through any path of jumps) it allows.
func (t *Table) validate() error {
	idx := make(map[string]int, len(t.Chains))
	for i, c := range t.Chains {
		idx[c.Name] = i
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if j, ok := r.Target.(*JumpTarget); ok {
				if _, ok := idx[j.Chain]; !ok {
					return lineErr(r, fmt.Errorf("chain %s: jump to %q: %w", c.Name, j.Chain, ErrNoChain))
				}
			}
		}
	}
	// Loops (colour DFS over every chain), nesting depth (longest jump
	// path) and the hooks reaching each chain.
	n := len(t.Chains)
	children := make([][]int, n)
	for i, c := range t.Chains {
		for _, r := range c.Rules {
			if j, ok := r.Target.(*JumpTarget); ok {
				children[i] = append(children[i], idx[j.Chain])
			}
		}
	}
	color := make([]uint8, n) // 0 white, 1 grey, 2 black
	depth := make([]int, n)
	var visit func(ci int) error
	visit = func(ci int) error {
		color[ci] = 1
		for _, ch := range children[ci] {
			switch color[ch] {
			case 1:
				return fmt.Errorf("chain %s: loop in jumps through %s (Too many levels of symbolic links)", t.Chains[ci].Name, t.Chains[ch].Name)
			case 0:
				if err := visit(ch); err != nil {
					return err
				}
			}
			depth[ci] = max(depth[ci], depth[ch]+1)
		}
		color[ci] = 2
		return nil
	}
	for i := range t.Chains {
		if color[i] == 0 {
			if err := visit(i); err != nil {
				return err
			}
		}
		if depth[i] > maxDepth {
			return fmt.Errorf("chain %s: jumps nested deeper than %d", t.Chains[i].Name, maxDepth)
		}
	}
	reach := make([]uint8, n)
	var mark func(ci int, bit uint8)
	mark = func(ci int, bit uint8) {
		if reach[ci]&bit != 0 {
			return
		}
		reach[ci] |= bit
		for _, ch := range children[ci] {
			mark(ch, bit)
		}
	}
	for i, c := range t.Chains {
		if c.builtin {
			mark(i, 1<<c.hook)
		}
	}
	for i, c := range t.Chains {
		hooks := reach[i]
		for _, r := range c.Rules {
			if hc, ok := r.Target.(interface {
				hookMask(table string) (uint8, string)
			}); ok {
				allowed, name := hc.hookMask(t.Name)
				if allowed == 0 {
					return lineErr(r, fmt.Errorf("chain %s: %s target is not valid in table %s", c.Name, name, t.Name))
				}
				if hooks&^allowed != 0 {
					return lineErr(r, fmt.Errorf("chain %s: %s target used from %s, but only usable from %s",
						c.Name, name, hookList(hooks&^allowed), hookList(allowed)))
				}
			}
		}
	}
	return nil
}

func lineErr(r *Rule, err error) error {
	if r.Line > 0 {
		return &ParseError{Line: r.Line, Err: err}
	}
	return err
}

func hookList(mask uint8) string {
	var s []string
	for h := Hook(0); h < NumHooks; h++ {
		if mask&(1<<h) != 0 {
			s = append(s, h.String())
		}
	}
	if len(s) == 0 {
		return "no chain"
	}
	return strings.Join(s, "/")
}

// build compiles every table's program.
func (rs *Ruleset) build() error {
	for _, t := range rs.tables {
		if t != nil && t.prog.chains == nil {
			t.compile()
		}
	}
	return nil
}

func (t *Table) compile() {
	p := &t.prog
	idx := make(map[string]int32, len(t.Chains))
	for i, c := range t.Chains {
		idx[c.Name] = int32(i)
	}
	for h := range p.hookChain {
		p.hookChain[h] = -1
	}
	p.chains = make([]cchain, len(t.Chains))
	for i, c := range t.Chains {
		cc := &p.chains[i]
		cc.start = int32(len(p.rules))
		cc.policy = c.Policy
		cc.counters = c.Counters
		if c.builtin {
			p.hookChain[c.hook] = int32(i)
		}
		for _, r := range c.Rules {
			cr := crule{proto: r.Proto, jump: -1}
			cold := ccold{rule: r, matches: r.Matches,
				src: r.srcNet, srcMask: r.srcMask, dst: r.dstNet, dstMask: r.dstMask,
				in: toIfacePattern(r.InIface), out: toIfacePattern(r.OutIface)}
			set := func(cond bool, flag uint16) {
				if cond {
					cr.flags |= flag
				}
			}
			set(r.Proto != 0, cfProto)
			set(r.ProtoInvert, cfProtoInv)
			set(r.Src.IsValid() && (r.Src.Bits() > 0 || r.SrcInvert), cfSrc)
			set(r.SrcInvert, cfSrcInv)
			set(r.Dst.IsValid() && (r.Dst.Bits() > 0 || r.DstInvert), cfDst)
			set(r.DstInvert, cfDstInv)
			set(r.InIface != "", cfIn)
			set(r.InInvert, cfInInv)
			set(r.OutIface != "", cfOut)
			set(r.OutInvert, cfOutInv)
			set(r.Fragment, cfFrag)
			set(r.FragmentInvert, cfFragInv)
			// The ports of a tcp/udp match are checked inline if only
			// stateless matches precede it (checking them first cannot
			// change what a limit or hashlimit counts); a fragment fails
			// the match either way.
			var tm *TCPMatch
		scan:
			for _, m := range r.Matches {
				switch m := m.(type) {
				case *TCPMatch:
					tm = m
					break scan
				case *UDPMatch:
					tm = &m.TCPMatch
					break scan
				case *LimitMatch, *HashlimitMatch, *ConnlimitMatch:
					break scan
				}
			}
			{
				if tm != nil && !tm.DstInvert && tm.DstPorts != anyPorts {
					cr.flags |= cfDport
					cr.dportMin, cr.dportMax = tm.DstPorts.Min, tm.DstPorts.Max
				}
				if tm != nil && !tm.SrcInvert && tm.SrcPorts != anyPorts {
					cr.flags |= cfSport
					cr.sportMin, cr.sportMax = tm.SrcPorts.Min, tm.SrcPorts.Max
				}
			}
			switch tg := r.Target.(type) {
			case nil:
				cr.kind = tkNone
			case *StandardTarget:
				switch tg.Verdict {
				case "ACCEPT":
					cr.kind = tkAccept
				case "DROP":
					cr.kind = tkDrop
				case "RETURN":
					cr.kind = tkReturn
				}
			case *JumpTarget:
				cr.kind = tkJump
				if tg.Goto {
					cr.kind = tkGoto
				}
				cr.jump = idx[tg.Chain]
			case *RejectTarget:
				cr.kind = tkReject
			case *NATTarget:
				cr.kind = tkNAT
			case *MarkTarget:
				cr.kind = tkMark
			case *LogTarget:
				cr.kind = tkLog
			}
			p.rules = append(p.rules, cr)
			p.cold = append(p.cold, cold)
		}
		cc.end = int32(len(p.rules))
		for i := cc.end - 1; i >= cc.start; i-- {
			r := &p.rules[i]
			r.protoSkip = i + 1
			if i+1 < cc.end && r.flags&(cfProto|cfProtoInv) == cfProto {
				n := &p.rules[i+1]
				if n.flags&(cfProto|cfProtoInv) == cfProto && n.proto == r.proto {
					r.protoSkip = n.protoSkip
				}
			}
		}
	}
}

// evalPacket is per-Eval derived packet data.
type evalPacket struct {
	src, dst addr128
	in, out  ifaceName
	now      time.Time
	haveNow  bool
	// hotdrop is set by a match that wants the packet dropped at once
	// (xt_action_param.hotdrop).
	hotdrop bool
}

func (x *evalPacket) time(p *Packet) time.Time {
	if !x.haveNow {
		x.now = p.Now
		if x.now.IsZero() {
			x.now = time.Now()
		}
		x.haveNow = true
	}
	return x.now
}

// Eval runs p through table's built-in chain for p.Hook, as ipt_do_table
// does, and returns the verdict. It counts the packet on every rule that
// matches and on the policy if the policy decides, applies MARK and LOG on
// the way, and never allocates. A table that is not loaded, or has no
// chain at the hook, accepts.
func (rs *Ruleset) Eval(table string, p *Packet) Verdict {
	ti := tableIndex(table)
	if ti < 0 || p.Hook >= NumHooks {
		return Verdict{Kind: Accept}
	}
	t := rs.tables[ti]
	if t == nil {
		return Verdict{Kind: Accept}
	}
	prog := &t.prog
	base := prog.hookChain[p.Hook]
	if base < 0 {
		return Verdict{Kind: Accept}
	}
	x := &p.x
	*x = evalPacket{src: toAddr128(p.Src), dst: toAddr128(p.Dst), in: toIfaceName(p.InIface), out: toIfaceName(p.OutIface)}
	size := uint64(max(p.Length, 0))

	type frame struct{ ret, end int32 }
	var stack [maxDepth + 1]frame
	sp := 0
	i, end := prog.chains[base].start, prog.chains[base].end
	rules, cold := prog.rules, prog.cold
	for {
		if i >= end {
			if sp == 0 {
				break // policy
			}
			sp--
			i, end = stack[sp].ret, stack[sp].end
			continue
		}
		cr := &rules[i]
		if f := cr.flags; f != 0 {
			if f&cfProto != 0 && (p.Protocol == cr.proto) == (f&cfProtoInv != 0) {
				if f&cfProtoInv == 0 {
					i = cr.protoSkip
				} else {
					i++
				}
				continue
			}
			if f&cfDport != 0 && (p.DstPort < cr.dportMin || p.DstPort > cr.dportMax) ||
				f&cfSport != 0 && (p.SrcPort < cr.sportMin || p.SrcPort > cr.sportMax) {
				i++
				continue
			}
			if f&cfSlow != 0 {
				// ip_packet_match's remaining checks, inline: a call
				// costs as much as the checks.
				c := &cold[i]
				if f&cfSrc != 0 && ((x.src.hi&c.srcMask.hi == c.src.hi && x.src.lo&c.srcMask.lo == c.src.lo) == (f&cfSrcInv != 0)) ||
					f&cfDst != 0 && ((x.dst.hi&c.dstMask.hi == c.dst.hi && x.dst.lo&c.dstMask.lo == c.dst.lo) == (f&cfDstInv != 0)) ||
					f&cfIn != 0 && ((x.in[0]^c.in.name[0])&c.in.mask[0] == 0 && (x.in[1]^c.in.name[1])&c.in.mask[1] == 0) == (f&cfInInv != 0) ||
					f&cfOut != 0 && ((x.out[0]^c.out.name[0])&c.out.mask[0] == 0 && (x.out[1]^c.out.name[1])&c.out.mask[1] == 0) == (f&cfOutInv != 0) ||
					f&cfFrag != 0 && p.Fragment == (f&cfFragInv != 0) {
					i++
					continue
				}
			}
		}
		c := &cold[i]
		ok := true
		for _, m := range c.matches {
			if !m.match(p, x) {
				ok = false
				break
			}
		}
		if !ok {
			if x.hotdrop {
				return Verdict{Kind: Drop, Rule: c.rule}
			}
			i++
			continue
		}
		c.rule.Counters.Add(size)
		switch cr.kind {
		case tkNone:
			i++
		case tkAccept:
			return Verdict{Kind: Accept, Rule: c.rule}
		case tkDrop:
			return Verdict{Kind: Drop, Rule: c.rule}
		case tkReturn:
			if sp == 0 {
				i = end // the built-in chain's policy decides
				continue
			}
			sp--
			i, end = stack[sp].ret, stack[sp].end
		case tkJump:
			if sp >= len(stack) {
				return Verdict{Kind: Drop, Rule: c.rule}
			}
			stack[sp] = frame{i + 1, end}
			sp++
			c := &prog.chains[cr.jump]
			i, end = c.start, c.end
		case tkGoto:
			c := &prog.chains[cr.jump]
			i, end = c.start, c.end
		case tkReject:
			return Verdict{Kind: Reject, Reject: c.rule.Target.(*RejectTarget).With, Rule: c.rule}
		case tkNAT:
			nt := c.rule.Target.(*NATTarget)
			return Verdict{Kind: nt.Kind, NAT: &nt.Range, Rule: c.rule}
		case tkMark:
			mt := c.rule.Target.(*MarkTarget)
			p.Mark = p.Mark&^mt.Mask ^ mt.Value
			i++
		case tkLog:
			c.rule.Target.(*LogTarget).log(rs.logger(), p)
			i++
		}
	}
	c := &prog.chains[base]
	c.counters.Add(size)
	if c.policy == PolicyDrop {
		return Verdict{Kind: Drop}
	}
	return Verdict{Kind: Accept}
}
