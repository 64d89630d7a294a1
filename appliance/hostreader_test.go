package appliance

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
)

// callLimit fails a reader read far more often than any Write needs: a
// loop that keeps reading after the reader ended (what gVisor's
// WriteFromReaderAndLimitedReader did before patch 0040) ends with this
// error instead of running forever.
type callLimit struct {
	r     io.Reader
	calls int
}

var errLooped = errors.New("read again and again after the reader ended")

func (c *callLimit) Read(p []byte) (int, error) {
	if c.calls++; c.calls > 1000 {
		return 0, errLooped
	}
	return c.r.Read(p)
}

// vecCallLimit is callLimit for a reader that also reads into several
// slices at once (buffer.VectorReader, as hostReader does), counting those
// calls.
type vecCallLimit struct {
	callLimit
	vecs int
}

func (c *vecCallLimit) ReadVec(bufs [][]byte) (int, error) {
	c.vecs++
	if c.calls++; c.calls > 1000 {
		return 0, errLooped
	}
	return c.r.(buffer.VectorReader).ReadVec(bufs)
}

// nonblockingPair is a socketpair whose first end is non-blocking, as a
// relayed host socket is.
func nonblockingPair(t *testing.T) [2]int {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	return fds
}

// TestHostReaderSmallMessage is what Endpoint.Write does with the down
// direction's hostReader when the socket holds a short request: the
// buffer takes exactly what was there, the write ends when the socket runs
// dry (patch 0040: before it, the loop appended empty views forever), and
// the bytes sit in a right-sized chunk, not a 64 KiB one.
func TestHostReaderSmallMessage(t *testing.T) {
	fds := nonblockingPair(t)
	msg := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, err := unix.Write(fds[1], msg); err != nil {
		t.Fatal(err)
	}
	hr := hostReader{fd: fds[0]}
	var b buffer.Buffer
	defer b.Release()
	n, err := b.WriteFromReaderAndLimitedReader(&callLimit{r: &hr}, hostReadMax, nil)
	if err != nil {
		t.Fatalf("WriteFromReaderAndLimitedReader: %v (gVisor patch 0040 missing?)", err)
	}
	if n != int64(len(msg)) || !bytes.Equal(b.Flatten(), msg) {
		t.Fatalf("took %d bytes %q, want %q", n, b.Flatten(), msg)
	}
	if !hr.drained || hr.eof || hr.err != nil {
		t.Fatalf("reader state drained=%v eof=%v err=%v, want only drained", hr.drained, hr.eof, hr.err)
	}
	views := b.AsViewList()
	if v := views.Front(); v == nil || v.AvailableSize() >= 4<<10 {
		t.Fatalf("a %d-byte message keeps a chunk with %d bytes free: want a right-sized copy", len(msg), v.AvailableSize())
	}
}

// TestHostReaderBulkAndEOF reads 3 MiB and then the peer's close through
// successive writes as pumpDown makes them: every byte arrives once, in
// order, no write takes more than hostReadMax, and EOF is seen after the
// last byte.
func TestHostReaderBulkAndEOF(t *testing.T) {
	for _, vec := range []bool{false, true} {
		t.Run(map[bool]string{false: "read", true: "readv"}[vec], func(t *testing.T) {
			testHostReaderBulkAndEOF(t, vec)
		})
	}
}

// testHostReaderBulkAndEOF reads with read(2) into one view at a time, or
// with vec through buffer.VectorReader, readv(2) into every view a write
// takes (gVisor patch 0043).
func testHostReaderBulkAndEOF(t *testing.T, vec bool) {
	fds := nonblockingPair(t)
	data := make([]byte, 3<<20)
	rand.Read(data)
	go func() {
		unix.Write(fds[1], data) // blocking end: returns once all is queued
		unix.Shutdown(fds[1], unix.SHUT_WR)
	}()
	var got bytes.Buffer
	for round := 0; round < 100000; round++ {
		hr := hostReader{fd: fds[0]}
		var b buffer.Buffer
		var r io.Reader = &callLimit{r: &hr}
		if vec {
			r = &vecCallLimit{callLimit: callLimit{r: &hr}}
		}
		n, err := b.WriteFromReaderAndLimitedReader(r, hostReadMax, nil)
		if err != nil {
			t.Fatal(err)
		}
		if vr, ok := r.(*vecCallLimit); ok && vr.vecs != vr.calls {
			t.Fatalf("%d reads of one view besides %d readv: want readv alone", vr.calls-vr.vecs, vr.vecs)
		}
		if n > hostReadMax || n != b.Size() {
			t.Fatalf("one write took %d bytes (buffer %d), want at most %d", n, b.Size(), hostReadMax)
		}
		got.Write(b.Flatten())
		b.Release()
		if hr.err != nil {
			t.Fatal(hr.err)
		}
		if hr.eof {
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("got %d bytes, want the %d sent, in order", got.Len(), len(data))
			}
			return
		}
		if hr.drained {
			// The edge-triggered poller would report the next arrival;
			// here, wait for it.
			pfd := []unix.PollFd{{Fd: int32(fds[0]), Events: unix.POLLIN}}
			unix.Poll(pfd, 1000)
		}
	}
	t.Fatalf("no EOF after %d of %d bytes", got.Len(), len(data))
}

// TestHostReaderShortDry: with shortDry (an edge-triggered event that
// reported data only) a read shorter than asked counts as the socket
// running dry, and the reader makes no further read(2); without it, the
// reader reads on, here into the peer's close.
func TestHostReaderShortDry(t *testing.T) {
	for _, shortDry := range []bool{true, false} {
		fds := nonblockingPair(t)
		if _, err := unix.Write(fds[1], []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
		if err := unix.Shutdown(fds[1], unix.SHUT_WR); err != nil {
			t.Fatal(err)
		}
		hr := hostReader{fd: fds[0], shortDry: shortDry}
		p := make([]byte, 100)
		if n, err := hr.Read(p); n != 10 || err != nil {
			t.Fatalf("shortDry=%v: first read %d, %v; want 10, nil", shortDry, n, err)
		}
		if hr.drained != shortDry {
			t.Fatalf("shortDry=%v: drained=%v after a short read", shortDry, hr.drained)
		}
		if n, err := hr.Read(p); n != 0 || err != io.EOF {
			t.Fatalf("shortDry=%v: second read %d, %v; want 0, io.EOF", shortDry, n, err)
		}
		// Only a second read(2) sees the peer's close.
		if hr.eof == shortDry {
			t.Errorf("shortDry=%v: eof=%v: want a read(2) after the short one only without shortDry", shortDry, hr.eof)
		}
	}
}

// TestHostReaderVectored: a write that takes more than one 64 KiB view
// reads the host socket once, with readv(2) into all the views it needs
// (gVisor patch 0043, buffer.VectorReader), where read(2) took one call per
// view and the socket sent its peer an ACK after each. The views a short
// read leaves empty are not kept, and a short read with shortDry ends the
// write with no read returning EAGAIN.
func TestHostReaderVectored(t *testing.T) {
	for _, size := range []int{100 << 10, 150<<10 + 7} {
		fds := nonblockingPair(t)
		if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, size)
		rand.Read(data)
		if n, err := unix.Write(fds[1], data); n != size || err != nil {
			t.Fatalf("queued %d of %d bytes: %v", n, size, err)
		}
		hr := hostReader{fd: fds[0], shortDry: true}
		r := &vecCallLimit{callLimit: callLimit{r: &hr}}
		var b buffer.Buffer
		n, err := b.WriteFromReaderAndLimitedReader(r, hostReadMax, nil)
		if err != nil {
			t.Fatalf("WriteFromReaderAndLimitedReader: %v", err)
		}
		if r.vecs != 1 || r.calls != 1 {
			t.Errorf("%d bytes: %d readv and %d read calls, want one readv (gVisor patch 0043 missing?)", size, r.vecs, r.calls-r.vecs)
		}
		if n != int64(size) || !bytes.Equal(b.Flatten(), data) {
			t.Fatalf("took %d bytes, want the %d queued, in order", n, size)
		}
		if !hr.drained || hr.eof || hr.err != nil {
			t.Errorf("reader state drained=%v eof=%v err=%v, want only drained", hr.drained, hr.eof, hr.err)
		}
		views := b.AsViewList()
		nv, want := 0, (size+buffer.MaxChunkSize-1)/buffer.MaxChunkSize
		for v := views.Front(); v != nil; v = v.Next() {
			nv++
		}
		if nv != want {
			t.Errorf("%d bytes kept in %d views, want %d", size, nv, want)
		}
		b.Release()
	}
}
