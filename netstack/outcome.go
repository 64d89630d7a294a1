package netstack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/outcome"
)

// probe ties one of netstack's counters to the outcome it stands for.
// seen is how many of the counter's increments have been claimed by a
// packet, so every increment is attributed at most once even when two
// links deliver at the same time.
type probe struct {
	c    *tcpip.StatCounter
	r    outcome.Reason
	h    outcome.Hook
	seen atomic.Uint64
}

// claim attributes one unclaimed increment of p's counter, if there is
// one.
func (p *probe) claim() bool {
	for {
		s := p.seen.Load()
		if p.c.Value() <= s {
			return false
		}
		if p.seen.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

// classifier decides a received packet's outcome from which of netstack's
// counters its delivery moved: netstack counts every drop it makes, but
// reports none of them to the caller of DeliverNetworkPacket. It looks only
// at counters bumped synchronously on the delivery path, so a packet's
// delivery is over (or handed to a socket) when DeliverNetworkPacket
// returns. Probes are ordered: the first that moved names the reason, the
// others that moved for the same packet are claimed too.
type classifier struct {
	mu sync.Mutex // serialises AddProbe
	// probes is copy-on-write: readers load it without the lock.
	probes    atomic.Pointer[[]*probe]
	delivered *probe
}

func newClassifier(st tcpip.Stats) *classifier {
	c := &classifier{}
	ps := []*probe{
		{c: st.IP.MalformedPacketsReceived, r: outcome.Malformed},
		{c: st.IP.MalformedFragmentsReceived, r: outcome.Malformed},
		{c: st.NICs.MalformedL4RcvdPackets, r: outcome.Malformed},
		{c: st.UDP.MalformedPacketsReceived, r: outcome.Malformed},
		{c: st.ICMP.V4.PacketsReceived.Invalid, r: outcome.Malformed},
		{c: st.ICMP.V6.PacketsReceived.Invalid, r: outcome.Malformed},
		{c: st.TCP.ChecksumErrors, r: outcome.BadChecksum},
		{c: st.UDP.ChecksumErrors, r: outcome.BadChecksum},
		{c: st.TCP.InvalidSegmentsReceived, r: outcome.Malformed},
		{c: st.IP.InvalidDestinationAddressesReceived, r: outcome.InvalidAddress},
		{c: st.IP.InvalidSourceAddressesReceived, r: outcome.InvalidAddress},
		{c: st.IP.DisabledPacketsReceived, r: outcome.NICDisabled},
		{c: st.IP.IPTablesPreroutingDropped, r: outcome.FilterRule, h: outcome.HookPrerouting},
		{c: st.IP.IPTablesInputDropped, r: outcome.FilterRule, h: outcome.HookInput},
		{c: st.IP.IPTablesForwardDropped, r: outcome.FilterRule, h: outcome.HookForward},
		{c: st.IP.IPTablesPostroutingDropped, r: outcome.FilterRule, h: outcome.HookPostrouting},
		{c: st.IP.Forwarding.ExhaustedTTL, r: outcome.TTLExpired, h: outcome.HookForward},
		{c: st.IP.Forwarding.Unrouteable, r: outcome.NoRoute, h: outcome.HookForward},
		{c: st.IP.Forwarding.HostUnreachable, r: outcome.NoRoute, h: outcome.HookForward},
		{c: st.IP.Forwarding.PacketTooBig, r: outcome.PacketTooBig, h: outcome.HookForward},
		{c: st.IP.Forwarding.OutgoingDeviceNoBufferSpace, r: outcome.QueueFull, h: outcome.HookForward},
		{c: st.IP.Forwarding.Errors, r: outcome.NotSpecified, h: outcome.HookForward},
		// Not UDP.UnknownPortErrors: the demuxer counts it before trying
		// the default handler, which takes every datagram in gateway
		// mode. A datagram nothing took draws a port unreachable.
		{c: st.ICMP.V4.PacketsSent.DstUnreachable, r: outcome.NoSocket},
		{c: st.ICMP.V6.PacketsSent.DstUnreachable, r: outcome.NoSocket},
		{c: st.UDP.ReceiveBufferErrors, r: outcome.SocketFull},
		// Not TCP.ListenOverflowSynDrop: a listener's segments are
		// accounted by segmentAccounting.
		{c: st.TCP.ForwardMaxInFlightDrop, r: outcome.ListenOverflow},
	}
	for _, p := range ps {
		p.seen.Store(p.c.Value())
	}
	c.probes.Store(&ps)
	c.delivered = &probe{c: st.IP.PacketsDelivered, r: outcome.Delivered}
	c.delivered.seen.Store(c.delivered.c.Value())
	return c
}

// add appends a probe (see Stack.AddDropProbe).
func (c *classifier) add(ctr *tcpip.StatCounter, r outcome.Reason, h outcome.Hook) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := &probe{c: ctr, r: r, h: h}
	p.seen.Store(ctr.Value())
	ps := append(append([]*probe(nil), *c.probes.Load()...), p)
	c.probes.Store(&ps)
}

// classify returns the outcome of a packet whose delivery just returned.
// deferred counts the link's TCP segments whose outcome segmentAccounting
// reports later: if it moved and nothing dropped the packet, classify
// returns ok false and the packet is not counted now.
func (c *classifier) classify(forwarding bool, deferred *probe) (r outcome.Reason, h outcome.Hook, ok bool) {
	r, h, found := outcome.NotSpecified, outcome.HookNone, false
	for _, p := range *c.probes.Load() {
		if p.claim() && !found {
			r, h, found = p.r, p.h, true
		}
	}
	queued := deferred.claim()
	delivered := c.delivered.claim()
	switch {
	case found:
		return r, h, true
	case queued:
		return outcome.Delivered, outcome.HookNone, false
	case delivered:
		return outcome.Delivered, outcome.HookNone, true
	case forwarding:
		return outcome.Forwarded, outcome.HookForward, true
	}
	return outcome.NotSpecified, outcome.HookNone, true
}

// ProtoOf returns the transport protocol of an IP packet, from its parsed
// transport protocol number or else from the IP header at the front of
// its data (the IPv6 next header, not following extension headers).
func ProtoOf(pkt *stack.PacketBuffer) outcome.Proto {
	tp := pkt.TransportProtocolNumber
	if tp == 0 {
		b, ok := pkt.Data().PullUp(min(pkt.Data().Size(), header.IPv4MinimumSize))
		if !ok || len(b) < 1 {
			return outcome.ProtoOther
		}
		switch b[0] >> 4 {
		case 4:
			if len(b) > 9 {
				tp = tcpip.TransportProtocolNumber(b[9])
			}
		case 6:
			if len(b) > 6 {
				tp = tcpip.TransportProtocolNumber(b[6])
			}
		}
	}
	switch tp {
	case header.TCPProtocolNumber:
		return outcome.ProtoTCP
	case header.UDPProtocolNumber:
		return outcome.ProtoUDP
	case header.ICMPv4ProtocolNumber, header.ICMPv6ProtocolNumber:
		return outcome.ProtoICMP
	}
	return outcome.ProtoOther
}

// outcomeLink sits directly below a NIC and accounts every packet the NIC
// receives to one outcome (see classifier).
type outcomeLink struct {
	WrappedLink
	s *Stack
	l *outcome.Link
	// routes: a packet neither delivered nor dropped was forwarded. False
	// on a promiscuous NIC, which takes every packet as local.
	routes bool
	// queued counts TCP segments received on this link that an endpoint
	// queued: segmentAccounting reports their outcome when they are freed.
	queued tcpip.StatCounter
	// deferred is the classifier's view of queued.
	deferred probe
	// disp is the NIC's dispatcher while attached (Stack.DeliverInbound).
	disp atomic.Pointer[outcomeDispatcher]
}

// Attach implements stack.LinkEndpoint.
func (o *outcomeLink) Attach(d stack.NetworkDispatcher) {
	if d != nil {
		od := &outcomeDispatcher{NetworkDispatcher: d, o: o}
		o.disp.Store(od)
		d = od
	} else {
		o.disp.Store(nil)
	}
	o.LinkEndpoint.Attach(d)
}

type outcomeDispatcher struct {
	stack.NetworkDispatcher
	o *outcomeLink
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (d *outcomeDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	n := pkt.Size()
	p := ProtoOf(pkt)
	d.NetworkDispatcher.DeliverNetworkPacket(proto, pkt)
	if r, h, ok := d.o.s.classifier.classify(d.o.routes, &d.o.deferred); ok {
		d.o.l.Count(r, h, p, n)
	}
}

// tcpDropReasons maps the TCP endpoint's drop reasons (gVisor patch 0015)
// to outcomes.
var tcpDropReasons = [tcp.NumDropReasons]outcome.Reason{
	tcp.Consumed:           outcome.Delivered,
	tcp.DropOldData:        outcome.TCPOldData,
	tcp.DropOldSequence:    outcome.TCPOldSequence,
	tcp.DropZeroWindow:     outcome.TCPZeroWindow,
	tcp.DropOverWindow:     outcome.TCPOverWindow,
	tcp.DropOFODrop:        outcome.TCPOFODrop,
	tcp.DropOFOPrune:       outcome.TCPOFOPrune,
	tcp.DropRcvBuf:         outcome.SocketFull,
	tcp.DropProtoMem:       outcome.MemoryPressure,
	tcp.DropListenOverflow: outcome.ListenOverflow,
	tcp.DropAckUnsentData:  outcome.TCPAckUnsentData,
	tcp.DropAbortOnData:    outcome.TCPAbortOnData,
	tcp.DropClose:          outcome.TCPClose,
	tcp.DropInvalidSYN:     outcome.TCPInvalidSYN,
	tcp.DropReset:          outcome.TCPReset,
}

// segmentAccounting receives the outcome of every TCP segment an
// endpoint queued (gVisor patch 0015): delivered when the reader consumed
// it, or the reason the endpoint discarded it (out of window, zero
// window, receive buffer, ...), decided after DeliverNetworkPacket
// returned. The segment's link counts it then, once.
type segmentAccounting struct {
	s *Stack
}

var _ tcp.SegmentAccounting = segmentAccounting{}

// SegmentQueued implements tcp.SegmentAccounting. It runs inside the
// link's DeliverNetworkPacket.
func (a segmentAccounting) SegmentQueued(nic tcpip.NICID) bool {
	o := a.s.outcomeLinkOf(nic)
	if o == nil {
		return false
	}
	o.queued.Increment()
	return true
}

// SegmentDone implements tcp.SegmentAccounting.
func (a segmentAccounting) SegmentDone(nic tcpip.NICID, size int, r tcp.DropReason) {
	o := a.s.outcomeLinkOf(nic)
	if o == nil {
		return
	}
	or := outcome.NotSpecified
	if int(r) < len(tcpDropReasons) {
		or = tcpDropReasons[r]
	}
	o.l.Count(or, outcome.HookNone, outcome.ProtoTCP, size)
}

// edgeLink counts the packets netstack (and whatever wraps the link above
// it) hands to the link: Transmitted when the link took them, QueueFull
// when it refused them.
type edgeLink struct {
	WrappedLink
	l *outcome.Link
}

// WritePackets implements stack.LinkEndpoint.
func (e *edgeLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	all := pkts.AsSlice()
	type meta struct {
		p outcome.Proto
		n int
	}
	// Read before writing: the link may release the packets. Up to 64
	// entries live on the stack.
	var buf [64]meta
	ms := buf[:0]
	for _, pkt := range all {
		ms = append(ms, meta{ProtoOf(pkt), pkt.Size()})
	}
	n, err := e.LinkEndpoint.WritePackets(pkts)
	for i, m := range ms {
		if i < n {
			e.l.Count(outcome.Transmitted, outcome.HookEgress, m.p, m.n)
		} else {
			e.l.Count(outcome.QueueFull, outcome.HookEgress, m.p, m.n)
		}
	}
	return n, err
}

// EdgeLink wraps the endpoint closest to the wire (the TUN endpoint) so
// that every packet written to it is accounted as Transmitted (or
// QueueFull when refused) on l. Layers between it and netstack that drop
// packets (emulation) count their own drops.
func EdgeLink(ep stack.LinkEndpoint, l *outcome.Link) stack.LinkEndpoint {
	return &edgeLink{WrappedLink: WrappedLink{LinkEndpoint: ep}, l: l}
}
