package netstack

import (
	"fmt"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/bbr"
	"github.com/nsappliance/appliance/cc/ccgvisor"
	"github.com/nsappliance/appliance/cc/cubic"
	"github.com/nsappliance/appliance/cc/reno"
)

// CongestionControls returns the appliance's congestion-control registry:
// reno (the fallback, always present), cubic and bbr, in that order (the
// order of net.ipv4.tcp_available_congestion_control).
func CongestionControls() *cc.Registry {
	r, err := cc.NewRegistry("reno", reno.New)
	if err != nil {
		panic(err) // a constant name: programmer error
	}
	for _, a := range []struct {
		name string
		f    cc.Factory
	}{
		{"cubic", cubic.New},
		{"bbr", bbr.New},
	} {
		if err := r.Register(a.name, a.f); err != nil {
			panic(err)
		}
	}
	return r
}

// installCC makes r the stack's source of congestion controls.
func (s *Stack) installCC(r *cc.Registry) error {
	if r == nil {
		r = CongestionControls()
	}
	if err := ccgvisor.Install(s.Stack, r); err != nil {
		return fmt.Errorf("netstack: %w", err)
	}
	s.cc = r
	return nil
}

// CongestionControls returns the registry the stack's TCP uses.
func (s *Stack) CongestionControls() *cc.Registry { return s.cc }
