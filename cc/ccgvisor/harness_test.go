package ccgvisor_test

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/pipe"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/emulate"
	"github.com/nsappliance/appliance/netstack"
)

var (
	addrA = tcpip.AddrFrom4([4]byte{10, 9, 0, 1})
	addrB = tcpip.AddrFrom4([4]byte{10, 9, 0, 2})
)

// pair is two netstack stacks joined by a pipe link; the sender side (a)
// can have link emulation on its outbound direction.
type pair struct {
	a, b *netstack.Stack
	// writeSize, if not zero, is the size of the sender's writes
	// (default 1 MiB).
	writeSize int
	// beforeClose, if set, runs on a's endpoint after the last write,
	// before the close.
	beforeClose func(tcpip.Endpoint)
}

type pairOpts struct {
	reg     *cc.Registry
	ccName  string
	mtu     uint32
	emulate emulate.Spec // applied to a's link (both directions)
	// wrap, if set, wraps a's pipe endpoint (under the emulation).
	wrap func(stack.LinkEndpoint) stack.LinkEndpoint
	// wrapB, if set, wraps b's pipe endpoint (b sends the ACKs).
	wrapB func(stack.LinkEndpoint) stack.LinkEndpoint
	// fedSender gives a the fixed 4 MiB send buffer, so that the
	// transfer's writer always has data queued. Without it a's buffer
	// auto-tunes from tcp_wmem's 16 KiB default, as the appliance's does,
	// and under -race a slowed writer leaves the sender application-limited
	// now and then.
	fedSender bool
}

// feedSender gives a the fixed 4 MiB send buffer (pairOpts.fedSender).
func (p *pair) feedSender(t testing.TB) {
	t.Helper()
	if err := p.a.Sysctl().Set("net.ipv4.tcp_wmem", "4096 4194304 8388608"); err != nil {
		t.Fatal(err)
	}
}

// fixedPair is a pair whose sender keeps a fixed cwnd of 40 segments over
// a 10 ms RTT, with a's pipe endpoint wrapped by wrap (a dropper or a
// reorderer). A fixed cwnd keeps the flight, and so the time until later
// data is SACKed, far below the 200 ms minimum RTO on a slow machine too.
// minRTO, if not zero, raises the minimum RTO, so that a scheduler stall
// of a loaded machine under -race does not pass for an RTO a test says is
// not needed.
func fixedPair(t *testing.T, wrap func(stack.LinkEndpoint) stack.LinkEndpoint, minRTO time.Duration) *pair {
	t.Helper()
	reg := registry(t, map[string]cc.Factory{"fixed": func() cc.Algorithm { return &fixed{n: 40} }})
	p := newPair(t, pairOpts{reg: reg, ccName: "fixed", emulate: emulate.Spec{Delay: 5 * time.Millisecond}, wrap: wrap})
	if minRTO != 0 {
		o := tcpip.TCPMinRTOOption(minRTO)
		if err := p.a.Stack.SetTransportProtocolOption(tcp.ProtocolNumber, &o); err != nil {
			t.Fatalf("SetTransportProtocolOption(%v): %v", o, err)
		}
	}
	return p
}

// bulkFixedPair is a pair whose sender keeps a fixed cwnd of 120 segments
// across a 100 Mbit/s link with a 10 ms RTT (queue limit 1000): bulk GSO
// transfers that stay cwnd-limited and ACK-clocked. wrap and wrapB are as
// in pairOpts; the sender writes 128 KiB at a time.
func bulkFixedPair(t *testing.T, wrap, wrapB func(stack.LinkEndpoint) stack.LinkEndpoint) *pair {
	t.Helper()
	reg := registry(t, map[string]cc.Factory{"fixed": func() cc.Algorithm { return &fixed{n: 120} }})
	p := newPair(t, pairOpts{
		reg:     reg,
		ccName:  "fixed",
		emulate: emulate.Spec{Delay: 5 * time.Millisecond, Rate: 100_000_000, Limit: 1000},
		wrap:    wrap,
		wrapB:   wrapB,
	})
	p.writeSize = 128 << 10
	return p
}

func newPair(t testing.TB, o pairOpts) *pair {
	t.Helper()
	if o.mtu == 0 {
		o.mtu = 1500
	}
	mk := func(ccName string) *netstack.Stack {
		s, err := netstack.New(netstack.Options{CC: o.reg, CongestionControl: ccName})
		if err != nil {
			t.Fatalf("netstack.New: %v", err)
		}
		t.Cleanup(func() {
			s.Close()
			s.Wait()
		})
		return s
	}
	p := &pair{a: mk(o.ccName), b: mk("reno")} // b only receives
	if o.fedSender {
		p.feedSender(t)
	}
	la, lb := pipe.New("\x02\x00\x00\x00\x00\x01", "\x02\x00\x00\x00\x00\x02", o.mtu)
	var linkA stack.LinkEndpoint = la
	var linkB stack.LinkEndpoint = lb
	if o.wrapB != nil {
		linkB = o.wrapB(lb)
	}
	if o.wrap != nil {
		linkA = o.wrap(la)
	}
	if o.emulate.Active() {
		l, err := emulate.New(linkA, o.emulate, emulate.Options{})
		if err != nil {
			t.Fatal(err)
		}
		linkA = l
	}
	for _, x := range []struct {
		s    *netstack.Stack
		l    stack.LinkEndpoint
		addr tcpip.Address
	}{{p.a, linkA, addrA}, {p.b, linkB, addrB}} {
		if _, err := x.s.AttachNIC(x.l, netstack.NICOptions{
			Name:         "p",
			Addresses:    []tcpip.AddressWithPrefix{{Address: x.addr, PrefixLen: 24}},
			DefaultRoute: true,
		}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// transfer sends n bytes (or for d, when n is 0) from a to b and returns
// the bytes b received and the sender endpoint's last CC info. onConn, if
// set, runs on a's endpoint before the data.
func (p *pair) transfer(t testing.TB, n int64, d time.Duration, onConn func(tcpip.Endpoint)) (int64, time.Duration, tcp.CCInfo) {
	t.Helper()
	ln, err := gonet.ListenTCP(p.b.Stack, tcpip.FullAddress{Addr: addrB, Port: 5001}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	var got int64
	var elapsed time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		start := time.Now()
		got, _ = io.Copy(io.Discard, c)
		elapsed = time.Since(start)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, p.a.Stack, tcpip.FullAddress{Addr: addrB, Port: 5001}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	ep := endpointOf(t, p.a, c)
	if onConn != nil {
		onConn(ep)
	}
	buf := make([]byte, 1<<20)
	if p.writeSize > 0 {
		buf = buf[:p.writeSize]
	}
	deadline := time.Now().Add(d)
	var sent int64
	for (n > 0 && sent < n) || (n == 0 && time.Now().Before(deadline)) {
		m := int64(len(buf))
		if n > 0 {
			m = min(m, n-sent)
		}
		w, err := c.Write(buf[:m])
		sent += int64(w)
		if err != nil {
			t.Fatalf("write after %d bytes: %v", sent, err)
		}
	}
	info, _ := ep.(*tcp.Endpoint).CongestionControlInfo()
	if p.beforeClose != nil {
		p.beforeClose(ep)
	}
	c.Close()
	wg.Wait()
	if got != sent {
		t.Fatalf("received %d bytes, sent %d", got, sent)
	}
	return got, elapsed, info
}

// endpointOf finds a's TCP endpoint connected from c's local port.
func endpointOf(t testing.TB, s *netstack.Stack, c net.Conn) tcpip.Endpoint {
	t.Helper()
	port := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	for _, te := range s.RegisteredEndpoints() {
		ep, ok := te.(tcpip.Endpoint)
		if !ok {
			continue
		}
		if ti, ok := ep.Info().(*stack.TransportEndpointInfo); ok && ti.ID.LocalPort == port && ti.ID.RemotePort == 5001 {
			return ep
		}
	}
	t.Fatalf("no endpoint for local port %d", port)
	return nil
}
