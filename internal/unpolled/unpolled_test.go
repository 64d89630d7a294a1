package unpolled

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func nonblocking(t *testing.T, fd int) bool {
	t.Helper()
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return fl&unix.O_NONBLOCK != 0
}

// TestFile: a non-blocking descriptor wrapped by File stays non-blocking
// and is not in the netpoller (a polled file takes deadlines; an unpolled
// one answers os.ErrNoDeadline), where os.NewFile would have put it there.
func TestFile(t *testing.T) {
	fds := make([]int, 2)
	if err := unix.Pipe2(fds, unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	polled := os.NewFile(uintptr(fds[1]), "polled")
	defer polled.Close()
	if err := polled.SetDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("os.NewFile of a non-blocking pipe: deadline: %v (the check below would prove nothing)", err)
	}

	f, err := File(fds[0], "pipe")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
		t.Fatalf("deadline on an unpolled file: %v, want os.ErrNoDeadline", err)
	}
	if !nonblocking(t, fds[0]) {
		t.Fatal("File left the descriptor blocking")
	}
	// The raw read runs once and reports EAGAIN instead of waiting.
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		_, rerr = unix.Read(int(fd), make([]byte, 1))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if rerr != unix.EAGAIN {
		t.Fatalf("read of an empty pipe: %v, want EAGAIN", rerr)
	}
}

// TestDup: the duplicate outlives the original and refers to the same
// pipe.
func TestDup(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	w := os.NewFile(uintptr(p[1]), "w")
	r := os.NewFile(uintptr(p[0]), "r")
	defer r.Close()
	rc, err := w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := Dup(rc)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	f, err := File(fd, "dup")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatalf("write through the duplicate after closing the original: %v", err)
	}
	b := make([]byte, 1)
	if n, err := r.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("read %d %q %v, want x", n, b[:n], err)
	}
}

// TestSocket: a socket from Socket is non-blocking and not in the
// netpoller (an unpolled file answers os.ErrNoDeadline).
func TestSocket(t *testing.T) {
	f, fd, err := Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, "tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
		t.Fatalf("deadline on the socket's file: %v, want os.ErrNoDeadline (it is in Go's netpoller)", err)
	}
	if !nonblocking(t, fd) {
		t.Fatal("Socket left the descriptor blocking")
	}
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Fatalf("F_GETFD = %#x, %v: want close-on-exec", fl, err)
	}
}

// TestRawReadWrite: Writev and Readv (with one slice, as read(2) and
// write(2); with several) move bytes as writev(2) and readv(2) do, and report EAGAIN from an empty non-blocking socket as
// an error, not as a count.
func TestRawReadWrite(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if n, err := Readv(fds[0], [][]byte{make([]byte, 4)}); n != 0 || err != unix.EAGAIN {
		t.Fatalf("Read of an empty socket: %d, %v; want 0, EAGAIN", n, err)
	}
	if n, err := Writev(fds[1], [][]byte{[]byte("0123456789")}); n != 10 || err != nil {
		t.Fatalf("Write: %d, %v", n, err)
	}
	a, b := make([]byte, 4), make([]byte, 4)
	if n, err := Readv(fds[0], [][]byte{a, nil, b}); n != 8 || err != nil {
		t.Fatalf("Readv: %d, %v; want 8", n, err)
	}
	c := make([]byte, 8)
	if n, err := Readv(fds[0], [][]byte{c}); n != 2 || err != nil {
		t.Fatalf("Read: %d, %v; want 2", n, err)
	}
	if got := string(a) + string(b) + string(c[:2]); got != "0123456789" {
		t.Fatalf("read %q, want the bytes written, in order", got)
	}
	if n, err := Writev(fds[1], [][]byte{[]byte("ab"), nil, []byte("cde")}); n != 5 || err != nil {
		t.Fatalf("Writev: %d, %v; want 5", n, err)
	}
	if n, err := Readv(fds[0], [][]byte{c}); n != 5 || err != nil || string(c[:5]) != "abcde" {
		t.Fatalf("Read after Writev: %q, %v; want \"abcde\"", c[:n], err)
	}
	if n, err := Readv(fds[0], [][]byte{a}); n != 0 || err != unix.EAGAIN {
		t.Fatalf("Readv of an empty socket: %d, %v; want 0, EAGAIN", n, err)
	}
}
