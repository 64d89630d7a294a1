package appliance

import (
	"fmt"
	"net"
	"os"
	"syscall"

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
