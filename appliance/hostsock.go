package appliance

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsappliance/appliance/internal/unpolled"
)

// hostSock is a relayed connection's host socket, taken out of Go's
// netpoller. The relay waits for it in the gateway's own epoll instance
// (hostPoller); left in the netpoller as well, every edge of it (each
// burst of data, each window opening) would also wake a thread parked in
// the runtime's epoll_wait for nothing.
type hostSock struct {
	f             *os.File
	rc            syscall.RawConn
	local, remote net.Addr
}

// detachHost moves c's socket out of the netpoller: a duplicate descriptor
// outside it takes over, and c is closed (the socket stays open through
// the duplicate). On error c is aborted.
func detachHost(c *net.TCPConn) (*hostSock, error) {
	h := &hostSock{local: c.LocalAddr(), remote: c.RemoteAddr()}
	rc, err := c.SyscallConn()
	if err != nil {
		abortHost(c)
		return nil, err
	}
	fd, err := unpolled.Dup(rc)
	if err != nil {
		abortHost(c)
		return nil, err
	}
	c.Close()
	if h.f, err = unpolled.File(fd, "tcp "+h.remote.String()); err != nil {
		return nil, err
	}
	if h.rc, err = h.f.SyscallConn(); err != nil {
		h.abort()
		return nil, err
	}
	return h, nil
}

// LocalAddr and RemoteAddr are the socket's addresses (for Sockets).
func (h *hostSock) LocalAddr() net.Addr  { return h.local }
func (h *hostSock) RemoteAddr() net.Addr { return h.remote }

// CloseWrite sends FIN: shutdown(SHUT_WR).
func (h *hostSock) CloseWrite() error {
	var err error
	if cerr := h.rc.Control(func(fd uintptr) { err = unix.Shutdown(int(fd), unix.SHUT_WR) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// Close closes the socket normally.
func (h *hostSock) Close() error { return h.f.Close() }

// abort closes the socket with a RST (SO_LINGER 0), as abortHost does.
func (h *hostSock) abort() {
	_ = h.rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	})
	h.f.Close()
}

// dialHostSock connects to dst from a socket that never enters Go's
// netpoller, with the keepalive and no-delay options relayed sockets have.
// On a host path the connect often completes within the connect(2) call
// (the destination is local, or the SYN-ACK came back during it), and the
// socket is then ready at once: no goroutine parks and no thread is woken
// for it. Otherwise the gateway's epoll instance reports the end of the
// connect (connectWait), within opts.DialTimeout.
//
// Dialing through net.Dialer and then leaving the netpoller (detachHost)
// cost two epoll_ctl calls, a netpoller wake-up, a dup and five fcntl
// calls per connection. Addresses with a zone go that way still.
func (g *Gateway) dialHostSock(dst netip.AddrPort) (*hostSock, error) {
	if dst.Addr().Zone() != "" {
		c, err := g.dialHost(dst)
		if err != nil {
			return nil, err
		}
		return detachHost(c)
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	var sa unix.Sockaddr
	family := unix.AF_INET
	if dst.Addr().Is4() {
		sa = &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(dst.Port()), Addr: dst.Addr().As16()}
	}
	f, fd, err := unpolled.Socket(family, unix.SOCK_STREAM, unix.IPPROTO_TCP, "tcp "+dst.String())
	if err != nil {
		return nil, err
	}
	h := &hostSock{f: f, remote: net.TCPAddrFromAddrPort(dst)}
	fail := func(op string, err error) (*hostSock, error) {
		h.f.Close()
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: h.remote, Err: os.NewSyscallError(op, err)}
	}
	if h.rc, err = h.f.SyscallConn(); err != nil {
		h.f.Close()
		return nil, err
	}
	for _, o := range [...]struct{ level, opt, v int }{
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(keepIdle / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(keepInterval / time.Second)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepCount},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return fail("setsockopt", err)
		}
	}
	switch err := unix.Connect(fd, sa); err {
	case nil:
	case unix.EINPROGRESS, unix.EINTR, unix.EAGAIN:
		if err := g.connectWait(h, fd); err != nil {
			if errno, ok := err.(unix.Errno); ok {
				return fail("connect", errno)
			}
			h.f.Close()
			return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: h.remote, Err: err}
		}
	default:
		return fail("connect", err)
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	h.local = sockaddrTCP(local)
	return h, nil
}

// connectWait waits for fd's connect to end and returns its outcome (an
// errno from SO_ERROR, or a timeout or cancellation).
func (g *Gateway) connectWait(h *hostSock, fd int) error {
	done := func() (bool, error) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(pfd, 0); n <= 0 {
			return false, nil
		}
		soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return true, err
		}
		if soerr != 0 {
			return true, unix.Errno(soerr)
		}
		return true, nil
	}
	if ok, err := done(); ok {
		return err
	}
	g.c.tcpDialWaited.Add(1)
	w := &connectWaiter{ready: make(chan struct{}, 1)}
	id, err := g.hostPoller().watch(h.rc, w, unix.EPOLLOUT|unix.EPOLLET)
	if err != nil {
		return err
	}
	defer g.hostPoller().unwatch(h.rc, id)
	timeout := time.NewTimer(g.opts.DialTimeout)
	defer timeout.Stop()
	for {
		// The connect may have ended between the first look and watch.
		if ok, err := done(); ok {
			return err
		}
		select {
		case <-w.ready:
		case <-timeout.C:
			return os.ErrDeadlineExceeded
		case <-g.ctx.Done():
			return g.ctx.Err()
		}
	}
}

// connectWaiter is a dial waiting in the host poller for its connect.
type connectWaiter struct{ ready chan struct{} }

func (w *connectWaiter) hostEvent(uint32) {
	select {
	case w.ready <- struct{}{}:
	default:
	}
}

// sockaddrTCP converts a socket address to a *net.TCPAddr.
func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return &net.TCPAddr{}
}
