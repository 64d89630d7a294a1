//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsappliance/appliance/internal/testbed"
)

// The gateway-mode twin of TestIptablesDifferential. In gateway mode the
// appliance terminates the container's traffic, so its rules sit at INPUT
// and OUTPUT; the kernel twin is a namespace acting as the gateway host
// itself: the container's veth peer is named tun0 like the appliance's
// NIC, has 10.0.2.2, and the servers' address 198.18.0.2 (fd00:198:18::2)
// is local to it, so the container's connections end in its INPUT chain
// and its answers leave through OUTPUT. The appliance twin relays the same
// connections to a server namespace at that address.

// gwProbes are sent from the container in both twins.
var gwProbes = []string{
	"t80=tcp:198.18.0.2:80", "t8080=tcp:198.18.0.2:8080",
	"u53=udp:198.18.0.2:53", "ping=ping:198.18.0.2", "pinggw=ping:10.0.2.2",
	"t6_80=tcp:[fd00:198:18::2]:80", "t6_8080=tcp:[fd00:198:18::2]:8080",
	"u6_53=udp:[fd00:198:18::2]:53", "ping6=ping:fd00:198:18::2",
}

func gwFilter(input, output string) string {
	return "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + input + output + "COMMIT\n"
}

func gwNAT(rules string) string {
	return "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" + rules + "COMMIT\n"
}

// gwExtraProbes are probes only some sets send: a ping to 198.18.0.99,
// which nobody answers unless DNAT sends it to 198.18.0.2 (without the
// rule the kernel twin does not take it as local and no INPUT rule sees
// it, while the gateway terminates every destination).
var gwExtraProbes = map[string][]string{
	"dnat-udp-and-ping": {"pingnat=ping:198.18.0.99"},
}

// gwSets are the gateway rule sets: INPUT/OUTPUT policy, port blocks,
// REJECT answers (also at OUTPUT), DNAT 8080 -> 80 for TCP, UDP and pings,
// user chains and an early-filter drop.
func gwSets() []ruleSet {
	empty4, empty6 := gwFilter("", ""), gwFilter("", "")
	both := func(name, v4, v6 string) ruleSet { return ruleSet{name: name, v4: v4, v6: v6} }
	estab := "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
	return []ruleSet{
		both("accept-all", empty4, empty6),
		both("default-drop-input-established",
			strings.Replace(gwFilter(estab+"-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT\n-A INPUT -p icmp -m icmp --icmp-type 8 -j ACCEPT\n", ""), ":INPUT ACCEPT", ":INPUT DROP", 1),
			strings.Replace(gwFilter(estab+"-A INPUT -p ipv6-icmp -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT\n", ""), ":INPUT ACCEPT", ":INPUT DROP", 1)),
		both("port-80-block", gwFilter("-A INPUT -p tcp -m tcp --dport 80 -j DROP\n", ""), gwFilter("-A INPUT -p tcp -m tcp --dport 80 -j DROP\n", "")),
		both("port-80-reset", gwFilter("-A INPUT -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset\n", ""),
			gwFilter("-A INPUT -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset\n", "")),
		both("udp-53-port-unreachable", gwFilter("-A INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n", ""),
			gwFilter("-A INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable\n", "")),
		both("ping-block", gwFilter("-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP\n", ""), gwFilter("-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j DROP\n", "")),
		both("ping-reject", gwFilter("-A INPUT -d 198.18.0.2/32 -p icmp -j REJECT --reject-with icmp-host-prohibited\n", ""),
			gwFilter("-A INPUT -d fd00:198:18::2/128 -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j REJECT --reject-with icmp6-adm-prohibited\n", "")),
		both("dnat-8080-to-80",
			gwNAT("-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination 198.18.0.2:80\n")+empty4,
			gwNAT("-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:198:18::2]:80\n")+empty6),
		both("dnat-udp-and-ping",
			gwNAT("-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination 198.18.0.2:53\n-A PREROUTING -d 198.18.0.99/32 -p icmp -j DNAT --to-destination 198.18.0.2\n")+empty4,
			empty6),
		both("output-drop-sport-80", gwFilter("", "-A OUTPUT -p tcp -m tcp --sport 80 -j DROP\n"), gwFilter("", "-A OUTPUT -p tcp -m tcp --sport 80 -j DROP\n")),
		both("output-reset-sport-8080", gwFilter("", "-A OUTPUT -p tcp -m tcp --sport 8080 -j REJECT --reject-with tcp-reset\n"),
			gwFilter("", "-A OUTPUT -p tcp -m tcp --sport 8080 -j REJECT --reject-with tcp-reset\n")),
		both("user-chain-multiport",
			"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:WEB - [0:0]\n-A INPUT -p tcp -m multiport --dports 80,8080 -j WEB\n-A WEB -p tcp -m tcp --dport 80 -j RETURN\n-A WEB -j DROP\nCOMMIT\n",
			"*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:WEB - [0:0]\n-A INPUT -p tcp -m multiport --dports 80,8080 -j WEB\n-A WEB -p tcp -m tcp --dport 8080 -j RETURN\n-A WEB -j DROP\nCOMMIT\n"),
		both("raw-early-udp-drop",
			"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p udp -m udp --dport 53 -j DROP\nCOMMIT\n"+empty4,
			"*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A PREROUTING -p udp -m udp --dport 53 -j DROP\nCOMMIT\n"+empty6),
	}
}

// peerRE matches what a relay changes by nature: the server sees the
// host's address and port, not the container's.
var peerRE = regexp.MustCompile(` peer=\S+ port=\S+`)

// TestIptablesGatewayDifferential loads each gateway rule set into a
// kernel namespace acting as the gateway host and into `appliance run`,
// sends the same probes from both containers and requires the same outcome
// (connected and the server's local address after DNAT, RST, ICMP error,
// timeout; not the peer, which the relay replaces) and the same counters
// for the rules at INPUT and in the raw and nat tables (the container's
// packets; what leaves through OUTPUT depends on the relay's timing).
func TestIptablesGatewayDifferential(t *testing.T) {
	requireRoot(t)
	sets := gwSets()
	if len(sets) < 10 {
		t.Fatalf("only %d rule sets", len(sets))
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// Kernel twin: KC --veth-- KG (the gateway host, the servers local).
	kc, kg := newNetns(t, "igkc"), newNetns(t, "igkg")
	must(kg.IP("link", "add", "name", "tun0", "type", "veth", "peer", "name", "eth0", "netns", kc.Name))
	must(kg.IP("addr", "add", gwV4+"/24", "dev", "tun0"))
	must(kg.IP("addr", "add", gwV6+"/64", "dev", "tun0", "nodad"))
	must(kg.IP("link", "set", "tun0", "up"))
	must(kg.IP("link", "set", "lo", "up"))
	must(kg.IP("addr", "add", "198.18.0.2/32", "dev", "lo"))
	must(kg.IP("addr", "add", "fd00:198:18::2/128", "dev", "lo"))
	// Unconnected UDP answers (fwserve's) leave from the servers'
	// address, as they do from the appliance twin's server namespace.
	must(kg.IP("route", "replace", "10.0.2.0/24", "dev", "tun0", "src", "198.18.0.2"))
	must(kg.IP("-6", "route", "add", contV6+"/128", "dev", "tun0", "src", "fd00:198:18::2"))
	must(kc.IP("addr", "add", contV4+"/24", "dev", "eth0"))
	must(kc.IP("addr", "add", contV6+"/64", "dev", "eth0", "nodad"))
	must(kc.IP("link", "set", "eth0", "up"))
	must(kc.IP("route", "add", "default", "via", gwV4))
	must(kc.IP("-6", "route", "add", "default", "via", gwV6))
	for _, s := range []string{"net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000"} {
		if _, err := kg.Run(ctx, "sysctl", "-qw", s); err != nil {
			t.Fatal(err)
		}
	}

	// Appliance twin: AC (container) -- appliance in AH --veth-- AS.
	ac, ah, as := newNetns(t, "igac"), newNetns(t, "igah"), newNetns(t, "igas")
	if _, err := testbed.Veth(ah, as, []netip.Prefix{hostV4, hostV6}, []netip.Prefix{srvV4, srvV6}); err != nil {
		t.Fatal(err)
	}
	f4, f6 := writeSet(t, dir, sets[0])
	app := startAppliance(t, ah, "--netns", ac.Path, "--rules", f4, "--rules6", f6)

	for _, ns := range []*testbed.Netns{kc, kg, ac, as} {
		_, err := ns.Run(ctx, "sysctl", "-qw", "net.ipv4.tcp_synack_retries=0")
		must(err)
	}
	for _, ns := range []*testbed.Netns{kg, as} {
		p := startHelper(t, ns, "fwserve", fwServe...)
		if err := p.WaitOutput("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// The appliance's tun0 comes up with its routes, and duplicate
	// address detection ends on the veths.
	if err := waitRoute(ac, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []*testbed.Netns{ah, as} {
		if err := waitNoTentative(ns, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	for i, set := range sets {
		t.Run(set.name, func(t *testing.T) {
			loadSet(t, dir, set, kg, app, i > 0)
			args := append(append([]string{fmt.Sprintf("base=%d", 40000+32*i)}, gwProbes...), gwExtraProbes[set.name]...)
			var k, a string
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); k = peerRE.ReplaceAllString(probe(t, kc, args), "") }()
			go func() { defer wg.Done(); a = peerRE.ReplaceAllString(probe(t, ac, args), "") }()
			wg.Wait()
			if k != a {
				t.Errorf("probe outcomes differ (-kernel +appliance):\n%s\nrules:\n%s\n%s", lineDiff(k, a), set.v4, set.v6)
			}
			pollCounters(t, set, func() string { return compareGatewayCounters(t, kg, app) })
		})
	}
}

// compareGatewayCounters compares the counters of the rules that see the
// container's packets: INPUT and user chains of the filter table, and the
// raw and nat tables' rules (not policies: the kernel twin's INPUT policy
// also counts its neighbour discovery).
func compareGatewayCounters(t *testing.T, kg *testbed.Netns, app *testbed.Appliance) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out strings.Builder
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		kc, err := kg.Run(ctx, save, "-c")
		if err != nil {
			t.Fatal(err)
		}
		ac, err := app.Ctl(ctx, save, "-c")
		if err != nil {
			t.Fatal(err)
		}
		kk, ak := gatewayCounters(saveCounters(string(kc), false)), gatewayCounters(saveCounters(string(ac), false))
		if kk != ak {
			fmt.Fprintf(&out, "%s -c counters differ (-kernel +appliance):\n%s", save, lineDiff(kk, ak))
		}
	}
	return out.String()
}

// gatewayCounters keeps the lines of saveCounters output that
// compareGatewayCounters compares.
func gatewayCounters(lines string) string {
	var keep []string
	for _, l := range strings.SplitAfter(lines, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || f[2] == "policy" || f[0] == "filter" && (f[1] == "OUTPUT" || f[1] == "FORWARD") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "")
}

// waitRoute waits until ns has IPv4 and IPv6 default routes through tun0
// and no tentative address (the appliance set up its TUN and DAD is over).
func waitRoute(ns *testbed.Netns, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := ns.Run(ctx, "sh", "-c", "ip route show default; ip -6 route show default; ip -6 addr show dev tun0")
		cancel()
		if err == nil && strings.Count(string(out), "default via") == 2 && !strings.Contains(string(out), "tentative") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no default route via tun0 in %s: %s %v", ns.Name, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitNoTentative waits until no IPv6 address in ns is tentative.
func waitNoTentative(ns *testbed.Netns, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := ns.Run(ctx, "ip", "-6", "addr", "show")
		cancel()
		if err == nil && !strings.Contains(string(out), "tentative") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tentative IPv6 addresses in %s: %s %v", ns.Name, out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
