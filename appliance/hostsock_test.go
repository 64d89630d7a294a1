package appliance

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// relayedHostSocks returns the host sockets of g's relayed TCP
// connections.
func relayedHostSocks(g *Gateway) []*hostSock {
	g.mu.Lock()
	defer g.mu.Unlock()
	var hosts []*hostSock
	for f := range g.flows {
		if h, ok := f.host.(*hostSock); ok && f.proto == protoTCP {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// hostSocketOptions returns the keepalive and no-delay settings of every
// relayed TCP connection's host socket.
func hostSocketOptions(t *testing.T, g *Gateway) [][4]int {
	t.Helper()
	var out [][4]int
	for _, h := range relayedHostSocks(g) {
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

// fullListener is a loopback listener whose accept queue is full: a
// connect to it stays in progress (the kernel drops its SYN) until accept
// makes room and the SYN is sent again (after 1 s).
func fullListener(t *testing.T) (netip.AddrPort, func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil { // room for one
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	first, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Close() })
	accept := func() {
		nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { unix.Close(nfd) })
	}
	return addr, accept
}

// TestDialHostSockWaits: a host dial whose connect does not end within
// connect(2) waits for it in the gateway's epoll instance (served here by
// the host poller goroutine), and the socket it returns is connected, out
// of Go's netpoller and has the relay's options.
func TestDialHostSockWaits(t *testing.T) {
	opts := testOptions()
	opts.DialTimeout = 20 * time.Second
	n := newTestNet(t, opts, true)
	addr, accept := fullListener(t)
	type result struct {
		h   *hostSock
		err error
	}
	res := make(chan result, 1)
	go func() {
		h, err := n.gw.dialHostSock(addr)
		res <- result{h, err}
	}()
	waitFor(t, 5*time.Second, "the dial to wait", func() bool { return n.gw.Counters()["tcp_dials_waited"] == 1 })
	accept() // room: the SYN sent again completes the connect
	r := <-res
	if r.err != nil {
		t.Fatalf("dialHostSock: %v", r.err)
	}
	defer r.h.Close()
	if r.h.RemoteAddr().String() != addr.String() || r.h.LocalAddr().(*net.TCPAddr).Port == 0 {
		t.Errorf("addresses %v -> %v, want a bound local port -> %v", r.h.LocalAddr(), r.h.RemoteAddr(), addr)
	}
	var peerErr error
	r.h.rc.Control(func(fd uintptr) { _, peerErr = unix.Getpeername(int(fd)) })
	if peerErr != nil {
		t.Errorf("returned socket not connected: getpeername: %v", peerErr)
	}
	if err := r.h.f.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
		t.Errorf("the dialed socket takes deadlines (%v): it is in Go's netpoller", err)
	}
	n.gw.poller.mu.Lock()
	left := len(n.gw.poller.watchers)
	n.gw.poller.mu.Unlock()
	if left != 0 {
		t.Errorf("%d registrations left in the host poller after the dial", left)
	}
}

// TestDialHostSockFails: a refused dial and one that times out come back
// as errors naming the destination, leaving nothing in the host poller.
func TestDialHostSockFails(t *testing.T) {
	opts := testOptions()
	opts.DialTimeout = 300 * time.Millisecond
	n := newTestNet(t, opts, true)
	closed := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(freePort(t)))
	if _, err := n.gw.dialHostSock(closed); !errors.Is(err, unix.ECONNREFUSED) || !strings.Contains(err.Error(), closed.String()) {
		t.Errorf("dial to a closed port: %v, want connection refused naming %v", err, closed)
	}
	full, _ := fullListener(t)
	if _, err := n.gw.dialHostSock(full); !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), full.String()) {
		t.Errorf("dial that never completes: %v, want a timeout naming %v", err, full)
	}
	n.gw.poller.mu.Lock()
	left := len(n.gw.poller.watchers)
	n.gw.poller.mu.Unlock()
	if left != 0 {
		t.Errorf("%d registrations left in the host poller", left)
	}
}
