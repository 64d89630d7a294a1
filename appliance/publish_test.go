package appliance

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
)

func TestParsePublish(t *testing.T) {
	ap := func(a string, p uint16) netip.AddrPort {
		if a == "" {
			return netip.AddrPortFrom(netip.Addr{}, p)
		}
		return netip.AddrPortFrom(netip.MustParseAddr(a), p)
	}
	for _, tc := range []struct {
		in      string
		want    Publish
		wantErr string // substring naming the bad part
	}{
		{in: "8080:80", want: Publish{Host: ap("", 8080), Port: 80, Proto: "tcp"}},
		{in: "8080:80/tcp", want: Publish{Host: ap("", 8080), Port: 80, Proto: "tcp"}},
		{in: "5353:53/udp", want: Publish{Host: ap("", 5353), Port: 53, Proto: "udp"}},
		{in: "53:53/UDP", want: Publish{Host: ap("", 53), Port: 53, Proto: "udp"}},
		{in: "127.0.0.1:8080:80", want: Publish{Host: ap("127.0.0.1", 8080), Port: 80, Proto: "tcp"}},
		{in: "0.0.0.0:8080:80/udp", want: Publish{Host: ap("0.0.0.0", 8080), Port: 80, Proto: "udp"}},
		{in: "[::1]:8080:80", want: Publish{Host: ap("::1", 8080), Port: 80, Proto: "tcp"}},
		{in: "[::]:8080:80/udp", want: Publish{Host: ap("::", 8080), Port: 80, Proto: "udp"}},
		{in: "0:80", want: Publish{Host: ap("", 0), Port: 80, Proto: "tcp"}},
		{in: "8080:80/sctp", wantErr: `protocol "sctp"`},
		{in: "8080:80/", wantErr: `protocol ""`},
		{in: "80", wantErr: "want [IP:]HOSTPORT:PORT"},
		{in: "", wantErr: "want [IP:]HOSTPORT:PORT"},
		{in: "a:80", wantErr: `host port "a"`},
		{in: "70000:80", wantErr: `host port "70000"`},
		{in: "8080:0", wantErr: `container port "0"`},
		{in: "8080:http", wantErr: `container port "http"`},
		{in: "8080:", wantErr: `container port ""`},
		{in: "1.2.3:8080:80", wantErr: `host IP "1.2.3"`},
		{in: "::1:8080:80", wantErr: "brackets"},
		{in: "[::1:8080:80", wantErr: "missing ']'"},
		{in: "[1.2.3.4]:8080:80", wantErr: `host IP "1.2.3.4"`},
		{in: "[::1]8080:80", wantErr: "want [IP]:HOSTPORT:PORT"},
		{in: "[::1]:8080", wantErr: "want [IP]:HOSTPORT:PORT"},
		{in: "localhost:8080:80", wantErr: `host IP "localhost"`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePublish(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePublish(%q) = %+v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParsePublish(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"8080:80", "127.0.0.1:1:2/udp", "[::1]:3:4/tcp", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePublish(s)
		if err != nil {
			return
		}
		if p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
			t.Fatalf("parsePublish(%q) = %+v: invalid result", s, p)
		}
	})
}

// containerListen serves handle for each connection to the container's
// port on the fake container stack.
func containerListen(t *testing.T, n *testNet, port uint16, handle func(net.Conn)) {
	t.Helper()
	// Any address, IPv6 endpoint: dual-stack, like a container's [::]:port.
	l, err := gonet.ListenTCP(n.cs.Stack, tcpip.FullAddress{Port: port}, ipv6.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	t.Cleanup(func() { l.Close(); <-done })
}

func TestPublishTCP(t *testing.T) {
	opts := testOptions()
	opts.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 8080, Proto: "tcp"},
		{Host: netip.AddrPortFrom(netip.Addr{}, 0), Port: 8080, Proto: "tcp"}}
	n := newTestNet(t, opts, true)
	containerListen(t, n, 8080, func(c net.Conn) {
		// Tell the client who the container thinks it is talking to.
		io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String()+"\n")
		io.Copy(c, c)
	})
	addrs := n.gw.PublishAddrs()
	if len(addrs) != 2 {
		t.Fatalf("PublishAddrs = %v", addrs)
	}
	check := func(dialFrom, addr, wantSrc string) {
		t.Helper()
		d := net.Dialer{Timeout: 5 * time.Second}
		if dialFrom != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(dialFrom)}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		src, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read source: %v", err)
		}
		if src = strings.TrimSpace(src); src != wantSrc {
			t.Errorf("container sees client %s, want %s", src, wantSrc)
		}
		io.WriteString(c, "ping\n")
		if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
			t.Errorf("echo = %q, %v", line, err)
		}
	}
	check("", addrs[0].String(), "10.0.2.2")
	port := addrs[1].(*net.TCPAddr).Port
	if ext := externalAddr(); ext.IsValid() {
		// A non-loopback client keeps its address.
		check(ext.String(), netip.AddrPortFrom(ext, uint16(port)).String(), ext.String())
	} else {
		t.Log("no non-loopback IPv4 address: skipping the true-source check")
	}
	if ln6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln6.Close()
		// An IPv6 loopback client arrives from the v6 gateway.
		check("", netip.AddrPortFrom(netip.IPv6Loopback(), uint16(port)).String(), "fd00:0:0:2::2")
	}
	if got := n.gw.Counters()["publish_accepted"]; got == 0 {
		t.Error("publish_accepted = 0")
	}
}

// externalAddr is a non-loopback IPv4 address of this host, if any.
func externalAddr() netip.Addr {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

func TestPublishTCPClosedPort(t *testing.T) {
	opts := testOptions()
	opts.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 9999, Proto: "tcp"}}
	n := newTestNet(t, opts, true)
	// The RST can beat connect's completion check: either error will do.
	c, err := net.DialTimeout("tcp", n.gw.PublishAddrs()[0].String(), 5*time.Second)
	if err == nil {
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read from a publish to a closed container port succeeded")
		}
	}
	waitFor(t, 5*time.Second, "publish failure count", func() bool { return n.gw.Counters()["publish_failures"] == 1 })
}

func TestPublishUDP(t *testing.T) {
	opts := testOptions()
	opts.UDPIdleTimeout = 300 * time.Millisecond
	opts.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 5353, Proto: "udp"}}
	n := newTestNet(t, opts, true)
	la := toFull(0, netip.AddrPortFrom(testV4.Container, 5353))
	srv, err := gonet.DialUDP(n.cs.Stack, &la, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			k, from, err := srv.ReadFrom(b)
			if err != nil {
				return
			}
			// Answer with who we saw.
			srv.WriteTo([]byte(string(b[:k])+" from "+from.(*net.UDPAddr).IP.String()), from)
		}
	}()
	c, err := net.Dial("udp", n.gw.PublishAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 2; i++ {
		got, err := udpRoundTrip(c.(*net.UDPConn), "hi", 5*time.Second)
		if err != nil || got != "hi from 10.0.2.2" {
			t.Fatalf("publish udp round trip %d = %q, %v", i, got, err)
		}
	}
	if f := n.gw.Flows(); f.UDP != 1 {
		t.Errorf("Flows().UDP = %d, want 1", f.UDP)
	}
	waitFor(t, 5*time.Second, "publish flow idle expiry", func() bool { return n.gw.Flows().UDP == 0 })
	if got, err := udpRoundTrip(c.(*net.UDPConn), "again", 5*time.Second); err != nil || got != "again from 10.0.2.2" {
		t.Fatalf("after idle = %q, %v", got, err)
	}
}
