package tun

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
)

// ReaderGroup reads several endpoints from one goroutine, the way one
// softirq serves every device of a CPU. A router needs it: a packet read
// from one TUN and written to the other makes the receiving kernel answer
// (a TCP ACK) into the second TUN inside that write, and the ACK written
// back makes the sender's kernel queue new data into the first. With one
// reader per device each of those hand-offs wakes a sleeping thread; with
// one reader for both the answer is already waiting when the write
// returns, and the reader only sleeps when every device ran dry.
//
// Endpoints join with EndpointOptions.Group when they are attached and
// leave when they are detached or closed (or their device fails). The
// goroutine runs while the group has members. The zero value is not
// usable: call NewReaderGroup.
type ReaderGroup struct {
	kick int // eventfd: membership changed
	wg   sync.WaitGroup

	mu sync.Mutex
	// +checklocks:mu
	members []*Endpoint
	// +checklocks:mu
	running bool
	// +checklocks:mu
	changed bool
}

// NewReaderGroup makes an empty group. Close releases it once its
// endpoints are closed.
func NewReaderGroup() (*ReaderGroup, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("tun reader group: eventfd: %w", err)
	}
	return &ReaderGroup{kick: fd}, nil
}

// Close waits for the group's goroutine and releases its descriptor. Its
// endpoints must be closed (or detached) first.
func (g *ReaderGroup) Close() error {
	g.mu.Lock()
	n := len(g.members)
	g.mu.Unlock()
	if n > 0 {
		return fmt.Errorf("tun reader group: close with %d endpoints attached", n)
	}
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.kick < 0 {
		return nil
	}
	err := unix.Close(g.kick)
	g.kick = -1
	return err
}

// add makes e a member; the group's goroutine starts with its first.
func (g *ReaderGroup) add(e *Endpoint) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.members = append(g.members, e)
	g.changed = true
	if !g.running {
		g.running = true
		g.wg.Add(1)
		go g.loop()
		return
	}
	g.signal()
}

// signal wakes the loop from its poll. The eventfd counter only needs to
// be non-zero; the loop drains it.
func (g *ReaderGroup) signal() {
	var one = [8]byte{1}
	_, _ = unix.Write(g.kick, one[:])
}

// snapshot returns the current members, or nil (and stops the loop) when
// none are left.
func (g *ReaderGroup) snapshot(cur []*Endpoint) ([]*Endpoint, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.members) == 0 {
		g.running = false
		return nil, false
	}
	if g.changed {
		g.changed = false
		cur = append(cur[:0], g.members...)
	}
	return cur, true
}

// remove drops e from the members; the loop has already stopped touching it.
func (g *ReaderGroup) remove(e *Endpoint) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, m := range g.members {
		if m == e {
			g.members = append(g.members[:i], g.members[i+1:]...)
			break
		}
	}
	g.changed = true
}

func (g *ReaderGroup) loop() {
	defer g.wg.Done()
	var (
		eps    []*Endpoint
		pfds   []rawfile.PollEvent
		drain  [8]byte
		active bool
	)
	for {
		if eps, active = g.snapshot(eps); !active {
			return
		}
		// One round: a batch from every member. Go round again at once
		// while any of them delivered something: the writes this round
		// made may have queued the answers on the other devices.
		progress := false
		for _, e := range eps {
			if e.stopping.Load() {
				g.remove(e)
				e.readerExit(nil)
				continue
			}
			_, reads, err := e.readBatch()
			if err != nil {
				g.remove(e)
				e.readerExit(err)
				continue
			}
			if reads > 0 {
				progress = true
			}
		}
		if progress {
			continue
		}
		// Members that left this round must not be polled (their
		// descriptors may be closed, and a hang-up would end them twice).
		if eps, active = g.snapshot(eps); !active {
			return
		}
		// Every member ran dry: wait on all of them, their stop
		// descriptors and the group's kick.
		pfds = pfds[:0]
		pfds = append(pfds, rawfile.PollEvent{FD: int32(g.kick), Events: unix.POLLIN})
		for _, e := range eps {
			pfds = append(pfds,
				rawfile.PollEvent{FD: int32(e.stop.EFD), Events: unix.POLLIN},
				rawfile.PollEvent{FD: int32(e.fd), Events: unix.POLLIN})
		}
		errno := blockingPoll(pfds)
		if errno != 0 && errno != unix.EINTR {
			// Only a bad descriptor set makes ppoll itself fail: give
			// every member up rather than spin.
			for _, e := range eps {
				g.remove(e)
				e.readerExit(fmt.Errorf("%w: poll: %v", ErrDeviceGone, errno))
			}
			eps = eps[:0]
			continue
		}
		if pfds[0].Revents&unix.POLLIN != 0 {
			_, _ = unix.Read(g.kick, drain[:])
		}
		for i, e := range eps {
			if pfds[2+2*i].Revents&(unix.POLLHUP|unix.POLLERR) != 0 && !e.stopping.Load() {
				g.remove(e)
				e.readerExit(fmt.Errorf("%w: poll: %v", ErrDeviceGone, unix.ECONNRESET))
			}
		}
	}
}
