package appliance

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/nsappliance/appliance/hooks"
	"github.com/nsappliance/appliance/iptables"
)

// PolicyChain is the built-in chain holding the gateway's default policy.
// It lives in a filter table of its own, evaluated at INPUT and FORWARD
// just before the user's filter table, so iptables-restore of user rules
// cannot remove it; `appliance iptables -L` lists it after the user's
// chains, with counters.
const PolicyChain = "APPLIANCE-POLICY"

// Link-local metadata services every sandbox is kept from (cloud instance
// metadata: AWS, GCP, Azure, OpenStack at 169.254.169.254, AWS's IPv6
// endpoint at fd00:ec2::254).
var (
	metadata4 = netip.MustParseAddr("169.254.169.254")
	metadata6 = netip.MustParseAddr("fd00:ec2::254")
)

// policyRules returns the gateway's default policy as iptables-save text
// for each family: the metadata addresses are rejected, and unless
// allowLoopback so is TCP and UDP to the gateway address (which would
// reach the host's loopback).
func policyRules(v4, v6 Layout, allowLoopback bool) (string, string) {
	gen := func(l Layout, meta netip.Addr, bits int, adm, port string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:%s - [0:0]\n", PolicyChain)
		fmt.Fprintf(&b, "-A INPUT -j %s\n-A FORWARD -j %s\n", PolicyChain, PolicyChain)
		fmt.Fprintf(&b, "-A %s -d %s/%d -m comment --comment \"cloud metadata\" -j REJECT --reject-with %s\n", PolicyChain, meta, bits, adm)
		if !allowLoopback && l.Gateway.IsValid() {
			// NEW only: replies to published ports come from the
			// gateway address too.
			fmt.Fprintf(&b, "-A %s -d %s/%d -p tcp -m conntrack --ctstate NEW -m comment --comment \"host loopback\" -j REJECT --reject-with tcp-reset\n", PolicyChain, l.Gateway, bits)
			fmt.Fprintf(&b, "-A %s -d %s/%d -p udp -m conntrack --ctstate NEW -m comment --comment \"host loopback\" -j REJECT --reject-with %s\n", PolicyChain, l.Gateway, bits, port)
		}
		b.WriteString("COMMIT\n")
		return b.String()
	}
	t4 := gen(v4, metadata4, 32, "icmp-admin-prohibited", "icmp-port-unreachable")
	t6 := ""
	if v6.Prefix.IsValid() {
		t6 = gen(v6, metadata6, 128, "icmp6-adm-prohibited", "icmp6-port-unreachable")
	} else {
		t6 = gen(Layout{}, metadata6, 128, "icmp6-adm-prohibited", "icmp6-port-unreachable")
	}
	return t4, t6
}

// policyState is the default policy's rule sets (nil: none).
type policyState struct {
	v4, v6         *iptables.Ruleset
	track4, track6 bool
}

// SetPolicy installs the built-in policy chain from iptables-save text
// (see PolicyChain).
func (fw *Firewall) SetPolicy(v4, v6 string) error {
	var ps policyState
	var err error
	if ps.v4, err = iptables.Parse(strings.NewReader(v4), iptables.IPv4); err != nil {
		return fmt.Errorf("policy (iptables): %w", err)
	}
	if ps.v6, err = iptables.Parse(strings.NewReader(v6), iptables.IPv6); err != nil {
		return fmt.Errorf("policy (ip6tables): %w", err)
	}
	ps.track4, ps.track6 = needsTracking(ps.v4), needsTracking(ps.v6)
	ps.v4.SetLogger(fw.log)
	ps.v6.SetLogger(fw.log)
	fw.policy.Store(&ps)
	return nil
}

// Policy returns the built-in policy rule sets (nil if none).
func (fw *Firewall) Policy() (v4, v6 *iptables.Ruleset) {
	if ps := fw.policy.Load(); ps != nil {
		return ps.v4, ps.v6
	}
	return nil, nil
}

// evalPolicy runs the built-in policy chain (INPUT, FORWARD).
func (fw *Firewall) evalPolicy(p *hooks.Packet) hooks.Verdict {
	ps := fw.policy.Load()
	if ps == nil {
		return hooks.Accept
	}
	rs := ps.v4
	if p.Family == hooks.IPv6 {
		rs = ps.v6
	}
	return fw.execute(p, fw.eval(rs, iptables.TableFilter, p))
}

func (ps *policyState) tracks(f hooks.Family) bool {
	if ps == nil {
		return false
	}
	if f == hooks.IPv6 {
		return ps.track6
	}
	return ps.track4
}
