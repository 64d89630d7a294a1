package appliance

import (
	"runtime"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// LinkBatch lets the goroutine that delivers a batch of inbound packets to
// the stack (the TUN reader, or the emulation's in direction) carry out
// the small relay work the batch starts itself, after the batch, instead of
// starting a goroutine for it.
//
// Without it a 1-byte request from the container woke a relay goroutine on
// another thread while the reader still held the endpoint's lock (it was
// processing the segment): the goroutine spun, slept on the lock and was
// woken again, two thread hand-offs before the request reached the host
// socket. Linux does the same work in the softirq that received the
// segment up to the socket, and the reader is our softirq.
//
// The delivering goroutine calls Begin before a batch and End after it;
// End runs deferred TCP processing (patch 0004), then the queued work, then
// sends the ACKs the segments owe (patch 0021), with no stack locks held.
// Work queued while no batch is being delivered is refused (runInline
// reports false) and the caller starts a goroutine as before, so nothing
// waits for a batch that may never come.
type LinkBatch struct {
	deferredTCP bool

	mu sync.Mutex
	// +checklocks:mu
	active int // batches being delivered (the reader and the emulation may overlap)
	// +checklocks:mu
	queue []func()
	// +checklocks:mu
	spare []func()
	// ran counts the work End has run (tests).
	ran atomic.Uint64
	// yield is set when a batch started a goroutine (yieldAfter).
	yield atomic.Bool
	// yields counts the yields End made (tests).
	yields atomic.Uint64
}

// NewLinkBatch returns a LinkBatch; with deferredTCP, End runs deferred
// TCP processing around the queued work (tcp.SetDeferredProcessing(true)
// must be on).
func NewLinkBatch(deferredTCP bool) *LinkBatch {
	return &LinkBatch{deferredTCP: deferredTCP}
}

// Begin marks the start of a batch delivered by the calling goroutine.
func (b *LinkBatch) Begin() {
	b.mu.Lock()
	b.active++
	b.mu.Unlock()
}

// End finishes the calling goroutine's batch: deferred TCP processing,
// then every piece of work queued meanwhile (including work that work
// queues).
func (b *LinkBatch) End() {
	defer b.maybeYield() // last: after the ACKs below
	if b.deferredTCP {
		// The ACKs the segments call for wait until the work below has
		// run (patch 0021): a request goes on to the host before its
		// bare ACK goes back to the container, and a response written
		// meanwhile carries the ACK instead.
		tcp.ProcessDeferredOwingAcks()
		defer tcp.FlushDeferredAcks()
	}
	for {
		b.mu.Lock()
		q := b.queue
		if len(q) == 0 {
			b.active--
			b.mu.Unlock()
			return
		}
		b.queue, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		for i, fn := range q {
			fn()
			q[i] = nil
		}
		b.ran.Add(uint64(len(q)))
		b.mu.Lock()
		if b.spare == nil {
			b.spare = q[:0]
		}
		b.mu.Unlock()
	}
}

// yieldAfter notes that the batch being delivered started or woke a
// goroutine (the TCP forwarder's handler for a SYN, or that handler when
// the handshake's ACK completes it): End then lets it run on this thread
// before the delivering goroutine goes back to wait. Otherwise the
// reader blocked in epoll_wait holding its P, with the new goroutine in
// that P's run queue: another thread had to be woken to steal it, or the
// Go runtime's sysmon took the P back from the syscall (after which sysmon
// polls every 20 µs for a millisecond). Measured per CRR connection, an
// unconditional yield before every wait took the appliance's context
// switches from 16.7 to 11.0 and its sysmon sleeps from 5.3 to 0.9, and
// its CPU from 777 to 690 µs (medians of six runs), but cost RR 5% (a
// yield with nothing to run), hence only after batches that started or
// woke one.
func (b *LinkBatch) yieldAfter() {
	if b != nil {
		b.yield.Store(true)
	}
}

// maybeYield yields the processor if the batch started a goroutine.
func (b *LinkBatch) maybeYield() {
	if b.yield.Swap(false) {
		b.yields.Add(1)
		runtime.Gosched()
	}
}

// runInline queues fn for the end of the batch being delivered and
// reports true, or reports false when no batch is being delivered.
func (b *LinkBatch) runInline(fn func()) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.active == 0 {
		return false
	}
	b.queue = append(b.queue, fn)
	return true
}
