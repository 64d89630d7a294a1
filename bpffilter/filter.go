// Package bpffilter compiles stateless drop rules (addresses, protocol,
// ports, TCP flags) into an eBPF socket-filter program for a TUN device's
// transmit path (TUNSETFILTEREBPF), so the kernel drops matching packets
// before they are queued for the reader: the appliance is never woken for
// them, the role XDP plays for a NIC. Each rule counts what it drops, per
// protocol class, in an array map. Start with Load.
package bpffilter

import (
	"fmt"
	"math"
	"net/netip"

	"github.com/cilium/ebpf/asm"
)

// Rule is one drop rule. A packet matches when every condition set
// matches, with iptables' meanings (the appliance's early filter compiles
// the raw table's leading PREROUTING rules into these).
type Rule struct {
	// Src and Dst match the source and destination prefix when valid;
	// Invert* negates.
	Src, Dst             netip.Prefix
	SrcInvert, DstInvert bool
	// Proto matches the IP protocol (IPv6: the next header of the fixed
	// header) when not 0.
	Proto       uint8
	ProtoInvert bool
	// Ports matches TCP/UDP ports in [Min, Max]; a packet without a
	// transport header (a fragment, a short packet) does not match.
	Ports                          bool
	SrcPorts, DstPorts             PortRange
	SrcPortsInvert, DstPortsInvert bool
	// FlagsMask, if not 0, matches TCP flags: flags&FlagsMask == Flags.
	FlagsMask, Flags uint8
	FlagsInvert      bool
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Min, Max uint16 }

// Class is the protocol class a drop is counted under.
type Class int

// The protocol classes.
const (
	ClassTCP Class = iota
	ClassUDP
	ClassICMP // ICMP and ICMPv6
	ClassOther
	numClasses
)

// Count is what one rule dropped of one protocol class.
type Count struct{ Packets, Bytes uint64 }

// neverMatches reports whether r can match no packet (an inverted
// catch-all), which the verifier would otherwise see as dead code.
func (r *Rule) neverMatches() bool {
	full := func(p PortRange) bool { return p.Min == 0 && p.Max == 0xffff }
	return r.Src.IsValid() && r.Src.Bits() == 0 && r.SrcInvert ||
		r.Dst.IsValid() && r.Dst.Bits() == 0 && r.DstInvert ||
		r.Ports && (full(r.SrcPorts) && r.SrcPortsInvert || full(r.DstPorts) && r.DstPortsInvert)
}

// Stack slots (offsets from R10).
const (
	slotL4    = -8  // 0: no ports, 1: ports, 2: ports and TCP flags
	slotSport = -16 //
	slotDport = -24
	slotFlags = -32
	slotClass = -40
	slotKey   = -48
)

// Registers: R6 holds the context (LoadAbs and LoadInd need it there), R7
// the protocol, R8 the transport header's offset, R9 the packet's length.
// R1-R5 are clobbered by calls and by LoadAbs/LoadInd, which load into R0.
const (
	r0, r1, r2, r6, r7, r8, r9, r10 = asm.R0, asm.R1, asm.R2, asm.R6, asm.R7, asm.R8, asm.R9, asm.R10
)

// builder collects instructions and puts labels on them as cilium/ebpf
// symbols. An instruction has one symbol, so a second label on it is an
// alias that jumps are redirected from.
type builder struct {
	insns   asm.Instructions
	pending []string          // labels for the next instruction
	alias   map[string]string // label to the symbol of its instruction
	nlabel  int
}

func (b *builder) emit(ins ...asm.Instruction) {
	for _, in := range ins {
		if len(b.pending) > 0 {
			in = in.WithSymbol(b.pending[0])
			for _, l := range b.pending[1:] {
				if b.alias == nil {
					b.alias = map[string]string{}
				}
				b.alias[l] = b.pending[0]
			}
			b.pending = nil
		}
		b.insns = append(b.insns, in)
	}
}

// newLabel returns a fresh label name.
func (b *builder) newLabel() string {
	b.nlabel++
	return fmt.Sprintf("L%d", b.nlabel)
}

// mark puts label l on the next instruction.
func (b *builder) mark(l string) { b.pending = append(b.pending, l) }

// referenced reports whether a jump goes to label l.
func (b *builder) referenced(l string) bool {
	for _, in := range b.insns {
		if in.Reference() == l {
			return true
		}
	}
	return false
}

// finish points jumps at aliased labels to their instruction's symbol.
func (b *builder) finish() (asm.Instructions, error) {
	if len(b.pending) > 0 {
		return nil, fmt.Errorf("bpffilter: label %s at the end of the program", b.pending[0])
	}
	if len(b.insns) > math.MaxInt16 {
		// Jump offsets are 16 bits.
		return nil, fmt.Errorf("bpffilter: program too long (%d instructions)", len(b.insns))
	}
	for i, in := range b.insns {
		if s, ok := b.alias[in.Reference()]; ok {
			b.insns[i] = in.WithReference(s)
		}
	}
	return b.insns, nil
}

// storeImm64 stores the sign-extended value at R10+off: the kernel's
// 64-bit store of a 32-bit immediate, which asm.StoreImm does not emit
// for asm.DWord.
func storeImm64(off int16, value int32) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: r10, Offset: off, Constant: int64(value)}
}

// compile emits the program for v4 and v6 rules (rule i of v6 is map
// rule len(v4)+i) counting into the map with file descriptor mapFD.
func compile(v4, v6 []Rule, mapFD int) (asm.Instructions, error) {
	var a builder
	a.emit(
		asm.Mov.Reg(r6, r1),
		asm.LoadMem(r9, r6, 0, asm.Word), // skb->len
	)
	for _, s := range []int16{slotL4, slotSport, slotDport, slotFlags, slotKey} {
		a.emit(storeImm64(s, 0))
	}
	a.emit(
		storeImm64(slotClass, int32(ClassOther)),
		asm.JLT.Imm(r9, 1, "pass"),
		asm.LoadAbs(0, asm.Byte),
		asm.RSh.Imm32(r0, 4),
	)
	if len(v4) > 0 {
		a.emit(asm.JEq.Imm(r0, 4, "v4"))
	}
	if len(v6) > 0 {
		a.emit(asm.JEq.Imm(r0, 6, "v6"))
	}
	a.emit(asm.Ja.Label("pass"))
	if len(v4) > 0 {
		a.mark("v4")
		a.emit(
			asm.JLT.Imm(r9, 20, "pass"),
			asm.LoadAbs(9, asm.Byte),
			asm.Mov.Reg(r7, r0),
		)
		classify(&a)
		// No ports in a non-first fragment or past a bad header length.
		a.emit(
			asm.LoadAbs(6, asm.Half),
			asm.And.Imm32(r0, 0x1fff),
			asm.JNE.Imm(r0, 0, "rules4"),
			asm.LoadAbs(0, asm.Byte),
			asm.And.Imm32(r0, 0xf),
			asm.LSh.Imm32(r0, 2),
			asm.Mov.Reg(r8, r0),
			asm.JLT.Imm(r8, 20, "rules4"),
		)
		transport(&a, "rules4")
		a.mark("rules4")
		if rules(&a, v4, 0, false, mapFD) {
			a.emit(asm.Ja.Label("pass"))
		}
	}
	if len(v6) > 0 {
		a.mark("v6")
		a.emit(
			asm.JLT.Imm(r9, 40, "pass"),
			asm.LoadAbs(6, asm.Byte),
			asm.Mov.Reg(r7, r0),
		)
		classify(&a)
		a.emit(asm.Mov.Imm(r8, 40))
		transport(&a, "rules6")
		a.mark("rules6")
		if rules(&a, v6, len(v4), true, mapFD) {
			a.emit(asm.Ja.Label("pass"))
		}
	}
	a.mark("pass")
	a.emit(
		asm.Mov.Reg(r0, r9), // keep the whole packet
		asm.Return(),
	)
	return a.finish()
}

// classify stores the protocol class of the protocol in R7.
func classify(a *builder) {
	done, notTCP, notUDP, icmp := a.newLabel(), a.newLabel(), a.newLabel(), a.newLabel()
	a.emit(
		asm.JNE.Imm(r7, 6, notTCP),
		storeImm64(slotClass, int32(ClassTCP)),
		asm.Ja.Label(done),
	)
	a.mark(notTCP)
	a.emit(
		asm.JNE.Imm(r7, 17, notUDP),
		storeImm64(slotClass, int32(ClassUDP)),
		asm.Ja.Label(done),
	)
	a.mark(notUDP)
	a.emit(
		asm.JEq.Imm(r7, 1, icmp),
		asm.JNE.Imm(r7, 58, done),
	)
	a.mark(icmp)
	a.emit(storeImm64(slotClass, int32(ClassICMP)))
	a.mark(done)
}

// transport loads ports (and TCP flags) of a TCP or UDP header at R8 into
// the stack slots if the packet holds them, then goes to out.
func transport(a *builder, out string) {
	ports := a.newLabel()
	a.emit(
		asm.JEq.Imm(r7, 6, ports),
		asm.JNE.Imm(r7, 17, out),
	)
	a.mark(ports)
	a.emit(
		asm.Mov.Reg(r1, r8),
		asm.Add.Imm(r1, 4),
		asm.JGT.Reg(r1, r9, out),
		asm.LoadInd(r0, r8, 0, asm.Half),
		asm.StoreMem(r10, slotSport, r0, asm.DWord),
		asm.LoadInd(r0, r8, 2, asm.Half),
		asm.StoreMem(r10, slotDport, r0, asm.DWord),
		storeImm64(slotL4, 1),
		asm.JNE.Imm(r7, 6, out),
		asm.Mov.Reg(r1, r8),
		asm.Add.Imm(r1, 14),
		asm.JGT.Reg(r1, r9, out),
		asm.LoadInd(r0, r8, 13, asm.Byte),
		asm.StoreMem(r10, slotFlags, r0, asm.DWord),
		storeImm64(slotL4, 2),
	)
}

// rules emits rs (map rule base+i) and reports whether a packet can get
// past them all (no rule matches everything).
func rules(a *builder, rs []Rule, base int, v6 bool, mapFD int) bool {
	for i := range rs {
		if !rule(a, &rs[i], base+i, v6, mapFD) {
			// The rest is unreachable, which the verifier refuses.
			return false
		}
	}
	return true
}

// rule emits one rule: on a match, count it in map slot idx*4+class and
// drop; otherwise fall through to the next rule. It reports whether a
// packet can fall through.
func rule(a *builder, r *Rule, idx int, v6 bool, mapFD int) bool {
	if r.neverMatches() {
		return true
	}
	next := a.newLabel()
	addr := func(p netip.Prefix, inv bool, off4, off6 int32) {
		if !p.IsValid() || p.Bits() == 0 {
			return
		}
		b := p.Addr().AsSlice()
		off := off4
		if v6 {
			off = off6
		}
		ok := a.newLabel()
		for w := 0; w*32 < p.Bits(); w++ {
			bits := min(p.Bits()-w*32, 32)
			mask := ^uint32(0) << (32 - bits)
			val := uint32(b[4*w])<<24 | uint32(b[4*w+1])<<16 | uint32(b[4*w+2])<<8 | uint32(b[4*w+3])
			a.emit(asm.LoadAbs(off+int32(4*w), asm.Word))
			if mask != ^uint32(0) {
				a.emit(asm.And.Imm32(r0, int32(mask)))
			}
			if inv {
				a.emit(asm.JNE.Imm32(r0, int32(val&mask), ok))
			} else {
				a.emit(asm.JNE.Imm32(r0, int32(val&mask), next))
			}
		}
		if inv {
			a.emit(asm.Ja.Label(next))
			a.mark(ok)
		}
	}
	addr(r.Src, r.SrcInvert, 12, 8)
	addr(r.Dst, r.DstInvert, 16, 24)
	if r.Proto != 0 {
		if r.ProtoInvert {
			a.emit(asm.JEq.Imm(r7, int32(r.Proto), next))
		} else {
			a.emit(asm.JNE.Imm(r7, int32(r.Proto), next))
		}
	}
	if r.Ports {
		a.emit(asm.LoadMem(r0, r10, slotL4, asm.DWord))
		if r.FlagsMask != 0 {
			a.emit(asm.JNE.Imm(r0, 2, next))
		} else {
			a.emit(asm.JEq.Imm(r0, 0, next))
		}
		ports := func(p PortRange, inv bool, slot int16) {
			if p.Min == 0 && p.Max == 0xffff {
				return
			}
			a.emit(asm.LoadMem(r0, r10, slot, asm.DWord))
			if !inv {
				if p.Min > 0 {
					a.emit(asm.JLT.Imm(r0, int32(p.Min), next))
				}
				if p.Max < 0xffff {
					a.emit(asm.JGT.Imm(r0, int32(p.Max), next))
				}
				return
			}
			ok := a.newLabel()
			if p.Min > 0 {
				a.emit(asm.JLT.Imm(r0, int32(p.Min), ok))
			}
			if p.Max < 0xffff {
				a.emit(asm.JGT.Imm(r0, int32(p.Max), ok))
			}
			a.emit(asm.Ja.Label(next))
			a.mark(ok)
		}
		ports(r.SrcPorts, r.SrcPortsInvert, slotSport)
		ports(r.DstPorts, r.DstPortsInvert, slotDport)
		if r.FlagsMask != 0 {
			a.emit(
				asm.LoadMem(r0, r10, slotFlags, asm.DWord),
				asm.And.Imm(r0, int32(r.FlagsMask)),
			)
			if r.FlagsInvert {
				a.emit(asm.JEq.Imm(r0, int32(r.Flags&r.FlagsMask), next))
			} else {
				a.emit(asm.JNE.Imm(r0, int32(r.Flags&r.FlagsMask), next))
			}
		}
	}
	// Matched: count, then drop.
	drop := a.newLabel()
	addBytes := asm.StoreXAdd(r0, r9, asm.DWord)
	addBytes.Offset = 8
	a.emit(
		asm.LoadMem(r0, r10, slotClass, asm.DWord),
		asm.Add.Imm(r0, int32(idx*int(numClasses))),
		asm.StoreMem(r10, slotKey, r0, asm.Word),
		asm.Mov.Reg(r2, r10),
		asm.Add.Imm(r2, slotKey),
		asm.LoadMapPtr(r1, mapFD),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(r0, 0, drop),
		asm.Mov.Imm(r1, 1),
		asm.StoreXAdd(r0, r1, asm.DWord), // packets
		addBytes,                         // bytes
	)
	a.mark(drop)
	a.emit(
		asm.Mov.Imm(r0, 0),
		asm.Return(),
	)
	if !a.referenced(next) {
		return false
	}
	a.mark(next)
	return true
}

// Validate checks that rules are expressible: addresses of one family.
func validate(rules []Rule, v6 bool) error {
	for i, r := range rules {
		for _, p := range []netip.Prefix{r.Src, r.Dst} {
			if p.IsValid() && p.Addr().Is6() != v6 {
				return fmt.Errorf("bpffilter: rule %d: prefix %s of the wrong family", i+1, p)
			}
		}
	}
	return nil
}
