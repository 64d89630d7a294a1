package hooks

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// NATRange is the rewrite a nat rule chose for a connection, with concrete
// addresses (MASQUERADE and REDIRECT resolve theirs from the interface
// before calling).
type NATRange struct {
	// Addr is the new address; invalid keeps it.
	Addr netip.Addr
	// MinPort..MaxPort is the new port range (TCP/UDP); 0 keeps the port.
	// A port already in the range is kept, as Linux does.
	MinPort, MaxPort uint16
}

// NATChooser is the nat table: Conntrack.NAT asks it once per connection
// and manipulation, for the connection's first packet at that hook.
// ok=false means no rule matched: the connection gets a null binding. A
// verdict other than Accept ends the packet.
type NATChooser func(p *Packet) (r NATRange, ok bool, v Verdict)

// NAT is the NAT hook (PriorityDNAT at PREROUTING and OUTPUT, PrioritySNAT
// at POSTROUTING and INPUT), modelled on nf_nat_inet_fn: for a new
// connection not yet bound for this hook's manipulation it asks choose
// (the nat table) and binds the result; then it rewrites every packet of a
// bound connection, both directions (the reply direction is undone: a
// DNATed connection's replies get their source rewritten back).
func (ct *Conntrack) NAT(p *Packet, choose NATChooser) Verdict {
	c := p.Conn
	if c == nil {
		return Accept
	}
	m := ManipOf(p.Hook)
	done := stSrcNATDone
	if m == ManipDst {
		done = stDstNATDone
	}
	// Only a connection's first packets see the nat table: NEW ones, and
	// RELATED ones (an answer the firewall attached) before the binding
	// for this manipulation exists. A confirmed connection has both.
	if (p.State == StateNew || p.State == StateRelated) && !c.confirmed() && c.status.Load()&done == 0 {
		if choose != nil {
			r, ok, v := choose(p)
			if v != Accept {
				return v
			}
			if ok {
				ct.setupNAT(c, m, r)
			} else if m == ManipSrc {
				// A null binding still needs a unique reply tuple:
				// two connections that DNAT made identical get
				// different source ports (nf_nat_alloc_null_binding).
				ct.setupNAT(c, m, NATRange{})
			}
		} else if m == ManipSrc {
			ct.setupNAT(c, m, NATRange{})
		}
		c.setStatus(done)
	}
	ct.applyNAT(p, m)
	return Accept
}

// setupNAT changes c's reply tuple so that the original direction, after
// manipulation m, looks as r says. c is unconfirmed: only the packet that
// created it sees it.
func (ct *Conntrack) setupNAT(c *Conn, m Manip, r NATRange) {
	nt := c.reply.Invert() // the original direction as it leaves now
	ports := c.orig.Proto == ProtoTCP || c.orig.Proto == ProtoUDP
	if m == ManipDst {
		if r.Addr.IsValid() {
			nt.Dst = r.Addr
		}
		if ports && r.MinPort != 0 && (nt.DstPort < r.MinPort || nt.DstPort > r.MaxPort) {
			nt.DstPort = r.MinPort
		}
	} else {
		if r.Addr.IsValid() {
			nt.Src = r.Addr
		}
		if ports {
			lo, hi := r.MinPort, r.MaxPort
			if lo == 0 {
				lo, hi = nt.SrcPort, nt.SrcPort
			}
			if nt.SrcPort < lo || nt.SrcPort > hi {
				nt.SrcPort = lo
			}
			// Keep the port if the reply tuple is free, else take the
			// next free one in the range (nf_nat_l4proto_unique_tuple);
			// with no range given, search the unprivileged ports.
			if ct.taken(nt.Invert()) {
				if r.MinPort == 0 {
					lo, hi = 1024, 65535
				}
				for p := uint32(lo); p <= uint32(hi); p++ {
					nt.SrcPort = uint16(p)
					if !ct.taken(nt.Invert()) {
						break
					}
				}
			}
		}
	}
	if nt == c.reply.Invert() {
		return
	}
	c.reply = nt.Invert()
	if m == ManipDst {
		c.setStatus(stDstNAT)
	} else {
		c.setStatus(stSrcNAT)
	}
}

func (ct *Conntrack) taken(reply Tuple) bool {
	s := ct.shard(reply)
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[reply]
	return ok
}

// applyNAT rewrites p as its connection's binding says for manipulation m
// (nf_nat_packet).
func (ct *Conntrack) applyNAT(p *Packet, m Manip) {
	c := p.Conn
	s := c.status.Load()
	need := stSrcNAT
	if (m == ManipDst) == (p.Dir == DirOriginal) {
		need = stDstNAT
	}
	if s&need == 0 {
		return
	}
	// The packet must end up looking like the inverse of the other
	// direction's tuple.
	target := c.orig.Invert()
	if p.Dir == DirOriginal {
		target = c.reply.Invert()
	}
	if p.State == StateRelated && p.isICMPError() {
		p.natICMPError(m, target)
		return
	}
	if m == ManipDst {
		p.SetDst(target.Dst)
		if p.Proto == ProtoTCP || p.Proto == ProtoUDP {
			p.SetDstPort(target.DstPort)
		}
	} else {
		p.SetSrc(target.Src)
		p.SetSrcPort(target.SrcPort)
	}
}

// natICMPError rewrites an ICMP error about a NATed connection as
// nf_nat_icmp_reply_translation does: the quoted packet (which travelled
// the other way) gets the reverse manipulation, the outer header this
// one, and the ICMP checksum is recomputed.
func (p *Packet) natICMPError(m Manip, target Tuple) {
	if !p.HasL4 || len(p.l4) < 4 {
		return
	}
	hdr := header.IPv4MinimumSize
	if p.Family == IPv6 {
		hdr = header.IPv6MinimumSize
	}
	in, ok := p.Buf.Data().PullUp(hdr)
	if !ok {
		return
	}
	if p.Family == IPv4 {
		hdr = int(in[0]&0xf) * 4
		if hdr < header.IPv4MinimumSize {
			return
		}
	}
	size := p.Buf.Data().Size()
	want := min(size, hdr+8)
	if in, ok = p.Buf.Data().PullUp(want); !ok || len(in) < hdr+4 {
		return
	}
	// The quoted packet as a Packet of its own, so the Set methods fix its
	// IPv4 header checksum and (when whole) its transport checksum.
	q := Packet{Family: p.Family, net: in[:hdr], Proto: in[9]}
	if p.Family == IPv6 {
		q.Proto = in[6]
	}
	if l4 := in[hdr:]; len(l4) >= 8 && (q.Proto == ProtoUDP || q.Proto == ProtoICMP || q.Proto == ProtoICMPv6) || len(l4) >= 4 && q.Proto == ProtoTCP {
		q.l4 = l4
		q.HasL4 = true
		if q.Proto == ProtoICMP || q.Proto == ProtoICMPv6 {
			q.ICMPType = l4[0]
		}
	}
	q.Buf = p.Buf // for partial(): an ICMP error is never GSO
	if m == ManipDst {
		q.setAddrRaw(true, target.Dst)
		if q.Proto == ProtoTCP || q.Proto == ProtoUDP {
			q.setPortRaw(0, target.DstPort)
		}
		p.SetDst(target.Dst)
	} else {
		q.setAddrRaw(false, target.Src)
		if q.Proto == ProtoTCP || q.Proto == ProtoUDP {
			q.setPortRaw(2, target.SrcPort)
		}
		p.SetSrc(target.Src)
	}
	// Recompute the ICMP checksum over the message.
	icmp := p.l4
	icmp[2], icmp[3] = 0, 0
	sum := checksum.Checksum(icmp, p.Buf.Data().Checksum())
	if p.Family == IPv6 {
		sum = checksum.Checksum(icmp, p.Buf.Data().Checksum())
		sum = checksumCombinePseudo6(sum, p.Src, p.Dst, len(icmp)+size)
	}
	binary.BigEndian.PutUint16(icmp[2:], ^sum)
}

func checksumCombinePseudo6(sum uint16, src, dst netip.Addr, length int) uint16 {
	s, d := src.As16(), dst.As16()
	x := header.PseudoHeaderChecksum(header.ICMPv6ProtocolNumber, tcpip.AddrFrom16(s), tcpip.AddrFrom16(d), uint16(length))
	return checksum.Combine(sum, x)
}
