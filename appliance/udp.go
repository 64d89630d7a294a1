package appliance

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// udpBufs holds *[]byte big enough for any datagram.
var udpBufs = sync.Pool{New: func() any {
	b := make([]byte, 64<<10)
	return &b
}}

// udpFlow relays one UDP flow. The container side is a connected netstack
// endpoint; the host side is whatever send, recv and closeHost do. An idle
// timer closes the flow after idle without traffic either way.
type udpFlow struct {
	g    *Gateway
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	ns   *gonet.UDPConn
	idle time.Duration

	// send delivers a datagram from the container to the host side.
	send func([]byte)
	// recv, if set, reads the host side and calls toContainer until the
	// host side is closed; it runs on its own goroutine.
	recv func()
	// closeHost closes the host side.
	closeHost func()

	start time.Time
	last  atomic.Int64 // time.Since(start) of the last datagram

	mu sync.Mutex
	// +checklocks:mu
	timer *time.Timer
	once  sync.Once
}

func newUDPFlow(g *Gateway, ep tcpip.Endpoint, wq *waiter.Queue, idle time.Duration) *udpFlow {
	return &udpFlow{g: g, ep: ep, wq: wq, ns: gonet.NewUDPConn(wq, ep), idle: idle, start: time.Now()}
}

func (f *udpFlow) touch() { f.last.Store(int64(time.Since(f.start))) }

func (f *udpFlow) toContainer(b []byte) {
	f.touch()
	f.ns.Write(b)
}

func (f *udpFlow) close() {
	f.once.Do(func() {
		f.mu.Lock()
		if f.timer != nil {
			f.timer.Stop()
		}
		f.mu.Unlock()
		f.ns.Close()
		f.closeHost()
	})
}

func (f *udpFlow) checkIdle() {
	quiet := time.Since(f.start) - time.Duration(f.last.Load())
	if quiet >= f.idle {
		f.close()
		return
	}
	f.mu.Lock()
	f.timer.Reset(f.idle - quiet)
	f.mu.Unlock()
}

// start registers the flow and starts its goroutines. On failure it closes
// the flow; the caller still holds its UDP slot. On success the flow
// releases the slot when it ends.
func (f *udpFlow) startFlow() bool {
	fl, ok := f.g.addFlow(protoUDP, f.close)
	if !ok {
		f.g.c.udpDrainDropped.Add(1)
		f.close()
		return false
	}
	if !f.g.spawn(func() { f.run(fl) }) {
		f.close()
		f.g.removeFlow(fl)
		return false
	}
	return true
}

func (f *udpFlow) run(fl *flow) {
	defer f.g.releaseUDP()
	defer f.g.removeFlow(fl)
	f.touch()
	f.mu.Lock()
	f.timer = time.AfterFunc(f.idle, f.checkIdle)
	f.mu.Unlock()
	var done chan struct{}
	if f.recv != nil {
		done = make(chan struct{})
		if !f.g.spawn(func() { defer close(done); f.recv() }) {
			close(done)
		}
	}
	for {
		waitEndpoint(f.ep, f.wq)
		bp := udpBufs.Get().(*[]byte)
		n, err := f.ns.Read(*bp)
		if err != nil {
			udpBufs.Put(bp)
			break
		}
		f.touch()
		f.send((*bp)[:n])
		udpBufs.Put(bp)
	}
	f.close()
	if done != nil {
		<-done
	}
}

// reserveUDP takes one of MaxUDPFlows slots.
func (g *Gateway) reserveUDP() bool {
	if g.udpSlots.Add(1) > int64(g.opts.MaxUDPFlows) {
		g.udpSlots.Add(-1)
		return false
	}
	return true
}

func (g *Gateway) releaseUDP() { g.udpSlots.Add(-1) }

func (g *Gateway) udpIdle(dns bool) time.Duration {
	if g.opts.UDPIdleTimeout != 0 {
		return g.opts.UDPIdleTimeout
	}
	if dns {
		return dnsUDPIdleTimeout
	}
	return defaultUDPIdleTimeout
}

// handleUDP sets up a flow for the first datagram of a new (source,
// destination) pair. It runs on the packet path, so it only makes sockets
// and starts goroutines. It always reports the packet handled: denied and
// dropped flows are dropped silently rather than answered with ICMP.
func (g *Gateway) handleUDP(r *udp.ForwarderRequest) bool {
	id := r.ID()
	dst := netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort)
	if g.isDraining() {
		g.c.udpDrainDropped.Add(1)
		return true
	}
	host, err := g.pol.resolve(dst, protoUDP)
	isDNS := errors.Is(err, errDNS)
	switch {
	case isDNS && len(g.dns) == 0:
		g.c.dnsNoUpstream.Add(1)
		return true
	case err != nil && !isDNS:
		g.c.policyDenied[protoUDP].Add(1)
		g.debug("flow denied", "proto", "udp", "dst", dst)
		return true
	}
	if !g.reserveUDP() {
		g.c.udpCapDropped.Add(1)
		return true
	}
	started := false
	defer func() {
		if !started {
			g.releaseUDP()
		}
	}()

	var hc *net.UDPConn
	if isDNS {
		hc, err = net.ListenUDP("udp", nil)
	} else {
		hc, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(host))
	}
	if err != nil {
		g.c.udpSetupFailed.Add(1)
		g.debug("udp socket failed", "dst", dst, "err", err)
		return true
	}
	rc, err := hc.SyscallConn()
	if err != nil {
		hc.Close()
		g.c.udpSetupFailed.Add(1)
		return true
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		g.c.udpSetupFailed.Add(1)
		g.debug("udp endpoint failed", "dst", dst, "err", terr)
		return true
	}
	f := newUDPFlow(g, ep, &wq, g.udpIdle(isDNS))
	if isDNS {
		d := newDNSRelay(g.dns, hc)
		f.send = d.query
		f.closeHost = func() { d.close(); hc.Close() }
		f.recv = func() { d.answers(rc, f.toContainer) }
	} else {
		f.send = func(b []byte) { hc.Write(b) }
		f.closeHost = func() { hc.Close() }
		f.recv = func() { hostToContainer(hc, rc, f.toContainer) }
	}
	started = f.startFlow()
	return true
}

// hostToContainer reads datagrams from a connected host socket until it is
// closed. ICMP errors reported on the socket do not end the flow.
func hostToContainer(hc *net.UDPConn, rc syscall.RawConn, out func([]byte)) {
	for {
		bp, n, err := readWhenReady(rc, &udpBufs, syscall.Read)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
				continue
			}
			return
		}
		out((*bp)[:n])
		udpBufs.Put(bp)
	}
}

// recvFrom is a read for readWhenReady that also stores the sender's
// address in from.
func recvFrom(from *netip.AddrPort) func(fd int, b []byte) (int, error) {
	return func(fd int, b []byte) (int, error) {
		n, sa, err := syscall.Recvfrom(fd, b, 0)
		switch a := sa.(type) {
		case *syscall.SockaddrInet4:
			*from = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
		case *syscall.SockaddrInet6:
			*from = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
		}
		return n, err
	}
}
