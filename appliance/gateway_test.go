package appliance

import (
	"github.com/nsappliance/appliance/iptables"

	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostServer runs handle for every connection on a host listener.
func hostServer(t *testing.T, handle func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
	return l
}

// readAllThenEcho reads until EOF, then writes everything back: the reply
// only arrives if the half-close went through.
func readAllThenEcho(c net.Conn) {
	b, err := io.ReadAll(c)
	if err != nil {
		return
	}
	c.Write(b)
}

func TestTCPRelayHalfClose(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	halfCloseEcho(t, newTestNet(t, opts, true))
}

// TestTCPRelayReaderHostPoll runs the relay with the host sockets' epoll
// instance served by a stand-in for the TUN reader (ReaderHostPoll, as
// `appliance run` does): the gateway starts no host poller goroutine, so
// the echo only comes back through Dispatch.
func TestTCPRelayReaderHostPoll(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	hp, err := NewReaderHostPoll()
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Close()
	opts.HostPoll = hp
	n := newTestNet(t, opts, true)
	if !hp.bound() {
		t.Fatal("no gateway bound after NewGateway")
	}
	// The reader waits for the epoll instance: Go's poller must not.
	if err := n.gw.poller.file.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
		t.Errorf("the reader-served epoll instance takes deadlines (%v): it is in Go's netpoller", err)
	}
	var dispatched atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // the reader's part: wait in the instance, then Dispatch
		defer close(done)
		events := make([]unix.EpollEvent, 16)
		for ctx.Err() == nil {
			k, _ := unix.EpollWait(hp.PollFD(), events, 20)
			if k > 0 {
				hp.Dispatch(events[:k])
				dispatched.Add(1)
			}
		}
	}()
	defer func() { cancel(); <-done }()
	halfCloseEcho(t, n)
	if dispatched.Load() == 0 {
		t.Error("the echo came back without Dispatch: a host poller goroutine is running")
	}
	n.close()
	if hp.bound() {
		t.Error("still bound after Close: the gateway did not unbind before closing its epoll instance")
	}
}

// halfCloseEcho sends 3 MiB through the gateway to an echo server that
// reads all, then echoes: the reply flows while the container's direction
// is already closed.
func halfCloseEcho(t *testing.T, n *testNet) {
	t.Helper()
	l := hostServer(t, readAllThenEcho)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	want := make([]byte, 3<<20+123)
	rand.Read(want)
	go func() {
		c.Write(want)
		c.CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: got %d bytes, want %d (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
	}
	if f := n.gw.Flows(); f.TCP != 1 && f.TCP != 0 {
		t.Errorf("Flows().TCP = %d", f.TCP)
	}
	c.Close()
	waitFor(t, 5*time.Second, "flow to close", func() bool { return n.gw.Flows().TCP == 0 })
	if got := n.gw.Counters()["tcp_flows_closed"]; got != 1 {
		t.Errorf("tcp_flows_closed = %d, want 1", got)
	}
}

func TestTCPHostCloseFirst(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	// The server speaks first and half-closes; it then still reads.
	got := make(chan string, 1)
	l := hostServer(t, func(c net.Conn) {
		c.Write([]byte("hello"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read = %q, %v; want hello", b, err)
	}
	if _, err := c.Write([]byte("world")); err != nil {
		t.Fatalf("write after peer half-close: %v", err)
	}
	c.CloseWrite()
	select {
	case s := <-got:
		if s != "world" {
			t.Fatalf("server got %q, want world", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not get the container's data")
	}
}

func TestTCPRefusedAndPendingSlots(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.MaxPendingSYN = 2
	n := newTestNet(t, opts, true)
	dead := freePort(t)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Three times MaxPendingSYN refused connections: a leaked slot would
	// make the later ones, and the good one, hang.
	for i := 0; i < 6; i++ {
		c, err := n.dial(ctx, gwAddr(dead))
		if err == nil {
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("dial closed port: err = %v, want connection refused", err)
		}
	}
	// And a concurrent burst of them.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := n.dial(ctx, gwAddr(dead)); err == nil {
				c.Close()
				t.Error("dial closed port succeeded")
			}
		}()
	}
	wg.Wait()
	if got := n.gw.Counters()["tcp_dial_failures"]; got < 10 {
		t.Errorf("tcp_dial_failures = %d, want >= 10", got)
	}
	// All pending slots must be free again: a good connection works.
	l := hostServer(t, func(c net.Conn) { io.Copy(c, c) })
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial after failures: %v", err)
	}
	c.Close()
}

func TestTCPDeniedLoopback(t *testing.T) {
	n := newTestNet(t, testOptions(), true) // AllowHostLoopback off
	l := hostServer(t, func(c net.Conn) { io.Copy(c, c) })
	// 127.x, ::1 and ::ffff:127.x as destinations never leave a
	// container's stack (martian); the policy table covers them, and
	// TestPingRelay injects such a packet directly.
	for _, dst := range []netip.AddrPort{
		gwAddr(tcpPort(l)),
		netip.AddrPortFrom(testV4.DNS, uint16(tcpPort(l))),
		netip.AddrPortFrom(testV6.Gateway, uint16(tcpPort(l))),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := n.dial(ctx, dst)
		cancel()
		if err == nil {
			c.Close()
			t.Errorf("dial %v: connected, want refused", dst)
		} else if !strings.Contains(err.Error(), "refused") {
			t.Errorf("dial %v: %v, want connection refused", dst, err)
		}
	}
	// The gateway address is refused by the built-in policy chain, the
	// DNS address's other ports by the dial policy.
	if got := n.gw.Counters()["tcp_policy_denied"]; got != 1 {
		t.Errorf("tcp_policy_denied = %d, want 1", got)
	}
	if got := policyChainPackets(n.gw); got != 2 {
		t.Errorf("%s chain rejected %d packets, want 2", PolicyChain, got)
	}
}

// policyChainPackets sums the packet counters of the built-in policy
// chain's rules, both families.
func policyChainPackets(g *Gateway) uint64 {
	var n uint64
	v4, v6 := g.Firewall().Policy()
	for _, rs := range []*iptables.Ruleset{v4, v6} {
		for _, r := range rs.Table(iptables.TableFilter).Chain(PolicyChain).Rules {
			p, _ := r.Counters.Load()
			n += p
		}
	}
	return n
}

func udpEchoServer(t *testing.T) *net.UDPConn {
	t.Helper()
	s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			n, from, err := s.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			s.WriteToUDPAddrPort(b[:n], from)
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

func udpRoundTrip(c interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
}, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	b := make([]byte, 2048)
	k, err := c.Read(b)
	return string(b[:k]), err
}

func TestUDPRelayAndIdle(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.UDPIdleTimeout = 300 * time.Millisecond
	n := newTestNet(t, opts, true)
	s := udpEchoServer(t)
	c := n.dialUDP(t, gwAddr(s.LocalAddr().(*net.UDPAddr).Port))
	for i := 0; i < 3; i++ {
		got, err := udpRoundTrip(c, "ping", 5*time.Second)
		if err != nil || got != "ping" {
			t.Fatalf("round trip %d = %q, %v", i, got, err)
		}
	}
	if f := n.gw.Flows(); f.UDP != 1 {
		t.Fatalf("Flows().UDP = %d, want 1", f.UDP)
	}
	waitFor(t, 5*time.Second, "idle UDP flow to expire", func() bool { return n.gw.Flows().UDP == 0 })
	// A new datagram makes a new flow.
	if got, err := udpRoundTrip(c, "again", 5*time.Second); err != nil || got != "again" {
		t.Fatalf("after idle: %q, %v", got, err)
	}
	if got := n.gw.Counters()["udp_flows_opened"]; got != 2 {
		t.Errorf("udp_flows_opened = %d, want 2", got)
	}
}

func TestUDPFlowCap(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.MaxUDPFlows = 2
	n := newTestNet(t, opts, true)
	s := udpEchoServer(t)
	dst := gwAddr(s.LocalAddr().(*net.UDPAddr).Port)
	for i := 0; i < 2; i++ {
		c := n.dialUDP(t, dst)
		if got, err := udpRoundTrip(c, "x", 5*time.Second); err != nil || got != "x" {
			t.Fatalf("flow %d: %q, %v", i, got, err)
		}
	}
	c := n.dialUDP(t, dst)
	if got, err := udpRoundTrip(c, "x", 300*time.Millisecond); err == nil {
		t.Fatalf("flow over the cap got %q, want no answer", got)
	}
	if got := n.gw.Counters()["udp_flows_dropped_cap"]; got == 0 {
		t.Errorf("udp_flows_dropped_cap = 0, want > 0")
	}
	if f := n.gw.Flows(); f.UDP != 2 {
		t.Errorf("Flows().UDP = %d, want 2", f.UDP)
	}
}

func TestUDPDenied(t *testing.T) {
	n := newTestNet(t, testOptions(), true)
	s := udpEchoServer(t)
	c := n.dialUDP(t, gwAddr(s.LocalAddr().(*net.UDPAddr).Port))
	if got, err := udpRoundTrip(c, "x", 300*time.Millisecond); err == nil {
		t.Fatalf("denied flow got %q", got)
	}
	if got := policyChainPackets(n.gw); got == 0 {
		t.Errorf("%s chain rejected nothing", PolicyChain)
	}
}

// fakeDNS answers every UDP query with the query, QR bit set.
func fakeDNS(t *testing.T) netip.AddrPort {
	t.Helper()
	s := udpEchoServerFunc(t, func(b []byte) []byte { b[2] |= 0x80; return b })
	return s.LocalAddr().(*net.UDPAddr).AddrPort()
}

func udpEchoServerFunc(t *testing.T, f func([]byte) []byte) *net.UDPConn {
	s, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := make([]byte, 65536)
		for {
			n, from, err := s.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			s.WriteToUDPAddrPort(f(b[:n]), from)
		}
	}()
	t.Cleanup(func() { s.Close(); <-done })
	return s
}

func TestDNS(t *testing.T) {
	up := fakeDNS(t)
	deadUDP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer deadUDP.Close()
	tcpUp := hostServer(t, func(c net.Conn) { io.Copy(c, c) })

	opts := testOptions() // loopback denied: DNS still reaches its upstreams
	opts.DNSUpstreams = []netip.AddrPort{deadUDP.LocalAddr().(*net.UDPAddr).AddrPort(), up}
	n := newTestNet(t, opts, true)

	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 'q'}
	c := n.dialUDP(t, netip.AddrPortFrom(testV4.DNS, 53))
	got, err := udpRoundTrip(c, string(q), 5*time.Second)
	if err != nil {
		t.Fatalf("udp query: %v", err)
	}
	if len(got) != len(q) || got[2]&0x80 == 0 || got[0] != 0x12 {
		t.Fatalf("udp answer = %x", got)
	}
	// The failover taught the flow which upstream answers: no delay now.
	q[1] = 0x35
	start := time.Now()
	if got, err = udpRoundTrip(c, string(q), 5*time.Second); err != nil || got[1] != 0x35 {
		t.Fatalf("second query: %x, %v", got, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("second query took %v", d)
	}

	// DNS over TCP: the upstream list is tried in order; make the first a
	// closed port and the second the TCP echo upstream.
	n.gw.Close()
	opts.DNSUpstreams = []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t))),
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(tcpPort(tcpUp))),
	}
	n = newTestNet(t, opts, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc, err := n.dial(ctx, netip.AddrPortFrom(testV4.DNS, 53))
	if err != nil {
		t.Fatalf("tcp dns dial: %v", err)
	}
	tc.Write([]byte("\x00\x02hi"))
	b := make([]byte, 4)
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tc, b); err != nil || string(b) != "\x00\x02hi" {
		t.Fatalf("tcp dns: %q, %v", b, err)
	}
	tc.Close()
	// Any other port on the DNS address is refused.
	if c, err := n.dial(ctx, netip.AddrPortFrom(testV4.DNS, 80)); err == nil {
		c.Close()
		t.Fatal("dns address port 80 connected")
	}
}

func TestDNSNoUpstream(t *testing.T) {
	opts := testOptions()
	n := newTestNet(t, opts, true)
	n.gw.dns = nil // as if resolv.conf had no nameservers
	c := n.dialUDP(t, netip.AddrPortFrom(testV4.DNS, 53))
	if got, err := udpRoundTrip(c, "0123456789abcdef", 300*time.Millisecond); err == nil {
		t.Fatalf("got answer %q with no upstream", got)
	}
	if got := n.gw.Counters()["dns_no_upstream"]; got == 0 {
		t.Error("dns_no_upstream = 0")
	}
}

func TestShutdown(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	l := hostServer(t, func(c net.Conn) { io.Copy(c, c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 5*time.Second, "flow", func() bool { return n.gw.Flows().TCP == 1 })

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	res := make(chan error, 1)
	go func() { res <- n.gw.Shutdown(sctx) }()
	waitFor(t, 5*time.Second, "draining", n.gw.isDraining)
	// New connections are refused while the old one still works.
	if c2, err := n.dial(ctx, gwAddr(tcpPort(l))); err == nil {
		c2.Close()
		t.Error("new connection accepted while draining")
	}
	if got, err := udpRoundTrip(c, "still here", 5*time.Second); err != nil || got != "still here" {
		t.Fatalf("active flow during drain: %q, %v", got, err)
	}
	c.Close()
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Shutdown = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after the last flow closed")
	}
}

func TestShutdownCutsFlows(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	l := hostServer(t, func(c net.Conn) { io.Copy(c, c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 5*time.Second, "flow", func() bool { return n.gw.Flows().TCP == 1 })
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	if err := n.gw.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if f := n.gw.Flows(); f.TCP != 0 {
		t.Errorf("after Shutdown: Flows().TCP = %d", f.TCP)
	}
}

func TestNewGatewayBadOptions(t *testing.T) {
	good := testOptions()
	for _, tc := range []struct {
		name  string
		mod   func(*Options)
		field string
	}{
		{"no ipv4", func(o *Options) { o.IPv4 = Layout{} }, "IPv4"},
		{"v6 in ipv4", func(o *Options) { o.IPv4 = testV6 }, "IPv4"},
		{"gateway outside", func(o *Options) { o.IPv4.Gateway = netip.MustParseAddr("10.9.9.9") }, "IPv4.Gateway"},
		{"negative timeout", func(o *Options) { o.DialTimeout = -1 }, "DialTimeout"},
		{"negative flows", func(o *Options) { o.MaxUDPFlows = -1 }, "MaxUDPFlows"},
		{"bad upstream", func(o *Options) { o.DNSUpstreams = []netip.AddrPort{{}} }, "DNSUpstreams[0]"},
		{"bad proto", func(o *Options) { o.Publish = []Publish{{Port: 80, Proto: "sctp"}} }, "Publish[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.mod(&o)
			before := runtime.NumGoroutine()
			g, err := NewGateway(newChannel(), o)
			if err == nil {
				g.Close()
				t.Fatalf("NewGateway succeeded, want error naming %s", tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("NewGateway error %q does not name %s", err, tc.field)
			}
			if after := runtime.NumGoroutine(); after > before {
				t.Errorf("goroutines %d -> %d after failed NewGateway", before, after)
			}
		})
	}
	// A publish port that is taken fails NewGateway and leaves nothing.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	o := good
	o.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 80, Proto: "tcp"},
		{Host: l.Addr().(*net.TCPAddr).AddrPort(), Port: 80, Proto: "tcp"}}
	if g, err := NewGateway(newChannel(), o); err == nil {
		g.Close()
		t.Fatal("NewGateway with a taken publish port succeeded")
	}
}

func TestGoroutinesReturnAfterClose(t *testing.T) {
	l := hostServer(t, func(c net.Conn) { io.Copy(c, c) })
	s := udpEchoServer(t)
	runtime.GC()
	base := runtime.NumGoroutine()

	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	conns := make(chan *netConnCloser, 200)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := n.dial(ctx, gwAddr(tcpPort(l)))
			if err != nil {
				t.Errorf("dial %d: %v", i, err)
				return
			}
			if got, err := udpRoundTrip(c, "x", 10*time.Second); err != nil || got != "x" {
				t.Errorf("conn %d: %q, %v", i, got, err)
			}
			if i%2 == 0 {
				c.Close() // half of them end normally, half stay open for Close
			} else {
				conns <- &netConnCloser{c}
			}
		}()
	}
	wg.Wait()
	close(conns)
	for i := 0; i < 20; i++ {
		c := n.dialUDP(t, gwAddr(s.LocalAddr().(*net.UDPAddr).Port))
		if got, err := udpRoundTrip(c, "u", 5*time.Second); err != nil || got != "u" {
			t.Fatalf("udp %d: %q, %v", i, got, err)
		}
	}
	if f := n.gw.Flows(); f.TCP == 0 || f.UDP != 20 {
		t.Errorf("Flows() = %+v before Close", f)
	}
	n.gw.Close()
	n.gw.Close() // idempotent
	if f := n.gw.Flows(); f != (FlowCounts{}) {
		t.Errorf("Flows() = %+v after Close", f)
	}
	for c := range conns {
		c.Close()
	}
	n.close()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > base {
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines: %d after Close, baseline %d\n%s", got, base, buf[:runtime.Stack(buf, true)])
	}
}

type netConnCloser struct{ io.Closer }
