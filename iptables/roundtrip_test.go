package iptables

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// TestRuleRoundTrip parses single rules, checks iptables-save's canonical
// form (taken from the real iptables-save, see testdata/golden) and that
// the canonical form parses back to itself.
func TestRuleRoundTrip(t *testing.T) {
	cases := []struct {
		fam       Family
		table, in string
		want      string
	}{
		{IPv4, "filter", "-p tcp --dport 80 -j DROP", "-p tcp -m tcp --dport 80 -j DROP"},
		{IPv4, "filter", "-p tcp --destination-port 80:90 --source-port 1 -j DROP", "-p tcp -m tcp --sport 1 --dport 80:90 -j DROP"},
		{IPv4, "filter", "-p tcp --dport :1023 -j DROP", "-p tcp -m tcp --dport 0:1023 -j DROP"},
		{IPv4, "filter", "-p tcp --dport 1024: -j DROP", "-p tcp -m tcp --dport 1024:65535 -j DROP"},
		{IPv4, "filter", "-p tcp --dport ssh -j DROP", "-p tcp -m tcp --dport 22 -j DROP"},
		{IPv4, "filter", "-p tcp ! --syn", "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN"},
		{IPv4, "filter", "-p tcp --tcp-flags ALL FIN,URG,PSH", "-p tcp -m tcp --tcp-flags FIN,SYN,RST,PSH,ACK,URG FIN,PSH,URG"},
		{IPv4, "filter", "-p TCP -m tcp --dport 1", "-p tcp -m tcp --dport 1"},
		{IPv4, "filter", "-p 6 --dport 1", "-p tcp -m tcp --dport 1"},
		{IPv4, "filter", "! -p udp", "! -p udp"},
		{IPv4, "filter", "-p 200", "-p 200"},
		{IPv4, "filter", "-s 10.1.2.3/255.255.0.0 -d 1.2.3.4/32", "-s 10.1.0.0/16 -d 1.2.3.4/32"},
		{IPv4, "filter", "--source 10.0.0.0/8 --destination 0.0.0.0/0", "-s 10.0.0.0/8"},
		{IPv4, "filter", "! -s 0.0.0.0/0", "! -s 0.0.0.0/0"},
		{IPv4, "filter", "-i eth+ ! -o lo", "-i eth+ ! -o lo"},
		{IPv4, "filter", "! -f", "! -f"},
		{IPv4, "filter", "-p udp -m multiport --sports 53,1000:2000", "-p udp -m multiport --sports 53,1000:2000"},
		{IPv4, "filter", "-p tcp -m multiport ! --ports 1,2", "-p tcp -m multiport ! --ports 1,2"},
		{IPv4, "filter", "-m state --state established,related", "-m state --state RELATED,ESTABLISHED"},
		{IPv4, "filter", "-m conntrack ! --ctstate NEW,UNTRACKED,DNAT", "-m conntrack ! --ctstate NEW,UNTRACKED,DNAT"},
		{IPv4, "filter", "-m limit --limit 60/minute --limit-burst 10", "-m limit --limit 1/sec --limit-burst 10"},
		{IPv4, "filter", "-m limit --limit 5", "-m limit --limit 5/sec"},
		{IPv4, "filter", "-m limit", "-m limit --limit 3/hour"},
		{IPv4, "filter", "-m hashlimit --hashlimit 10/s --hashlimit-name x", "-m hashlimit --hashlimit-upto 10/sec --hashlimit-burst 5 --hashlimit-name x"},
		{IPv4, "filter", "-m hashlimit ! --hashlimit-above 10/min --hashlimit-name x --hashlimit-htable-expire 60000", "-m hashlimit --hashlimit-upto 10/min --hashlimit-burst 5 --hashlimit-name x"},
		{IPv4, "filter", "-m connlimit --connlimit-upto 4 --connlimit-daddr", "-m connlimit --connlimit-upto 4 --connlimit-mask 32 --connlimit-daddr"},
		{IPv4, "filter", "-p icmp --icmp-type echo-reply", "-p icmp -m icmp --icmp-type 0"},
		{IPv4, "filter", "-p icmp --icmp-type host-unreachable", "-p icmp -m icmp --icmp-type 3/1"},
		{IPv4, "filter", "-p icmp --icmp-type any", "-p icmp -m icmp --icmp-type any"},
		{IPv4, "filter", "-m iprange ! --src-range 1.1.1.1-1.1.1.9", "-m iprange ! --src-range 1.1.1.1-1.1.1.9"},
		{IPv4, "filter", "-m mark --mark 10", "-m mark --mark 0xa"},
		{IPv4, "filter", "-m mark ! --mark 0x1/0x3", "-m mark ! --mark 0x1/0x3"},
		{IPv4, "filter", "-m comment --comment ''", `-m comment --comment "\'\'"`},
		{IPv4, "filter", `-m comment --comment "x\"y"`, `-m comment --comment "x\"y"`},
		{IPv4, "filter", "-m length --length 40", "-m length --length 40"},
		{IPv4, "filter", "-j LOG --log-level info --log-prefix x", "-j LOG --log-prefix x --log-level 6"},
		{IPv4, "filter", "-j LOG --log-level warning", "-j LOG"},
		{IPv4, "filter", "-j REJECT --reject-with host-prohib", "-j REJECT --reject-with icmp-host-prohibited"},
		{IPv4, "mangle", "-j MARK --set-mark 0x1/0x1", "-j MARK --set-xmark 0x1/0x1"},
		{IPv4, "mangle", "-j MARK --and-mark 0xf", "-j MARK --set-xmark 0x0/0xfffffff0"},
		{IPv4, "mangle", "-j MARK --xor-mark 0xf", "-j MARK --set-xmark 0xf/0x0"},
		{IPv4, "nat", "-p tcp -j DNAT --to-destination 1.2.3.4:80-90 --random", "-p tcp -j DNAT --to-destination 1.2.3.4:80-90 --random"},
		{IPv4, "nat", "-j DNAT --to-destination 1.2.3.4-1.2.3.5", "-j DNAT --to-destination 1.2.3.4-1.2.3.5"},
		{IPv4, "nat", "-p udp -j REDIRECT --to-ports 53", "-p udp -j REDIRECT --to-ports 53"},
		{IPv6, "filter", "-s fd00::1/64 -p ipv6-icmp --icmpv6-type 128", "-s fd00::/64 -p ipv6-icmp -m icmp6 --icmpv6-type 128"},
		{IPv6, "filter", "-p icmpv6 -m icmp6 --icmpv6-type port-unreachable", "-p ipv6-icmp -m icmp6 --icmpv6-type 1/4"},
		{IPv6, "filter", "-d ::1 -j REJECT", "-d ::1/128 -j REJECT --reject-with icmp6-port-unreachable"},
		{IPv6, "filter", "-p tcp -j REJECT --reject-with tcp-reset", "-p tcp -j REJECT --reject-with tcp-reset"},
		{IPv6, "nat", "-p tcp -j DNAT --to-destination [fd00::1]:80", "-p tcp -j DNAT --to-destination [fd00::1]:80"},
		{IPv6, "nat", "-j SNAT --to-source fd00::1-fd00::2", "-j SNAT --to-source fd00::1-fd00::2"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			args, err := tokenize(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			rules, err := ParseRuleArgs(tc.fam, tc.table, args)
			if err != nil {
				t.Fatalf("ParseRuleArgs(%q) = %v", tc.in, err)
			}
			if len(rules) != 1 {
				t.Fatalf("ParseRuleArgs(%q) gave %d rules", tc.in, len(rules))
			}
			if got := rules[0].String(); got != tc.want {
				t.Fatalf("ParseRuleArgs(%q).String() = %q, want %q", tc.in, got, tc.want)
			}
			args2, _ := tokenize(tc.want)
			again, err := ParseRuleArgs(tc.fam, tc.table, args2)
			if err != nil || again[0].String() != tc.want {
				t.Fatalf("canonical %q re-parses to %v, %v", tc.want, again, err)
			}
		})
	}
}

func TestRuleArgErrors(t *testing.T) {
	cases := []struct {
		fam      Family
		in, want string
	}{
		{IPv4, "-p tcp --dport 70000", "--dport"},
		{IPv4, "-p tcp --dport 90:80", "--dport"},
		{IPv4, "-m tcp --dport 80", "tcp match needs -p tcp"},
		{IPv4, "-p udp --syn", "--syn"},
		{IPv4, "-s 10.0.0.0/33", "-s"},
		{IPv4, "-s example.com", "-s"},
		{IPv4, "-s fd00::1", "-s"},
		{IPv6, "-s 10.0.0.1", "-s"},
		{IPv4, "-s 10.0.0.0/255.0.255.0", "non-contiguous"},
		{IPv4, "-i 0123456789abcdef", "IFNAMSIZ"},
		{IPv4, "-p tcp -p udp", "multiple -p"},
		{IPv4, "-j ACCEPT -j DROP", "multiple -j"},
		{IPv4, "! ! -p tcp", "!"},
		{IPv4, "-p tcp !", "!"},
		{IPv4, "-m limit --limit 0/sec", "--limit"},
		{IPv4, "-m limit --limit 5/fortnight", "--limit"},
		{IPv4, "-m hashlimit --hashlimit-upto 5/sec", "--hashlimit-name"},
		{IPv4, "-m hashlimit --hashlimit-name x", "--hashlimit-upto"},
		{IPv4, "-m hashlimit --hashlimit-upto 1kb/s --hashlimit-name x", "byte"},
		{IPv4, "-m connlimit --connlimit-mask 8", "--connlimit-above"},
		{IPv4, "-m state --state BOGUS", "bad state"},
		{IPv4, "-m state", "--state"},
		{IPv4, "-p icmp --icmp-type nonsense", "ICMP"},
		{IPv4, "-p tcp -m multiport --dports 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", "too many"},
		{IPv4, "-m multiport --dports 1", "multiport needs"},
		{IPv4, "-m mark --mark x", "mark"},
		{IPv4, "-m length --length 9:1", "length"},
		{IPv4, "-m comment", "--comment"},
		{IPv4, "-m iprange", "--src-range"},
		{IPv4, "-m iprange --src-range 1.1.1.1-fd00::1", "range"},
		{IPv4, "-j REJECT --reject-with tcp-reset", "tcp-reset"},
		{IPv4, "-j REJECT --reject-with icmp6-no-route", "reject type"},
		{IPv6, "-j REJECT --reject-with icmp-host-prohibited", "reject type"},
		{IPv4, "-j LOG --log-level 9", "log level"},
		{IPv4, "-j LOG --log-level warn", "log level"},
		{IPv4, "-m limit ! --limit 1/s", "cannot be inverted"},
		{IPv4, "-j LOG --log-prefix 0123456789012345678901234567890", "prefix"},
		{IPv4, "-j MARK", "parameter required"},
		{IPv4, "-j MARK --set-mark 1 --or-mark 2", "only one"},
		{IPv4, "-j DNAT --to-destination 1.2.3.4:80", "Need TCP"},
		{IPv4, "-j DNAT", "--to-destination"},
		{IPv4, "-j DNAT --to-destination 1.2.3.9-1.2.3.4", "min > max"},
		{IPv4, "-j NFQUEUE", "not supported"},
		{IPv4, "-m nosuch", "couldn't load match"},
		{IPv4, "-f", ""},
		{IPv6, "-f", "ip6tables"},
		{IPv4, "-m icmp6", "IPv6 only"},
		{IPv4, "bogus", "bad argument"},
		{IPv4, "-g ACCEPT", "user-defined chain"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			args, _ := tokenize(tc.in)
			_, err := ParseRuleArgs(tc.fam, TableFilter, args)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ParseRuleArgs(%q) = %v, want success", tc.in, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseRuleArgs(%q) error = %v, want it to mention %q", tc.in, err, tc.want)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %T is not a *ParseError", err)
			}
		})
	}
}

func TestAddressListsExpand(t *testing.T) {
	rules, err := ParseRuleArgs(IPv4, TableFilter, []string{"-s", "10.0.0.1,10.0.0.2", "-d", "1.1.1.1,2.2.2.2", "-m", "limit", "-j", "ACCEPT"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		got = append(got, r.String())
	}
	want := []string{
		"-s 10.0.0.1/32 -d 1.1.1.1/32 -m limit --limit 3/hour -j ACCEPT",
		"-s 10.0.0.1/32 -d 2.2.2.2/32 -m limit --limit 3/hour -j ACCEPT",
		"-s 10.0.0.2/32 -d 1.1.1.1/32 -m limit --limit 3/hour -j ACCEPT",
		"-s 10.0.0.2/32 -d 2.2.2.2/32 -m limit --limit 3/hour -j ACCEPT",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("expanded rules:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rules[0].Matches[0] == rules[1].Matches[0] {
		t.Error("expanded rules share the limit match's state")
	}
}

func TestHookMaskThroughJumps(t *testing.T) {
	ok := `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:r - [0:0]
-A INPUT -j r
-A r -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:d - [0:0]
:unused - [0:0]
-A PREROUTING -j d
-A OUTPUT -j d
-A d -p tcp -j DNAT --to-destination 1.2.3.4:80
-A unused -j MASQUERADE
COMMIT
`
	if _, err := Parse(strings.NewReader(ok), IPv4); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	bad := []struct{ name, text, want string }{
		{"DNAT reached from POSTROUTING", `*nat
:POSTROUTING ACCEPT [0:0]
:d - [0:0]
-A POSTROUTING -j d
-A d -j DNAT --to-destination 1.2.3.4
COMMIT
`, "line 5"},
		{"MASQUERADE in PREROUTING", "*nat\n-A PREROUTING -j MASQUERADE\nCOMMIT\n", "line 2"},
		{"REJECT in mangle", "*mangle\n-A INPUT -j REJECT\nCOMMIT\n", "not valid in table mangle"},
		{"loop", "*filter\n:a - [0:0]\n:b - [0:0]\n-A a -j b\n-A b -j a\nCOMMIT\n", "loop"},
		{"self loop", "*filter\n:a - [0:0]\n-A INPUT -j a\n-A a -j a\nCOMMIT\n", "loop"},
		{"-o in INPUT", "*filter\n-A INPUT -o eth0 -j DROP\nCOMMIT\n", "-o"},
		{"policy on user chain", "*filter\n:a DROP [0:0]\nCOMMIT\n", "line 2"},
		{"builtin of another table", "*raw\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "line 2"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.text), IPv4)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add("*filter\n:INPUT DROP [1:2]\n-A INPUT -p tcp --dport 80 -j ACCEPT\nCOMMIT\n", false)
	f.Add("*nat\n-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n", false)
	f.Add("*filter\n:a - [0:0]\n[3:4] -A a -m comment --comment \"x y\" -m hashlimit --hashlimit-upto 1/s --hashlimit-name n -j RETURN\nCOMMIT\n", false)
	f.Add("*filter\n-A INPUT -s fd00::/8 -p ipv6-icmp --icmpv6-type 128 -j ACCEPT\nCOMMIT\n", true)
	f.Add("*mangle\n-A PREROUTING -m mark ! --mark 1/3 -j MARK --set-xmark 4/5\nCOMMIT\n", false)
	f.Fuzz(func(t *testing.T, text string, v6 bool) {
		fam := IPv4
		if v6 {
			fam = IPv6
		}
		rs, err := Parse(strings.NewReader(text), fam)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line <= 0 {
				t.Fatalf("Parse error %q does not name a line", err)
			}
			return
		}
		saved := saveString(t, rs, SaveOptions{Counters: true})
		rs2, err := Parse(strings.NewReader(saved), fam)
		if err != nil {
			t.Fatalf("saved text does not parse: %v\n%s", err, saved)
		}
		if again := saveString(t, rs2, SaveOptions{Counters: true}); again != saved {
			t.Fatalf("save/parse/save changed:\n%s\n---\n%s", saved, again)
		}
	})
}

// FuzzCommand runs arbitrary command lines against a small rule set: no
// panics, errors are errors, and what succeeds still saves and re-parses.
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		"-A INPUT -p tcp --dport 22 -j ACCEPT",
		"-t nat -I PREROUTING 1 -p udp -j REDIRECT --to-ports 53",
		"-D INPUT 1", "-N x", "-X web", "-E web www", "-P INPUT DROP", "-F", "-Z INPUT",
		"-R web 1 -s 10.0.0.0/8 -j RETURN", "-C INPUT -j web", "-S INPUT 1", "-L -v -n",
	} {
		f.Add(s)
	}
	base := func(t *testing.T) *Ruleset {
		return mustParse(t, "*filter\n:INPUT ACCEPT [0:0]\n:web - [0:0]\n-A INPUT -j web\n-A web -j RETURN\nCOMMIT\n", IPv4)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args, err := tokenize(line)
		if err != nil {
			return
		}
		cmd, err := ParseCommand(IPv4, args)
		if err != nil {
			return
		}
		rs := base(t)
		switch cmd.Op {
		case OpList:
			_ = rs.List(io.Discard, cmd.Table, cmd.Chain, cmd.List)
			return
		case OpListRules:
			_ = rs.ListRules(io.Discard, cmd.Table, cmd.Chain, cmd.Num, cmd.List.Verbose)
			return
		}
		next, err := rs.Exec(cmd)
		if err != nil {
			return
		}
		saved := saveString(t, next, SaveOptions{})
		if _, err := Parse(strings.NewReader(saved), IPv4); err != nil {
			t.Fatalf("after %q the saved rules do not parse: %v\n%s", line, err, saved)
		}
	})
}
