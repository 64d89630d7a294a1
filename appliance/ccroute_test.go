package appliance

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseCCRoute(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" = error
	}{
		{"192.0.2.0/24=bbr", "192.0.2.0/24=bbr"},
		{"192.0.2.7/24=reno", "192.0.2.0/24=reno"},
		{"::/0=cubic", "::/0=cubic"},
		{"192.0.2.0/24", ""},
		{"192.0.2.0/24=", ""},
		{"nonsense=bbr", ""},
	} {
		r, err := ParseCCRoute(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("ParseCCRoute(%q) = %v, want error", tc.in, r)
			}
			continue
		}
		if err != nil || r.String() != tc.want {
			t.Errorf("ParseCCRoute(%q) = %v, %v, want %s", tc.in, r, err, tc.want)
		}
	}
}

func TestCCForLongestPrefix(t *testing.T) {
	routes := []CCRoute{
		{netip.MustParsePrefix("0.0.0.0/0"), "reno"},
		{netip.MustParsePrefix("192.0.2.0/24"), "cubic"},
		{netip.MustParsePrefix("192.0.2.128/25"), "bbr"},
	}
	for _, tc := range []struct{ dst, want string }{
		{"192.0.2.200", "bbr"}, {"192.0.2.1", "cubic"}, {"198.51.100.1", "reno"}, {"2001:db8::1", ""},
		{"::ffff:192.0.2.200", "bbr"},
	} {
		if got := ccFor(routes, netip.MustParseAddr(tc.dst)); got != tc.want {
			t.Errorf("ccFor(%s) = %q, want %q", tc.dst, got, tc.want)
		}
	}
}

func TestCCRouteUnknownNameFailsNewGateway(t *testing.T) {
	opts := testOptions()
	opts.CCRoutes = []CCRoute{{netip.MustParsePrefix("127.0.0.0/8"), "vegas"}}
	_, err := NewGateway(newChannel(), opts)
	if err == nil || !strings.Contains(err.Error(), "vegas") || !strings.Contains(err.Error(), "reno cubic") {
		t.Fatalf("NewGateway with cc route vegas = %v, want an error naming it and the available ones", err)
	}
}

// TestCCRouteApplied: a connection to a destination with a cc route runs
// that algorithm; ss -i data (Sockets) names it and shows its window.
func TestCCRouteApplied(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.CCRoutes = []CCRoute{{netip.MustParsePrefix("127.0.0.0/8"), "reno"}}
	n := newTestNet(t, opts, true)
	hold := make(chan struct{})
	l := hostServer(t, func(c net.Conn) {
		c.Write(make([]byte, 256<<10))
		<-hold
	})
	defer close(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, s := range n.gw.Sockets() {
		if s.Proto != "tcp" || s.State != "ESTAB" {
			continue
		}
		found = true
		if s.CC != "reno" {
			t.Errorf("socket %s -> %s: cc %q, want reno (the route's)", s.Peer, s.Local, s.CC)
		}
		if s.Cwnd == 0 || s.MSS == 0 || s.Delivered == 0 || s.RTTus == 0 {
			t.Errorf("socket %+v: want cwnd, mss, delivered and rtt filled", s)
		}
	}
	if !found {
		t.Fatal("no established TCP socket")
	}
}
