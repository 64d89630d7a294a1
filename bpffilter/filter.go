// Package bpffilter compiles stateless drop rules (addresses, protocol,
// ports, TCP flags) into an eBPF socket-filter program for a TUN device's
// transmit path (TUNSETFILTEREBPF), so the kernel drops matching packets
// before they are queued for the reader: the appliance is never woken for
// them, the role XDP plays for a NIC. Each rule counts what it drops, per
// protocol class, in an array map. Start with Load.
package bpffilter

import (
	"fmt"
	"net/netip"
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

// Stack slots (offsets from r10).
const (
	slotL4    = -8  // 0: no ports, 1: ports, 2: ports and TCP flags
	slotSport = -16 //
	slotDport = -24
	slotFlags = -32
	slotClass = -40
	slotKey   = -48
)

// compile emits the program for v4 and v6 rules (rule i of v6 is map
// rule len(v4)+i) counting into the map mapFD.
func compile(v4, v6 []Rule, mapFD int) ([]byte, error) {
	var a asm
	a.movX(r6, r1)
	a.ldxMem(szW, r9, r6, 0) // skb->len
	for _, s := range []int16{slotL4, slotSport, slotDport, slotFlags, slotKey} {
		a.stMem(szDW, r10, s, 0)
	}
	a.stMem(szDW, r10, slotClass, int32(ClassOther))
	a.jmpK(jmpJLT, r9, 1, "pass")
	a.ldAbs(szB, 0)
	a.alu32K(aluRSH, r0, 4)
	if len(v4) > 0 {
		a.jmpK(jmpJEQ, r0, 4, "v4")
	}
	if len(v6) > 0 {
		a.jmpK(jmpJEQ, r0, 6, "v6")
	}
	a.ja("pass")
	if len(v4) > 0 {
		a.mark("v4")
		a.jmpK(jmpJLT, r9, 20, "pass")
		a.ldAbs(szB, 9)
		a.movX(r7, r0)
		classify(&a)
		// No ports in a non-first fragment or past a bad header length.
		a.ldAbs(szH, 6)
		a.alu32K(aluAND, r0, 0x1fff)
		a.jmpK(jmpJNE, r0, 0, "rules4")
		a.ldAbs(szB, 0)
		a.alu32K(aluAND, r0, 0xf)
		a.alu32K(aluLSH, r0, 2)
		a.movX(r8, r0)
		a.jmpK(jmpJLT, r8, 20, "rules4")
		transport(&a, "rules4")
		a.mark("rules4")
		if rules(&a, v4, 0, false, mapFD) {
			a.ja("pass")
		}
	}
	if len(v6) > 0 {
		a.mark("v6")
		a.jmpK(jmpJLT, r9, 40, "pass")
		a.ldAbs(szB, 6)
		a.movX(r7, r0)
		classify(&a)
		a.movK(r8, 40)
		transport(&a, "rules6")
		a.mark("rules6")
		if rules(&a, v6, len(v4), true, mapFD) {
			a.ja("pass")
		}
	}
	a.mark("pass")
	a.movX(r0, r9) // keep the whole packet
	a.exit()
	return a.assemble()
}

// classify stores the protocol class of the protocol in r7.
func classify(a *asm) {
	done, notTCP, notUDP, icmp := a.newLabel(), a.newLabel(), a.newLabel(), a.newLabel()
	a.jmpK(jmpJNE, r7, 6, notTCP)
	a.stMem(szDW, r10, slotClass, int32(ClassTCP))
	a.ja(done)
	a.mark(notTCP)
	a.jmpK(jmpJNE, r7, 17, notUDP)
	a.stMem(szDW, r10, slotClass, int32(ClassUDP))
	a.ja(done)
	a.mark(notUDP)
	a.jmpK(jmpJEQ, r7, 1, icmp)
	a.jmpK(jmpJNE, r7, 58, done)
	a.mark(icmp)
	a.stMem(szDW, r10, slotClass, int32(ClassICMP))
	a.mark(done)
}

// transport loads ports (and TCP flags) of a TCP or UDP header at r8 into
// the stack slots if the packet holds them, then goes to out.
func transport(a *asm, out string) {
	ports := a.newLabel()
	a.jmpK(jmpJEQ, r7, 6, ports)
	a.jmpK(jmpJNE, r7, 17, out)
	a.mark(ports)
	a.movX(r1, r8)
	a.alu64K(aluADD, r1, 4)
	a.jmpX(jmpJGT, r1, r9, out)
	a.ldInd(szH, r8, 0)
	a.stxMem(szDW, r10, r0, slotSport)
	a.ldInd(szH, r8, 2)
	a.stxMem(szDW, r10, r0, slotDport)
	a.stMem(szDW, r10, slotL4, 1)
	a.jmpK(jmpJNE, r7, 6, out)
	a.movX(r1, r8)
	a.alu64K(aluADD, r1, 14)
	a.jmpX(jmpJGT, r1, r9, out)
	a.ldInd(szB, r8, 13)
	a.stxMem(szDW, r10, r0, slotFlags)
	a.stMem(szDW, r10, slotL4, 2)
}

// rules emits rs (map rule base+i) and reports whether a packet can get
// past them all (no rule matches everything).
func rules(a *asm, rs []Rule, base int, v6 bool, mapFD int) bool {
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
func rule(a *asm, r *Rule, idx int, v6 bool, mapFD int) bool {
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
			a.ldAbs(szW, off+int32(4*w))
			if mask != ^uint32(0) {
				a.alu32K(aluAND, r0, int32(mask))
			}
			if inv {
				a.jmp32K(jmpJNE, r0, val&mask, ok)
			} else {
				a.jmp32K(jmpJNE, r0, val&mask, next)
			}
		}
		if inv {
			a.ja(next)
			a.mark(ok)
		}
	}
	addr(r.Src, r.SrcInvert, 12, 8)
	addr(r.Dst, r.DstInvert, 16, 24)
	if r.Proto != 0 {
		if r.ProtoInvert {
			a.jmpK(jmpJEQ, r7, int32(r.Proto), next)
		} else {
			a.jmpK(jmpJNE, r7, int32(r.Proto), next)
		}
	}
	if r.Ports {
		a.ldxMem(szDW, r0, r10, slotL4)
		if r.FlagsMask != 0 {
			a.jmpK(jmpJNE, r0, 2, next)
		} else {
			a.jmpK(jmpJEQ, r0, 0, next)
		}
		ports := func(p PortRange, inv bool, slot int16) {
			if p.Min == 0 && p.Max == 0xffff {
				return
			}
			a.ldxMem(szDW, r0, r10, slot)
			if !inv {
				if p.Min > 0 {
					a.jmpK(jmpJLT, r0, int32(p.Min), next)
				}
				if p.Max < 0xffff {
					a.jmpK(jmpJGT, r0, int32(p.Max), next)
				}
				return
			}
			ok := a.newLabel()
			if p.Min > 0 {
				a.jmpK(jmpJLT, r0, int32(p.Min), ok)
			}
			if p.Max < 0xffff {
				a.jmpK(jmpJGT, r0, int32(p.Max), ok)
			}
			a.ja(next)
			a.mark(ok)
		}
		ports(r.SrcPorts, r.SrcPortsInvert, slotSport)
		ports(r.DstPorts, r.DstPortsInvert, slotDport)
		if r.FlagsMask != 0 {
			a.ldxMem(szDW, r0, r10, slotFlags)
			a.alu64K(aluAND, r0, int32(r.FlagsMask))
			if r.FlagsInvert {
				a.jmpK(jmpJEQ, r0, int32(r.Flags&r.FlagsMask), next)
			} else {
				a.jmpK(jmpJNE, r0, int32(r.Flags&r.FlagsMask), next)
			}
		}
	}
	// Matched: count, then drop.
	drop := a.newLabel()
	a.ldxMem(szDW, r0, r10, slotClass)
	a.alu64K(aluADD, r0, int32(idx*int(numClasses)))
	a.stxMem(szW, r10, r0, slotKey)
	a.movX(r2, r10)
	a.alu64K(aluADD, r2, slotKey)
	a.ldMapFD(r1, mapFD)
	a.call(helperMapLookupElem)
	a.jmpK(jmpJEQ, r0, 0, drop)
	a.movK(r1, 1)
	a.atomicAdd64(r0, r1, 0)
	a.atomicAdd64(r0, r9, 8)
	a.mark(drop)
	a.movK(r0, 0)
	a.exit()
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
