package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nsappliance/appliance/internal/unpolled"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/stopfd"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// ErrDeviceGone is reported by Endpoint.Err when the TUN device went away
// (deleted, or its namespace died).
var ErrDeviceGone = errors.New("tun device gone")

// EndpointOptions configures NewEndpoint. The zero value is the documented
// default.
type EndpointOptions struct {
	// Budget is how many packets the reader takes per poll before it
	// flushes GRO and yields, like NAPI's weight. Zero means 64.
	Budget int
	// DisableGRO turns off coalescing of received TCP segments.
	DisableGRO bool
	// CompleteChecksums fills in, on receive, the L4 checksum of a non-GSO
	// packet the kernel left partial (virtio NEEDS_CSUM). A router needs it:
	// such a packet leaves through another link without the flag, and the
	// receiver would drop it. Local delivery does not (netstack trusts the
	// kernel), so gateway mode leaves it off.
	CompleteChecksums bool
	// AfterBatch, if set, runs on the reader goroutine after each batch has
	// been delivered (and GRO flushed), holding no stack locks: where
	// deferred TCP processing (tcp.ProcessDeferred) belongs.
	AfterBatch func()
	// BeforeBatch, if set, runs on the reader goroutine before each batch
	// (the pair brackets it: appliance.LinkBatch).
	BeforeBatch func()
	// Filter, if set, sees every packet the reader takes, as raw IP
	// bytes (a GSO super-packet whole), before a packet buffer is built;
	// true drops it (counted in rx_filtered), the role XDP plays. It runs
	// on the reader goroutine, must not keep b and should not allocate
	// (appliance.EarlyFilter.Filter).
	Filter func(b []byte) bool
	// Also, if set, is an epoll instance the reader waits in, with the
	// device (it needs no Group): the reader dispatches its events when
	// they come and looks at it after every batch that used up the
	// budget, so it is neither starved nor woken on a thread of its own.
	Also PollSource
	// HeldWait, with Also, is how long the reader waits for the device or
	// the source with its goroutine's P held (a raw epoll_pwait2) before
	// it waits the usual way, giving the P up to the scheduler. Zero
	// means always the usual way. See readLoopEpoll.
	HeldWait time.Duration
	// Group, if set, serves this endpoint from the group's one reader
	// goroutine together with the group's other endpoints, instead of a
	// goroutine of its own (see ReaderGroup).
	Group *ReaderGroup
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
}

// PollSource is work the TUN reader does for other descriptors: the
// gateway's host sockets, so that the reply a host socket receives is
// relayed by the thread that relayed the request. The source is an epoll
// instance, and the reader waits in it: it adds its device and its stop
// descriptor there, so one epoll_wait both waits for the device and
// returns the host sockets' events. (Waiting in ppoll on the device and
// the epoll instance took an epoll_wait after every ppoll that found the
// instance readable: one system call more per reply.)
type PollSource interface {
	// PollFD is the epoll instance. The reader adds its own descriptors
	// under epoll data with ReaderEvent set, which the source's own
	// registrations must leave clear. It is asked once, when the reader
	// starts (Attach), and the reader waits in a duplicate: once it has
	// started, the source may close its descriptor whenever it likes.
	PollFD() int
	// Dispatch handles events of the source's descriptors that the
	// reader's wait returned (none has ReaderEvent set). It must not
	// block.
	Dispatch(events []unix.EpollEvent)
}

// ReaderEvent marks, in an epoll event's data (bit 31 of Pad, the data's
// top bit), the descriptors a TUN reader adds to a PollSource's epoll
// instance.
const ReaderEvent = int32(-1 << 31)

// Endpoint is a netstack link endpoint on a TUN file descriptor. With a
// virtio-net header it takes GSO super-packets from the kernel whole and
// hands netstack's 64 KiB TSO segments to the kernel to cut.
//
// Reading works like NAPI: one goroutine takes up to Budget packets per
// wake-up while packets keep coming, then blocks its thread in ppoll (or
// epoll_wait, with Also) until the device is readable again.
type Endpoint struct {
	dev      *Device
	fd       int
	budget   int
	log      *slog.Logger
	fullCsum bool
	after    func()
	before   func()
	filter   func([]byte) bool
	group    *ReaderGroup
	also     PollSource
	heldWait time.Duration

	mtu atomic.Uint32

	// dispatcher is read per packet, so it is published atomically.
	dispatcher atomic.Pointer[stack.NetworkDispatcher]

	mu sync.Mutex
	// +checklocks:mu
	started bool
	// +checklocks:mu
	onClose func()
	// +checklocks:mu
	closed bool

	stop stopfd.StopFD
	// stopping is set before stop is signalled, so a ReaderGroup can tell
	// which of its endpoints to let go without a syscall.
	stopping atomic.Bool

	gro      gro.GRO // owned by the reader goroutine
	done     chan struct{}
	doneOnce sync.Once
	wg       sync.WaitGroup
	err      atomic.Pointer[error]

	// scratch buffers, owned by the reader goroutine.
	hdrBuf [vnetHdrLen]byte
	view   *buffer.View
	uso    []byte

	stats Stats
}

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
)

// maxPacket bounds one read: the largest IP packet, which is also the
// largest pooled buffer chunk (buffer.MaxChunkSize).
const maxPacket = 1 << 16

// smallCopy is the size below which a received packet is copied out of the
// 64 KiB read buffer, so queued small packets do not pin 64 KiB each.
const smallCopy = 8192

// NewEndpoint makes an endpoint on dev. The endpoint owns dev from then on:
// Close closes it.
func NewEndpoint(dev *Device, opts EndpointOptions) (*Endpoint, error) {
	if dev == nil || dev.File == nil {
		return nil, errors.New("tun endpoint: nil device")
	}
	rc, err := dev.File.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tun endpoint %s: %w", dev.Name, err)
	}
	var fd int
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return nil, fmt.Errorf("tun endpoint %s: %w", dev.Name, err)
	}
	if opts.Budget < 0 {
		return nil, fmt.Errorf("tun endpoint: budget %d < 0", opts.Budget)
	}
	if opts.Budget == 0 {
		opts.Budget = 64
	}
	if opts.HeldWait < 0 {
		return nil, fmt.Errorf("tun endpoint: held wait %v < 0", opts.HeldWait)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	stop, err := stopfd.New()
	if err != nil {
		return nil, fmt.Errorf("tun endpoint %s: %w", dev.Name, err)
	}
	e := &Endpoint{
		dev:      dev,
		stop:     stop,
		fd:       fd,
		budget:   opts.Budget,
		fullCsum: opts.CompleteChecksums,
		after:    opts.AfterBatch,
		before:   opts.BeforeBatch,
		filter:   opts.Filter,
		group:    opts.Group,
		also:     opts.Also,
		heldWait: opts.HeldWait,
		log:      log.With("component", "tun", "dev", dev.Name),
		done:     make(chan struct{}),
		uso:      make([]byte, maxPacket),
	}
	e.mtu.Store(uint32(dev.MTU))
	// GRO validates a TCP segment's checksum, merges, and marks the result
	// validated; nic.DeliverNetworkPacket then resets that mark from the
	// NIC's capabilities and TCP rejects the merged packet's (stale)
	// checksum. So GRO runs only where the NIC declares RX checksum
	// offload: with a virtio-net header.
	e.gro.Init(!opts.DisableGRO && dev.VnetHdr)
	return e, nil
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// Done is closed when the reader stops: after Close, or when the device
// failed (see Err).
func (e *Endpoint) Done() <-chan struct{} { return e.done }

// Err tells why the reader stopped; nil after a plain Close.
func (e *Endpoint) Err() error {
	if p := e.err.Load(); p != nil {
		return *p
	}
	return nil
}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *Endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint. TUN has no link header; the
// virtio-net header goes in its own iovec.
func (*Endpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint.
func (*Endpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (*Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint. With a virtio-net header the
// kernel hands over packets whose checksum it vouches for or left partial
// (CHECKSUM_PARTIAL), so netstack must not verify them. The flag has to be a
// capability: nic.DeliverNetworkPacket overwrites a per-packet flag.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	if e.dev.VnetHdr {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 {
	if e.dev.Offloads&tunFTSO4 != 0 {
		return 1 << 16
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if e.dev.Offloads&(tunFTSO4|tunFTSO6) != 0 {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// ARPHardwareType implements stack.LinkEndpoint.
func (*Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint.
func (*Endpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint.
func (*Endpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onClose = f
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool {
	return e.dispatcher.Load() != nil
}

// Attach implements stack.LinkEndpoint. The first attach starts the reader;
// attaching nil stops delivery (packets read are then dropped).
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d == nil {
		// Detach: stop the reader without closing the device, as
		// nic.remove expects before it calls Wait.
		e.dispatcher.Store(nil)
		e.signalStop()
		return
	}
	e.dispatcher.Store(&d)
	if !e.started && !e.closed {
		e.started = true
		e.gro.Dispatcher = dispatcherFunc(e.deliver)
		e.wg.Add(1)
		if e.group != nil {
			e.group.add(e)
		} else {
			go e.readLoop()
		}
	}
}

// Wait implements stack.LinkEndpoint: it returns once the reader stopped.
func (e *Endpoint) Wait() { e.wg.Wait() }

// Close implements stack.LinkEndpoint. It closes the device and waits for
// the reader.
func (e *Endpoint) Close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	f := e.onClose
	e.mu.Unlock()
	if f != nil {
		f()
	}
	e.signalStop()
	e.wg.Wait()
	_ = e.dev.File.Close()
	_ = unix.Close(e.stop.EFD)
	e.doneOnce.Do(func() { close(e.done) })
}

// dispatcherFunc adapts deliver to the one method GRO calls.
type dispatcherFunc func(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)

func (f dispatcherFunc) DeliverNetworkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	f(p, pkt)
}
func (dispatcherFunc) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (e *Endpoint) deliver(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d := e.dispatcher.Load()
	if d == nil {
		e.stats.RxDropped.Add(1)
		return
	}
	(*d).DeliverNetworkPacket(p, pkt)
}

// signalStop tells the reader, its own or its group's, to let go of e.
func (e *Endpoint) signalStop() {
	e.stopping.Store(true)
	e.stop.Stop()
}

// readerExit ends reading on e: err (nil after a plain stop) is kept for
// Err, the read buffer given back, Done closed and Wait released.
func (e *Endpoint) readerExit(err error) {
	if err != nil {
		e.err.Store(&err)
		e.log.Error("tun reader stopped", "err", err)
	}
	// The read buffer is the reader's own; give it back.
	if e.view != nil {
		e.view.Release()
		e.view = nil
	}
	e.doneOnce.Do(func() { close(e.done) })
	e.wg.Done()
}

func (e *Endpoint) readLoop() {
	if e.also != nil {
		e.readLoopEpoll()
		return
	}
	var err error
	defer func() { e.readerExit(err) }()
	for {
		var done bool
		if done, _, err = e.readBatch(); err != nil {
			return
		}
		if done {
			continue // budget used up: read again at once
		}
		// Dry: wait until a packet or Stop.
		pfds := [2]rawfile.PollEvent{
			{FD: int32(e.stop.EFD), Events: unix.POLLIN},
			{FD: int32(e.fd), Events: unix.POLLIN},
		}
		errno := blockingPoll(pfds[:])
		if pfds[0].Revents&unix.POLLIN != 0 {
			return
		}
		if errno == 0 && pfds[1].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
			errno = unix.ECONNRESET
		}
		if errno != 0 && errno != unix.EINTR {
			err = fmt.Errorf("%w: poll: %v", ErrDeviceGone, errno)
			return
		}
	}
}

// Epoll data of the reader's own descriptors in a PollSource's instance.
const (
	readerStop = 0
	readerDev  = 1
)

// readLoopEpoll is readLoop with a PollSource: the reader waits in the
// source's epoll instance, where it added its device and stop descriptor
// (level-triggered: the device is read until EAGAIN, and an event the
// source's Dispatch never sees is reported again). After a batch that used
// up the budget it looks at the instance without waiting, so the source
// is not starved while packets keep coming.
func (e *Endpoint) readLoopEpoll() {
	var err error
	defer func() { e.readerExit(err) }()
	epfd, err := unix.FcntlInt(uintptr(e.also.PollFD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		err = fmt.Errorf("tun reader: the poll source's epoll instance: %w", err)
		return
	}
	defer unix.Close(epfd)
	for _, r := range [...]struct{ fd, id int }{{e.stop.EFD, readerStop}, {e.fd, readerDev}} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(r.id), Pad: ReaderEvent}
		if err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, r.fd, &ev); err != nil {
			err = fmt.Errorf("tun reader: epoll_ctl: %w", err)
			return
		}
	}
	// Both leave the instance with the reader: the source's instance may
	// outlive them, and a device that failed would be reported to nobody.
	defer func() {
		unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, e.stop.EFD, nil)
		unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, e.fd, nil)
	}()
	events := make([]unix.EpollEvent, 128)
	var held *unix.Timespec
	if e.heldWait > 0 {
		ts := unix.NsecToTimespec(e.heldWait.Nanoseconds())
		held = &ts
	}
	for {
		var done bool
		if done, _, err = e.readBatch(); err != nil {
			return
		}
		wait := -1 // block until the device, the source or Stop
		if done {
			wait = 0 // budget used up: only look, and read again
		}
		var n int
		var werr error
		switch {
		case wait == 0 || held == nil:
			n, werr = unix.EpollWait(epfd, events, wait)
		default:
			n, werr = heldWait(epfd, events, held)
			if werr == unix.ENOSYS {
				// No epoll_pwait2 (Linux before 5.11): wait the usual way.
				e.log.Info("tun reader: no epoll_pwait2, waits without holding its P")
				held, n, werr = nil, 0, nil
			}
			if werr == nil && n == 0 {
				n, werr = unix.EpollWait(epfd, events, -1)
			}
		}
		if werr != nil && werr != unix.EINTR {
			err = fmt.Errorf("%w: epoll_wait: %v", ErrDeviceGone, werr)
			return
		}
		// The source's events go to Dispatch in place; the reader's own
		// are taken out.
		k := 0
		for _, ev := range events[:max(n, 0)] {
			if ev.Pad&ReaderEvent == 0 {
				events[k] = ev
				k++
				continue
			}
			switch {
			case ev.Fd == readerStop:
				return
			case ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0:
				err = fmt.Errorf("%w: epoll: %v", ErrDeviceGone, unix.ECONNRESET)
				return
			}
		}
		if k > 0 {
			e.also.Dispatch(events[:k])
		}
	}
}

// heldWait is heldEpollWait; tests replace it.
var heldWait = heldEpollWait

// heldEpollWait is epoll_pwait2(2) with a timeout as a raw system call:
// the thread keeps its goroutine's P while it sleeps, where unix.EpollWait
// enters the scheduler's syscall state. There, whenever the other Ps were
// busy (a transfer: the relay worker copying, the peers' processes), a
// wait longer than a sysmon tick (20 µs) lost its P: sysmon handed it to
// another thread it woke for the purpose, reset its own polling to every
// 20 µs, and the reader, woken by the next ACK, had to get a P back before
// it could run. Holding the P removes that churn; the timeout bounds what
// holding it costs the rest of the process (a garbage collection's
// stop-the-world, goroutines queued on this P, timers in its heap wait up
// to that long), after which the reader blocks the usual way. It needs
// Linux 5.11 (epoll_pwait2); before, the reader falls back to the usual
// wait at the first ENOSYS.
func heldEpollWait(epfd int, events []unix.EpollEvent, ts *unix.Timespec) (int, error) {
	r, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(ts)), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// blockingPoll waits in ppoll(2) for the events asked of pfds, blocking
// this thread, not the runtime poller (whose wake-ups wait for an idle P).
// It is a plain syscall (entersyscall, not gVisor's BlockingPoll with
// entersyscallblock), so a short sleep keeps the P.
func blockingPoll(pfds []rawfile.PollEvent) unix.Errno {
	_, _, errno := unix.Syscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&pfds[0])), uintptr(len(pfds)), 0, 0, 0, 0)
	return errno
}

// readBatch reads up to the budget. It returns done=true when the budget
// ran out (the caller polls again at once) and false when the device ran
// dry (the poller waits for readability), and how many reads it made.
func (e *Endpoint) readBatch() (done bool, reads int, fatal error) {
	if e.before != nil {
		e.before()
	}
	defer func() {
		e.gro.Flush()
		if e.after != nil {
			e.after()
		}
	}()
	for ; reads < e.budget; reads++ {
		if e.view == nil {
			// Not cleared (patch 0034): the read fills it, and a
			// packet taken from it is cut to what was read.
			e.view = buffer.NewViewSizeUninit(maxPacket)
		}
		buf := e.view.AsSlice()
		iov := [2]unix.Iovec{iovec(e.hdrBuf[:]), iovec(buf)}
		vec := iov[:]
		if !e.dev.VnetHdr {
			vec = iov[1:] // no virtio-net header in front
		}
		// A raw system call: the goroutine keeps its P (see
		// unpolled.IovecIO); a non-blocking TUN read returns promptly.
		n, err := unpolled.IovecIO(unix.SYS_READV, e.fd, vec)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			return false, reads, nil
		case err == unix.EBADFD || err == unix.EIO || err == unix.ENXIO || err == unix.ENODEV:
			return false, reads, fmt.Errorf("%w: %v", ErrDeviceGone, err)
		case err != nil:
			return false, reads, fmt.Errorf("read tun %s: %w", e.dev.Name, err)
		case n == 0:
			// A TUN read never returns 0 while the device exists.
			return false, reads, fmt.Errorf("%w: end of file", ErrDeviceGone)
		}
		if e.dev.VnetHdr {
			n -= vnetHdrLen
			if n <= 0 {
				e.stats.RxErrors.Add(1)
				continue
			}
		}
		e.stats.RxPackets.Add(1)
		e.stats.RxBytes.Add(uint64(n))
		e.receive(buf[:n])
	}
	return true, reads, nil
}

// receive turns one read into packets for netstack.
func (e *Endpoint) receive(b []byte) {
	var h vnetHdr
	if e.dev.VnetHdr {
		_ = h.decode(e.hdrBuf[:])
		if err := h.validate(len(b)); err != nil {
			e.stats.RxErrors.Add(1)
			return
		}
		if h.gsoType != vnetGSONone {
			e.stats.RxGSO.Add(1)
		}
	}
	if e.filter != nil && e.filter(b) {
		e.stats.RxFiltered.Add(1)
		return
	}
	if e.dev.VnetHdr {
		if h.gsoType&^vnetGSOECN == vnetGSOUDPL4 {
			if err := splitUSO(b, int(h.gsoSize), e.uso, func(seg []byte) {
				e.enqueue(buffer.NewViewWithData(seg), nil)
			}); err != nil {
				e.stats.RxErrors.Add(1)
			}
			return
		}
		if e.fullCsum && h.gsoType == vnetGSONone && h.flags&vnetFlagNeedsCsum != 0 {
			completeChecksum(b, int(h.csumStart), int(h.csumOffset))
			h.flags &^= vnetFlagNeedsCsum
		}
	}
	var v *buffer.View
	if len(b) < smallCopy {
		v = buffer.NewViewWithData(b)
	} else {
		v = e.view
		v.CapLength(len(b))
		e.view = nil
	}
	e.enqueue(v, &h)
}

func (e *Endpoint) enqueue(v *buffer.View, h *vnetHdr) {
	b := v.AsSlice()
	var proto tcpip.NetworkProtocolNumber
	switch header.IPVersion(b) {
	case header.IPv4Version:
		proto = header.IPv4ProtocolNumber
	case header.IPv6Version:
		proto = header.IPv6ProtocolNumber
	default:
		v.Release()
		e.stats.RxErrors.Add(1)
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = e.dev.VnetHdr
	if h != nil && h.gsoType != vnetGSONone {
		// Keep the kernel's segmentation metadata so a forwarded
		// super-packet can leave whole through another TSO link.
		t := stack.GSOTCPv4
		if h.gsoType&^vnetGSOECN == vnetGSOTCPv6 {
			t = stack.GSOTCPv6
		}
		pkt.GSOOptions = stack.GSO{
			Type:       t,
			NeedsCsum:  h.flags&vnetFlagNeedsCsum != 0,
			CsumOffset: h.csumOffset,
			MSS:        h.gsoSize,
			L3HdrLen:   h.csumStart,
			MaxSize:    1 << 16,
		}
	}
	e.gro.Enqueue(pkt)
	pkt.DecRef()
}

// completeChecksum finishes a partial (CHECKSUM_PARTIAL) L4 checksum the way
// the kernel's skb_checksum_help does: the field at start+offset already
// holds the pseudo-header sum, so summing from start to the end and storing
// the complement completes it. validate has checked the bounds.
func completeChecksum(b []byte, start, offset int) {
	sum := ^checksum.Checksum(b[start:], 0)
	if sum == 0 {
		sum = 0xffff // CSUM_MANGLED_0: a zero UDP checksum means "none"
	}
	binary.BigEndian.PutUint16(b[start+offset:], sum)
}

// WritePackets implements stack.LinkEndpoint.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	var hdr [vnetHdrLen]byte
	var iovArr [16]unix.Iovec
	for _, pkt := range pkts.AsSlice() {
		iov := iovArr[:0]
		if e.dev.VnetHdr {
			h := e.txHeader(pkt)
			h.encode(hdr[:])
			iov = append(iov, iovec(hdr[:]))
		}
		iov = appendIovecs(iov, pkt)
		size := pkt.Size()
		_, err := unpolled.IovecIO(unix.SYS_WRITEV, e.fd, iov) // raw, as the reads
		switch {
		case err == nil:
			e.stats.TxPackets.Add(1)
			e.stats.TxBytes.Add(uint64(size))
			n++
		case err == unix.EBADFD || err == unix.EIO || err == unix.EBADF:
			e.stats.TxErrors.Add(1)
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		default:
			// EAGAIN, EINVAL (a packet the kernel refuses) and the like:
			// drop this one and go on, as a NIC would.
			e.stats.TxErrors.Add(1)
			n++
		}
	}
	return n, nil
}

func (e *Endpoint) txHeader(pkt *stack.PacketBuffer) vnetHdr {
	var h vnetHdr
	g := pkt.GSOOptions
	if g.Type == stack.GSONone {
		return h
	}
	h.hdrLen = uint16(pkt.HeaderSize())
	if g.NeedsCsum {
		h.flags = vnetFlagNeedsCsum
		h.csumStart = g.L3HdrLen
		h.csumOffset = g.CsumOffset
	}
	if uint16(pkt.Data().Size()) > g.MSS {
		switch g.Type {
		case stack.GSOTCPv4:
			h.gsoType = vnetGSOTCPv4
		case stack.GSOTCPv6:
			h.gsoType = vnetGSOTCPv6
		}
		h.gsoSize = g.MSS
		e.stats.TxGSO.Add(1)
	}
	return h
}

// Stats counts what crossed the device.
type Stats struct {
	RxPackets, RxBytes, RxGSO, RxErrors, RxDropped atomic.Uint64
	TxPackets, TxBytes, TxGSO, TxErrors            atomic.Uint64

	// RxFiltered counts packets EndpointOptions.Filter dropped.
	RxFiltered atomic.Uint64
}

// Map returns the counters by stable snake_case name.
func (s *Stats) Map() map[string]uint64 {
	return map[string]uint64{
		"rx_packets": s.RxPackets.Load(), "rx_bytes": s.RxBytes.Load(), "rx_gso": s.RxGSO.Load(),
		"rx_errors": s.RxErrors.Load(), "rx_dropped": s.RxDropped.Load(), "rx_filtered": s.RxFiltered.Load(),
		"tx_packets": s.TxPackets.Load(), "tx_bytes": s.TxBytes.Load(), "tx_gso": s.TxGSO.Load(),
		"tx_errors": s.TxErrors.Load(),
	}
}

// tunSetFilterEBPF is TUNSETFILTEREBPF, _IOR('T', 225, int).
const tunSetFilterEBPF = 0x800454e1

// SetKernelFilter attaches the eBPF socket-filter program progFD to the
// device's transmit path (TUNSETFILTEREBPF): the kernel runs it on every
// packet before queueing it for the reader and drops those it returns 0
// for, so the reader never sees them. -1 detaches. Attaching replaces the
// previous program atomically.
func (e *Endpoint) SetKernelFilter(progFD int) error {
	fd := int32(progFD)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(e.fd), tunSetFilterEBPF, uintptr(unsafe.Pointer(&fd)))
	if errno != 0 {
		return fmt.Errorf("tun %s: attach filter program: %w", e.dev.Name, errno)
	}
	return nil
}

// appendIovecs appends pkt's bytes from its first header on, one iovec per
// view, without allocating (PacketBuffer.AsSlices makes a slice a packet).
func appendIovecs(iov []unix.Iovec, pkt *stack.PacketBuffer) []unix.Iovec {
	vl, off := pkt.AsViewList()
	for v := vl.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > 0 {
			iov = append(iov, iovec(b))
		}
	}
	return iov
}

// iovec describes b, which must not be empty.
func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}
