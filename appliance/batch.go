package appliance

import (
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
