// Package hooks gives netstack Linux's netfilter hook points: Go functions
// registered at PREROUTING, INPUT, FORWARD, OUTPUT or POSTROUTING with a
// priority, as nf_register_net_hook registers nf_hook_ops, run for every
// packet netstack receives, forwards or sends. It also keeps the connection
// tracking the hooks see (Conntrack) and rewrites packets for NAT with
// incrementally fixed checksums (RFC 1624).
//
// Start with NewRegistry and Register; Attach installs a registry on a
// gVisor stack (through stack.NFTablesInterface, so gVisor's own iptables and
// its per-packet conntrack stay off).
package hooks

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/nsappliance/appliance/iptables"
)

// Hook is one of netfilter's five hook points, numbered as in Linux
// (NF_INET_PRE_ROUTING = 0, ...). It is the rule language's type, so a
// hook point passes between the two packages without conversion.
type Hook = iptables.Hook

// The hook points.
const (
	Prerouting  = iptables.Prerouting
	Input       = iptables.Input
	Forward     = iptables.Forward
	Output      = iptables.Output
	Postrouting = iptables.Postrouting
	// NumHooks is the number of hook points.
	NumHooks = iptables.NumHooks
)

// Verdict is what a hook function decides for a packet.
type Verdict uint8

// Verdicts. Only Accept lets the packet continue to the next function.
const (
	// Accept passes the packet on.
	Accept Verdict = iota
	// Drop discards the packet.
	Drop
	// Stolen means the function took the packet over (it sent an answer
	// or queued it itself): netstack stops processing it, as for Drop, but
	// it is not counted as a drop.
	Stolen
)

func (v Verdict) String() string {
	switch v {
	case Accept:
		return "ACCEPT"
	case Drop:
		return "DROP"
	case Stolen:
		return "STOLEN"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Priority orders the functions at one hook: ascending, equal priorities in
// registration order. The named priorities are Linux's
// nf_ip_hook_priorities, with gaps for functions in between.
type Priority int32

// Named priorities (include/uapi/linux/netfilter_ipv4.h).
const (
	PriorityFirst            Priority = math.MinInt32
	PriorityRaw              Priority = -300
	PriorityConntrack        Priority = -200
	PriorityMangle           Priority = -150
	PriorityDNAT             Priority = -100
	PriorityFilter           Priority = 0
	PrioritySecurity         Priority = 50
	PrioritySNAT             Priority = 100
	PriorityLast             Priority = math.MaxInt32 - 1
	PriorityConntrackConfirm Priority = math.MaxInt32
)

// Func is a hook function. It runs on the packet path: it must not block,
// and should not allocate. It may rewrite the packet through p's methods.
type Func func(p *Packet) Verdict

// Ops describes one registration, like struct nf_hook_ops.
type Ops struct {
	// Name identifies the function in listings and errors.
	Name     string
	Hook     Hook
	Priority Priority
	Fn       Func
}

// ErrNotRegistered is returned by Unregister for an unknown handle.
var ErrNotRegistered = errors.New("hook not registered")

type entry struct {
	id  uint64
	ops Ops
}

// Registry holds the functions of the five hooks. Run reads them without
// a lock (each hook's list is published with one atomic store); Register
// and Unregister copy and republish. Its methods are safe for concurrent
// use.
type Registry struct {
	mu sync.Mutex
	// +checklocks:mu
	next  uint64
	lists [NumHooks]atomic.Pointer[[]entry]
	stats [NumHooks]hookStats
}

type hookStats struct {
	packets, dropped, stolen atomic.Uint64
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Handle identifies a registration for Unregister.
type Handle struct {
	hook Hook
	id   uint64
}

// Register adds ops.Fn at ops.Hook. It is placed after every function with
// a lower or equal priority.
func (r *Registry) Register(ops Ops) (Handle, error) {
	if ops.Fn == nil {
		return Handle{}, fmt.Errorf("hook %q: nil func", ops.Name)
	}
	if ops.Hook >= NumHooks {
		return Handle{}, fmt.Errorf("hook %q: bad hook %d", ops.Name, ops.Hook)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.next++
	e := entry{id: r.next, ops: ops}
	var old []entry
	if p := r.lists[ops.Hook].Load(); p != nil {
		old = *p
	}
	i := 0
	for i < len(old) && old[i].ops.Priority <= ops.Priority {
		i++
	}
	nl := slices.Insert(slices.Clone(old), i, e)
	r.lists[ops.Hook].Store(&nl)
	return Handle{hook: ops.Hook, id: e.id}, nil
}

// Unregister removes a registration. Packets already running it may still
// call it once.
func (r *Registry) Unregister(h Handle) error {
	if h.hook >= NumHooks {
		return ErrNotRegistered
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.lists[h.hook].Load()
	if p == nil {
		return ErrNotRegistered
	}
	i := slices.IndexFunc(*p, func(e entry) bool { return e.id == h.id })
	if i < 0 {
		return ErrNotRegistered
	}
	nl := slices.Delete(slices.Clone(*p), i, i+1)
	r.lists[h.hook].Store(&nl)
	return nil
}

// List returns the registrations at hook h in the order they run.
func (r *Registry) List(h Hook) []Ops {
	p := r.lists[h].Load()
	if p == nil {
		return nil
	}
	out := make([]Ops, len(*p))
	for i, e := range *p {
		out[i] = e.ops
	}
	return out
}

// Run passes p through the functions at p.Hook in order until one returns
// something other than Accept, and returns that verdict (Accept if all
// accepted or none is registered).
func (r *Registry) Run(p *Packet) Verdict {
	l := r.lists[p.Hook].Load()
	if l == nil {
		return Accept
	}
	st := &r.stats[p.Hook]
	st.packets.Add(1)
	for i := range *l {
		switch v := (*l)[i].ops.Fn(p); v {
		case Accept:
		case Stolen:
			st.stolen.Add(1)
			return v
		default:
			st.dropped.Add(1)
			return Drop
		}
	}
	return Accept
}

// Counters returns per-hook counts as hook_<name>_{packets,dropped,stolen}.
func (r *Registry) Counters() map[string]uint64 {
	m := make(map[string]uint64, 3*NumHooks)
	for h := Hook(0); h < NumHooks; h++ {
		n := "hook_" + lower(h.String())
		m[n+"_packets"] = r.stats[h].packets.Load()
		m[n+"_dropped"] = r.stats[h].dropped.Load()
		m[n+"_stolen"] = r.stats[h].stolen.Load()
	}
	return m
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
