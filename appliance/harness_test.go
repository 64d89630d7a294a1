package appliance

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
)

const testMTU = 65520

var (
	testV4, _ = NewLayout(netip.MustParsePrefix("10.0.2.0/24"))
	testV6, _ = NewLayout(netip.MustParsePrefix("fd00:0:0:2::/64"))
)

func quietLogger() *slog.Logger {
	if testing.Verbose() && os.Getenv("APPLIANCE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testNet is a gateway whose link is a channel endpoint wired to a fake
// container: a second netstack at .100 / ::100 with default routes.
type testNet struct {
	gw    *Gateway
	gwEP  *channel.Endpoint
	ctEP  *channel.Endpoint
	cs    *netstack.Stack
	stop  context.CancelFunc
	pumps sync.WaitGroup
	once  sync.Once
}

func testOptions() Options {
	return Options{IPv4: testV4, IPv6: testV6, Logger: quietLogger(), DialTimeout: 3 * time.Second}
}

// newTestNet builds the pair; pump false leaves the gateway's outbound
// channel for the test to read directly.
func newTestNet(t *testing.T, opts Options, pump bool) *testNet {
	t.Helper()
	return newTestNetMTU(t, opts, pump, testMTU)
}

// newTestNetMTU is newTestNet with a link MTU of its own.
func newTestNetMTU(t *testing.T, opts Options, pump bool, mtu uint32) *testNet {
	t.Helper()
	n := &testNet{
		gwEP: channel.New(4096, mtu, ""),
		ctEP: channel.New(4096, mtu, ""),
	}
	gw, err := NewGateway(n.gwEP, opts)
	if err != nil {
		t.Fatalf("NewGateway: %v", err)
	}
	n.gw = gw
	cs, err := netstack.New(netstack.Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	n.cs = cs
	if _, err := cs.AttachNIC(n.ctEP, netstack.NICOptions{
		Name:         "eth0",
		Addresses:    []tcpip.AddressWithPrefix{addrWithPrefix(testV4.Container, testV4.Prefix), addrWithPrefix(testV6.Container, testV6.Prefix)},
		DefaultRoute: true,
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	n.pumps.Add(1)
	go func() { defer n.pumps.Done(); pumpPackets(ctx, n.ctEP, n.gwEP) }()
	if pump {
		n.pumps.Add(1)
		go func() { defer n.pumps.Done(); pumpPackets(ctx, n.gwEP, n.ctEP) }()
	}
	t.Cleanup(n.close)
	return n
}

func (n *testNet) close() {
	n.once.Do(func() {
		n.gw.Close()
		n.stop()
		n.pumps.Wait()
		n.cs.Destroy()
	})
}

func newChannel() *channel.Endpoint { return channel.New(16, testMTU, "") }

// beforeInject and afterInject, when set, run on a pump before and after
// each packet it delivers, as the TUN reader's BeforeBatch and AfterBatch
// do (deferred TCP processing, LinkBatch).
var beforeInject, afterInject func()

func pumpPackets(ctx context.Context, from, to *channel.Endpoint) {
	before, after := beforeInject, afterInject
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		proto := pkt.NetworkProtocolNumber
		np := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: pkt.ToBuffer()})
		pkt.DecRef()
		if before != nil {
			before()
		}
		to.InjectInbound(proto, np)
		np.DecRef()
		if after != nil {
			after()
		}
	}
}

// dial connects from the container to addr.
func (n *testNet) dial(ctx context.Context, addr netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, n.cs.Stack, toFull(0, addr), netProto(addr.Addr()))
}

func (n *testNet) dialUDP(t *testing.T, addr netip.AddrPort) *gonet.UDPConn {
	t.Helper()
	ra := toFull(0, addr)
	c, err := gonet.DialUDP(n.cs.Stack, nil, &ra, netProto(addr.Addr()))
	if err != nil {
		t.Fatalf("container DialUDP %v: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// gwAddr is the gateway address at port, which AllowHostLoopback maps to
// the host's 127.0.0.1.
func gwAddr(port int) netip.AddrPort { return netip.AddrPortFrom(testV4.Gateway, uint16(port)) }

func tcpPort(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

// freePort returns a TCP port on 127.0.0.1 with nothing listening.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := tcpPort(l)
	l.Close()
	return p
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
