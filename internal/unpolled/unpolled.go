// Package unpolled wraps descriptors that the appliance waits on itself
// (TUN devices in the reader's ppoll, host sockets in the gateway's epoll
// instance) in an *os.File that Go's netpoller does not watch.
//
// os.NewFile registers a non-blocking descriptor with the runtime's epoll
// instance (edge-triggered). Nothing waits there for these descriptors,
// but every edge still wakes a thread parked in the runtime's epoll_wait,
// which finds no goroutine to run and parks again: measured in router mode,
// one epoll_wait per TUN read, about a fifth of the appliance's CPU.
package unpolled

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// File returns fd as an *os.File outside Go's netpoller, with fd left
// non-blocking. It owns fd: on error fd is closed. The file's
// SyscallConn works as usual (its Read and Write callbacks run once, with
// no waiting: callers handle EAGAIN themselves); deadlines are not
// supported.
func File(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: blocking mode: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name) // blocking: not registered
	if err := unix.SetNonblock(fd, true); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: non-blocking mode: %w", name, err)
	}
	return f, nil
}

// Dup returns a duplicate of the descriptor behind rc (close-on-exec), for
// a descriptor that must leave the netpoller: closing the original (through
// its own *os.File or net.Conn) removes it there, and the duplicate keeps
// the open file alive.
func Dup(rc interface{ Control(func(uintptr)) error }) (int, error) {
	fd := -1
	var derr error
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, fmt.Errorf("dup: %w", derr)
	}
	return fd, nil
}

// Socket makes a socket (close-on-exec) as an *os.File outside Go's
// netpoller, non-blocking, and returns its descriptor too (the file owns
// it). It costs two fcntl calls where socket + File cost four: the socket
// is made blocking, so that os.NewFile leaves it alone, and a new socket's
// file flags are O_RDWR alone, so one F_SETFL makes it non-blocking.
func Socket(domain, typ, proto int, name string) (*os.File, int, error) {
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, -1, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), name) // blocking: not registered
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, unix.O_RDWR|unix.O_NONBLOCK); err != nil {
		f.Close()
		return nil, -1, fmt.Errorf("%s: non-blocking mode: %w", name, err)
	}
	return f, fd, nil
}
