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
	"unsafe"

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

// MaxIovecs is the most slices one Readv or Writev takes.
const MaxIovecs = 64

// Readv is readv(2) on a non-blocking descriptor as a raw system call,
// into at most 64 slices (the rest are left alone): the calling goroutine
// keeps its P through the call. unix.Readv enters the scheduler's syscall
// state, and a call that outlasts a sysmon tick (20 µs when busy: a 64 KiB
// read from a TCP socket runs the ACK it sends, and on loopback the peer's
// transmit, in the same call) has its P taken and handed to another
// thread, which costs a wake-up there and a wait for a P on the way back.
// Only for descriptors that never block.
func Readv(fd int, bufs [][]byte) (int, error) { return rawIOv(unix.SYS_READV, fd, bufs) }

// Writev is writev(2) on a non-blocking descriptor as a raw system call,
// as Readv, from at most 64 slices (the rest are left alone).
func Writev(fd int, bufs [][]byte) (int, error) { return rawIOv(unix.SYS_WRITEV, fd, bufs) }

func rawIOv(trap uintptr, fd int, bufs [][]byte) (int, error) {
	var iov [MaxIovecs]unix.Iovec
	n := 0
	for _, b := range bufs {
		if n == MaxIovecs {
			break
		}
		if len(b) == 0 {
			continue
		}
		iov[n].Base = &b[0]
		iov[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return 0, nil
	}
	return IovecIO(trap, fd, iov[:n])
}

// IovecIO is readv(2) or writev(2) (trap) of iov on a non-blocking
// descriptor as a raw system call, as Readv: the TUN's reads and writes
// (a TUN write runs the receiving kernel's protocol work, tens of
// microseconds at most) and Readv and Writev use it. An empty iov is
// EINVAL.
func IovecIO(trap uintptr, fd int, iov []unix.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, unix.EINVAL
	}
	r, _, errno := unix.RawSyscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}
