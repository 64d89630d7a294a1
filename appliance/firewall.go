package appliance

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/hooks"
	"github.com/nsappliance/appliance/iptables"
	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

// Firewall is the appliance's iptables: an IPv4 and an IPv6 rule set
// evaluated at netstack's five hooks in netfilter's table order (raw,
// conntrack, mangle, nat, filter, then SNAT and confirm), with connection
// tracking, NAT and REJECT answers. Rule sets are replaced whole with one
// atomic store: a packet sees either the old or the new set, never half.
// Create it with NewFirewall; its methods are safe for concurrent use.
type Firewall struct {
	log *slog.Logger
	s   *netstack.Stack
	ns  *hooks.Netstack
	reg *hooks.Registry
	ct  *hooks.Conntrack
	cur atomic.Pointer[ruleState]
	// policy is the built-in default policy (SetPolicy).
	policy atomic.Pointer[policyState]

	// mu serialises edits (Apply, Exec, rollback).
	mu sync.Mutex
	// +checklocks:mu
	pending *pendingApply

	early []*EarlyFilter // set by NewFirewall, then read-only

	// local queues REJECT answers to netstack's own packets for delivery
	// back into netstack (see localAnswers).
	local localAnswers

	c fwCounters
}

// ruleState is one published pair of rule sets.
type ruleState struct {
	v4, v6 *iptables.Ruleset
	// eval4 and eval6 are what packets are evaluated against: v4 and v6
	// without the raw PREROUTING rules the early filters run.
	eval4, eval6 *iptables.Ruleset
	// track turns connection tracking on: a rule looks at ct state or
	// counts connections, or has a NAT target. As in Linux, where those
	// matches and targets load conntrack into the namespace, nothing else
	// does: without them no packet has a connection and the nat table
	// is never traversed. Per family, as Linux loads conntrack per
	// family (nf_ct_netns_get).
	track4, track6 bool
}

func (st *ruleState) tracks(f hooks.Family) bool {
	if f == hooks.IPv6 {
		return st.track6
	}
	return st.track4
}

type fwCounters struct {
	rejectSent, rejectFailed, natFailed atomic.Uint64
	// rejectLocal counts answers delivered back to netstack's own
	// sockets (REJECT at OUTPUT), also counted in rejectSent.
	rejectLocal atomic.Uint64
}

// pendingApply is an iptables-restore --rollback waiting for confirmation.
type pendingApply struct {
	prev  *ruleState
	timer *time.Timer
}

// FirewallOptions configures NewFirewall.
type FirewallOptions struct {
	// Logger receives LOG target lines and state changes; nil means
	// slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the conntrack table (0: hooks' default).
	MaxConns int
	// EarlyFilters are the links' early filters; every rule set
	// published is compiled into each.
	EarlyFilters []*EarlyFilter
}

// NewFirewall attaches an empty firewall (everything accepted, tracking
// off) to s.
func NewFirewall(s *netstack.Stack, opts FirewallOptions) (*Firewall, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	fw := &Firewall{
		log:   log.With("component", "iptables"),
		s:     s,
		reg:   hooks.NewRegistry(),
		ct:    hooks.NewConntrack(hooks.ConntrackOptions{Max: opts.MaxConns}),
		early: opts.EarlyFilters,
	}
	v4, v6 := iptables.New(iptables.IPv4), iptables.New(iptables.IPv6)
	fw.cur.Store(&ruleState{v4: v4, v6: v6, eval4: v4, eval6: v6})
	if err := fw.register(); err != nil {
		return nil, err
	}
	fw.ns = hooks.Attach(s.Stack, fw.reg)
	// Drops of received packets are packet outcomes (FilterRule).
	for _, h := range []struct {
		h hooks.Hook
		o outcome.Hook
	}{{hooks.Prerouting, outcome.HookPrerouting}, {hooks.Input, outcome.HookInput}, {hooks.Forward, outcome.HookForward}} {
		s.AddDropProbe(fw.ns.DropCounter(h.h), outcome.FilterRule, h.o)
	}
	return fw, nil
}

// Registry returns the hook registry, for more Go hook functions.
func (fw *Firewall) Registry() *hooks.Registry { return fw.reg }

// Conntrack returns the connection table.
func (fw *Firewall) Conntrack() *hooks.Conntrack { return fw.ct }

// Netstack returns the hooks' attachment to netstack (to run packets the
// appliance handles outside netstack through the hooks).
func (fw *Firewall) Netstack() *hooks.Netstack { return fw.ns }

func (fw *Firewall) register() error {
	table := func(name string) hooks.Func {
		return func(p *hooks.Packet) hooks.Verdict { return fw.evalTable(name, p) }
	}
	nat := func(p *hooks.Packet) hooks.Verdict { return fw.ct.NAT(p, fw.chooseNAT) }
	track := func(p *hooks.Packet) hooks.Verdict {
		if p.Buf.NFConn != nil || !fw.cur.Load().tracks(p.Family) && !fw.policy.Load().tracks(p.Family) {
			return hooks.Accept // already tracked (an answer we built), or off
		}
		return fw.ct.In(p)
	}
	ops := []hooks.Ops{
		{Name: "raw", Hook: hooks.Prerouting, Priority: hooks.PriorityRaw, Fn: table(iptables.TableRaw)},
		{Name: "conntrack_in", Hook: hooks.Prerouting, Priority: hooks.PriorityConntrack, Fn: track},
		{Name: "mangle", Hook: hooks.Prerouting, Priority: hooks.PriorityMangle, Fn: table(iptables.TableMangle)},
		{Name: "nat", Hook: hooks.Prerouting, Priority: hooks.PriorityDNAT, Fn: nat},

		{Name: "mangle", Hook: hooks.Input, Priority: hooks.PriorityMangle, Fn: table(iptables.TableMangle)},
		{Name: "policy", Hook: hooks.Input, Priority: hooks.PriorityFilter - 1, Fn: fw.evalPolicy},
		{Name: "filter", Hook: hooks.Input, Priority: hooks.PriorityFilter, Fn: table(iptables.TableFilter)},
		{Name: "nat", Hook: hooks.Input, Priority: hooks.PrioritySNAT, Fn: nat},
		{Name: "conntrack_confirm", Hook: hooks.Input, Priority: hooks.PriorityConntrackConfirm, Fn: fw.ct.Confirm},

		{Name: "mangle", Hook: hooks.Forward, Priority: hooks.PriorityMangle, Fn: table(iptables.TableMangle)},
		{Name: "policy", Hook: hooks.Forward, Priority: hooks.PriorityFilter - 1, Fn: fw.evalPolicy},
		{Name: "filter", Hook: hooks.Forward, Priority: hooks.PriorityFilter, Fn: table(iptables.TableFilter)},

		{Name: "raw", Hook: hooks.Output, Priority: hooks.PriorityRaw, Fn: table(iptables.TableRaw)},
		{Name: "conntrack_in", Hook: hooks.Output, Priority: hooks.PriorityConntrack, Fn: track},
		{Name: "mangle", Hook: hooks.Output, Priority: hooks.PriorityMangle, Fn: table(iptables.TableMangle)},
		{Name: "nat", Hook: hooks.Output, Priority: hooks.PriorityDNAT, Fn: nat},
		{Name: "filter", Hook: hooks.Output, Priority: hooks.PriorityFilter, Fn: table(iptables.TableFilter)},

		{Name: "mangle", Hook: hooks.Postrouting, Priority: hooks.PriorityMangle, Fn: table(iptables.TableMangle)},
		{Name: "nat", Hook: hooks.Postrouting, Priority: hooks.PrioritySNAT, Fn: nat},
		{Name: "conntrack_confirm", Hook: hooks.Postrouting, Priority: hooks.PriorityConntrackConfirm, Fn: fw.ct.Confirm},
	}
	for _, o := range ops {
		if _, err := fw.reg.Register(o); err != nil {
			return fmt.Errorf("firewall: %w", err)
		}
	}
	return nil
}

func (st *ruleState) of(f hooks.Family) *iptables.Ruleset {
	if f == hooks.IPv6 {
		return st.eval6
	}
	return st.eval4
}

// fill copies what rules look at from p into ip.
func (fw *Firewall) fill(ip *iptables.Packet, p *hooks.Packet) {
	ip.Family = iptables.Family(p.Family)
	ip.Hook = p.Hook
	ip.InIface, ip.OutIface = p.InIface, p.OutIface
	ip.Src, ip.Dst = p.Src, p.Dst
	ip.Protocol = p.Proto
	if p.HasL4 {
		ip.SrcPort, ip.DstPort = p.SrcPort, p.DstPort
		ip.TCPFlags = p.TCPFlags
		ip.ICMPType, ip.ICMPCode = p.ICMPType, p.ICMPCode
	}
	if p.Proto == hooks.ProtoICMP || p.Proto == hooks.ProtoICMPv6 {
		ip.SrcPort, ip.DstPort = 0, 0
	}
	ip.Length = p.Length
	ip.Fragment = p.Fragment
	ip.Mark = p.Buf.Mark
	switch p.State {
	case hooks.StateInvalid:
		ip.CTState = iptables.CTInvalid
	case hooks.StateNew:
		ip.CTState = iptables.CTNew
	case hooks.StateEstablished:
		ip.CTState = iptables.CTEstablished
	case hooks.StateRelated:
		ip.CTState = iptables.CTRelated
	default:
		ip.CTState = iptables.CTUntracked
	}
	if p.Conn != nil {
		snat, dnat := p.Conn.NATed()
		if snat {
			ip.CTState |= iptables.CTSNAT
		}
		if dnat {
			ip.CTState |= iptables.CTDNAT
		}
		ip.ConnID = p.Conn.ID
	}
	ip.Conns = fw.ct
}

// ipPackets recycles iptables.Packet: Eval hands it to match interfaces,
// so one on the stack would escape to the heap for every packet.
var ipPackets = sync.Pool{New: func() any { return new(iptables.Packet) }}

// eval fills an iptables.Packet from p, runs table and writes back the
// mark.
func (fw *Firewall) eval(rs *iptables.Ruleset, table string, p *hooks.Packet) iptables.Verdict {
	ip := ipPackets.Get().(*iptables.Packet)
	*ip = iptables.Packet{}
	fw.fill(ip, p)
	v := rs.Eval(table, ip)
	p.Buf.Mark = ip.Mark
	*ip = iptables.Packet{}
	ipPackets.Put(ip)
	return v
}

// evalTable runs one table at p's hook and executes its verdict.
func (fw *Firewall) evalTable(table string, p *hooks.Packet) hooks.Verdict {
	rs := fw.cur.Load().of(p.Family)
	if rs.Table(table) == nil {
		return hooks.Accept // not loaded: nothing to count either
	}
	return fw.execute(p, fw.eval(rs, table, p))
}

// execute carries out a filter verdict: REJECT answers and drops, DROP
// drops, anything else accepts (NAT targets outside the nat table cannot
// be loaded).
func (fw *Firewall) execute(p *hooks.Packet, v iptables.Verdict) hooks.Verdict {
	switch v.Kind {
	case iptables.Reject:
		fw.reject(p, v.Reject)
		return hooks.Drop
	case iptables.Drop:
		return hooks.Drop
	}
	return hooks.Accept
}

// chooseNAT is the nat table for Conntrack.NAT: it runs the table for a
// connection's first packet at this hook and turns its verdict into a
// concrete rewrite.
func (fw *Firewall) chooseNAT(p *hooks.Packet) (hooks.NATRange, bool, hooks.Verdict) {
	rs := fw.cur.Load().of(p.Family)
	v := fw.eval(rs, iptables.TableNAT, p)
	var r hooks.NATRange
	switch v.Kind {
	case iptables.Accept:
		return r, false, hooks.Accept
	case iptables.Drop:
		return r, false, hooks.Drop
	case iptables.Reject:
		fw.reject(p, v.Reject)
		return r, false, hooks.Drop
	}
	if v.NAT != nil {
		r.Addr = v.NAT.MinAddr
		r.MinPort, r.MaxPort = v.NAT.MinPort, v.NAT.MaxPort
		if r.MaxPort < r.MinPort {
			r.MaxPort = r.MinPort
		}
	}
	switch v.Kind {
	case iptables.Redirect:
		// To the input interface's primary address; locally generated
		// packets (OUTPUT) go to loopback.
		if p.Hook == hooks.Output {
			r.Addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
			if p.Family == hooks.IPv6 {
				r.Addr = netip.IPv6Loopback()
			}
		} else if a, ok := fw.nicAddr(p.InNIC, p.Family); ok {
			r.Addr = a
		} else {
			fw.c.natFailed.Add(1)
			return r, false, hooks.Drop
		}
	case iptables.Masquerade:
		var a netip.Addr
		if p.Route != nil {
			a = toAddr(p.Route.LocalAddress())
		}
		if !a.IsValid() || a.IsUnspecified() {
			var ok bool
			if a, ok = fw.nicAddr(p.OutNIC, p.Family); !ok {
				fw.c.natFailed.Add(1)
				return r, false, hooks.Drop
			}
		}
		r.Addr = a
	}
	return r, true, hooks.Accept
}

func (fw *Firewall) nicAddr(nic tcpip.NICID, f hooks.Family) (netip.Addr, bool) {
	if nic == 0 {
		return netip.Addr{}, false
	}
	proto := header.IPv4ProtocolNumber
	if f == hooks.IPv6 {
		proto = header.IPv6ProtocolNumber
	}
	a, err := fw.s.GetMainNICAddress(nic, proto)
	if err != nil || a.Address.Len() == 0 {
		return netip.Addr{}, false
	}
	return toAddr(a.Address), true
}

// Rules returns the current IPv4 and IPv6 rule sets (immutable).
func (fw *Firewall) Rules() (v4, v6 *iptables.Ruleset) {
	fw.SyncEarly() // the kernel's early drops go into the rules' counters first
	st := fw.cur.Load()
	return st.v4, st.v6
}

// SyncEarly brings what the early filters' kernel programs dropped into
// the rules' counters and the packet outcomes (EarlyFilter.Sync); a
// reader of the outcomes calls it first. Safe on a nil Firewall.
func (fw *Firewall) SyncEarly() {
	if fw == nil {
		return
	}
	for _, f := range fw.early {
		f.Sync()
	}
}

// needsTracking reports whether a rule set needs connection tracking.
func needsTracking(rs *iptables.Ruleset) bool {
	for _, t := range rs.Tables() {
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				if r.Target != nil {
					switch r.Target.Name() {
					case "DNAT", "SNAT", "MASQUERADE", "REDIRECT":
						return true
					}
				}
				for _, m := range r.Matches {
					switch m.Name() {
					case "state", "conntrack", "connlimit":
						return true
					}
				}
			}
		}
	}
	return false
}

// publish makes v4 and v6 the rule sets every packet sees from now on.
func (fw *Firewall) publishLocked(v4, v6 *iptables.Ruleset) *ruleState {
	v4.SetLogger(fw.log)
	v6.SetLogger(fw.log)
	st := &ruleState{v4: v4, v6: v6, eval4: v4, eval6: v6, track4: needsTracking(v4), track6: needsTracking(v6)}
	if len(fw.early) > 0 {
		var n4, n6 int
		for _, f := range fw.early {
			var p earlyProg
			p.v4, n4 = compileEarly(v4)
			p.v6, n6 = compileEarly(v6)
			f.install(&p)
		}
		st.eval4, st.eval6 = withoutLeading(v4, n4), withoutLeading(v6, n6)
	}
	return fw.cur.Swap(st)
}

// Set replaces the rule sets (nil keeps that family's).
func (fw *Firewall) Set(v4, v6 *iptables.Ruleset) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	cur := fw.cur.Load()
	if v4 == nil {
		v4 = cur.v4
	}
	if v6 == nil {
		v6 = cur.v6
	}
	fw.publishLocked(v4, v6)
}

// RestoreOptions configures Restore.
type RestoreOptions struct {
	// IPv6 reads ip6tables-save text.
	IPv6 bool
	// Test only parses (iptables-restore --test).
	Test bool
	// NoFlush adds to the tables instead of replacing them.
	NoFlush bool
	// Rollback, if positive, restores the previous rule sets after this
	// long unless Confirm is called first (iptables-apply).
	Rollback time.Duration
}

// ErrNoPendingRollback is returned by Confirm when nothing waits.
var ErrNoPendingRollback = errors.New("no iptables-restore --rollback is waiting for confirmation")

// ErrRollbackPending is returned by Restore and Exec while an earlier
// --rollback apply waits for confirmation.
var ErrRollbackPending = errors.New("an iptables-restore --rollback is waiting for confirmation (confirm it or let it roll back first)")

// Restore applies iptables-save text as iptables-restore does: all or
// nothing, one atomic switch.
func (fw *Firewall) Restore(r io.Reader, opts RestoreOptions) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	cur := fw.cur.Load()
	base := cur.v4
	if opts.IPv6 {
		base = cur.v6
	}
	next, err := iptables.Restore(base, r, iptables.RestoreOptions{NoFlush: opts.NoFlush})
	if err != nil {
		return err
	}
	if opts.Test {
		return nil
	}
	if fw.pending != nil {
		return ErrRollbackPending
	}
	v4, v6 := cur.v4, cur.v6
	if opts.IPv6 {
		v6 = next
	} else {
		v4 = next
	}
	prev := fw.publishLocked(v4, v6)
	fw.log.Info("rules applied", "family", next.Family(), "rollback", opts.Rollback)
	if opts.Rollback > 0 {
		p := &pendingApply{prev: prev}
		p.timer = time.AfterFunc(opts.Rollback, func() { fw.rollback(p) })
		fw.pending = p
	}
	return nil
}

func (fw *Firewall) rollback(p *pendingApply) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.pending != p {
		return // confirmed meanwhile
	}
	fw.pending = nil
	fw.publishLocked(p.prev.v4, p.prev.v6)
	fw.log.Warn("rules rolled back: not confirmed in time")
}

// Confirm keeps the rules of a pending --rollback apply.
func (fw *Firewall) Confirm() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.pending == nil {
		return ErrNoPendingRollback
	}
	fw.pending.timer.Stop()
	fw.pending = nil
	fw.log.Info("rules confirmed")
	return nil
}

// Pending reports whether a --rollback apply waits for confirmation.
func (fw *Firewall) Pending() bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.pending != nil
}

// Exec runs one iptables editing command (-A, -I, -D, -F, -N, -X, -P,
// ...) against the family's rule set and publishes the result.
func (fw *Firewall) Exec(ipv6 bool, cmd *iptables.Command) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.pending != nil {
		return ErrRollbackPending
	}
	cur := fw.cur.Load()
	v4, v6 := cur.v4, cur.v6
	base := v4
	if ipv6 {
		base = v6
	}
	next, err := base.Exec(cmd)
	if err != nil {
		return err
	}
	if next == base {
		return nil // -Z edits counters in place
	}
	if ipv6 {
		v6 = next
	} else {
		v4 = next
	}
	fw.publishLocked(v4, v6)
	return nil
}

// Close stops a pending rollback timer and conntrack's GC timer, and
// detaches the hooks.
func (fw *Firewall) Close() {
	fw.mu.Lock()
	if fw.pending != nil {
		fw.pending.timer.Stop()
		fw.pending = nil
	}
	fw.mu.Unlock()
	fw.ct.Close()
	fw.s.SetNFTablesConfigured(false)
	fw.local.close()
	for _, f := range fw.early {
		f.Close()
	}
}

// Counters returns the firewall's counters: per-hook packets and drops,
// conntrack and REJECT answers.
func (fw *Firewall) Counters() map[string]uint64 {
	m := fw.reg.Counters()
	st := &fw.ct.Stats
	m["conntrack_found"] = st.Found.Load()
	m["conntrack_new"] = st.New.Load()
	m["conntrack_invalid"] = st.Invalid.Load()
	m["conntrack_inserted"] = st.Inserted.Load()
	m["conntrack_insert_failed"] = st.InsertFailed.Load()
	m["conntrack_expired"] = st.Expired.Load()
	m["conntrack_full"] = st.Full.Load()
	m["conntrack_entries"] = uint64(fw.ct.Len())
	m["reject_sent"] = fw.c.rejectSent.Load()
	m["reject_failed"] = fw.c.rejectFailed.Load()
	m["reject_local"] = fw.c.rejectLocal.Load()
	m["nat_failed"] = fw.c.natFailed.Load()
	for i, f := range fw.early {
		for k, v := range f.Counters() {
			if len(fw.early) > 1 {
				k = fmt.Sprintf("link%d_%s", i, k)
			}
			m[k] = v
		}
	}
	return m
}

// writeAnswer sends a packet the firewall built (a REJECT answer) out of
// nic, through OUTPUT and POSTROUTING as Linux's ip_local_out would. A RST
// carries orig's connection (nf_ct_attach: ESTABLISHED, other direction,
// so NAT undoes orig's rewrite); an ICMP error (attach false) is tracked
// on its own and found RELATED to a confirmed connection, as icmp_send's
// would be. With local (the rejected packet was netstack's own, at
// OUTPUT) the answer is addressed to netstack itself: after OUTPUT and
// POSTROUTING it is delivered back into netstack as if received on nic,
// as Linux loops it back through lo, so the local socket sees the RST or
// ICMP error (a connect fails with ECONNREFUSED, EHOSTUNREACH, ...).
func (fw *Firewall) writeAnswer(nic tcpip.NICID, proto tcpip.NetworkProtocolNumber, b []byte, netLen, l4Len int, orig *stack.PacketBuffer, attach, local bool) {
	pkt := newRawPacket(proto, b, netLen, l4Len)
	defer pkt.DecRef()
	if attach {
		hooks.AttachAnswer(pkt, orig)
	}
	for _, h := range []hooks.Hook{hooks.Output, hooks.Postrouting} {
		if !fw.ns.Run(h, pkt, 0, nic) {
			return
		}
	}
	if local {
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(pkt.ToView())})
		in.NetworkProtocolNumber = proto
		in.NFConn = pkt.NFConn
		if !fw.local.queue(fw, localAnswer{nic: nic, proto: proto, pkt: in}) {
			in.DecRef()
			fw.c.rejectFailed.Add(1)
		}
		return
	}
	if err := fw.s.WriteRawPacket(nic, proto, buffer.MakeWithView(pkt.ToView())); err != nil {
		fw.c.rejectFailed.Add(1)
		return
	}
	fw.c.rejectSent.Add(1)
}

// localAnswers delivers REJECT answers to netstack's own packets back into
// netstack. Not from the hook that rejected: that runs inside netstack's
// output path, which may hold the very endpoint's locks the answer needs
// (Linux, too, queues a looped-back packet: netif_rx). A goroutine runs
// while answers wait and exits when none do; close waits for it.
type localAnswers struct {
	mu sync.Mutex
	// +checklocks:mu
	q []localAnswer
	// +checklocks:mu
	running bool
	// +checklocks:mu
	closed bool
	wg     sync.WaitGroup
}

type localAnswer struct {
	nic   tcpip.NICID
	proto tcpip.NetworkProtocolNumber
	pkt   *stack.PacketBuffer // owned by the queue
}

// maxLocalAnswers bounds the answers waiting for delivery.
const maxLocalAnswers = 256

// queue takes a; false means it was refused (full or closed) and the
// caller keeps a.pkt.
func (l *localAnswers) queue(fw *Firewall, a localAnswer) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed || len(l.q) >= maxLocalAnswers {
		return false
	}
	l.q = append(l.q, a)
	if !l.running {
		l.running = true
		l.wg.Add(1)
		go l.run(fw)
	}
	return true
}

func (l *localAnswers) run(fw *Firewall) {
	defer l.wg.Done()
	for {
		l.mu.Lock()
		if len(l.q) == 0 {
			l.running = false
			l.mu.Unlock()
			return
		}
		a := l.q[0]
		l.q = l.q[1:]
		l.mu.Unlock()
		if err := fw.s.DeliverInbound(a.nic, a.proto, a.pkt); err != nil {
			fw.c.rejectFailed.Add(1)
		} else {
			fw.c.rejectSent.Add(1)
			fw.c.rejectLocal.Add(1)
		}
		a.pkt.DecRef()
	}
}

// close refuses new answers, drops waiting ones and waits for the
// delivering goroutine.
func (l *localAnswers) close() {
	l.mu.Lock()
	l.closed = true
	q := l.q
	l.q = nil
	l.mu.Unlock()
	for _, a := range q {
		a.pkt.DecRef()
	}
	l.wg.Wait()
}

// newRawPacket wraps a complete IP packet b in a packet buffer with its
// network and transport headers parsed.
func newRawPacket(proto tcpip.NetworkProtocolNumber, b []byte, netLen, l4Len int) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	pkt.NetworkProtocolNumber = proto
	pkt.NetworkHeader().Consume(netLen)
	if proto == header.IPv4ProtocolNumber {
		pkt.TransportProtocolNumber = tcpip.TransportProtocolNumber(b[9])
	} else {
		pkt.TransportProtocolNumber = tcpip.TransportProtocolNumber(b[6])
	}
	pkt.TransportHeader().Consume(l4Len)
	return pkt
}

// RuleText is iptables-save (IPv4) and ip6tables-save (IPv6) text to
// apply when a gateway or router starts, before any packet flows.
type RuleText struct {
	IPv4, IPv6 string
}

// newFirewallWith attaches a firewall to s and loads rules; a parse error
// names the family and line.
func newFirewallWith(s *netstack.Stack, rules RuleText, early []*EarlyFilter, log *slog.Logger) (*Firewall, error) {
	fw, err := NewFirewall(s, FirewallOptions{Logger: log, EarlyFilters: early})
	if err != nil {
		return nil, err
	}
	if rules.IPv4 != "" {
		if err := fw.Restore(strings.NewReader(rules.IPv4), RestoreOptions{}); err != nil {
			fw.Close()
			return nil, fmt.Errorf("rules (iptables): %w", err)
		}
	}
	if rules.IPv6 != "" {
		if err := fw.Restore(strings.NewReader(rules.IPv6), RestoreOptions{IPv6: true}); err != nil {
			fw.Close()
			return nil, fmt.Errorf("rules (ip6tables): %w", err)
		}
	}
	return fw, nil
}
