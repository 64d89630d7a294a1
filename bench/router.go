package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// Router mode's topology uses the appliance's default subnets (CLI.md): the
// client at 10.1.0.100, the server at 10.2.0.100, the router at .2 on both.
const (
	routerClientAddr = "10.1.0.100"
	routerServerAddr = "10.2.0.100"
)

// setupKernelRouter: client <-veth-> router (ip_forward=1) <-veth-> server,
// every end at mtu: what the appliance's router mode stands in for. It has
// no link emulation even when Config.Emulate asks for it: this kernel has no
// netem (sch_netem), which is why the appliance emulates links at all. Its
// row is the un-emulated reference.
func (e *env) setupKernelRouter(mtu int) error {
	ns, err := e.netnses("c", "r", "s")
	if err != nil {
		return err
	}
	c, r, s := ns[0], ns[1], ns[2]
	for _, l := range []struct {
		a, b         *testbed.Netns
		addrA, addrB string
	}{
		{c, r, routerClientAddr + "/24", "10.1.0.2/24"},
		{r, s, "10.2.0.2/24", routerServerAddr + "/24"},
	} {
		if err := vethMTU(l.a, l.b, l.addrA, l.addrB, mtu); err != nil {
			return err
		}
	}
	if err := c.IP("route", "add", "default", "via", "10.1.0.2"); err != nil {
		return err
	}
	if err := s.IP("route", "add", "default", "via", "10.2.0.2"); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.Run(ctx, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	e.client, e.server = c, s
	return nil
}

// setupRouter: client -tun(mtu)-> `appliance router` in host -tun(mtu)->
// server.
func (e *env) setupRouter(cfg *Config, mtu int) error {
	ns, err := e.netnses("h", "c", "s")
	if err != nil {
		return err
	}
	h, c, s := ns[0], ns[1], ns[2]
	args := []string{"--name", testbed.UniqueName("bench"), "--mtu", fmt.Sprint(mtu), "--no-ipv6", "--log-level", "warn"}
	// The CC matrix names the kernel's algorithm here, which the
	// appliance's own registry need not have (forwarding does not use it).
	if cfg.CC != "" && !cfg.downOnly {
		args = append(args, "--cc", cfg.CC)
	}
	if cfg.Emulate != "" {
		args = append(args, "--emulate", cfg.Emulate)
	}
	a, err := testbed.StartMode(cfg.Bin, h, "router", append(args, c.Path, s.Path)...)
	if err != nil {
		return fmt.Errorf("appliance router: %w", err)
	}
	e.app, e.client, e.server = a, c, s
	return nil
}
