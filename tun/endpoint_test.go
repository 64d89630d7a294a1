package tun

import (
	"bytes"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
)

// fakeDevice stands in for a TUN fd: a SOCK_SEQPACKET socket pair keeps
// packet boundaries as TUN does. The test holds the other end.
func fakeDevice(t *testing.T, vnet bool) (*Device, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[1]) })
	d := &Device{File: os.NewFile(uintptr(fds[0]), "fake"), Name: "fake0", MTU: 1500, VnetHdr: vnet}
	if vnet {
		d.Offloads = tunFCsum | tunFTSO4 | tunFTSO6
	}
	return d, fds[1]
}

func echoRequest(seq uint16) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+4)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 100}), DstAddr: tcpip.AddrFrom4([4]byte{10, 0, 2, 2})})
	ip.SetChecksum(^ip.CalculateChecksum())
	ic := header.ICMPv4(b[header.IPv4MinimumSize:])
	ic.SetType(header.ICMPv4Echo)
	ic.SetIdent(42)
	ic.SetSequence(seq)
	copy(ic.Payload(), "ping")
	ic.SetChecksum(0)
	ic.SetChecksum(header.ICMPv4Checksum(ic, 0))
	return b
}

func newTestStack(t *testing.T, dev *Device) (*netstack.Stack, *Endpoint) {
	t.Helper()
	return newTestStackOpts(t, dev, EndpointOptions{})
}

func newTestStackOpts(t *testing.T, dev *Device, opts EndpointOptions) (*netstack.Stack, *Endpoint) {
	t.Helper()
	ep, err := NewEndpoint(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := netstack.New(netstack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	addr := tcpip.AddrFrom4([4]byte{10, 0, 2, 2}).WithPrefix()
	addr.PrefixLen = 24
	if _, err := s.AttachNIC(ep, netstack.NICOptions{Name: "fake0", Addresses: []tcpip.AddressWithPrefix{addr}, DefaultRoute: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); s.Wait() })
	return s, ep
}

func readPacket(t *testing.T, fd int) []byte {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n == 0 {
		t.Fatalf("no packet from the endpoint within 5s (%v)", err)
	}
	b := make([]byte, 70000)
	n, err := unix.Read(fd, b)
	if err != nil {
		t.Fatal(err)
	}
	return b[:n]
}

func TestEndpointEchoThroughStack(t *testing.T) {
	for _, vnet := range []bool{true, false} {
		t.Run(map[bool]string{true: "vnet", false: "plain"}[vnet], func(t *testing.T) {
			dev, peer := fakeDevice(t, vnet)
			_, ep := newTestStack(t, dev)
			// Garbage first: it must be counted and dropped, not crash.
			garbage := [][]byte{{1, 2, 3}, make([]byte, vnetHdrLen), {0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x45, 0}}
			for _, g := range garbage {
				if _, err := unix.Write(peer, g); err != nil {
					t.Fatal(err)
				}
			}
			req := echoRequest(1)
			if vnet {
				req = append(make([]byte, vnetHdrLen), req...)
			}
			if _, err := unix.Write(peer, req); err != nil {
				t.Fatal(err)
			}
			got := readPacket(t, peer)
			if vnet {
				var h vnetHdr
				if err := h.decode(got); err != nil || h.gsoType != vnetGSONone {
					t.Fatalf("reply vnet header %+v, %v", h, err)
				}
				got = got[vnetHdrLen:]
			}
			ip := header.IPv4(got)
			if !ip.IsValid(len(got)) || ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
				t.Fatalf("reply is not an ICMPv4 packet: % x", got)
			}
			ic := header.ICMPv4(ip.Payload())
			if ic.Type() != header.ICMPv4EchoReply || ic.Ident() != 42 || ic.Sequence() != 1 || string(ic.Payload()) != "ping" {
				t.Fatalf("reply type %d id %d seq %d payload %q", ic.Type(), ic.Ident(), ic.Sequence(), ic.Payload())
			}
			if e := ep.Stats().RxErrors.Load(); e == 0 {
				t.Errorf("RxErrors = 0 after garbage, want > 0")
			}
		})
	}
}

func TestEndpointPeerGone(t *testing.T) {
	dev, peer := fakeDevice(t, true)
	_, ep := newTestStack(t, dev)
	unix.Close(peer)
	select {
	case <-ep.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("reader did not stop after the device went away")
	}
	if ep.Err() == nil {
		t.Fatal("Err() = nil after the device went away")
	}
}

func TestNewEndpointRejects(t *testing.T) {
	if _, err := NewEndpoint(nil, EndpointOptions{}); err == nil {
		t.Error("NewEndpoint(nil): want error")
	}
	dev, _ := fakeDevice(t, false)
	if _, err := NewEndpoint(dev, EndpointOptions{Budget: -1}); err == nil {
		t.Error("NewEndpoint(budget -1): want error")
	}
	if _, err := NewEndpoint(dev, EndpointOptions{HeldWait: -time.Millisecond}); err == nil {
		t.Error("NewEndpoint accepted a negative HeldWait")
	}
	dev.File.Close()
}

// TestAppendIovecs checks that a packet's iovecs cover exactly its bytes
// from the first header on: the reserved headroom before the header is left
// out, and a payload of several views gives one iovec per view.
func TestAppendIovecs(t *testing.T) {
	var payload buffer.Buffer
	payload.Append(buffer.NewViewWithData([]byte("first view|")))
	payload.Append(buffer.NewViewWithData([]byte("second view")))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: 64,
		Payload:            payload,
	})
	defer pkt.DecRef()
	copy(pkt.NetworkHeader().Push(20), "0123456789abcdefghij")

	var want []byte
	for _, s := range pkt.AsSlices() {
		want = append(want, s...)
	}
	iov := appendIovecs(nil, pkt)
	var got []byte
	for _, v := range iov {
		got = append(got, unsafe.Slice(v.Base, v.Len)...)
	}
	if string(got) != string(want) || len(got) != pkt.Size() {
		t.Fatalf("iovecs carry %q (%d bytes), want %q (%d bytes)", got, len(got), want, pkt.Size())
	}
	if len(iov) < 2 {
		t.Fatalf("got %d iovecs, want one per view (at least 2)", len(iov))
	}
}

// dirtyPool returns chunks of size filled with 0xAA to the buffer pools,
// so a view that is handed out uncleared shows them.
func dirtyPool(size int) {
	for range 8 {
		v := buffer.NewViewSize(size)
		b := v.AsSlice()
		for i := range b {
			b[i] = 0xAA
		}
		v.Release()
	}
}

// TestUnclearedViews covers gVisor patch 0034: the views a copy or a read
// fills are not cleared first, and never expose a byte nobody wrote.
func TestUnclearedViews(t *testing.T) {
	// A read buffer: NewViewSizeUninit, cut to what was "read".
	stale := false
	for i := 0; i < 100 && !stale; i++ { // sync.Pool may drop items (-race)
		dirtyPool(maxPacket)
		v := buffer.NewViewSizeUninit(maxPacket)
		if v.Size() != maxPacket {
			t.Fatalf("NewViewSizeUninit(%d).Size() = %d", maxPacket, v.Size())
		}
		stale = v.AsSlice()[maxPacket-1] == 0xAA
		copy(v.AsSlice(), "packet")
		v.CapLength(6)
		if string(v.AsSlice()) != "packet" {
			t.Fatalf("cut view holds %q", v.AsSlice())
		}
		v.Release()
	}
	if !stale {
		t.Error("NewViewSizeUninit never returned a pooled chunk uncleared: the clear is still there")
	}

	// TCP's payload: WriteFromReaderAndLimitedReader holds exactly what
	// it copied, whatever the pool held.
	for _, size := range []int{100, maxPacket + 7, 3*maxPacket + 1} {
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(i % 251)
		}
		dirtyPool(maxPacket)
		var b buffer.Buffer
		n, err := b.WriteFromReaderAndLimitedReader(bytes.NewReader(want), int64(size), nil)
		if err != nil || n != int64(size) || int(b.Size()) != size {
			t.Fatalf("size %d: wrote %d, %v; buffer holds %d", size, n, err, b.Size())
		}
		if got := b.Flatten(); !bytes.Equal(got, want) {
			t.Fatalf("size %d: buffer differs from what was copied", size)
		}
		b.Release()
	}
	// And its views are not cleared first: growing one (which nothing
	// does to them) shows the pool's bytes.
	stale = false
	for i := 0; i < 100 && !stale; i++ {
		dirtyPool(1024)
		var b buffer.Buffer
		// 1000 bytes in a 1 KiB chunk from the pool dirtyPool filled.
		if _, err := b.WriteFromReaderAndLimitedReader(bytes.NewReader(make([]byte, 1000)), 1000, nil); err != nil {
			t.Fatal(err)
		}
		vl := b.AsViewList()
		v := vl.Back()
		v.Grow(1)
		stale = v.AsSlice()[1000] == 0xAA
		b.Release()
	}
	if !stale {
		t.Error("WriteFromReaderAndLimitedReader's views are still cleared before the copy")
	}
}

// pollSource is a PollSource: an epoll instance with one pipe registered
// (edge-triggered, as the gateway registers its host sockets), whose
// events Dispatch counts. It notes any event the reader should have kept.
type pollSource struct {
	epfd, r, w int
	got        chan uint32
	foreign    atomic.Int32
}

func newPollSource(t *testing.T) *pollSource {
	t.Helper()
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	s := &pollSource{epfd: epfd, r: p[0], w: p[1], got: make(chan uint32, 16)}
	t.Cleanup(func() { unix.Close(s.epfd); unix.Close(s.r); unix.Close(s.w) })
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: 7}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, s.r, &ev); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *pollSource) PollFD() int { return s.epfd }

func (s *pollSource) Dispatch(events []unix.EpollEvent) {
	for _, ev := range events {
		if ev.Fd != 7 || ev.Pad != 0 {
			s.foreign.Add(1)
			continue
		}
		var b [64]byte
		unix.Read(s.r, b[:])
		s.got <- ev.Events
	}
}

// TestEndpointPollSource: with Also the reader waits in the source's epoll
// instance. The source's events reach Dispatch and the reader's own (the
// device, its stop descriptor) never do; packets are still read and
// answered while the source is busy; Close stops the reader. With
// HeldWait the same holds for events that come during the held wait and
// for those that come after it timed out (rounds 1 and 2 start later than
// the held wait lasts), and Close ends a held wait too (the last round's
// wait).
func TestEndpointPollSource(t *testing.T) {
	for _, held := range []time.Duration{0, time.Millisecond} {
		t.Run(fmt.Sprintf("held=%v", held), func(t *testing.T) { testEndpointPollSource(t, held) })
	}
	// A kernel without epoll_pwait2 (before 5.11): the reader waits the
	// usual way instead of failing.
	t.Run("held=1ms,ENOSYS", func(t *testing.T) {
		var calls atomic.Int32
		heldWait = func(int, []unix.EpollEvent, *unix.Timespec) (int, error) {
			calls.Add(1)
			return 0, unix.ENOSYS
		}
		t.Cleanup(func() { heldWait = heldEpollWait })
		testEndpointPollSource(t, time.Millisecond)
		if n := calls.Load(); n != 1 {
			t.Errorf("the reader tried epoll_pwait2 %d times after ENOSYS, want once", n)
		}
	})
}

func testEndpointPollSource(t *testing.T, held time.Duration) {
	dev, peer := fakeDevice(t, false)
	src := newPollSource(t)
	_, ep := newTestStackOpts(t, dev, EndpointOptions{Also: src, HeldWait: held})
	for i := range 4 {
		if i == 1 || i == 2 {
			time.Sleep(held + 20*time.Millisecond)
		}
		if _, err := unix.Write(src.w, []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-src.got:
			if ev&unix.EPOLLIN == 0 {
				t.Fatalf("dispatched events %#x, want EPOLLIN", ev)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the source's event was not dispatched within 5s", i)
		}
		if _, err := unix.Write(peer, echoRequest(uint16(i))); err != nil {
			t.Fatal(err)
		}
		got := readPacket(t, peer)
		if ic := header.ICMPv4(header.IPv4(got).Payload()); ic.Type() != header.ICMPv4EchoReply || ic.Sequence() != uint16(i) {
			t.Fatalf("round %d: reply type %d seq %d", i, ic.Type(), ic.Sequence())
		}
	}
	if n := src.foreign.Load(); n != 0 {
		t.Errorf("Dispatch got %d of the reader's own events", n)
	}
	ep.Close()
	select {
	case <-ep.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the reader did not stop on Close")
	}
	if err := ep.Err(); err != nil {
		t.Errorf("Err() = %v after Close, want nil", err)
	}
}
