package appliance

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

// linkTap wraps the container's link endpoint. On the way in it takes the
// container's ICMP echo requests to remote addresses out of the stack, which
// with a promiscuous NIC would answer every address itself (forged
// replies); the gateway pings the real destination instead and writes the
// real answer back through the wrapped endpoint. Everything else passes
// through untouched, GSO included.
type linkTap struct {
	*ownedLink
	g *Gateway
}

var (
	_ stack.LinkEndpoint = (*linkTap)(nil)
	_ stack.GSOEndpoint  = (*linkTap)(nil)
)

// Attach implements stack.LinkEndpoint.
func (t *linkTap) Attach(d stack.NetworkDispatcher) {
	if d != nil {
		d = &tapDispatcher{NetworkDispatcher: d, t: t}
	}
	t.LinkEndpoint.Attach(d)
}

// inject writes one complete IP packet to the container.
func (t *linkTap) inject(proto tcpip.NetworkProtocolNumber, b []byte) tcpip.Error {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkProtocolNumber = proto
	if proto == header.IPv4ProtocolNumber {
		pkt.TransportProtocolNumber = header.ICMPv4ProtocolNumber
		pkt.NetworkHeader().Consume(header.IPv4MinimumSize)
		pkt.TransportHeader().Consume(header.ICMPv4MinimumSize)
	} else {
		pkt.TransportProtocolNumber = header.ICMPv6ProtocolNumber
		pkt.NetworkHeader().Consume(header.IPv6MinimumSize)
		pkt.TransportHeader().Consume(header.ICMPv6EchoMinimumSize)
	}
	if !t.g.echoHooksOut(pkt) {
		pkt.DecRef()
		return nil
	}
	var l stack.PacketBufferList
	l.PushBack(pkt)
	_, err := t.LinkEndpoint.WritePackets(l)
	l.DecRef()
	return err
}

type tapDispatcher struct {
	stack.NetworkDispatcher
	t *linkTap
}

// DeliverNetworkPacket implements stack.NetworkDispatcher. The caller owns
// pkt and releases it after we return, so a consumed packet is copied from,
// never DecRef'd here.
func (d *tapDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	g := d.t.g
	if proto == header.IPv6ProtocolNumber && !g.opts.IPv6.Prefix.IsValid() {
		// IPv6 is off: netstack would still relay it.
		g.outcomes.Drop(outcome.UnknownProtocol, outcome.HookNone, netstack.ProtoOf(pkt), pkt.Size())
		return
	}
	req, v := g.classifyEcho(proto, pkt)
	switch v {
	case echoPass:
		d.NetworkDispatcher.DeliverNetworkPacket(proto, pkt)
	case echoDrop:
		g.c.pingsDropped.Add(1)
		g.outcomes.Drop(outcome.NotSpecified, outcome.HookNone, outcome.ProtoICMP, pkt.Size())
	case echoRelay:
		if !g.echoHooksIn(proto, pkt, &req) {
			g.c.pingsDropped.Add(1)
			g.outcomes.Drop(outcome.FilterRule, outcome.HookInput, outcome.ProtoICMP, pkt.Size())
			return
		}
		g.outcomes.Count(outcome.Answered, outcome.HookNone, outcome.ProtoICMP, pkt.Size())
		g.startPing(req)
	}
}

// echoRequest is a container's echo request, copied out of the packet.
type echoRequest struct {
	src, dst netip.Addr // as on the wire: container -> destination
	id, seq  uint16
	data     []byte
}

type echoVerdict int

const (
	echoPass  echoVerdict = iota // not ours: deliver to netstack
	echoRelay                    // an echo request to relay
	echoDrop                     // would be answered by netstack with a forged reply
)

// classifyEcho decides what happens to an inbound packet: echo requests to
// anything but the gateway's own addresses are relayed (or dropped if
// fragmented, multicast or corrupt); everything else passes.
func (g *Gateway) classifyEcho(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) (echoRequest, echoVerdict) {
	d := pkt.Data()
	switch proto {
	case header.IPv4ProtocolNumber:
		b, ok := d.PullUp(header.IPv4MinimumSize)
		if !ok {
			return echoRequest{}, echoPass
		}
		ip := header.IPv4(b)
		ihl, tot := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || ihl < header.IPv4MinimumSize ||
			tot < ihl+header.ICMPv4MinimumSize || tot > d.Size() {
			return echoRequest{}, echoPass
		}
		dst := toAddr(ip.DestinationAddress())
		if g.isOwnAddr(dst) {
			return echoRequest{}, echoPass
		}
		if b, ok = d.PullUp(tot); !ok {
			return echoRequest{}, echoPass
		}
		ip = header.IPv4(b)
		m := header.ICMPv4(b[ihl:tot])
		if m.Type() != header.ICMPv4Echo {
			return echoRequest{}, echoPass
		}
		if ip.More() || ip.FragmentOffset() != 0 || dst.IsMulticast() || dst == ip4Broadcast ||
			header.ICMPv4Checksum(m[:header.ICMPv4MinimumSize], checksum.Checksum(m[header.ICMPv4MinimumSize:], 0)) != m.Checksum() {
			return echoRequest{}, echoDrop
		}
		return echoRequest{
			src: toAddr(ip.SourceAddress()), dst: dst, id: m.Ident(), seq: m.Sequence(),
			data: bytes.Clone(m[header.ICMPv4MinimumSize:]),
		}, echoRelay
	case header.IPv6ProtocolNumber:
		b, ok := d.PullUp(header.IPv6MinimumSize)
		if !ok {
			return echoRequest{}, echoPass
		}
		ip := header.IPv6(b)
		dst := toAddr(ip.DestinationAddress())
		if g.isOwnAddr(dst) {
			return echoRequest{}, echoPass
		}
		tot := header.IPv6MinimumSize + int(ip.PayloadLength())
		switch ip.NextHeader() {
		case uint8(header.ICMPv6ProtocolNumber):
		case uint8(header.IPv6FragmentExtHdrIdentifier):
			return echoRequest{}, echoDrop // a fragmented ping would be answered locally
		default:
			return echoRequest{}, echoPass
		}
		if tot < header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize || tot > d.Size() {
			return echoRequest{}, echoPass
		}
		if b, ok = d.PullUp(tot); !ok {
			return echoRequest{}, echoPass
		}
		ip = header.IPv6(b)
		m := header.ICMPv6(b[header.IPv6MinimumSize:tot])
		if m.Type() != header.ICMPv6EchoRequest {
			return echoRequest{}, echoPass
		}
		payload := m[header.ICMPv6EchoMinimumSize:]
		sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: m[:header.ICMPv6EchoMinimumSize], Src: ip.SourceAddress(), Dst: ip.DestinationAddress(),
			PayloadCsum: checksum.Checksum(payload, 0), PayloadLen: len(payload),
		})
		if dst.IsMulticast() || sum != m.Checksum() {
			return echoRequest{}, echoDrop
		}
		return echoRequest{
			src: toAddr(ip.SourceAddress()), dst: dst, id: m.Ident(), seq: m.Sequence(),
			data: bytes.Clone(payload),
		}, echoRelay
	}
	return echoRequest{}, echoPass
}

// isOwnAddr reports whether a is one of the gateway's own link addresses,
// which netstack answers itself.
func (g *Gateway) isOwnAddr(a netip.Addr) bool {
	l4, l6 := g.opts.IPv4, g.opts.IPv6
	return a == l4.Gateway || a == l4.DNS || (l6.Prefix.IsValid() && (a == l6.Gateway || a == l6.DNS))
}

// echoReply builds the IP packet answering req: from the address the
// container pinged, to the container, with the original id, seq and data.
func echoReply(req echoRequest) (tcpip.NetworkProtocolNumber, []byte) {
	src := tcpip.AddrFromSlice(req.dst.AsSlice())
	dst := tcpip.AddrFromSlice(req.src.AsSlice())
	if req.src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(req.data))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     src,
			DstAddr:     dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		m := header.ICMPv4(b[header.IPv4MinimumSize:])
		m.SetType(header.ICMPv4EchoReply)
		m.SetCode(0)
		m.SetIdent(req.id)
		m.SetSequence(req.seq)
		copy(m[header.ICMPv4MinimumSize:], req.data)
		m.SetChecksum(header.ICMPv4Checksum(m[:header.ICMPv4MinimumSize], checksum.Checksum(req.data, 0)))
		return header.IPv4ProtocolNumber, b
	}
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6EchoMinimumSize+len(req.data))
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           src,
		DstAddr:           dst,
	})
	m := header.ICMPv6(b[header.IPv6MinimumSize:])
	m.SetType(header.ICMPv6EchoReply)
	m.SetCode(0)
	m.SetIdent(req.id)
	m.SetSequence(req.seq)
	copy(m[header.ICMPv6EchoMinimumSize:], req.data)
	m.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: m[:header.ICMPv6EchoMinimumSize], Src: src, Dst: dst,
		PayloadCsum: checksum.Checksum(req.data, 0), PayloadLen: len(req.data),
	}))
	return header.IPv6ProtocolNumber, b
}

// startPing relays req on a goroutine, at most maxConcurrentPings at once;
// beyond that, and while draining, requests are dropped.
func (g *Gateway) startPing(req echoRequest) {
	select {
	case g.pingSem <- struct{}{}:
	default:
		g.c.pingsDropped.Add(1)
		return
	}
	if g.isDraining() || !g.spawn(func() {
		defer func() { <-g.pingSem }()
		g.ping(req)
	}) {
		<-g.pingSem
		g.c.pingsDropped.Add(1)
	}
}

func (g *Gateway) ping(req echoRequest) {
	target, err := g.pol.resolve(netip.AddrPortFrom(req.dst, 0), protoICMP)
	if err != nil {
		g.c.policyDenied[protoICMP].Add(1)
		return
	}
	g.active[protoICMP].Add(1)
	defer g.active[protoICMP].Add(-1)
	ctx, cancel := context.WithTimeout(g.ctx, pingTimeout)
	defer cancel()
	g.c.pingsSent.Add(1)
	if err := g.hostEcho(ctx, target.Addr(), req.seq, req.data); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			g.c.pingsTimedOut.Add(1)
		} else {
			g.c.pingsFailed.Add(1)
			g.debug("ping failed", "dst", target, "err", err)
		}
		return
	}
	proto, b := echoReply(req)
	if err := g.link.inject(proto, b); err != nil {
		g.c.pingsFailed.Add(1)
		return
	}
	g.c.pingsReplied.Add(1)
}

// pingRaw is set once datagram ICMP sockets turn out not to be permitted
// (net.ipv4.ping_group_range); pings then use raw sockets.
var pingRaw atomic.Bool

// hostEcho pings dst from the host and waits for the matching reply until
// ctx is done. It uses an unprivileged datagram ICMP socket, or a raw one
// where those are not permitted; one socket per ping keeps replies apart.
func (g *Gateway) hostEcho(ctx context.Context, dst netip.Addr, seq uint16, data []byte) error {
	c, raw, err := listenICMP(dst.Is4())
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}

	id := uint16(rand.Uint32()) // the kernel picks its own for datagram sockets
	var typ, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	protoNum := 1
	if !dst.Is4() {
		typ, replyType, protoNum = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	wb, err := (&icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(id), Seq: int(seq), Data: data}}).Marshal(nil)
	if err != nil {
		return err
	}
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if raw {
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	if _, err := c.WriteTo(wb, to); err != nil {
		return err
	}
	rb := make([]byte, len(wb)+512)
	for {
		n, peer, err := c.ReadFrom(rb)
		if err != nil {
			if ctx.Err() != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return os.ErrDeadlineExceeded
			}
			return err
		}
		if !peerIs(peer, dst) {
			continue
		}
		m, err := icmp.ParseMessage(protoNum, rb[:n])
		if err != nil || m.Type != replyType {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.Seq != int(seq) || (raw && e.ID != int(id)) || !bytes.Equal(e.Data, data) {
			continue
		}
		return nil
	}
}

var aLongTimeAgo = time.Unix(1, 0)

func listenICMP(v4 bool) (c *icmp.PacketConn, raw bool, err error) {
	dgram, rawNet, addr := "udp4", "ip4:icmp", "0.0.0.0"
	if !v4 {
		dgram, rawNet, addr = "udp6", "ip6:ipv6-icmp", "::"
	}
	if !pingRaw.Load() {
		c, err = icmp.ListenPacket(dgram, addr)
		if err == nil {
			return c, false, nil
		}
		if !errors.Is(err, syscall.EACCES) && !errors.Is(err, syscall.EPERM) {
			return nil, false, err
		}
	}
	c, rerr := icmp.ListenPacket(rawNet, addr)
	if rerr != nil {
		if err != nil {
			return nil, false, errors.Join(err, rerr)
		}
		return nil, false, rerr
	}
	pingRaw.Store(true)
	return c, true, nil
}

func peerIs(peer net.Addr, dst netip.Addr) bool {
	var ip net.IP
	switch a := peer.(type) {
	case *net.UDPAddr:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	default:
		return false
	}
	p, ok := netip.AddrFromSlice(ip)
	return ok && p.Unmap() == dst.Unmap()
}
