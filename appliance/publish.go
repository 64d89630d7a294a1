package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/nsappliance/appliance/netstack"
)

// parsePublish parses [IP:]HOSTPORT:PORT[/tcp|/udp]. A host port of 0
// picks a free port.
func parsePublish(s string) (Publish, error) {
	bad := func(format string, args ...any) (Publish, error) {
		return Publish{}, fmt.Errorf("publish %q: %s", s, fmt.Sprintf(format, args...))
	}
	p := Publish{Proto: "tcp"}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		switch pr := strings.ToLower(rest[i+1:]); pr {
		case "tcp", "udp":
			p.Proto = pr
		default:
			return bad("protocol %q: want tcp or udp", rest[i+1:])
		}
		rest = rest[:i]
	}
	var host netip.Addr
	var parts []string
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return bad("host IP: missing ']'")
		}
		a, err := netip.ParseAddr(rest[1:end])
		if err != nil || !a.Is6() {
			return bad("host IP %q: not an IPv6 address", rest[1:end])
		}
		host = a
		if !strings.HasPrefix(rest[end+1:], ":") {
			return bad("want [IP]:HOSTPORT:PORT")
		}
		parts = strings.Split(rest[end+2:], ":")
		if len(parts) != 2 {
			return bad("want [IP]:HOSTPORT:PORT")
		}
	} else {
		parts = strings.Split(rest, ":")
		switch len(parts) {
		case 2:
		case 3:
			a, err := netip.ParseAddr(parts[0])
			if err != nil || !a.Is4() {
				return bad("host IP %q: not an IPv4 address", parts[0])
			}
			host = a
			parts = parts[1:]
		default:
			if len(parts) > 3 {
				return bad("want [IP:]HOSTPORT:PORT (IPv6 host addresses go in brackets)")
			}
			return bad("want [IP:]HOSTPORT:PORT")
		}
	}
	hp, err := strconv.ParseUint(parts[0], 10, 16)
	if err != nil {
		return bad("host port %q: want 0-65535", parts[0])
	}
	cp, err := strconv.ParseUint(parts[1], 10, 16)
	if err != nil || cp == 0 {
		return bad("container port %q: want 1-65535", parts[1])
	}
	p.Host = netip.AddrPortFrom(host, uint16(hp))
	p.Port = uint16(cp)
	return p, nil
}

// errBind marks a failed bind of a publish flow's spoofed source.
var errBind = errors.New("bind")

// PublishAddrs returns the host addresses the publish listeners are bound
// to, in the order of Options.Publish (useful with host port 0).
func (g *Gateway) PublishAddrs() []net.Addr {
	return append([]net.Addr(nil), g.pubAddrs...)
}

func (g *Gateway) startPublish(p Publish) error {
	ip := ""
	if p.Host.Addr().IsValid() {
		ip = p.Host.Addr().String()
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(int(p.Host.Port())))
	switch p.Proto {
	case "tcp":
		// Accepted connections get the relay's keepalive at accept
		// (Go sets TCP_NODELAY on every TCP connection itself).
		lc := net.ListenConfig{KeepAliveConfig: hostKeepAlive}
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return fmt.Errorf("publish %s/tcp: %w", addr, err)
		}
		if !g.addListener(ln) {
			ln.Close()
			return errors.New("publish: gateway is shutting down")
		}
		g.pubAddrs = append(g.pubAddrs, ln.Addr())
		g.spawn(func() { g.acceptLoop(ln.(*net.TCPListener), p) })
		g.log.Info("publish listening", "proto", "tcp", "host", ln.Addr().String(), "port", p.Port)
	case "udp":
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return fmt.Errorf("publish %s/udp: %w", addr, err)
		}
		ln, err := net.ListenUDP("udp", ua)
		if err != nil {
			return fmt.Errorf("publish %s/udp: %w", addr, err)
		}
		if !g.addListener(ln) {
			ln.Close()
			return errors.New("publish: gateway is shutting down")
		}
		g.pubAddrs = append(g.pubAddrs, ln.LocalAddr())
		g.spawn(func() { g.publishUDPLoop(ln, p) })
		g.log.Info("publish listening", "proto", "udp", "host", ln.LocalAddr().String(), "port", p.Port)
	default:
		return fmt.Errorf("publish: proto %q", p.Proto)
	}
	return nil
}

func (g *Gateway) acceptLoop(ln *net.TCPListener, p Publish) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or similar: back off, do not spin.
			g.log.Warn("publish accept failed", "err", err)
			select {
			case <-g.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		if !g.spawn(func() { g.publishTCP(c, p) }) {
			c.Close()
			return
		}
	}
}

// publishEnds picks the netstack source and container destination for a
// host client: the client's own address, so the container sees who is
// connecting, except that loopback clients (and clients that would look
// like the link itself) appear as the gateway, because the container's
// kernel would drop a 127.x source as martian. Port 0 asks for an
// ephemeral port.
func (g *Gateway) publishEnds(client netip.AddrPort, port uint16) (src, dst netip.AddrPort) {
	ca := client.Addr().Unmap().WithZone("")
	if ca.Is6() && g.opts.IPv6.Prefix.IsValid() {
		l := g.opts.IPv6
		if ca.IsLoopback() || l.Prefix.Contains(ca) {
			return netip.AddrPortFrom(l.Gateway, 0), netip.AddrPortFrom(l.Container, port)
		}
		return netip.AddrPortFrom(ca, client.Port()), netip.AddrPortFrom(l.Container, port)
	}
	l := g.opts.IPv4
	if !ca.Is4() || ca.IsLoopback() || l.Prefix.Contains(ca) {
		return netip.AddrPortFrom(l.Gateway, 0), netip.AddrPortFrom(l.Container, port)
	}
	return netip.AddrPortFrom(ca, client.Port()), netip.AddrPortFrom(l.Container, port)
}

func (g *Gateway) publishTCP(c *net.TCPConn, p Publish) {
	src, dst := g.publishEnds(c.RemoteAddr().(*net.TCPAddr).AddrPort(), p.Port)
	ctx, cancel := context.WithTimeout(g.ctx, g.opts.DialTimeout)
	ep, wq, err := g.dialContainer(ctx, src, dst)
	if errors.Is(err, errBind) && src.Port() != 0 {
		// The client's port is taken on that address (two rules to
		// one container port): any port will do.
		ep, wq, err = g.dialContainer(ctx, netip.AddrPortFrom(src.Addr(), 0), dst)
	}
	cancel()
	if err != nil {
		g.c.publishFailed.Add(1)
		g.debug("publish dial failed", "src", src, "dst", dst, "err", err)
		abortHost(c)
		return
	}
	hs, err := detachHost(c)
	if err != nil {
		g.debug("publish: host socket", "err", err)
		ep.Abort()
		return
	}
	g.c.publishAccepted.Add(1)
	g.relayTCP(ep, wq, hs)
}

// publishUDPLoop reads the publish socket and demultiplexes datagrams into
// one flow per client. Closing the socket ends the loop and its flows.
func (g *Gateway) publishUDPLoop(ln *net.UDPConn, p Publish) {
	rc, err := ln.SyscallConn()
	if err != nil {
		ln.Close()
		return
	}
	var mu sync.Mutex
	flows := make(map[netip.AddrPort]*udpFlow)
	var from netip.AddrPort
	read := recvFrom(&from)
	for {
		bp, n, err := readWhenReady(rc, &udpBufs, read)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				break
			}
			continue
		}
		key := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		mu.Lock()
		f := flows[key]
		mu.Unlock()
		if f == nil {
			f = g.newPublishUDPFlow(ln, from, p, func(f *udpFlow) {
				mu.Lock()
				if flows[key] == f {
					delete(flows, key)
				}
				mu.Unlock()
			})
			if f != nil {
				mu.Lock()
				flows[key] = f
				mu.Unlock()
			}
		}
		if f != nil {
			f.toContainer((*bp)[:n])
		}
		udpBufs.Put(bp)
	}
	ln.Close()
	mu.Lock()
	fs := make([]*udpFlow, 0, len(flows))
	for _, f := range flows {
		fs = append(fs, f)
	}
	mu.Unlock()
	for _, f := range fs {
		f.close()
	}
}

func (g *Gateway) newPublishUDPFlow(ln *net.UDPConn, from netip.AddrPort, p Publish, forget func(*udpFlow)) *udpFlow {
	if g.isDraining() {
		g.c.udpDrainDropped.Add(1)
		return nil
	}
	if !g.reserveUDP() {
		g.c.udpCapDropped.Add(1)
		return nil
	}
	src, dst := g.publishEnds(from, p.Port)
	f, err := g.openPublishUDP(src, dst)
	if err != nil {
		g.releaseUDP()
		g.c.udpSetupFailed.Add(1)
		g.debug("publish udp setup failed", "src", src, "dst", dst, "err", err)
		return nil
	}
	f.send = func(b []byte) { ln.WriteToUDPAddrPort(b, from) }
	f.closeHost = func() { forget(f) }
	if !f.startFlow() {
		g.releaseUDP()
		return nil
	}
	g.c.publishAccepted.Add(1)
	return f
}

func (g *Gateway) openPublishUDP(src, dst netip.AddrPort) (*udpFlow, error) {
	var wq waiter.Queue
	ep, terr := g.stack.NewEndpoint(udp.ProtocolNumber, netProto(dst.Addr()), &wq)
	if terr != nil {
		return nil, netstack.Error("new endpoint", terr)
	}
	terr = ep.Bind(toFull(g.nic, src))
	if terr != nil && src.Port() != 0 {
		terr = ep.Bind(toFull(g.nic, netip.AddrPortFrom(src.Addr(), 0)))
	}
	if terr != nil {
		ep.Close()
		return nil, netstack.Error(fmt.Sprintf("bind %v", src), terr)
	}
	if terr := ep.Connect(toFull(g.nic, dst)); terr != nil {
		ep.Close()
		return nil, netstack.Error(fmt.Sprintf("connect %v", dst), terr)
	}
	return newUDPFlow(g, ep, &wq, g.udpIdle(false)), nil
}
