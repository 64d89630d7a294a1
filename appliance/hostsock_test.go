package appliance

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostSocketOptions returns the keepalive and no-delay settings of every
// relayed TCP connection's host socket.
func hostSocketOptions(t *testing.T, g *Gateway) [][4]int {
	t.Helper()
	g.mu.Lock()
	var hosts []*hostSock
	for f := range g.flows {
		if h, ok := f.host.(*hostSock); ok && f.proto == protoTCP {
			hosts = append(hosts, h)
		}
	}
	g.mu.Unlock()
	var out [][4]int
	for _, h := range hosts {
		if err := h.f.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
			t.Errorf("host socket %v takes deadlines (%v): it is in Go's netpoller", h.remote, err)
		}
		var v [4]int
		var err, gerr error
		h.rc.Control(func(fd uintptr) {
			for i, o := range [][2]int{{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}, {unix.IPPROTO_TCP, unix.TCP_NODELAY}} {
				if v[i], err = unix.GetsockoptInt(int(fd), o[0], o[1]); err != nil {
					gerr = err
				}
			}
		})
		if gerr != nil {
			t.Fatal(gerr)
		}
		out = append(out, v)
	}
	return out
}

// TestHostSocketOptions: the host socket of a relayed connection, dialed
// for the container or accepted for a published port, has the relay's
// keepalive and TCP_NODELAY (set once, at dial or accept).
func TestHostSocketOptions(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 8080, Proto: "tcp"}}
	n := newTestNet(t, opts, true)
	defer n.close()
	want := [4]int{1, int(keepIdle / time.Second), int(keepInterval / time.Second), 1}
	check := func(what string) {
		t.Helper()
		var got [][4]int
		waitFor(t, 5*time.Second, what+": one relayed connection", func() bool {
			got = hostSocketOptions(t, n.gw)
			return len(got) == 1
		})
		if got[0] != want {
			t.Fatalf("%s: host socket keepalive, idle, interval, nodelay = %v, want %v", what, got[0], want)
		}
	}

	l := hostServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	check("dialed")
	c.Close()
	waitFor(t, 10*time.Second, "the dialed relay to end", func() bool { return len(hostSocketOptions(t, n.gw)) == 0 })

	containerListen(t, n, 8080, func(c net.Conn) { io.Copy(io.Discard, c) })
	pc, err := net.DialTimeout("tcp", n.gw.PublishAddrs()[0].String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial published port: %v", err)
	}
	defer pc.Close()
	check("published")
}
