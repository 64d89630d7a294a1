package appliance

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// hostPoller watches the relays' host sockets with one edge-triggered
// epoll instance and one goroutine, so an idle relay needs no goroutine
// parked in Go's poller. Events go to tcpRelay.hostEvent, keyed by relay
// id: an event for a relay already removed finds nothing and is dropped.
// The sockets stay in Go's own poller too (net.Conn), which is harmless:
// the relay reads and writes them without waiting.
type hostPoller struct {
	epfd, evfd int

	mu sync.Mutex
	// +checklocks:mu
	relays map[uint64]*tcpRelay
	// +checklocks:mu
	next uint64
	// +checklocks:mu
	closed bool

	done chan struct{}
}

func newHostPoller() (*hostPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("host poller: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("host poller: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // id 0: the stop eventfd
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("host poller: epoll_ctl: %w", err)
	}
	return &hostPoller{epfd: epfd, evfd: evfd, relays: map[uint64]*tcpRelay{}, next: 1, done: make(chan struct{})}, nil
}

// setID and getID keep a relay id in epoll_data's 8 bytes, which x/sys
// splits into Fd and Pad.
func setID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func getID(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// run delivers events until stop. It blocks its thread in epoll_wait.
func (p *hostPoller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		for i := range events[:n] {
			id := getID(&events[i])
			if id == 0 {
				return
			}
			p.mu.Lock()
			r := p.relays[id]
			p.mu.Unlock()
			if r != nil {
				r.hostEvent(events[i].Events)
			}
		}
	}
}

// add registers r's host socket, edge-triggered for input, output and
// hang-ups.
func (p *hostPoller) add(r *tcpRelay) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("host poller closed")
	}
	id := p.next
	p.next++
	r.id = id
	p.relays[id] = r
	p.mu.Unlock()
	var err error
	cerr := r.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET}
		setID(&ev, id)
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if cerr != nil {
		err = cerr
	}
	if err != nil {
		p.mu.Lock()
		delete(p.relays, id)
		p.mu.Unlock()
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// remove forgets r; call it before closing r's socket.
func (p *hostPoller) remove(r *tcpRelay) {
	p.mu.Lock()
	if _, ok := p.relays[r.id]; !ok {
		p.mu.Unlock()
		return
	}
	delete(p.relays, r.id)
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return // the epoll instance is gone (its number may be reused)
	}
	_ = r.rc.Control(func(fd uintptr) {
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
	var one = [8]byte{1}
	_, _ = unix.Write(p.evfd, one[:])
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.evfd)
}
