package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/nsappliance/appliance/appliance"
	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/tun"
)

// Helpers `run` and `router` share: flag checks that run before anything
// changes on the machine, and the TUN plan of a link.

// parseLayout parses flag's CIDR value s, IPv4 or IPv6 as v4 says, into the
// .100 / .2 / .3 layout.
func parseLayout(flag, s string, v4 bool) (appliance.Layout, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is4() != v4 || p.Addr().Is4In6() {
		fam := map[bool]string{true: "IPv4", false: "IPv6"}[v4]
		return appliance.Layout{}, usagef("%s %q: not an %s CIDR", flag, s, fam)
	}
	l, err := appliance.NewLayout(p)
	if err != nil {
		return l, usagef("%s: %v", flag, err)
	}
	return l, nil
}

// checkCC fails when netstack has no congestion control named cc.
func checkCC(cc string) error {
	probe, err := netstack.New(netstack.Options{CongestionControl: cc})
	if err != nil {
		return usagef("--cc %q: %v", cc, err)
	}
	probe.Destroy()
	return nil
}

// checkNetnsPath fails unless p names a file (a namespace), naming flag.
func checkNetnsPath(flag, p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return usagef("%s %q: %v", flag, p, errors.Unwrap(err))
	}
	if st.IsDir() {
		return usagef("%s %q: is a directory, not a namespace file", flag, p)
	}
	return nil
}

// tunPlan is what the namespace side of a link gets: the .100 addresses
// and default routes via .2 of v4 and, when set, v6.
func tunPlan(v4, v6 appliance.Layout) (addrs []netip.Prefix, gws []netip.Addr) {
	for _, l := range []appliance.Layout{v4, v6} {
		if l.Prefix.IsValid() {
			addrs = append(addrs, netip.PrefixFrom(l.Container, l.Prefix.Bits()))
			gws = append(gws, l.Gateway)
		}
	}
	return addrs, gws
}

// deviceGone says why the appliance stops when its TUN disappeared.
func deviceGone(dev *tun.Device, ns string, ep *tun.Endpoint) error {
	return fmt.Errorf("tun device %s in %s went away (namespace deleted?): %v", dev.Name, ns, ep.Err())
}
