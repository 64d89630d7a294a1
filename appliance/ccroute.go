package appliance

import (
	"fmt"
	"net/netip"
	"strings"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// CCRoute gives connections to a destination prefix their own congestion
// control, as Linux's `ip route add PREFIX ... congctl NAME` does.
type CCRoute struct {
	Prefix netip.Prefix
	CC     string
}

// ParseCCRoute parses CIDR=NAME (e.g. 192.0.2.0/24=bbr).
func ParseCCRoute(s string) (CCRoute, error) {
	cidr, name, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return CCRoute{}, fmt.Errorf("want CIDR=NAME")
	}
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil {
		return CCRoute{}, fmt.Errorf("bad CIDR %q", cidr)
	}
	return CCRoute{Prefix: p.Masked(), CC: strings.TrimSpace(name)}, nil
}

// String formats r as ParseCCRoute reads it.
func (r CCRoute) String() string { return r.Prefix.String() + "=" + r.CC }

// ccFor returns the congestion control for a connection whose host-side
// destination is dst: the longest matching prefix wins, as in routing;
// "" keeps the stack default.
func ccFor(routes []CCRoute, dst netip.Addr) string {
	best, bits := "", -1
	dst = dst.Unmap()
	for _, r := range routes {
		if r.Prefix.Contains(dst) && r.Prefix.Bits() > bits {
			best, bits = r.CC, r.Prefix.Bits()
		}
	}
	return best
}

// applyCCRoute switches a freshly accepted endpoint to the algorithm its
// destination's route names, before any data is sent.
func (g *Gateway) applyCCRoute(ep tcpip.Endpoint, dst netip.Addr) {
	name := ccFor(g.opts.CCRoutes, dst)
	if name == "" {
		return
	}
	o := tcpip.CongestionControlOption(name)
	if err := ep.SetSockOpt(&o); err != nil {
		// Validated at startup; only an unregistered name gets here.
		g.log.Warn("cc route not applied", "dst", dst, "cc", name, "err", err.String())
	}
}

// validateCCRoutes checks every route's algorithm against the stack's.
func validateCCRoutes(routes []CCRoute, check func(string) error) error {
	for _, r := range routes {
		if !r.Prefix.IsValid() {
			return fmt.Errorf("cc route %q: invalid prefix", r)
		}
		if err := check(r.CC); err != nil {
			return fmt.Errorf("cc route %s: %w", r, err)
		}
	}
	return nil
}
