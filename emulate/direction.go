package emulate

import (
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

// CoDel's parameters (RFC 8289 section 4.2 and 4.3).
const (
	codelTarget   = 5 * time.Millisecond
	codelInterval = 100 * time.Millisecond
)

// item is one packet held by a direction.
type item struct {
	pkt   *stack.PacketBuffer
	proto tcpip.NetworkProtocolNumber
	wire  int       // bytes the rate limiter charges
	segs  int       // wire packets it stands for (limit counts these)
	enq   time.Time // entered the direction
	rel   time.Time // leaves the delay line
	seq   uint64    // arrival order, breaks ties in the delay line
}

// dirStats are a direction's counters.
type dirStats struct {
	received, delivered                                 atomic.Uint64
	droppedLoss, droppedQueue, droppedCoDel, droppedEnd atomic.Uint64
	duplicated, corrupted, reordered, txErrors          atomic.Uint64
}

// direction emulates one direction of a link: packets enter through
// enqueue (on the packet path) and leave through deliver, called by the
// direction's one goroutine when their time has come. Packets pass the
// loss, duplicate and corrupt decisions, then the bottleneck (Rate or
// Trace, a FIFO with CoDel optional), then the delay line (Delay, Jitter,
// Reorder; ordered by release time, so jitter reorders as in netem).
type direction struct {
	name    string
	clock   Clock
	deliver func([]item) // called by the goroutine without mu held
	stats   dirStats
	// acct, when set before traffic, receives the direction's drops at
	// hook (ingress for "in", egress for "out").
	acct *outcome.Link
	hook outcome.Hook

	// active is set while the spec is active or packets are held; while
	// clear, packets bypass the direction.
	active atomic.Bool
	wake   chan struct{}

	mu sync.Mutex
	// +checklocks:mu
	spec Spec
	// +checklocks:mu
	rng *rand.Rand
	// +checklocks:mu
	closed bool
	// +checklocks:mu
	geBad bool
	// +checklocks:mu
	lastU float64 // last correlated uniform draw for jitter
	// +checklocks:mu
	seq uint64
	// +checklocks:mu
	held int // wire packets in rq and dq (a GSO packet counts its segments)
	// rq is the bottleneck FIFO from rqHead on.
	// +checklocks:mu
	rq []item
	// +checklocks:mu
	rqHead int
	// +checklocks:mu
	rqBytes int
	// +checklocks:mu
	headSet bool // headDep is computed for rq[rqHead]
	// +checklocks:mu
	headDep time.Time
	// +checklocks:mu
	lastDep time.Time // when the previous packet left the bottleneck
	// dq is the delay line, a min-heap by (rel, seq).
	// +checklocks:mu
	dq []item
	// trace player: opportunity oppIdx has oppLeft bytes left.
	// +checklocks:mu
	traceBase time.Time
	// +checklocks:mu
	oppIdx int64
	// +checklocks:mu
	oppLeft int
	// +checklocks:mu
	codel codelState
	// +checklocks:mu
	sleepUntil time.Time // zero: the goroutine sleeps without a timer
}

type codelState struct {
	firstAbove time.Time
	dropNext   time.Time
	count      int
	lastCount  int
	dropping   bool
}

func newDirection(name string, spec Spec, clock Clock, deliver func([]item)) *direction {
	d := &direction{name: name, clock: clock, deliver: deliver, wake: make(chan struct{}, 1)}
	d.mu.Lock()
	d.rng = newRand(0, 0)
	d.setSpecLocked(spec, clock.Now())
	d.mu.Unlock()
	return d
}

func newRand(seed, salt uint64) *rand.Rand {
	if seed == 0 {
		return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return rand.New(rand.NewPCG(seed, salt))
}

// +checklocks:d.mu
func (d *direction) setSpecLocked(s Spec, now time.Time) {
	old := d.spec
	d.spec = s
	if s.Seed != old.Seed && s.Seed != 0 {
		d.rng = newRand(s.Seed, uint64(len(d.name)))
	}
	if s.Trace != old.Trace || len(s.TraceTimes) != len(old.TraceTimes) {
		d.traceBase, d.oppIdx, d.oppLeft = now, 0, TraceMTU
	}
	if s.Rate != old.Rate || s.Trace != old.Trace {
		d.headSet = false // recomputed with the new bottleneck
	}
	if s.GE == nil {
		d.geBad = false
	}
	d.updateActiveLocked()
}

// +checklocks:d.mu
func (d *direction) updateActiveLocked() {
	d.active.Store(d.spec.Active() || d.held > 0)
}

// chance draws true with probability pct percent.
// +checklocks:d.mu
func (d *direction) chance(pct float64) bool {
	return pct > 0 && (pct >= 100 || d.rng.Float64()*100 < pct)
}

// lostLocked decides loss, netem's way: Gilbert-Elliott decides by the
// state at the packet's arrival, then moves.
// +checklocks:d.mu
func (d *direction) lostLocked() bool {
	g := d.spec.GE
	if g == nil {
		return d.chance(d.spec.Loss)
	}
	if d.geBad {
		if d.chance(g.R) {
			d.geBad = false
		}
		return d.chance(g.H)
	}
	if d.chance(g.P) {
		d.geBad = true
	}
	return d.chance(g.K)
}

// enqueue takes pkt into the direction at now, or drops it. It does not
// consume the caller's reference.
func (d *direction) enqueue(now time.Time, pkt *stack.PacketBuffer, proto tcpip.NetworkProtocolNumber) {
	d.mu.Lock()
	wake := d.enqueueLocked(now, pkt, proto)
	d.mu.Unlock()
	if wake {
		d.kick()
	}
}

func (d *direction) kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// enqueueLocked reports whether the goroutine must wake up earlier than it
// planned.
// +checklocks:d.mu
func (d *direction) enqueueLocked(now time.Time, pkt *stack.PacketBuffer, proto tcpip.NetworkProtocolNumber) bool {
	d.stats.received.Add(1)
	if d.closed {
		d.stats.droppedEnd.Add(1)
		d.account(outcome.NotSpecified, pkt)
		return false
	}
	if d.lostLocked() {
		d.stats.droppedLoss.Add(1)
		d.account(outcome.EmulationLoss, pkt)
		return false
	}
	copies := 1
	if d.chance(d.spec.Duplicate) {
		copies = 2
		d.stats.duplicated.Add(1)
	}
	wake := false
	for i := 0; i < copies; i++ {
		wire, segs := wireSize(pkt)
		if d.held+segs > d.spec.limit() {
			d.stats.droppedQueue.Add(1)
			d.account(outcome.QueueFull, pkt)
			continue
		}
		var p *stack.PacketBuffer
		switch {
		case d.chance(d.spec.Corrupt):
			p = corruptPacket(pkt, d.rng)
			d.stats.corrupted.Add(1)
		case i == 0:
			p = pkt.IncRef()
		default:
			p = copyPacket(pkt) // a private copy: the stack may write the first in place
		}
		it := item{pkt: p, proto: proto, wire: wire, segs: segs, enq: now, seq: d.seq}
		d.seq++
		d.held += segs
		var ev time.Time
		if d.bottleneckLocked() || d.rqLen() > 0 {
			d.rq = append(d.rq, it)
			d.rqBytes += it.wire
			ev = now // a new head; its departure is computed by poll
			if d.rqLen() > 1 {
				ev = time.Time{}
			}
		} else {
			ev = d.toDelayLocked(it, now)
		}
		if !ev.IsZero() && (d.sleepUntil.IsZero() || ev.Before(d.sleepUntil)) {
			wake = true
		}
	}
	d.updateActiveLocked()
	return wake
}

// +checklocks:d.mu
func (d *direction) bottleneckLocked() bool { return d.spec.Rate > 0 || len(d.spec.TraceTimes) > 0 }

// +checklocks:d.mu
func (d *direction) rqLen() int { return len(d.rq) - d.rqHead }

// toDelayLocked puts it, which left the bottleneck at dep, on the delay
// line and returns its release time.
// +checklocks:d.mu
func (d *direction) toDelayLocked(it item, dep time.Time) time.Time {
	it.rel = dep
	s := &d.spec
	if s.Delay > 0 || s.Jitter > 0 {
		if d.chance(s.Reorder) {
			d.stats.reordered.Add(1)
		} else {
			delay := s.Delay
			if s.Jitter > 0 {
				// netem's get_crandom: u' = (1-ρ)·U + ρ·u, then uniform
				// in [delay-jitter, delay+jitter).
				rho := s.Correlation / 100
				u := (1-rho)*d.rng.Float64() + rho*d.lastU
				d.lastU = u
				delay += time.Duration((2*u - 1) * float64(s.Jitter))
			}
			if delay > 0 {
				it.rel = dep.Add(delay)
			}
		}
	}
	d.heapPush(it)
	return it.rel
}

// poll moves what the bottleneck has sent by now to the delay line,
// appends the packets due by now to out, and returns when the next event
// is (zero: none).
// +checklocks:d.mu
func (d *direction) pollLocked(now time.Time, out []item) ([]item, time.Time) {
	for d.rqLen() > 0 {
		if !d.headSet && !d.startHeadLocked() {
			break
		}
		if d.headDep.After(now) {
			break
		}
		it := d.rq[d.rqHead]
		d.popHeadLocked()
		d.lastDep = d.headDep
		d.toDelayLocked(it, d.headDep)
	}
	for len(d.dq) > 0 && !d.dq[0].rel.After(now) {
		it := d.heapPop()
		out = append(out, it)
		d.held -= it.segs
	}
	var next time.Time
	if d.rqLen() > 0 {
		next = d.headDep
	}
	if len(d.dq) > 0 && (next.IsZero() || d.dq[0].rel.Before(next)) {
		next = d.dq[0].rel
	}
	d.updateActiveLocked()
	return out, next
}

// +checklocks:d.mu
func (d *direction) popHeadLocked() {
	d.rqBytes -= d.rq[d.rqHead].wire
	d.rq[d.rqHead] = item{}
	d.rqHead++
	d.headSet = false
	if d.rqHead == len(d.rq) {
		d.rq, d.rqHead = d.rq[:0], 0
	} else if d.rqHead > 1024 && d.rqHead*2 > len(d.rq) {
		n := copy(d.rq, d.rq[d.rqHead:])
		clear(d.rq[n:])
		d.rq, d.rqHead = d.rq[:n], 0
	}
}

// startHeadLocked computes when the head of the bottleneck queue leaves
// it: CoDel may drop heads first. It reports false if the queue emptied.
// +checklocks:d.mu
func (d *direction) startHeadLocked() bool {
	for d.rqLen() > 0 {
		head := &d.rq[d.rqHead]
		start := head.enq
		if d.lastDep.After(start) {
			start = d.lastDep
		}
		if d.spec.CoDel && d.codelDropLocked(start) {
			continue
		}
		if d.rqLen() == 0 {
			return false
		}
		head = &d.rq[d.rqHead]
		if head.enq.After(start) {
			start = head.enq
		}
		switch {
		case d.spec.Rate > 0:
			bits := uint64(head.wire) * 8 * uint64(time.Second)
			d.headDep = start.Add(time.Duration((bits + d.spec.Rate/2) / d.spec.Rate))
		case len(d.spec.TraceTimes) > 0:
			d.headDep = d.traceDepLocked(start, head.wire)
		default:
			d.headDep = start // the bottleneck was removed: drain at once
		}
		d.headSet = true
		return true
	}
	return false
}

// dropHeadLocked drops the head of the bottleneck queue for CoDel.
// +checklocks:d.mu
func (d *direction) dropHeadLocked() {
	d.account(outcome.QueueFull, d.rq[d.rqHead].pkt)
	d.rq[d.rqHead].pkt.DecRef()
	d.held -= d.rq[d.rqHead].segs
	d.popHeadLocked()
	d.stats.droppedCoDel.Add(1)
}

// codelOKLocked is RFC 8289's dodequeue test on the current head.
// +checklocks:d.mu
func (d *direction) codelOKLocked(now time.Time) bool {
	c := &d.codel
	if d.rqLen() == 0 {
		c.firstAbove = time.Time{}
		return false
	}
	head := &d.rq[d.rqHead]
	if now.Sub(head.enq) < codelTarget || d.rqBytes-head.wire <= TraceMTU {
		c.firstAbove = time.Time{}
		return false
	}
	if c.firstAbove.IsZero() {
		c.firstAbove = now.Add(codelInterval)
		return false
	}
	return !now.Before(c.firstAbove)
}

func codelControlLaw(t time.Time, count int) time.Time {
	return t.Add(time.Duration(float64(codelInterval) / math.Sqrt(float64(count))))
}

// codelDropLocked runs RFC 8289's dequeue (section 5.5) at now for the
// head and reports whether it dropped anything (the caller looks again).
// +checklocks:d.mu
func (d *direction) codelDropLocked(now time.Time) bool {
	c := &d.codel
	ok := d.codelOKLocked(now)
	dropped := false
	if c.dropping {
		if !ok {
			c.dropping = false
		}
		for c.dropping && !now.Before(c.dropNext) {
			d.dropHeadLocked()
			dropped = true
			c.count++
			if !d.codelOKLocked(now) {
				c.dropping = false
			} else {
				c.dropNext = codelControlLaw(c.dropNext, c.count)
			}
		}
	} else if ok {
		d.dropHeadLocked()
		dropped = true
		d.codelOKLocked(now)
		c.dropping = true
		delta := c.count - c.lastCount
		c.count = 1
		if delta > 1 && now.Sub(c.dropNext) < 16*codelInterval {
			c.count = delta
		}
		c.dropNext = codelControlLaw(now, c.count)
		c.lastCount = c.count
	}
	return dropped
}

// traceDepLocked plays the mahimahi trace: opportunity k is at
// traceBase + (k/n)·period + TraceTimes[k%n] and carries TraceMTU bytes,
// shared by the packets that are waiting then; unused bytes are lost.
// +checklocks:d.mu
func (d *direction) traceDepLocked(start time.Time, wire int) time.Time {
	ts := d.spec.TraceTimes
	n := int64(len(ts))
	period := ts[n-1]
	at := func(k int64) time.Time {
		return d.traceBase.Add(time.Duration(k/n)*period + ts[k%n])
	}
	if d.oppLeft == 0 {
		d.oppIdx++
		d.oppLeft = TraceMTU
	}
	if at(d.oppIdx).Before(start) {
		// Skip the opportunities that passed with nothing to send.
		off := start.Sub(d.traceBase)
		cycle := int64(off / period)
		within := off - time.Duration(cycle)*period
		i := int64(sort.Search(int(n), func(i int) bool { return ts[i] >= within }))
		k := cycle*n + i
		if k < d.oppIdx {
			k = d.oppIdx
		}
		for at(k).Before(start) {
			k++
		}
		d.oppIdx, d.oppLeft = k, TraceMTU
	}
	need := wire
	for need > d.oppLeft {
		need -= d.oppLeft
		d.oppIdx++
		d.oppLeft = TraceMTU
	}
	d.oppLeft -= need
	return at(d.oppIdx)
}

// heap of items by (rel, seq).
func itemLess(a, b *item) bool {
	if a.rel.Equal(b.rel) {
		return a.seq < b.seq
	}
	return a.rel.Before(b.rel)
}

// +checklocks:d.mu
func (d *direction) heapPush(it item) {
	d.dq = append(d.dq, it)
	i := len(d.dq) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !itemLess(&d.dq[i], &d.dq[p]) {
			break
		}
		d.dq[i], d.dq[p] = d.dq[p], d.dq[i]
		i = p
	}
}

// +checklocks:d.mu
func (d *direction) heapPop() item {
	top := d.dq[0]
	n := len(d.dq) - 1
	d.dq[0] = d.dq[n]
	d.dq[n] = item{}
	d.dq = d.dq[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && itemLess(&d.dq[l], &d.dq[m]) {
			m = l
		}
		if r < n && itemLess(&d.dq[r], &d.dq[m]) {
			m = r
		}
		if m == i {
			break
		}
		d.dq[i], d.dq[m] = d.dq[m], d.dq[i]
		i = m
	}
	return top
}

// run is the direction's goroutine: it sleeps until the next packet is
// due by the clock, delivers every packet that is due, and repeats until
// stop is closed.
func (d *direction) run(stop <-chan struct{}) {
	var batch []item
	for {
		now := d.clock.Now()
		d.mu.Lock()
		var next time.Time
		batch, next = d.pollLocked(now, batch[:0])
		if len(batch) == 0 {
			d.sleepUntil = next
		} else {
			d.sleepUntil = now // poll again right after delivering
		}
		d.mu.Unlock()
		if len(batch) > 0 {
			d.deliver(batch)
			clear(batch)
			continue
		}
		var timer <-chan time.Time
		release := func() {}
		if !next.IsZero() {
			timer, release = d.clock.Timer(next)
		}
		select {
		case <-stop:
			release()
			return
		case <-d.wake:
		case <-timer:
		}
		release()
	}
}

// close drops every held packet and refuses new ones. The goroutine must
// have stopped.
func (d *direction) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, it := range d.rq[d.rqHead:] {
		d.account(outcome.NotSpecified, it.pkt)
		it.pkt.DecRef()
		d.stats.droppedEnd.Add(1)
	}
	for _, it := range d.dq {
		d.account(outcome.NotSpecified, it.pkt)
		it.pkt.DecRef()
		d.stats.droppedEnd.Add(1)
	}
	d.rq, d.rqHead, d.rqBytes, d.dq, d.held = nil, 0, 0, nil, 0
	d.updateActiveLocked()
}

// account counts a packet the direction drops on its outcome link, if it
// has one.
func (d *direction) account(r outcome.Reason, pkt *stack.PacketBuffer) {
	if d.acct != nil {
		d.acct.Drop(r, d.hook, netstack.ProtoOf(pkt), pkt.Size())
	}
}

// addStats adds the direction's counters to m, prefixed with its name.
func (d *direction) addStats(m map[string]uint64) {
	s := &d.stats
	p := d.name + "_"
	m[p+"received"] = s.received.Load()
	m[p+"delivered"] = s.delivered.Load()
	m[p+"dropped_loss"] = s.droppedLoss.Load()
	m[p+"dropped_queue"] = s.droppedQueue.Load()
	m[p+"dropped_codel"] = s.droppedCoDel.Load()
	m[p+"dropped_closed"] = s.droppedEnd.Load()
	m[p+"duplicated"] = s.duplicated.Load()
	m[p+"corrupted"] = s.corrupted.Load()
	m[p+"reordered"] = s.reordered.Load()
	m[p+"tx_errors"] = s.txErrors.Load()
	d.mu.Lock()
	m[p+"queued"] = uint64(d.held)
	m[p+"backlog_bytes"] = uint64(d.rqBytes)
	d.mu.Unlock()
}

// wireSize is what pkt costs on the wire and how many wire packets it
// stands for: a GSO packet is cut into ceil(payload/MSS) segments, each
// with its own copy of the headers. A queue limit in packets thus means
// MTU-sized packets, as at a real bottleneck, not 64 KiB super-packets
// (which would make limit=1000 a 64 MB queue).
func wireSize(pkt *stack.PacketBuffer) (bytes, segs int) {
	size := pkt.Size()
	g := pkt.GSOOptions
	if g.Type == stack.GSONone || g.MSS == 0 {
		return size, 1
	}
	hdr := int(g.L3HdrLen)
	if off, ok := byteAt(pkt, hdr+12); ok && (g.Type == stack.GSOTCPv4 || g.Type == stack.GSOTCPv6) {
		hdr += int(off>>4) * 4
	} else {
		hdr += 8 // UDP
	}
	payload := size - hdr
	if payload <= int(g.MSS) {
		return size, 1
	}
	segs = (payload + int(g.MSS) - 1) / int(g.MSS)
	return size + (segs-1)*hdr, segs
}

// byteAt reads the byte at off of pkt's headers and data.
func byteAt(pkt *stack.PacketBuffer, off int) (byte, bool) {
	for _, s := range pkt.AsSlices() {
		if off < len(s) {
			return s[off], true
		}
		off -= len(s)
	}
	return 0, false
}

// packetBytes copies pkt's bytes: headers and data, unparsed.
func packetBytes(pkt *stack.PacketBuffer) []byte {
	b := make([]byte, 0, pkt.Size())
	for _, s := range pkt.AsSlices() {
		b = append(b, s...)
	}
	return b
}

// packetLike makes a packet of b with pkt's metadata.
func packetLike(pkt *stack.PacketBuffer, b []byte) *stack.PacketBuffer {
	c := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	c.NetworkProtocolNumber = pkt.NetworkProtocolNumber
	c.GSOOptions = pkt.GSOOptions
	c.RXChecksumValidated = pkt.RXChecksumValidated
	return c
}

// copyPacket makes a packet with a private copy of pkt's bytes.
func copyPacket(pkt *stack.PacketBuffer) *stack.PacketBuffer {
	return packetLike(pkt, packetBytes(pkt))
}

// corruptPacket copies pkt with one random bit flipped, after the IP
// header if anything follows it, and makes the receiver check checksums.
// (A GSO packet's checksum is computed at segmentation, after the flip, so
// its corruption goes unnoticed, as with netem and TSO.)
func corruptPacket(pkt *stack.PacketBuffer, rng *rand.Rand) *stack.PacketBuffer {
	b := packetBytes(pkt)
	if len(b) > 0 {
		start := 0
		switch b[0] >> 4 {
		case 4:
			start = int(b[0]&0xf) * 4
		case 6:
			start = 40
		}
		if start >= len(b) {
			start = 0
		}
		b[start+rng.IntN(len(b)-start)] ^= 1 << rng.IntN(8)
	}
	c := packetLike(pkt, b)
	c.RXChecksumValidated = false
	return c
}
