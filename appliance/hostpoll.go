package appliance

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsappliance/appliance/internal/unpolled"
)

// hostPoller watches the relays' host sockets with one edge-triggered
// epoll instance and one goroutine, so an idle relay needs no goroutine
// parked in Go's poller. Events go to tcpRelay.hostEvent (or, while a
// dial waits for its connect, to a connectWaiter), keyed by an id: an
// event for a watcher already removed finds nothing and is dropped. The
// sockets are kept out of Go's own poller (hostSock): nothing waits for
// them there, and each of their events would wake a thread for nothing.
//
// Served by its own goroutine (run), the epoll descriptor is in Go's
// poller, so the goroutine waits for it there (os.File + RawConn) rather
// than blocking a thread in epoll_wait: an event then wakes it as any
// network goroutine is woken, without a thread coming back from a
// blocking syscall to find a P. Served by a TUN reader (ReaderHostPoll),
// it is not: the instance is the ReaderHostPoll's, which the reader waits
// in together with its device.
type hostPoller struct {
	epfd int
	file *os.File // epfd; in Go's poller only when run serves it
	rc   syscall.RawConn

	mu sync.Mutex
	// +checklocks:mu
	watchers map[uint64]hostWatcher
	// +checklocks:mu
	next uint64
	// +checklocks:mu
	closed bool

	done chan struct{}

	// onReader is set when a link's reader serves the epoll instance
	// (ReaderHostPoll) instead of run.
	onReader *ReaderHostPoll
}

// newHostPoller makes the epoll instance, for run to wait on in Go's
// netpoller; or, given the ReaderHostPoll of a TUN reader, takes a
// duplicate of that one's, which stays out of the netpoller (or every host
// event would also wake a thread parked in the runtime's epoll_wait; see
// package unpolled).
func newHostPoller(shared *ReaderHostPoll) (*hostPoller, error) {
	polled := shared == nil
	var epfd int
	var err error
	if polled {
		epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	} else {
		epfd, err = unix.FcntlInt(uintptr(shared.PollFD()), unix.F_DUPFD_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("host poller: epoll instance: %w", err)
	}
	var f *os.File
	if polled {
		if err := unix.SetNonblock(epfd, true); err != nil {
			unix.Close(epfd)
			return nil, fmt.Errorf("host poller: nonblock: %w", err)
		}
		f = os.NewFile(uintptr(epfd), "host-epoll")
	} else if f, err = unpolled.File(epfd, "host-epoll"); err != nil {
		return nil, fmt.Errorf("host poller: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("host poller: %w", err)
	}
	return &hostPoller{epfd: epfd, file: f, rc: rc, watchers: map[uint64]hostWatcher{}, next: 1, done: make(chan struct{})}, nil
}

// hostWatcher is what the poller delivers a socket's events to: a relay,
// or a dial waiting for its connect (connectWait).
type hostWatcher interface{ hostEvent(ev uint32) }

// setID and getID keep a relay id in epoll_data's 8 bytes, which x/sys
// splits into Fd and Pad.
func setID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func getID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// run delivers events until stop.
func (p *hostPoller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		var n int
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			return werr != nil && !errors.Is(werr, unix.EINTR) || n > 0
		})
		if err != nil || werr != nil {
			return // stop closed the file
		}
		p.dispatch(events[:n])
	}
}

func (p *hostPoller) dispatch(events []unix.EpollEvent) {
	for i := range events {
		id := getID(&events[i])
		p.mu.Lock()
		w := p.watchers[id]
		p.mu.Unlock()
		if w != nil {
			w.hostEvent(events[i].Events)
		}
	}
}

// ReaderHostPoll lets the TUN reader serve the gateway's host-socket epoll
// instance (it is a tun.PollSource): the instance is this one's, the
// reader waits in it together with its device, and the host sockets'
// events are relayed on the reader's thread. Without it the gateway's host
// poller goroutine did, and every reply a host socket received woke that
// goroutine through Go's poller (another thread, and often a second
// wake-up to find it a P) before the reply could be written to the TUN.
// Pass one to both tun.EndpointOptions.Also and Options.HostPoll; the
// gateway binds it when it starts and unbinds it when it stops. Events
// while no gateway is bound are dropped (its sockets are registered
// edge-triggered, so they do not come back). Close it once both are done.
type ReaderHostPoll struct {
	epfd int
	mu   sync.RWMutex
	// +checklocks:mu
	p *hostPoller
}

// NewReaderHostPoll makes the epoll instance the reader and the gateway
// share.
func NewReaderHostPoll() (*ReaderHostPoll, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("host poller: epoll_create1: %w", err)
	}
	return &ReaderHostPoll{epfd: epfd}, nil
}

// Close closes h's descriptor; the reader and the gateway hold duplicates
// of their own.
func (h *ReaderHostPoll) Close() error { return unix.Close(h.epfd) }

// PollFD implements tun.PollSource.
func (h *ReaderHostPoll) PollFD() int { return h.epfd }

// Dispatch implements tun.PollSource.
func (h *ReaderHostPoll) Dispatch(events []unix.EpollEvent) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.p != nil {
		h.p.dispatch(events)
	}
}

func (h *ReaderHostPoll) bind(p *hostPoller) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.p = p
	p.onReader = h
}

// unbind waits for a Dispatch in progress, then detaches.
func (h *ReaderHostPoll) unbind() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.p = nil
}

// bound reports whether a gateway is bound (tests).
func (h *ReaderHostPoll) bound() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.p != nil
}

// add registers r's host socket, edge-triggered for input, output and
// hang-ups. r's workers may already run (its endpoint's waiter entry is
// registered first) and finish it meanwhile: finish stores closed, then
// loads the id for remove; add stores the id, then loads closed. Go's
// atomics are sequentially consistent, so at least one of them sees the
// other's store and the registration never outlives the relay (unwatch
// is idempotent).
func (p *hostPoller) add(r *tcpRelay) error {
	id, err := p.watch(r.host.rc, r, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
	if err != nil {
		return err
	}
	r.id.Store(id)
	if r.closed.Load() {
		p.unwatch(r.host.rc, id)
	}
	return nil
}

// watch registers the socket behind rc for events, delivered to w, and
// returns its id for unwatch.
func (p *hostPoller) watch(rc syscall.RawConn, w hostWatcher, events uint32) (uint64, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return 0, errors.New("host poller closed")
	}
	id := p.next
	p.next++
	p.watchers[id] = w
	p.mu.Unlock()
	var err error
	cerr := rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: events}
		setID(&ev, id)
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		p.mu.Lock()
		delete(p.watchers, id)
		p.mu.Unlock()
		return 0, fmt.Errorf("epoll_ctl add: %w", err)
	}
	return id, nil
}

// remove forgets r (if add registered it); call it after setting
// r.closed and before closing r's socket.
func (p *hostPoller) remove(r *tcpRelay) {
	if id := r.id.Load(); id != 0 {
		p.unwatch(r.host.rc, id)
	}
}

// unwatch forgets the socket behind rc, registered as id.
func (p *hostPoller) unwatch(rc syscall.RawConn, id uint64) {
	p.mu.Lock()
	if _, ok := p.watchers[id]; !ok {
		p.mu.Unlock()
		return
	}
	delete(p.watchers, id)
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return // the epoll instance is gone (its number may be reused)
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// stop ends run and closes the epoll instance. Relays still registered
// get no more events.
func (p *hostPoller) stop() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.mu.Unlock()
	if p.onReader != nil {
		p.onReader.unbind() // no Dispatch reaches p from now on
		p.file.Close()      // p's duplicate; the instance is the reader's
		return
	}
	p.file.Close() // wakes run with an error
	<-p.done
}
