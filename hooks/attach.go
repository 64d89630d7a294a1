package hooks

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Netstack runs a Registry at gVisor's five hook points. It implements
// stack.NFTablesInterface, which ipv4 and ipv6 call for every packet they
// receive, forward or send (after gVisor's own iptables, which stays
// unconfigured and so costs nothing). Create it with Attach.
type Netstack struct {
	reg   *Registry
	s     *stack.Stack
	names atomic.Pointer[[]string] // NIC names by ID, copy-on-write
	mu    sync.Mutex
	// drops counts packets the hooks dropped, per hook, as netstack
	// counters (for netstack.Stack.AddDropProbe).
	drops [NumHooks]tcpip.StatCounter
}

// DropCounter returns the counter of packets dropped at hook h.
func (n *Netstack) DropCounter(h Hook) *tcpip.StatCounter { return &n.drops[h] }

var _ stack.NFTablesInterface = (*Netstack)(nil)

var packetPool = sync.Pool{New: func() any { return new(Packet) }}

// Attach installs reg on s: from now on every packet passes reg's
// functions. Detach with s.SetNFTablesConfigured(false).
func Attach(s *stack.Stack, reg *Registry) *Netstack {
	n := &Netstack{reg: reg, s: s}
	s.SetNFTables(n)
	s.SetNFTablesConfigured(true)
	return n
}

// Registry returns the registry the stack runs.
func (n *Netstack) Registry() *Registry { return n.reg }

// NICName returns the name of NIC id, cached so the packet path takes no
// stack lock.
func (n *Netstack) NICName(id tcpip.NICID) string {
	if id == 0 {
		return ""
	}
	if p := n.names.Load(); p != nil && int(id) < len(*p) && (*p)[id] != "" {
		return (*p)[id]
	}
	name := n.s.FindNICNameFromID(id)
	if name == "" {
		return ""
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var old []string
	if p := n.names.Load(); p != nil {
		old = *p
	}
	nl := make([]string, max(len(old), int(id)+1))
	copy(nl, old)
	nl[id] = name
	n.names.Store(&nl)
	return name
}

func (n *Netstack) run(h Hook, pkt *stack.PacketBuffer, r *stack.Route) bool {
	p := packetPool.Get().(*Packet)
	p.reset(h, pkt, r)
	if !p.parse() {
		packetPool.Put(p)
		return true // not IP: nothing a rule could say about it
	}
	switch h {
	case Prerouting, Input:
		p.InNIC = pkt.InputNICID
	case Forward:
		p.InNIC = pkt.InputNICID
		if r != nil {
			p.OutNIC = r.NICID()
		}
	case Output, Postrouting:
		if r != nil {
			p.OutNIC = r.NICID()
		}
	}
	p.InIface, p.OutIface = n.NICName(p.InNIC), n.NICName(p.OutNIC)
	fromBuf(p)
	v := n.reg.Run(p)
	*p = Packet{}
	packetPool.Put(p)
	if v == Drop {
		n.drops[h].Increment()
	}
	return v == Accept
}

// Run passes a packet the appliance built or consumes outside netstack
// (its own ICMP echo answers, REJECT's answers) through hook h as if
// netstack had, with inNIC/outNIC as the devices. It returns false if the
// packet must not be delivered or sent.
func (n *Netstack) Run(h Hook, pkt *stack.PacketBuffer, inNIC, outNIC tcpip.NICID) bool {
	p := packetPool.Get().(*Packet)
	p.reset(h, pkt, nil)
	if !p.parse() {
		packetPool.Put(p)
		return true
	}
	p.InNIC, p.OutNIC = inNIC, outNIC
	p.InIface, p.OutIface = n.NICName(inNIC), n.NICName(outNIC)
	fromBuf(p)
	v := n.reg.Run(p)
	*p = Packet{}
	packetPool.Put(p)
	return v == Accept
}

// CheckPrerouting implements stack.NFTablesInterface.
func (n *Netstack) CheckPrerouting(pkt *stack.PacketBuffer, r *stack.Route, _ stack.AddressFamily) bool {
	return n.run(Prerouting, pkt, r)
}

// CheckInput implements stack.NFTablesInterface.
func (n *Netstack) CheckInput(pkt *stack.PacketBuffer, r *stack.Route, _ stack.AddressFamily) bool {
	return n.run(Input, pkt, r)
}

// CheckForward implements stack.NFTablesInterface.
func (n *Netstack) CheckForward(pkt *stack.PacketBuffer, r *stack.Route, _ stack.AddressFamily) bool {
	return n.run(Forward, pkt, r)
}

// CheckOutput implements stack.NFTablesInterface.
func (n *Netstack) CheckOutput(pkt *stack.PacketBuffer, r *stack.Route, _ stack.AddressFamily) bool {
	return n.run(Output, pkt, r)
}

// CheckPostrouting implements stack.NFTablesInterface.
func (n *Netstack) CheckPostrouting(pkt *stack.PacketBuffer, r *stack.Route, _ stack.AddressFamily) bool {
	return n.run(Postrouting, pkt, r)
}

// CheckIngress implements stack.NFTablesInterface (gVisor never calls it).
func (n *Netstack) CheckIngress(*stack.PacketBuffer, *stack.Route, stack.AddressFamily) bool {
	return true
}

// CheckEgress implements stack.NFTablesInterface (gVisor never calls it).
func (n *Netstack) CheckEgress(*stack.PacketBuffer, *stack.Route, stack.AddressFamily) bool {
	return true
}

// RegisterConntrack registers ct's hooks on reg: In at PREROUTING and
// OUTPUT (PriorityConntrack), Confirm at INPUT and POSTROUTING
// (PriorityConntrackConfirm). It returns the handles for Unregister.
func RegisterConntrack(reg *Registry, ct *Conntrack) ([]Handle, error) {
	var hs []Handle
	for _, o := range []Ops{
		{Name: "conntrack_in", Hook: Prerouting, Priority: PriorityConntrack, Fn: ct.In},
		{Name: "conntrack_in", Hook: Output, Priority: PriorityConntrack, Fn: ct.In},
		{Name: "conntrack_confirm", Hook: Input, Priority: PriorityConntrackConfirm, Fn: ct.Confirm},
		{Name: "conntrack_confirm", Hook: Postrouting, Priority: PriorityConntrackConfirm, Fn: ct.Confirm},
	} {
		h, err := reg.Register(o)
		if err != nil {
			for _, x := range hs {
				_ = reg.Unregister(x)
			}
			return nil, err
		}
		hs = append(hs, h)
	}
	return hs, nil
}
