package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nsappliance/appliance/netstack"
)

// handleTCP answers one SYN from the container. The forwarder runs it on a
// goroutine of its own and counts it against MaxPendingSYN until
// r.Complete, which every path calls exactly once. The host-side dial comes
// first; only when it succeeds does the container's handshake complete, so
// a refused or unreachable destination looks the same to the container as
// it does to the host: a RST.
func (g *Gateway) handleTCP(r *tcp.ForwarderRequest) {
	if !g.enter() {
		r.Complete(true)
		return
	}
	defer g.wg.Done()

	id := r.ID()
	dst := netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort)
	if g.isDraining() {
		g.c.tcpRefusedDrain.Add(1)
		r.Complete(true)
		return
	}
	host, err := g.pol.resolve(dst, protoTCP)
	var hc *hostSock
	switch {
	case errors.Is(err, errDNS):
		var c *net.TCPConn
		if c, err = g.dialDNSTCP(); err == nil {
			hc, err = detachHost(c)
		}
	case err != nil:
		g.c.policyDenied[protoTCP].Add(1)
		g.debug("flow denied", "proto", "tcp", "dst", dst)
		r.Complete(true)
		return
	default:
		hc, err = g.dialHostSock(host)
	}
	if err != nil {
		g.c.tcpDialFailed.Add(1)
		g.debug("dial failed", "proto", "tcp", "dst", dst, "err", err)
		r.Complete(true)
		return
	}
	wq := new(waiter.Queue)
	// CreateEndpoint parks this goroutine until the container's ACK
	// completes the handshake. The batch that delivers that ACK wakes it
	// and then yields to it, as the SYN's batch did to start it (see
	// LinkBatch.yieldAfter).
	done := handshakeWake{g.opts.Batch}
	var e waiter.Entry
	e.Init(done, waiter.WritableEvents|waiter.EventHUp|waiter.EventErr)
	wq.EventRegister(&e)
	ep, terr := r.CreateEndpoint(wq)
	wq.EventUnregister(&e)
	r.Complete(false)
	if terr != nil {
		hc.abort()
		g.c.tcpHandshake.Add(1)
		g.debug("container handshake failed", "dst", dst, "err", terr)
		return
	}
	tuneEndpoint(ep)
	ccDst := dst.Addr()
	if host.IsValid() {
		ccDst = host.Addr()
	}
	g.applyCCRoute(ep, ccDst)
	g.relayTCP(ep, wq, hc)
}

// handshakeWake asks the batch being delivered to yield once the
// handshake a handler waits for has ended.
type handshakeWake struct{ b *LinkBatch }

// NotifyEvent implements waiter.EventListener.
func (h handshakeWake) NotifyEvent(waiter.EventMask) { h.b.yieldAfter() }

// dialHost dials a host TCP destination with DialTimeout and keepalive.
func (g *Gateway) dialHost(dst netip.AddrPort) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: g.opts.DialTimeout, KeepAliveConfig: hostKeepAlive}
	c, err := d.DialContext(g.ctx, "tcp", dst.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialDNSTCP dials the DNS upstreams in order and returns the first that
// answers.
func (g *Gateway) dialDNSTCP() (*net.TCPConn, error) {
	if len(g.dns) == 0 {
		g.c.dnsNoUpstream.Add(1)
		return nil, errors.New("no dns upstream")
	}
	var err error
	for _, u := range g.dns {
		var c *net.TCPConn
		if c, err = g.dialHost(u); err == nil {
			return c, nil
		}
		if g.ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

// dialContainer opens a TCP connection through netstack from src (any
// address: the NIC spoofs) to dst and returns the endpoint and its waiter
// queue. Unlike gonet.DialTCPWithBind it closes the endpoint when Bind
// fails.
func (g *Gateway) dialContainer(ctx context.Context, src, dst netip.AddrPort) (tcpip.Endpoint, *waiter.Queue, error) {
	wq := new(waiter.Queue)
	ep, terr := g.stack.NewEndpoint(tcp.ProtocolNumber, netProto(dst.Addr()), wq)
	if terr != nil {
		return nil, nil, netstack.Error("new endpoint", terr)
	}
	e, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&e)
	defer wq.EventUnregister(&e)
	if terr := ep.Bind(toFull(g.nic, src)); terr != nil {
		ep.Close()
		return nil, nil, fmt.Errorf("%w %v: %w", errBind, src, netstack.Error("bind", terr))
	}
	tuneEndpoint(ep)
	terr = ep.Connect(toFull(g.nic, dst))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, nil, ctx.Err()
		case <-ch:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, nil, netstack.Error(fmt.Sprintf("connect %v", dst), terr)
	}
	return ep, wq, nil
}

func netProto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}
