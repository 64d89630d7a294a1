package appliance

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHostWriter drives the up direction's writer with views of the sizes
// netstack's Read hands it against a host socket that fills up: every byte
// it reports taken must reach the host once, in order; small views are
// gathered (one write), large ones written as they are; a full socket stops
// it without losing what it already took.
func TestHostWriter(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	_ = unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 64<<10)

	data := make([]byte, 8<<20)
	rand.Read(data)
	var got bytes.Buffer
	readAll := func() {
		buf := make([]byte, 1<<20)
		for {
			n, err := unix.Read(fds[1], buf)
			if n <= 0 || err != nil {
				return
			}
			got.Write(buf[:n])
		}
	}
	if err := unix.SetNonblock(fds[1], true); err != nil {
		t.Fatal(err)
	}
	sizes := []int{1, 1460, 100, directMin, 64 << 10, 3000, 200 << 10, 10}
	pos, fulls := 0, 0
	var pending []byte // what a relay would keep as d.pending
	for round := 0; pos < len(data) && round < 10000; round++ {
		w := hostWriter{fd: fds[0]}
		if len(pending) > 0 {
			// The relay writes pending data before reading more.
			if n, _ := unix.Write(fds[0], pending); n > 0 {
				pending = pending[n:]
			}
		}
		for i := 0; len(pending) == 0 && pos < len(data); i++ {
			sz := min(sizes[(round+i)%len(sizes)], len(data)-pos)
			n, err := w.Write(data[pos : pos+sz])
			if n < 0 || n > sz || (n < sz && err == nil) {
				t.Fatalf("Write(%d bytes) = %d, %v: a short write must report an error", sz, n, err)
			}
			if sz >= directMin && w.n > w.off {
				t.Fatalf("a %d-byte view was gathered: large views go to the socket as they are", sz)
			}
			pos += n
			if err != nil {
				if !errors.Is(err, errHostFull) && !errors.Is(err, io.ErrShortWrite) {
					t.Fatalf("Write: %v", err)
				}
				fulls++
				break
			}
		}
		w.flush()
		if w.err != nil {
			t.Fatal(w.err)
		}
		if w.off < w.n {
			pending = append(pending, (*w.stage)[w.off:w.n]...)
		}
		w.release()
		readAll()
	}
	for i := 0; len(pending) > 0 && i < 1000; i++ {
		n, _ := unix.Write(fds[0], pending)
		if n > 0 {
			pending = pending[n:]
		}
		readAll()
	}
	readAll()
	if pos != len(data) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("host got %d of %d bytes (writer took %d), equal prefix %v", got.Len(), len(data), pos, bytes.HasPrefix(data, got.Bytes()))
	}
	if fulls == 0 {
		t.Fatal("the socket never filled: the test did not exercise a full host socket")
	}
}
