// Package ccgvisor plugs a cc.Registry into gVisor's TCP sender through
// the extension point of patch 0005 (docs/patches.md). Start with Install.
//
// The adapter is thin on purpose: tcp.CCSender has cc.Sender's method set,
// and tcp.RateSample has cc.RateSample's fields in the same order, so a
// rate sample is handed over by a pointer conversion, without a copy.
package ccgvisor

import (
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/bbr"
)

// Compile-time checks that the patch's types match the interface.
var (
	_ cc.Sender             = (*tcp.CCSender)(nil)
	_ cc.CwndLimitedSender  = (*tcp.CCSender)(nil)
	_ bbr.AppLimitedMarker  = (*tcp.CCSender)(nil)
	_ bbr.DepartureTimer    = (*tcp.CCSender)(nil)
	_                       = (*cc.RateSample)((*tcp.RateSample)(nil))
	_ tcp.CongestionOps     = (*ops)(nil)
	_ tcp.CongestionOpsInfo = (*ops)(nil)
)

// ssInfoer is the optional ability of an algorithm to print its own
// `ss -i` block (bbr.(*BBR).SSInfo, Linux's get_info).
type ssInfoer interface {
	SSInfo() string
}

// Install makes r the source of s's congestion controls: its names become
// net.ipv4.tcp_available_congestion_control, and every new connection
// (and every connection that selects an algorithm by socket option) runs
// r's algorithm through the cc interface, gVisor's built-in Reno and
// CUBIC included.
func Install(s *stack.Stack, r *cc.Registry) error {
	if r == nil {
		return fmt.Errorf("ccgvisor: nil registry")
	}
	if err := tcp.SetCongestionControlProvider(s, provider{r}); err != nil {
		return fmt.Errorf("ccgvisor: install: %s", err)
	}
	return nil
}

type provider struct{ r *cc.Registry }

func (p provider) CongestionControlNames() []string { return p.r.Names() }

func (p provider) NewCongestionOps(name string) tcp.CongestionOps {
	f, ok := p.r.Lookup(name)
	if !ok {
		return nil
	}
	a := f()
	ctl, _ := a.(cc.CongController)
	return &ops{alg: a, ctl: ctl}
}

// ops adapts a cc.Algorithm to tcp.CongestionOps.
type ops struct {
	alg cc.Algorithm
	ctl cc.CongController // nil unless alg owns cwnd
}

func (o *ops) Init(s *tcp.CCSender) { o.alg.Init(s) }
func (o *ops) Release()             { o.alg.Release() }
func (o *ops) SSThresh() uint32     { return o.alg.SSThresh() }
func (o *ops) CongAvoid(acked uint32) {
	o.alg.CongAvoid(acked)
}
func (o *ops) SetState(st tcp.CAState) { o.alg.SetState(cc.State(st)) }
func (o *ops) CwndEvent(ev tcp.CAEvent) {
	o.alg.CwndEvent(cc.Event(ev))
}
func (o *ops) PktsAcked(acked uint32, rtt time.Duration, inFlight uint32) {
	o.alg.PktsAcked(cc.AckSample{PktsAcked: acked, RTT: rtt, InFlight: inFlight})
}
func (o *ops) UndoCwnd() uint32 { return o.alg.UndoCwnd() }
func (o *ops) CongControl(rs *tcp.RateSample) {
	o.ctl.CongControl((*cc.RateSample)(rs))
}
func (o *ops) OwnsCwnd() bool { return o.ctl != nil }

// SSInfo returns the algorithm's own `ss -i` block, "" if it has none.
func (o *ops) SSInfo() string {
	if si, ok := o.alg.(ssInfoer); ok {
		return si.SSInfo()
	}
	return ""
}
