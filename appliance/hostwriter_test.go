package appliance

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHostWriter drives the up direction's writer with batches of views of
// the sizes netstack's Read hands it (gVisor patch 0044: all queued views
// in one WriteVec) against a host socket that fills up: every byte it
// reports taken must reach the host once, in order; a full socket stops
// it (blocked) with what it took counted, and a socket with no room at
// all makes it take nothing and report errHostFull.
func TestHostWriter(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
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
	sizes := []int{1, 1460, 100, 16 << 10, 64 << 10, 3000, 200 << 10, 10}
	pos, shorts, fulls := 0, 0, 0
	for round := 0; pos < len(data) && round < 10000; round++ {
		w := hostWriter{fd: fds[0]}
		// A batch of up to 5 views, as Read gathers them.
		var bufs [][]byte
		want := 0
		for i, at := 0, pos; i < 5 && at < len(data); i++ {
			sz := min(sizes[(round+i)%len(sizes)], len(data)-at)
			bufs = append(bufs, data[at:at+sz])
			at += sz
			want += sz
		}
		n, err := w.WriteVec(bufs)
		switch {
		case err != nil && !errors.Is(err, errHostFull):
			t.Fatalf("WriteVec: %v", err)
		case err != nil && n != 0:
			t.Fatalf("WriteVec = %d, %v: an error must come with nothing taken", n, err)
		case err != nil:
			fulls++
			if !w.blocked {
				t.Fatal("errHostFull without blocked")
			}
		case n < want:
			shorts++
			if !w.blocked {
				t.Fatalf("took %d of %d bytes and not blocked", n, want)
			}
		}
		if w.err != nil {
			t.Fatal(w.err)
		}
		if w.blocked {
			if n2, err2 := w.WriteVec(bufs); n2 != 0 || !errors.Is(err2, errHostFull) {
				t.Fatalf("a blocked writer took %d more (%v)", n2, err2)
			}
		}
		pos += n
		if round%3 == 0 {
			readAll() // the host reads now and then: the socket fills between
		}
	}
	readAll()
	if pos != len(data) || !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("host got %d of %d bytes (writer took %d), equal prefix %v", got.Len(), len(data), pos, bytes.HasPrefix(data, got.Bytes()))
	}
	if shorts == 0 || fulls == 0 {
		t.Fatalf("%d short writes and %d refusals: the test did not exercise a filling socket", shorts, fulls)
	}
}
