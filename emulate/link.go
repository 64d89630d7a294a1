// Package emulate emulates a network link in userspace with netem's
// meanings (delay, jitter, loss, Gilbert-Elliott bursts, rate with a
// bounded queue and CoDel, reorder, duplicate, corrupt, mahimahi traces),
// as a wrapper around a netstack link endpoint. Start with ParseSpec and
// New.
package emulate

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

// Options configures New. The zero value is the documented default.
type Options struct {
	// Clock is the time source; nil means the system's monotonic clock.
	Clock Clock
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
	// Outcomes, when set, receives every packet the emulation drops
	// (emulation_loss, queue_full; not_specified for packets held at
	// Close), so the link's packet accounting stays complete.
	Outcomes *outcome.Link
	// AfterDeliver, if set, runs on the in direction's goroutine after
	// each batch it delivers to the stack, as tun.EndpointOptions.AfterBatch
	// does on the TUN reader: where deferred TCP processing
	// (tcp.ProcessDeferred) belongs. Without it, delayed inbound segments
	// (ACKs) wait for the next TUN batch.
	AfterDeliver func()
	// BeforeDeliver, if set, runs on the in direction's goroutine before
	// each batch it delivers (the pair brackets it: appliance.LinkBatch).
	BeforeDeliver func()
}

// Link is a link endpoint that emulates Spec on each direction of the
// endpoint it wraps, independently: "out" is what the stack writes
// (WritePackets), "in" what the wrapped endpoint delivers to the stack.
// Each direction has its own queue and one goroutine that releases
// packets at their time. With an inactive Spec packets pass straight
// through. Close stops the goroutines and closes the wrapped endpoint.
type Link struct {
	netstack.WrappedLink // GSO passes through

	clock         Clock
	log           *slog.Logger
	afterDeliver  func()
	beforeDeliver func()
	out, in       *direction

	// dispatcher is the stack's, read per packet.
	dispatcher atomic.Pointer[stack.NetworkDispatcher]

	mu sync.Mutex
	// +checklocks:mu
	spec Spec

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

var (
	_ stack.LinkEndpoint      = (*Link)(nil)
	_ stack.GSOEndpoint       = (*Link)(nil)
	_ stack.NetworkDispatcher = (*inbound)(nil)
)

// New wraps lower with the emulation spec and starts the two directions'
// goroutines. The Link owns lower from then on.
func New(lower stack.LinkEndpoint, spec Spec, opts Options) (*Link, error) {
	if lower == nil {
		return nil, errors.New("emulate: nil link endpoint")
	}
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if opts.Clock == nil {
		opts.Clock = systemClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	l := &Link{WrappedLink: netstack.WrappedLink{LinkEndpoint: lower}, clock: opts.Clock, log: opts.Logger.With("component", "emulate"),
		spec: spec, stop: make(chan struct{}), afterDeliver: opts.AfterDeliver, beforeDeliver: opts.BeforeDeliver}
	l.out = newDirection("out", spec, l.clock, l.writeOut)
	l.in = newDirection("in", spec, l.clock, l.deliverIn)
	l.out.acct, l.out.hook = opts.Outcomes, outcome.HookEgress
	l.in.acct, l.in.hook = opts.Outcomes, outcome.HookIngress
	for _, d := range []*direction{l.out, l.in} {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			d.run(l.stop)
		}()
	}
	if spec.Active() {
		l.log.Info("link emulation on", "spec", spec.String())
	}
	return l, nil
}

// Spec returns the emulation in force.
func (l *Link) Spec() Spec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.spec
}

// SetSpec changes the emulation at runtime, like `tc qdisc change`:
// queued and delayed packets stay (a new Limit below the backlog only
// stops new arrivals); new settings apply to packets from now on, a new
// Rate or trace also to the packet at the head of the queue.
func (l *Link) SetSpec(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	for _, d := range []*direction{l.out, l.in} {
		d.mu.Lock()
		d.setSpecLocked(s, now)
		d.mu.Unlock()
		d.kick()
	}
	l.spec = s
	l.log.Info("link emulation changed", "spec", s.String())
	return nil
}

// Stats returns the counters of both directions, named out_* and in_*:
// received, delivered, dropped_loss, dropped_queue (tail drop),
// dropped_codel, dropped_closed, duplicated, corrupted, reordered,
// tx_errors, and the gauges queued (packets held) and backlog_bytes (in
// the rate or trace queue).
func (l *Link) Stats() map[string]uint64 {
	m := make(map[string]uint64, 24)
	l.out.addStats(m)
	l.in.addStats(m)
	return m
}

// WritePackets implements stack.LinkEndpoint: the out direction. Packets
// it holds are reported written.
func (l *Link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	d := l.out
	if !d.active.Load() {
		n, err := l.LinkEndpoint.WritePackets(pkts)
		d.stats.received.Add(uint64(pkts.Len()))
		d.stats.delivered.Add(uint64(n))
		return n, err
	}
	now := l.clock.Now()
	wake := false
	d.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		if d.enqueueLocked(now, pkt, pkt.NetworkProtocolNumber) {
			wake = true
		}
	}
	d.mu.Unlock()
	if wake {
		d.kick()
	}
	return pkts.Len(), nil
}

// writeOut sends the out direction's due packets to the wrapped endpoint.
func (l *Link) writeOut(batch []item) {
	var pkts stack.PacketBufferList
	for _, it := range batch {
		pkts.PushBack(it.pkt)
	}
	n, err := l.LinkEndpoint.WritePackets(pkts)
	l.out.stats.delivered.Add(uint64(n))
	if err != nil || n < len(batch) {
		l.out.stats.txErrors.Add(uint64(len(batch) - n))
	}
	pkts.DecRef()
}

// Attach implements stack.LinkEndpoint: the wrapped endpoint delivers to
// the in direction, which delivers to d.
func (l *Link) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.dispatcher.Store(nil)
		l.LinkEndpoint.Attach(nil)
		return
	}
	l.dispatcher.Store(&d)
	l.LinkEndpoint.Attach((*inbound)(l))
}

// deliverIn hands the in direction's due packets to the stack, then runs
// AfterDeliver.
func (l *Link) deliverIn(batch []item) {
	if l.beforeDeliver != nil {
		l.beforeDeliver()
	}
	if l.afterDeliver != nil {
		defer l.afterDeliver()
	}
	d := l.dispatcher.Load()
	for _, it := range batch {
		if d != nil {
			(*d).DeliverNetworkPacket(it.proto, it.pkt)
			l.in.stats.delivered.Add(1)
		} else {
			l.in.stats.droppedEnd.Add(1)
		}
		it.pkt.DecRef()
	}
}

// inbound is the dispatcher the wrapped endpoint delivers to.
type inbound Link

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (i *inbound) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	l := (*Link)(i)
	d := l.in
	if !d.active.Load() {
		d.stats.received.Add(1)
		if disp := l.dispatcher.Load(); disp != nil {
			(*disp).DeliverNetworkPacket(proto, pkt)
			d.stats.delivered.Add(1)
		} else {
			d.stats.droppedEnd.Add(1)
		}
		return
	}
	d.enqueue(l.clock.Now(), pkt, proto)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (i *inbound) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if disp := (*Link)(i).dispatcher.Load(); disp != nil {
		(*disp).DeliverLinkPacket(proto, pkt)
	}
}

// Close implements stack.LinkEndpoint: it stops both directions, releases
// the packets they hold and closes the wrapped endpoint. It is idempotent.
func (l *Link) Close() {
	l.closeOnce.Do(func() {
		close(l.stop)
		l.wg.Wait()
		l.out.close()
		l.in.close()
		l.LinkEndpoint.Close()
	})
}
