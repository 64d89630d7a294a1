//go:build integration

package integration

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/internal/testbed"
)

// A firewall differential test loads the same rule set into a Linux router
// namespace (with the real iptables-restore) and into `appliance router`,
// sends the same probes through both, and requires the same outcome for
// every probe (verdict, REJECT answer, the addresses and ports the far end
// saw after NAT) and the same per-rule packet and byte counters.

// ruleSet is one differential case: iptables-save and ip6tables-save text.
type ruleSet struct {
	name   string
	v4, v6 string
}

// probes sent from side A and from side B (helper fwprobe syntax).
var (
	probesA = []string{
		"t80=tcp:10.2.0.100:80", "t8080=tcp:10.2.0.100:8080", "t22=tcp:10.2.0.100:22",
		"u53=udp:10.2.0.100:53", "u5353=udp:10.2.0.100:5353", "ping=ping:10.2.0.100",
		"pingr=ping:10.1.0.2",
		"t6_80=tcp:[fd00:0:0:b::100]:80", "t6_8080=tcp:[fd00:0:0:b::100]:8080",
		"u6_53=udp:[fd00:0:0:b::100]:53", "ping6=ping:fd00:0:0:b::100",
	}
	probesB = []string{
		"bt80=tcp:10.1.0.100:80", "bu53=udp:10.1.0.100:53", "bping=ping:10.1.0.100",
		"bt6_80=tcp:[fd00:0:0:a::100]:80",
	}
	fwServe = []string{"80/tcp", "8080/tcp", "53/udp"}
)

func TestIptablesDifferential(t *testing.T) {
	requireRoot(t)
	for _, bin := range []string{"iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"} {
		if _, err := lookPath(bin); err != nil {
			t.Fatalf("%s not installed (scripts/install-deps.sh installs it): %v", bin, err)
		}
	}
	sets := differentialSets()
	if len(sets) < 40 {
		t.Fatalf("only %d rule sets", len(sets))
	}
	dir := t.TempDir()

	// The kernel twin: A -- kr -- B over veths; kr's ends are named "a"
	// and "b" like the appliance's NICs, so -i/-o mean the same.
	ka, kr, kb := newNetns(t, "ifka"), newNetns(t, "ifkr"), newNetns(t, "ifkb")
	kernelRouter(t, ka, kr, kb)
	// The appliance twin.
	aa, ab, ah := newNetns(t, "ifaa"), newNetns(t, "ifab"), newNetns(t, "ifah")
	f4, f6 := writeSet(t, dir, sets[0])
	app := startRouter(t, ah, aa, ab, "--rules", f4, "--rules6", f6)
	for _, ns := range []*testbed.Netns{ka, kb, aa, ab} {
		// No SYN-ACK retransmissions: a handshake a rule broke must not
		// go on into the next rule set's counters.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := ns.Run(ctx, "sysctl", "-qw", "net.ipv4.tcp_synack_retries=0")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		p := startHelper(t, ns, "fwserve", fwServe...)
		if err := p.WaitOutput("ready", 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}

	for i, set := range sets {
		ok := t.Run(set.name, func(t *testing.T) {
			loadSet(t, dir, set, kr, app, i > 0)
			var kOut, aOut [2]string
			var wg sync.WaitGroup
			for j, side := range []struct {
				k, a   *testbed.Netns
				probes []string
			}{{ka, aa, probesA}, {kb, ab, probesB}} {
				wg.Add(2)
				args := append([]string{fmt.Sprintf("base=%d", 30000+64*i+32*j)}, side.probes...)
				go func() { defer wg.Done(); kOut[j] = probe(t, side.k, args) }()
				go func() { defer wg.Done(); aOut[j] = probe(t, side.a, args) }()
			}
			wg.Wait()
			if k, a := kOut[0]+kOut[1], aOut[0]+aOut[1]; k != a {
				t.Errorf("probe outcomes differ (-kernel +appliance):\n%s\nrules:\n%s\n%s", lineDiff(k, a), set.v4, set.v6)
			}
			if strings.HasPrefix(set.name, "raw-early") {
				// The leading raw rules ran in the early filter.
				c, err := control.NewClient(app.Name)
				if err != nil {
					t.Fatal(err)
				}
				var st map[string]uint64
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.Do(ctx, "GET", "/v1/iptables/stats", nil, &st); err != nil {
					t.Fatal(err)
				}
				if st["link0_early_dropped"]+st["link1_early_dropped"] == 0 || st["link0_early_rules_v4"] == 0 {
					t.Errorf("early filter dropped nothing: %v", st)
				}
			}
			// Counters, once every probe's packets have passed: a probe
			// whose RST a rule dropped leaves the server to close later,
			// so poll until both twins agree (bounded).
			pollCounters(t, set, func() string { return compareCounters(t, kr, app) })
		})
		if !ok && testing.Short() {
			break
		}
	}
}

// compareCounters returns a description of how the twins' counters differ,
// or "".
func compareCounters(t *testing.T, kr *testbed.Netns, app *testbed.Appliance) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out strings.Builder
	for _, fam := range []struct {
		save string
		v6   bool
	}{{"iptables-save", false}, {"ip6tables-save", true}} {
		kc, err := kr.Run(ctx, fam.save, "-c")
		if err != nil {
			t.Fatal(err)
		}
		ac, err := app.Ctl(ctx, fam.save, "-c")
		if err != nil {
			t.Fatal(err)
		}
		kk, ak := saveCounters(string(kc), fam.v6), saveCounters(string(ac), fam.v6)
		if kk != ak {
			fmt.Fprintf(&out, "%s -c counters differ (-kernel +appliance):\n%s", fam.save, lineDiff(kk, ak))
		}
	}
	return out.String()
}

func lookPath(bin string) (string, error) {
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		if p := filepath.Join(d, bin); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", bin)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func writeSet(t *testing.T, dir string, s ruleSet) (string, string) {
	t.Helper()
	f4, f6 := filepath.Join(dir, "rules.v4"), filepath.Join(dir, "rules.v6")
	if err := os.WriteFile(f4, []byte(s.v4), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f6, []byte(s.v6), 0o644); err != nil {
		t.Fatal(err)
	}
	return f4, f6
}

// loadSet writes set into dir and loads it into the kernel twin k with the
// real iptables-restore and, with intoApp (the appliance started with the
// first set), into app.
func loadSet(t *testing.T, dir string, set ruleSet, k *testbed.Netns, app *testbed.Appliance, intoApp bool) {
	t.Helper()
	f4, f6 := writeSet(t, dir, set)
	kernelRestore(t, k, "iptables-restore", f4)
	kernelRestore(t, k, "ip6tables-restore", f6)
	if !intoApp {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := app.Ctl(ctx, "iptables-restore", f4); err != nil {
		t.Fatalf("appliance iptables-restore: %v\n%s", err, out)
	}
	if out, err := app.Ctl(ctx, "ip6tables-restore", f6); err != nil {
		t.Fatalf("appliance ip6tables-restore: %v\n%s", err, out)
	}
}

// pollCounters fails t with compare's difference between the twins'
// counters unless they agree within about 2 s (seven looks).
func pollCounters(t *testing.T, set ruleSet, compare func() string) {
	t.Helper()
	for try := 0; ; try++ {
		diff := compare()
		if diff == "" {
			return
		}
		if try == 6 {
			t.Errorf("%s\nrules:\n%s\n%s", diff, set.v4, set.v6)
			return
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func kernelRestore(t *testing.T, ns *testbed.Netns, bin, file string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ns.Run(ctx, bin, file); err != nil {
		t.Fatalf("kernel: %v", err)
	}
}

// kernelRouter wires A -- R -- B like appliance router's defaults, with
// R forwarding and answering ICMP errors without rate limits (the
// appliance has none, and a rule set may REJECT several probes at once).
func kernelRouter(t *testing.T, a, r, b *testbed.Netns) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []struct {
		end  *testbed.Netns
		name string
		net4 string
		net6 string
	}{{a, "a", "10.1.0", "fd00:0:0:a::"}, {b, "b", "10.2.0", "fd00:0:0:b::"}} {
		must(r.IP("link", "add", "name", l.name, "type", "veth", "peer", "name", "eth0", "netns", l.end.Name))
		must(r.IP("addr", "add", l.net4+".2/24", "dev", l.name))
		must(r.IP("addr", "add", l.net6+"2/64", "dev", l.name, "nodad"))
		must(r.IP("link", "set", "dev", l.name, "up"))
		must(l.end.IP("addr", "add", l.net4+".100/24", "dev", "eth0"))
		must(l.end.IP("addr", "add", l.net6+"100/64", "dev", "eth0", "nodad"))
		must(l.end.IP("link", "set", "eth0", "up"))
		must(l.end.IP("route", "add", "default", "via", l.net4+".2"))
		must(l.end.IP("-6", "route", "add", "default", "via", l.net6+"2"))
	}
	for _, s := range []string{"net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0", "net.ipv4.icmp_msgs_per_sec=100000"} {
		if _, err := r.Run(ctx, "sysctl", "-qw", s); err != nil {
			t.Fatal(err)
		}
	}
}

// probe runs the probes in ns and returns their sorted outcome lines.
func probe(t *testing.T, ns *testbed.Netns, probes []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := runHelper(ctx, ns, "fwprobe", probes...)
	if err != nil {
		t.Errorf("probes in %s: %v", ns.Name, err)
	}
	// "from=" names the answering address, which is the same in both
	// twins by construction.
	return out
}

var counterRE = regexp.MustCompile(`^(?::(\S+) (\S+) )?\[(\d+):(\d+)\](?: -A (\S+))?`)

// saveCounters extracts "table chain index packets:bytes" lines from
// iptables-save -c text. For IPv6 only the FORWARD chain, user chains and
// nat rules are compared: the kernel router's own neighbour discovery and
// MLD pass its INPUT, OUTPUT, PREROUTING and POSTROUTING, netstack's TUN
// links have none.
func saveCounters(save string, v6 bool) string {
	var lines []string
	table := ""
	idx := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(save))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "*") {
			table = l[1:]
			idx = map[string]int{}
			continue
		}
		m := counterRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		chain, what := m[1], "policy"
		if chain == "" {
			chain = m[5]
			idx[chain]++
			what = fmt.Sprintf("rule%d", idx[chain])
		} else if m[2] == "-" {
			continue // user chains have no counters of their own
		}
		if v6 && !(chain == "FORWARD" || !builtinChain(chain) || table == "nat" && what != "policy") {
			continue
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %s:%s\n", table, chain, what, m[3], m[4]))
	}
	// iptables-save prints tables in the order the kernel lists them,
	// which is not the order they were loaded in.
	sort.Strings(lines)
	return strings.Join(lines, "")
}

func builtinChain(c string) bool {
	switch c {
	case "PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING":
		return true
	}
	return false
}

// lineDiff prints lines only in a as "-" and only in b as "+".
func lineDiff(a, b string) string {
	al, bl := strings.Split(strings.TrimSpace(a), "\n"), strings.Split(strings.TrimSpace(b), "\n")
	in := func(l []string, s string) bool {
		for _, x := range l {
			if x == s {
				return true
			}
		}
		return false
	}
	var out strings.Builder
	for _, l := range al {
		if !in(bl, l) {
			out.WriteString("-" + l + "\n")
		}
	}
	for _, l := range bl {
		if !in(al, l) {
			out.WriteString("+" + l + "\n")
		}
	}
	return out.String()
}

// tables builds iptables-save text: filter always, nat and mangle when
// given rules (so every set replaces every table the last one loaded).
func tables(filterPolicy map[string]string, filter, nat, mangle []string) string {
	var b strings.Builder
	b.WriteString("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	for _, r := range mangle {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	// One rule that never matches, so the nat table is always hooked:
	// iptables-nft creates a table's chains only with its first rule and
	// keeps them after, which would make counters depend on history.
	b.WriteString("-A POSTROUTING -o never0 -j ACCEPT\n")
	for _, r := range nat {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n*filter\n")
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		p := filterPolicy[c]
		if p == "" {
			p = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, p)
	}
	var user []string
	for _, r := range filter {
		if strings.HasPrefix(r, ":") {
			user = append(user, r)
		}
	}
	for _, u := range user {
		b.WriteString(u + "\n")
	}
	for _, r := range filter {
		if !strings.HasPrefix(r, ":") {
			b.WriteString(r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// differentialSets is the hand-written cases plus seeded random ones.
func differentialSets() []ruleSet {
	none := map[string]string{}
	drop := func(c string) map[string]string { return map[string]string{c: "DROP"} }
	empty6 := tables(none, nil, nil, nil)
	sets := []ruleSet{
		{"accept-all", tables(none, nil, nil, nil), empty6},
		{"port-80-block", tables(none, []string{"-A FORWARD -p tcp -m tcp --dport 80 -j DROP"}, nil, nil),
			tables(none, []string{"-A FORWARD -p tcp -m tcp --dport 80 -j DROP"}, nil, nil)},
		{"reject-reset-and-port-unreach", tables(none, []string{
			"-A FORWARD -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset",
			"-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"}, nil, nil),
			tables(none, []string{"-A FORWARD -p tcp -m tcp --dport 80 -j REJECT --reject-with tcp-reset",
				"-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp6-port-unreachable"}, nil, nil)},
		{"default-drop-forward-established", tables(drop("FORWARD"), []string{
			"-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A FORWARD -i a -o b -m conntrack --ctstate NEW -j ACCEPT"}, nil, nil),
			tables(drop("FORWARD"), []string{"-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
				"-A FORWARD -i a -o b -m conntrack --ctstate NEW -j ACCEPT"}, nil, nil)},
		{"default-drop-input-established", tables(drop("INPUT"), []string{
			"-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT"}, nil, nil), empty6},
		{"dnat-8080-to-80", tables(none, nil, []string{
			"-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.2.0.100:80"}, nil),
			tables(none, nil, []string{"-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:0:0:b::100]:80"}, nil)},
		{"dnat-udp-port", tables(none, nil, []string{
			"-A PREROUTING -i a -p udp -m udp --dport 53 -j DNAT --to-destination 10.2.0.100:5353"}, nil), empty6},
		{"redirect-8080", tables(none, nil, []string{
			"-A PREROUTING -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 80"}, nil), empty6},
		{"masquerade-b", tables(none, nil, []string{"-A POSTROUTING -o b -j MASQUERADE"}, nil),
			tables(none, nil, []string{"-A POSTROUTING -o b -j MASQUERADE"}, nil)},
		{"snat-port-range", tables(none, nil, []string{
			"-A POSTROUTING -o b -p tcp -j SNAT --to-source 10.2.0.2:20000",
			"-A POSTROUTING -o b -p udp -j SNAT --to-source 10.2.0.2"}, nil), empty6},
		{"reject-types", tables(none, []string{
			"-A FORWARD -p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-host-prohibited",
			"-A FORWARD -p tcp -m tcp --dport 8080 -j REJECT --reject-with icmp-net-unreachable",
			"-A FORWARD -p udp -j REJECT --reject-with icmp-admin-prohibited",
			"-A FORWARD -p icmp -j REJECT --reject-with icmp-host-unreachable"}, nil, nil),
			// Not here: REJECT of forwarded IPv6 TCP, which the kernel router
			// does not answer in this topology (open, docs/hooks.md).
			tables(none, []string{"-A FORWARD -p udp -j REJECT --reject-with icmp6-addr-unreachable",
				"-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type echo-request -j REJECT --reject-with icmp6-no-route"}, nil, nil)},
		{"user-chain-return", tables(none, []string{":CHK - [0:0]",
			"-A FORWARD -i a -j CHK", "-A FORWARD -p udp -j DROP",
			"-A CHK -p tcp -m multiport --dports 22,8080 -j REJECT --reject-with tcp-reset",
			"-A CHK -p udp -j RETURN", "-A CHK -j ACCEPT"}, nil, nil),
			tables(none, []string{":CHK - [0:0]", "-A FORWARD -j CHK", "-A CHK -p tcp -m tcp --dport 80 -j DROP", "-A CHK -j RETURN"}, nil, nil)},
		{"mark", tables(none, []string{"-A FORWARD -m mark --mark 0x1 -j DROP"}, nil,
			[]string{"-A PREROUTING -p udp -j MARK --set-xmark 0x1/0xffffffff"}),
			tables(none, []string{"-A FORWARD -m mark --mark 0x2/0x2 -j DROP"}, nil,
				[]string{"-A PREROUTING -p tcp -j MARK --set-xmark 0x2/0xffffffff"})},
		{"icmp-types", tables(none, []string{"-A FORWARD -p icmp -m icmp --icmp-type 8 -j DROP"}, nil, nil),
			tables(none, []string{"-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j DROP"}, nil, nil)},
		{"iprange-length", tables(none, []string{
			"-A FORWARD -m iprange --src-range 10.2.0.50-10.2.0.150 -j DROP",
			"-A FORWARD -p udp -m length --length 0:40 -j DROP"}, nil, nil), empty6},
		{"source-prefix-invert", tables(none, []string{"-A FORWARD ! -s 10.1.0.0/24 -j REJECT",
			"-A FORWARD -d 10.2.0.100/32 -p tcp -m tcp ! --dport 80 -j DROP"}, nil, nil),
			tables(none, []string{"-A FORWARD ! -s fd00:0:0:a::/64 -j DROP"}, nil, nil)},
		{"syn-flags", tables(none, []string{"-A FORWARD -i b -p tcp -m tcp --syn -j DROP",
			"-A FORWARD -p tcp -m tcp --tcp-flags SYN,ACK SYN,ACK -j ACCEPT"}, nil, nil), empty6},
		{"input-output-router", tables(none, []string{"-A INPUT -p icmp -j REJECT --reject-with icmp-port-unreachable",
			"-A OUTPUT -p icmp -j ACCEPT"}, nil, nil), empty6},
	}
	// Seeded random sets: 30 by default (about a second each),
	// APPLIANCE_FW_RANDOM=N for more.
	n := 30
	if v, err := strconv.Atoi(os.Getenv("APPLIANCE_FW_RANDOM")); err == nil && v >= 0 {
		n = v
	}
	for seed := uint64(1); seed <= uint64(n); seed++ {
		sets = append(sets, randomSet(seed))
	}
	// Last, because a set without a *raw section keeps the raw table:
	// rules the early filter runs on the TUN reader (the raw table's
	// leading PREROUTING DROP rules), then one it cannot express (-i)
	// and one after it, which stay in the slow path.
	raw := func(rules ...string) string {
		return "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + strings.Join(rules, "\n") + "\nCOMMIT\n"
	}
	sets = append(sets,
		ruleSet{"raw-early-drop", raw("-A PREROUTING -p udp -m udp --dport 5353 -j DROP",
			"-A PREROUTING -s 10.2.0.0/24 -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
			"-A PREROUTING ! -d 10.0.0.0/8 -j DROP") + tables(none, nil, nil, nil),
			raw("-A PREROUTING -p tcp -m tcp --dport 8080 -j DROP") + empty6},
		ruleSet{"raw-early-then-slow", raw("-A PREROUTING -p icmp -j DROP",
			"-A PREROUTING -i b -p udp -j DROP",
			"-A PREROUTING -p tcp -m tcp --dport 22 -j DROP") + tables(none, nil, nil, nil),
			raw("-A PREROUTING -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j DROP", "-A PREROUTING -i a -p udp -j DROP") + empty6})
	return sets
}

// randomSet generates rules from a small grammar of the matches and
// targets the probes can tell apart.
func randomSet(seed uint64) ruleSet {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	gen := func(v6 bool) string {
		policy := map[string]string{"FORWARD": pick("ACCEPT", "ACCEPT", "DROP")}
		icmp, rejICMP := "icmp", "icmp-port-unreachable"
		srcs := []string{"10.1.0.100/32", "10.1.0.0/24", "10.2.0.0/16", "192.0.2.0/24"}
		dsts := []string{"10.2.0.100", "10.2.0.0/24", "10.1.0.100/32"}
		if v6 {
			icmp, rejICMP = "ipv6-icmp", "icmp6-port-unreachable"
			srcs = []string{"fd00:0:0:a::100/128", "fd00:0:0:a::/64", "fd00::/16", "2001:db8::/32"}
			dsts = []string{"fd00:0:0:b::100", "fd00:0:0:b::/64", "fd00:0:0:a::100/128"}
		}
		var rules []string
		if policy["FORWARD"] == "DROP" && r.IntN(2) == 0 {
			rules = append(rules, "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
		}
		useChain := r.IntN(3) == 0
		if useChain {
			rules = append(rules, ":U"+fmt.Sprint(seed)+" - [0:0]")
		}
		n := 1 + r.IntN(5)
		for i := 0; i < n; i++ {
			var m []string
			chain := "FORWARD"
			if useChain && i > 0 && r.IntN(2) == 0 {
				chain = "U" + fmt.Sprint(seed)
			}
			proto := pick("", "tcp", "udp", icmp)
			if r.IntN(4) == 0 {
				m = append(m, pick("", "! ")+"-s "+pick(srcs...))
			}
			if r.IntN(4) == 0 {
				m = append(m, "-d "+pick(dsts...))
			}
			if r.IntN(4) == 0 {
				m = append(m, pick("-i a", "-i b", "-o b", "! -i a", "-i +"))
			}
			if proto != "" {
				m = append(m, "-p "+proto)
				switch proto {
				case "tcp", "udp":
					flags := proto == "tcp" && r.IntN(4) == 0
					switch r.IntN(3) {
					case 0:
						m = append(m, "-m "+proto, pick("", "! ")+"--dport "+pick("80", "8080", "53", "1:100", "5000:9000"))
						if flags {
							m = append(m, "--tcp-flags "+pick("SYN,ACK SYN", "SYN,ACK SYN,ACK", "FIN,SYN SYN"))
							flags = false
						}
					case 1:
						m = append(m, "-m multiport --dports "+pick("80,8080", "22,53", "53,5353,80"))
					}
					if flags {
						m = append(m, "-m tcp --tcp-flags "+pick("SYN,ACK SYN", "SYN,ACK SYN,ACK", "FIN,SYN SYN"))
					}
				}
			}
			if r.IntN(4) == 0 {
				m = append(m, "-m conntrack --ctstate "+pick("NEW", "ESTABLISHED", "NEW,ESTABLISHED", "INVALID"))
			}
			if r.IntN(6) == 0 {
				m = append(m, "-m length --length "+pick("0:100", "60:1500", "29"))
			}
			target := pick("ACCEPT", "DROP", "DROP", "REJECT --reject-with "+rejICMP, "RETURN")
			if proto == "tcp" && r.IntN(3) == 0 {
				target = "REJECT --reject-with tcp-reset"
			}
			if useChain && chain == "FORWARD" && r.IntN(2) == 0 {
				target = "U" + fmt.Sprint(seed)
			}
			if target == "RETURN" && chain == "FORWARD" {
				target = "ACCEPT"
			}
			if strings.HasPrefix(target, "REJECT --reject-with icmp") && proto != "udp" && proto != icmp {
				// An ICMP error for a TCP segment is timing on a kernel
				// router joined by veths: the router answers inside the
				// sender's own system call, while the socket is locked,
				// and Linux then keeps it as a soft error (reported at a
				// retransmission, or never). TCP gets RSTs instead.
				target = "DROP"
			}
			rules = append(rules, strings.TrimSpace("-A "+chain+" "+strings.Join(m, " ")+" -j "+target))
		}
		if useChain {
			rules = append(rules, "-A FORWARD -j U"+fmt.Sprint(seed))
		}
		var nat []string
		switch r.IntN(4) {
		case 0:
			nat = append(nat, "-A POSTROUTING -o b -j MASQUERADE")
		case 1:
			to := "10.2.0.100:80"
			if v6 {
				to = "[fd00:0:0:b::100]:80"
			}
			nat = append(nat, "-A PREROUTING -p tcp -m tcp --dport 8080 -j DNAT --to-destination "+to)
		}
		return tables(policy, rules, nat, nil)
	}
	return ruleSet{name: fmt.Sprintf("random-%d", seed), v4: gen(false), v6: gen(true)}
}
