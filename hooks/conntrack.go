package hooks

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"sync"
	"sync/atomic"
	"time"
)

// Dir is the direction a packet travels in its connection.
type Dir uint8

// Directions.
const (
	DirOriginal Dir = iota
	DirReply
)

// CTState is a packet's conntrack state (ctinfo).
type CTState uint8

// Conntrack states. StateUntracked is what every packet has while tracking
// is off.
const (
	StateUntracked CTState = iota
	StateInvalid
	StateNew
	StateEstablished
	StateRelated
)

func (s CTState) String() string {
	return [...]string{"UNTRACKED", "INVALID", "NEW", "ESTABLISHED", "RELATED"}[s]
}

// Tuple identifies one direction of a connection. For ICMP echo, SrcPort is
// the identifier and DstPort tells requests (8) from replies (0).
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// Invert returns the tuple of the other direction.
func (t Tuple) Invert() Tuple {
	r := Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto}
	if t.Proto == ProtoICMP || t.Proto == ProtoICMPv6 {
		r.SrcPort = t.SrcPort
		r.DstPort = echoRequestKey - t.DstPort
	}
	return r
}

// Manip is a NAT manipulation: of the source (at POSTROUTING and INPUT) or
// of the destination (at PREROUTING and OUTPUT), as Linux's HOOK2MANIP.
type Manip uint8

// NAT manipulations.
const (
	ManipSrc Manip = iota
	ManipDst
)

// ManipOf returns the manipulation NAT does at hook h.
func ManipOf(h Hook) Manip {
	if h == Prerouting || h == Output {
		return ManipDst
	}
	return ManipSrc
}

// Conn status bits.
const (
	stSeenReply uint32 = 1 << iota
	stConfirmed
	stSrcNAT
	stDstNAT
	stSrcNATDone // NAT set up (maybe a null binding) for ManipSrc
	stDstNATDone
	stAssured
)

// TCP tracking states (a coarse nf_conntrack_proto_tcp).
const (
	tcpNone uint32 = iota
	tcpSynSent
	tcpSynRecv
	tcpEstablished
	tcpFinWait // a FIN seen
	tcpClose   // RST seen
)

// Conn is one tracked connection. Its tuples are fixed once it is confirmed
// (the first packet passed INPUT or POSTROUTING).
type Conn struct {
	ID    uint64
	orig  Tuple
	reply Tuple // as NAT left it
	// status and tcp are atomics: many packets of the connection read and
	// update them at once.
	status   atomic.Uint32
	tcp      atomic.Uint32
	deadline atomic.Int64 // unix nanoseconds
	// refs are what a packet carries (PacketBuffer.NFConn): the conn plus
	// the packet's state, without an allocation per packet.
	refs [numRefs]ctRef
}

type ctRef struct {
	c     *Conn
	dir   Dir
	state CTState
}

const (
	refNew = iota
	refEstablished
	refRelated
	refEstablishedReply
	refRelatedReply
	numRefs
)

// Original and Reply return the connection's tuples; Reply shows NAT.
func (c *Conn) Original() Tuple { return c.orig }

// Reply returns the reply-direction tuple.
func (c *Conn) Reply() Tuple { return c.reply }

// SeenReply reports whether a reply-direction packet was seen.
func (c *Conn) SeenReply() bool { return c.status.Load()&stSeenReply != 0 }

// NATed reports whether source (snat) and destination (dnat) NAT apply.
func (c *Conn) NATed() (snat, dnat bool) {
	s := c.status.Load()
	return s&stSrcNAT != 0, s&stDstNAT != 0
}

func (c *Conn) confirmed() bool { return c.status.Load()&stConfirmed != 0 }

func (c *Conn) setStatus(bit uint32) {
	for {
		o := c.status.Load()
		if o&bit == bit || c.status.CompareAndSwap(o, o|bit) {
			return
		}
	}
}

func newConn(id uint64, t Tuple) *Conn {
	c := &Conn{ID: id, orig: t, reply: t.Invert()}
	states := [numRefs]struct {
		dir Dir
		st  CTState
	}{
		refNew:              {DirOriginal, StateNew},
		refEstablished:      {DirOriginal, StateEstablished},
		refRelated:          {DirOriginal, StateRelated},
		refEstablishedReply: {DirReply, StateEstablished},
		refRelatedReply:     {DirReply, StateRelated},
	}
	for i, s := range states {
		c.refs[i] = ctRef{c: c, dir: s.dir, state: s.st}
	}
	return c
}

// Timeouts, Linux's defaults (nf_conntrack_*_timeout*) except established
// TCP (5 days there), which is shortened to bound the table.
const (
	timeoutTCPSyn         = 120 * time.Second
	timeoutTCPEstablished = 6 * time.Hour
	timeoutTCPFin         = 120 * time.Second
	timeoutTCPClose       = 10 * time.Second
	timeoutUDP            = 30 * time.Second
	timeoutUDPStream      = 120 * time.Second
	timeoutICMP           = 30 * time.Second
	timeoutGeneric        = 600 * time.Second
)

// defaultGCInterval is how often expired connections are swept while the
// table holds any (Linux's gc_worker rescans between 1 s and 60 s apart).
const defaultGCInterval = 5 * time.Second

// ConntrackOptions configures NewConntrack.
type ConntrackOptions struct {
	// Max bounds the number of connections; new ones beyond it are
	// INVALID (not tracked), as nf_conntrack_max drops them. Zero means
	// 262144.
	Max int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// GCInterval is how often a timer sweeps expired connections while
	// the table holds any, so that their memory is freed without new
	// connections (an insert sweeps only its own shard). Zero means 5 s;
	// negative turns the timer off (Sweep by hand).
	GCInterval time.Duration
}

const numShards = 64

// Conntrack tracks connections by tuple. Its methods are safe for
// concurrent use; lookups take one shard's lock.
type Conntrack struct {
	max    int
	now    func() time.Time
	nextID atomic.Uint64
	count  atomic.Int64
	shards [numShards]ctShard
	// byID finds a confirmed connection by ID (connlimit's Alive).
	byID sync.Map // uint64 -> *Conn

	// The GC timer runs only while the table holds connections: armed
	// by an insert into a table that had none, it stops when a sweep
	// leaves the table empty, or at Close.
	gcInterval time.Duration
	gcArmed    atomic.Bool
	gcMu       sync.Mutex
	// +checklocks:gcMu
	gcTimer *time.Timer
	// +checklocks:gcMu
	gcClosed bool

	Stats ConntrackStats
}

// ConntrackStats counts what conntrack did.
type ConntrackStats struct {
	Found, New, Invalid, Inserted, InsertFailed, Expired, Full atomic.Uint64
}

type ctShard struct {
	mu sync.Mutex
	// +checklocks:mu
	m map[Tuple]*ctRef // orig tuple -> refs[refNew], reply tuple -> refs[refEstablishedReply]
	// +checklocks:mu
	lastSweep int64
}

// NewConntrack returns an empty table.
func NewConntrack(opts ConntrackOptions) *Conntrack {
	if opts.Max <= 0 {
		opts.Max = 262144
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.GCInterval == 0 {
		opts.GCInterval = defaultGCInterval
	}
	ct := &Conntrack{max: opts.Max, now: opts.Now, gcInterval: opts.GCInterval}
	for i := range ct.shards {
		ct.shards[i].m = make(map[Tuple]*ctRef)
	}
	return ct
}

// Len returns the number of confirmed connections.
func (ct *Conntrack) Len() int { return int(ct.count.Load()) }

func (ct *Conntrack) shard(t Tuple) *ctShard { return &ct.shards[shardIndex(t)] }

func shardIndex(t Tuple) int {
	// A cheap mix of the fields that vary most.
	h := uint32(t.SrcPort)*31 + uint32(t.DstPort)*17 + uint32(t.Proto)
	b := t.Src.As16()
	d := t.Dst.As16()
	for i := 12; i < 16; i++ {
		h = h*131 + uint32(b[i]) + uint32(d[i])*7
	}
	return int(h % numShards)
}

// lookup finds the live entry for t.
func (ct *Conntrack) lookup(t Tuple, now int64) *ctRef {
	s := ct.shard(t)
	s.mu.Lock()
	r := s.m[t]
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	if r.c.deadline.Load() < now {
		if ct.remove(r.c) {
			ct.Stats.Expired.Add(1)
		}
		return nil
	}
	return r
}

// remove takes c out of the table; it reports whether c was there.
func (ct *Conntrack) remove(c *Conn) bool {
	removed := false
	for _, t := range []Tuple{c.orig, c.reply} {
		s := ct.shard(t)
		s.mu.Lock()
		if r, ok := s.m[t]; ok && r.c == c {
			delete(s.m, t)
			removed = true
		}
		s.mu.Unlock()
	}
	if removed {
		ct.byID.Delete(c.ID)
		ct.count.Add(-1)
	}
	return removed
}

// Conns returns a snapshot of the confirmed connections.
func (ct *Conntrack) Conns() []*Conn {
	var out []*Conn
	for i := range ct.shards {
		s := &ct.shards[i]
		s.mu.Lock()
		for t, r := range s.m {
			if t == r.c.orig {
				out = append(out, r.c)
			}
		}
		s.mu.Unlock()
	}
	return out
}

// Alive reports whether connection id is still in the table and not
// closing (what -m connlimit counts).
func (ct *Conntrack) Alive(id uint64) bool {
	v, ok := ct.byID.Load(id)
	if !ok {
		return false
	}
	c := v.(*Conn)
	if c.deadline.Load() < ct.now().UnixNano() {
		return false
	}
	st := c.tcp.Load()
	return st != tcpFinWait && st != tcpClose
}

// Flush forgets every connection.
func (ct *Conntrack) Flush() {
	for i := range ct.shards {
		s := &ct.shards[i]
		s.mu.Lock()
		s.m = make(map[Tuple]*ctRef)
		s.mu.Unlock()
	}
	ct.byID.Clear()
	ct.count.Store(0)
}

// In is the conntrack hook (PREROUTING and OUTPUT, at PriorityConntrack):
// it finds or creates the packet's connection, updates its state and
// attaches it to the packet (p.Conn, p.Dir, p.State and Buf.NFConn), as
// nf_conntrack_in does. A new connection is unconfirmed until Confirm.
func (ct *Conntrack) In(p *Packet) Verdict {
	nowT := ct.now()
	now := nowT.UnixNano()
	t, ok := p.Tuple()
	if !ok {
		if p.isICMPError() {
			if it, ok := p.innerTuple(); ok {
				// The error travels opposite to the packet it quotes.
				if r := ct.lookup(it.Invert(), now); r != nil {
					ref := &r.c.refs[refRelated]
					if r.dir == DirReply {
						ref = &r.c.refs[refRelatedReply]
					}
					ct.attach(p, ref)
					ct.Stats.Found.Add(1)
					return Accept
				}
			}
		}
		if p.Proto == ProtoTCP || p.Proto == ProtoUDP || p.Proto == ProtoICMP || p.Proto == ProtoICMPv6 {
			ct.invalid(p)
			return Accept
		}
		// Other protocols: tracked by addresses only (nf_conntrack_generic).
		t = Tuple{Src: p.Src, Dst: p.Dst, Proto: p.Proto}
	}
	if r := ct.lookup(t, now); r != nil {
		c := r.c
		if p.Proto == ProtoTCP && r.dir == DirOriginal && p.TCPFlags&(TCPSyn|TCPAck|TCPRst) == TCPSyn {
			if st := c.tcp.Load(); st == tcpClose || st == tcpFinWait {
				// A new SYN on a closed connection starts a new
				// one (Linux kills the old entry and repeats).
				ct.remove(c)
				return ct.create(p, t, nowT)
			}
		}
		ref := r
		if r.dir == DirReply {
			c.setStatus(stSeenReply)
		} else if c.SeenReply() {
			ref = &c.refs[refEstablished]
		}
		if p.Proto == ProtoTCP && !ct.tcpUpdate(c, r.dir, p.TCPFlags) {
			ct.invalid(p)
			return Accept
		}
		c.deadline.Store(now + int64(ct.timeout(c)))
		ct.attach(p, ref)
		ct.Stats.Found.Add(1)
		return Accept
	}
	return ct.create(p, t, nowT)
}

func (ct *Conntrack) create(p *Packet, t Tuple, nowT time.Time) Verdict {
	if p.Proto == ProtoTCP {
		// nf_conntrack_proto_tcp's tcp_new: a SYN, or (loose pickup) a
		// plain ACK starts a connection; anything else is invalid.
		f := p.TCPFlags & (TCPSyn | TCPAck | TCPRst | TCPFin)
		if f != TCPSyn && f != TCPAck {
			ct.invalid(p)
			return Accept
		}
	}
	if (p.Proto == ProtoICMP || p.Proto == ProtoICMPv6) && t.DstPort != echoRequestKey {
		ct.invalid(p) // an echo reply without a request
		return Accept
	}
	if int(ct.count.Load()) >= ct.max {
		// Full: expired entries only leave when their shard is swept,
		// which otherwise happens on insert; sweep one now, or a table
		// full of dead entries would refuse new connections forever.
		now := nowT.UnixNano()
		ct.sweep(ct.shard(t), now)
		ct.sweep(&ct.shards[int(ct.nextID.Load())%numShards], now)
		if int(ct.count.Load()) >= ct.max {
			ct.Stats.Full.Add(1)
			ct.invalid(p)
			return Accept
		}
	}
	c := newConn(ct.nextID.Add(1), t)
	if p.Proto == ProtoTCP {
		if p.TCPFlags&TCPSyn != 0 {
			c.tcp.Store(tcpSynSent)
		} else {
			c.tcp.Store(tcpEstablished)
		}
	}
	c.deadline.Store(nowT.UnixNano() + int64(ct.timeout(c)))
	ct.Stats.New.Add(1)
	ct.attach(p, &c.refs[refNew])
	return Accept
}

func (ct *Conntrack) invalid(p *Packet) {
	ct.Stats.Invalid.Add(1)
	p.Conn, p.Dir, p.State = nil, DirOriginal, StateInvalid
	p.Buf.NFConn = invalidRef
}

var (
	invalidRef   = &ctRef{state: StateInvalid}
	untrackedRef = &ctRef{state: StateUntracked}
)

// Untrack marks the packet untracked (what -j CT --notrack / NOTRACK do).
func Untrack(p *Packet) {
	p.Conn, p.Dir, p.State = nil, DirOriginal, StateUntracked
	p.Buf.NFConn = untrackedRef
}

func (ct *Conntrack) attach(p *Packet, r *ctRef) {
	p.Conn, p.Dir, p.State = r.c, r.dir, r.state
	p.Buf.NFConn = r
}

// fromBuf fills p's conntrack fields from what an earlier hook attached.
func fromBuf(p *Packet) {
	r, ok := p.Buf.NFConn.(*ctRef)
	if !ok || r == nil {
		p.Conn, p.Dir, p.State = nil, DirOriginal, StateUntracked
		return
	}
	p.Conn, p.Dir, p.State = r.c, r.dir, r.state
}

// tcpUpdate moves the coarse TCP state; false means the packet does not
// fit (Linux would call it INVALID).
func (ct *Conntrack) tcpUpdate(c *Conn, d Dir, flags uint8) bool {
	st := c.tcp.Load()
	next := st
	switch {
	case flags&TCPRst != 0:
		next = tcpClose
	case flags&TCPSyn != 0 && flags&TCPAck != 0:
		if d != DirReply {
			return st != tcpSynSent // SYN-ACK from the client
		}
		if st == tcpSynSent {
			next = tcpSynRecv
		}
	case flags&TCPSyn != 0:
		if d == DirReply && st == tcpSynSent {
			// Simultaneous open: allowed, stays.
			break
		}
	case flags&TCPFin != 0:
		next = tcpFinWait
	case flags&TCPAck != 0:
		if st == tcpSynRecv && d == DirOriginal {
			next = tcpEstablished
			c.setStatus(stAssured)
		}
	}
	if next != st {
		c.tcp.CompareAndSwap(st, next)
	}
	return true
}

func (ct *Conntrack) timeout(c *Conn) time.Duration {
	switch c.orig.Proto {
	case ProtoTCP:
		switch c.tcp.Load() {
		case tcpSynSent, tcpSynRecv:
			return timeoutTCPSyn
		case tcpFinWait:
			return timeoutTCPFin
		case tcpClose:
			return timeoutTCPClose
		}
		return timeoutTCPEstablished
	case ProtoUDP:
		if c.SeenReply() {
			return timeoutUDPStream
		}
		return timeoutUDP
	case ProtoICMP, ProtoICMPv6:
		return timeoutICMP
	}
	return timeoutGeneric
}

// Confirm is the confirm hook (INPUT and POSTROUTING, at
// PriorityConntrackConfirm): a packet that made it this far puts its new
// connection into the table, as __nf_conntrack_confirm does. A
// connection whose first packet was dropped never enters the table.
func (ct *Conntrack) Confirm(p *Packet) Verdict {
	c := p.Conn
	if c == nil || c.confirmed() {
		return Accept
	}
	ct.insert(c)
	return Accept
}

func (ct *Conntrack) insert(c *Conn) {
	now := ct.now().UnixNano()
	io, ir := shardIndex(c.orig), shardIndex(c.reply)
	so, sr := &ct.shards[io], &ct.shards[ir]
	lock2(ct, io, ir)
	_, e1 := so.m[c.orig]
	_, e2 := sr.m[c.reply]
	if e1 || e2 {
		unlock2(so, sr)
		ct.Stats.InsertFailed.Add(1)
		return
	}
	so.m[c.orig] = &c.refs[refNew]
	sr.m[c.reply] = &c.refs[refEstablishedReply]
	c.setStatus(stConfirmed)
	sweep := now-so.lastSweep > int64(time.Second)
	if sweep {
		so.lastSweep = now
	}
	ct.byID.Store(c.ID, c) // before unlocking: remove cannot run first
	unlock2(so, sr)
	ct.count.Add(1)
	ct.Stats.Inserted.Add(1)
	if sweep {
		ct.sweep(so, now)
	}
	if !ct.gcArmed.Load() {
		ct.armGC()
	}
}

// armGC starts the GC timer unless it runs or the table is closed.
func (ct *Conntrack) armGC() {
	if ct.gcInterval < 0 {
		return
	}
	ct.gcMu.Lock()
	defer ct.gcMu.Unlock()
	if ct.gcClosed || ct.gcArmed.Load() {
		return
	}
	ct.gcArmed.Store(true)
	if ct.gcTimer == nil {
		ct.gcTimer = time.AfterFunc(ct.gcInterval, ct.gc)
	} else {
		ct.gcTimer.Reset(ct.gcInterval)
	}
}

// gc is the GC timer's function: one sweep of the whole table, then again
// after gcInterval if connections are left. Clearing gcArmed before
// reading the count means an insert racing with the end of the timer
// either is seen here or rearms it.
func (ct *Conntrack) gc() {
	ct.gcMu.Lock()
	defer ct.gcMu.Unlock()
	if ct.gcClosed {
		return
	}
	ct.Sweep()
	ct.gcArmed.Store(false)
	if ct.Len() > 0 {
		ct.gcArmed.Store(true)
		ct.gcTimer.Reset(ct.gcInterval)
	}
}

// Sweep removes every expired connection now, as Linux's conntrack GC
// worker does, and returns how many it removed. The GC timer calls it;
// callers with the timer off call it themselves.
func (ct *Conntrack) Sweep() int {
	now := ct.now().UnixNano()
	n := 0
	for i := range ct.shards {
		n += ct.sweep(&ct.shards[i], now)
	}
	return n
}

// Close stops the GC timer and waits for a sweep that is running. The
// table keeps working; expired connections then leave only when an
// insert sweeps their shard.
func (ct *Conntrack) Close() {
	ct.gcMu.Lock()
	defer ct.gcMu.Unlock()
	ct.gcClosed = true
	if ct.gcTimer != nil {
		ct.gcTimer.Stop()
	}
}

func lock2(ct *Conntrack, i, j int) {
	if i == j {
		ct.shards[i].mu.Lock()
		return
	}
	// Lock in index order so two inserts cannot deadlock.
	if j < i {
		i, j = j, i
	}
	ct.shards[i].mu.Lock()
	ct.shards[j].mu.Lock()
}

func unlock2(a, b *ctShard) {
	a.mu.Unlock()
	if a != b {
		b.mu.Unlock()
	}
}

// sweep removes the expired connections of one shard and returns how
// many it removed (a connection whose two tuples share the shard is
// listed twice but removed and counted once).
func (ct *Conntrack) sweep(s *ctShard, now int64) int {
	var dead []*Conn
	s.mu.Lock()
	for _, r := range s.m {
		if r.c.deadline.Load() < now {
			dead = append(dead, r.c)
		}
	}
	s.mu.Unlock()
	n := 0
	for _, c := range dead {
		if ct.remove(c) {
			ct.Stats.Expired.Add(1)
			n++
		}
	}
	return n
}

// AttachAnswer gives answer, a packet built in reply to orig (a REJECT's
// TCP RST), orig's connection as RELATED in the opposite direction, as
// nf_ct_attach does: NAT then undoes orig's rewrite on it (and, if orig
// never reached POSTROUTING, the nat table sees the answer there). An
// untracked orig leaves answer to be tracked on its own.
func AttachAnswer(answer, orig *stack.PacketBuffer) {
	r, ok := orig.NFConn.(*ctRef)
	if !ok || r == nil || r.c == nil {
		answer.NFConn = nil
		return
	}
	if r.dir == DirOriginal {
		answer.NFConn = &r.c.refs[refRelatedReply]
	} else {
		answer.NFConn = &r.c.refs[refRelated]
	}
}
