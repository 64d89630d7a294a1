package iptables

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func tcpPacket(src, dst string, sport, dport uint16, flags uint8) *Packet {
	return &Packet{
		Family: IPv4, Hook: Input, InIface: "eth0",
		Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		Protocol: ProtoTCP, SrcPort: sport, DstPort: dport, TCPFlags: flags,
		Length: 60, CTState: CTNew, Now: time.Unix(1000, 0),
	}
}

func counters(t *testing.T, rs *Ruleset, table, chain string, n int) (uint64, uint64) {
	t.Helper()
	c := rs.Table(table).Chain(chain)
	if n == 0 {
		return c.Counters.Load()
	}
	return c.Rules[n-1].Counters.Load()
}

func TestEvalJumpsReturnGoto(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:outer - [0:0]
:inner - [0:0]
:gone - [0:0]
-A INPUT -p tcp --dport 22 -j outer
-A INPUT -p tcp --dport 23 -g gone
-A INPUT -p tcp --dport 24 -j ACCEPT
-A outer -s 10.0.0.0/8 -j inner
-A outer -s 10.1.0.0/16 -j ACCEPT
-A outer -j RETURN
-A inner -s 10.1.2.0/24 -j DROP
-A inner -s 10.1.0.0/16 -j RETURN
-A inner -j ACCEPT
-A gone -s 10.0.0.0/8 -j RETURN
-A gone -j ACCEPT
COMMIT
`, IPv4)
	cases := []struct {
		name  string
		p     *Packet
		want  VerdictKind
		final string // "policy" if the policy decided
	}{
		{"nested RETURN then accept in outer", tcpPacket("10.1.9.9", "10.0.0.1", 1, 22, TCPSyn), Accept, "outer"},
		{"drop in inner", tcpPacket("10.1.2.3", "10.0.0.1", 1, 22, TCPSyn), Drop, "inner"},
		{"accept at end of inner", tcpPacket("10.2.0.1", "10.0.0.1", 1, 22, TCPSyn), Accept, "inner"},
		{"RETURN from outer falls to policy", tcpPacket("192.0.2.1", "10.0.0.1", 1, 22, TCPSyn), Drop, "policy"},
		{"goto RETURN goes to INPUT's caller: policy", tcpPacket("10.0.0.5", "10.0.0.1", 1, 23, TCPSyn), Drop, "policy"},
		{"goto accept", tcpPacket("192.0.2.1", "10.0.0.1", 1, 23, TCPSyn), Accept, "gone"},
		{"plain accept", tcpPacket("192.0.2.1", "10.0.0.1", 1, 24, TCPSyn), Accept, "INPUT"},
		{"no match: policy", tcpPacket("192.0.2.1", "10.0.0.1", 1, 25, TCPSyn), Drop, "policy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := rs.Eval(TableFilter, tc.p)
			if v.Kind != tc.want {
				t.Fatalf("Eval = %v, want %v", v.Kind, tc.want)
			}
			if tc.final == "policy" {
				if v.Rule != nil {
					t.Fatalf("Eval decided by rule %q, want the policy", v.Rule)
				}
			} else if v.Rule == nil || !strings.Contains(rs.Table(TableFilter).Chain(tc.final).Rules[0].String()+fmt.Sprint(rs.Table(TableFilter).Chain(tc.final).Rules), v.Rule.String()) {
				t.Fatalf("Eval decided by %v, want a rule of chain %s", v.Rule, tc.final)
			}
		})
	}
	// Counters: INPUT policy decided 3 packets of 60 bytes.
	if p, b := counters(t, rs, TableFilter, "INPUT", 0); p != 3 || b != 180 {
		t.Errorf("INPUT policy counters = %d/%d, want 3/180", p, b)
	}
	// INPUT rule 1 (dport 22) matched 4 packets.
	if p, _ := counters(t, rs, TableFilter, "INPUT", 1); p != 4 {
		t.Errorf("INPUT rule 1 packets = %d, want 4", p)
	}
	// outer's RETURN matched one packet; inner's RETURN one.
	if p, _ := counters(t, rs, TableFilter, "outer", 3); p != 1 {
		t.Errorf("outer RETURN packets = %d, want 1", p)
	}
	if p, _ := counters(t, rs, TableFilter, "inner", 2); p != 1 {
		t.Errorf("inner RETURN packets = %d, want 1", p)
	}
}

func TestEvalInversions(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT ACCEPT [0:0]
-A INPUT ! -s 10.0.0.0/8 ! -p udp ! -i eth1 -j DROP
-A INPUT -p tcp ! --dport 1000:2000 -j REJECT --reject-with tcp-reset
-A INPUT -p tcp -m multiport ! --dports 1500,1600 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
`, IPv4)
	cases := []struct {
		name string
		p    *Packet
		want VerdictKind
		rej  RejectWith
	}{
		{"all three inversions match", tcpPacket("192.0.2.1", "10.0.0.1", 1, 1500, 0), Drop, 0},
		{"source in 10/8 skips rule 1, port 1500 in range skips rule 2, in multiport list", tcpPacket("10.0.0.2", "10.0.0.1", 1, 1500, 0), Accept, 0},
		{"port outside range", tcpPacket("10.0.0.2", "10.0.0.1", 1, 80, 0), Reject, RejectTCPReset},
		{"port in range, not in multiport", tcpPacket("10.0.0.2", "10.0.0.1", 1, 1700, 0), Reject, RejectICMPAdminProhibited},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := rs.Eval(TableFilter, tc.p)
			if v.Kind != tc.want || v.Reject != tc.rej {
				t.Fatalf("Eval = %v/%v, want %v/%v", v.Kind, v.Reject, tc.want, tc.rej)
			}
		})
	}
	p := tcpPacket("192.0.2.1", "10.0.0.1", 1, 1500, 0)
	p.InIface = "eth1"
	if v := rs.Eval(TableFilter, p); v.Kind != Accept {
		t.Errorf("-i eth1 with ! -i eth1: Eval = %v, want ACCEPT", v.Kind)
	}
}

func TestEvalMatches(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT DROP [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -i veth+ -p udp -j ACCEPT
-A INPUT -p icmp --icmp-type echo-request -j ACCEPT
-A INPUT -p icmp --icmp-type 3/4 -j ACCEPT
-A INPUT -m iprange --src-range 192.0.2.10-192.0.2.20 -j ACCEPT
-A INPUT -m mark --mark 0x10/0xf0 -j ACCEPT
-A INPUT -m length --length 1000:1100 -j ACCEPT
-A INPUT -p tcp --tcp-flags SYN,ACK SYN,ACK -j ACCEPT
-A INPUT -f -j ACCEPT
COMMIT
`, IPv4)
	base := func() *Packet { return tcpPacket("198.51.100.1", "10.0.0.1", 1, 9, TCPAck) }
	cases := []struct {
		name string
		mod  func(p *Packet)
		want VerdictKind
	}{
		{"nothing", func(*Packet) {}, Drop},
		{"established", func(p *Packet) { p.CTState = CTEstablished }, Accept},
		{"new", func(p *Packet) { p.CTState = CTNew }, Drop},
		{"veth wildcard udp", func(p *Packet) { p.InIface = "veth12"; p.Protocol = ProtoUDP }, Accept},
		{"wildcard needs prefix", func(p *Packet) { p.InIface = "vet"; p.Protocol = ProtoUDP }, Drop},
		{"echo request", func(p *Packet) { p.Protocol = ProtoICMP; p.ICMPType = 8 }, Accept},
		{"echo reply", func(p *Packet) { p.Protocol = ProtoICMP; p.ICMPType = 0 }, Drop},
		{"frag needed", func(p *Packet) { p.Protocol = ProtoICMP; p.ICMPType = 3; p.ICMPCode = 4 }, Accept},
		{"port unreachable", func(p *Packet) { p.Protocol = ProtoICMP; p.ICMPType = 3; p.ICMPCode = 3 }, Drop},
		{"iprange low end", func(p *Packet) { p.Src = netip.MustParseAddr("192.0.2.10") }, Accept},
		{"iprange past end", func(p *Packet) { p.Src = netip.MustParseAddr("192.0.2.21") }, Drop},
		{"mark masked", func(p *Packet) { p.Mark = 0x1f }, Accept},
		{"mark other bits", func(p *Packet) { p.Mark = 0x20 }, Drop},
		{"length", func(p *Packet) { p.Length = 1050 }, Accept},
		{"syn-ack", func(p *Packet) { p.TCPFlags = TCPSyn | TCPAck }, Accept},
		{"fragment", func(p *Packet) { p.Fragment = true }, Accept},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mod(p)
			if v := rs.Eval(TableFilter, p); v.Kind != tc.want {
				t.Fatalf("Eval = %v, want %v", v.Kind, tc.want)
			}
		})
	}
}

func TestEvalMarkLogNAT(t *testing.T) {
	rs := mustParse(t, `*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j MARK --set-mark 0x5
-A PREROUTING -j MARK --or-mark 0x100
-A PREROUTING -m mark --mark 0x105 -j LOG --log-prefix "marked "
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.1:80
-A PREROUTING -p tcp --dport 8081 -j REDIRECT --to-ports 80
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
`, IPv4)
	var logs bytes.Buffer
	rs.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
	p := tcpPacket("192.0.2.1", "10.0.0.9", 1234, 8080, TCPSyn)
	p.Hook = Prerouting
	p.Mark = 0xff00
	if v := rs.Eval(TableMangle, p); v.Kind != Accept {
		t.Fatalf("mangle Eval = %v, want ACCEPT", v.Kind)
	}
	if p.Mark != 0x105 {
		t.Errorf("mark = %#x, want 0x105", p.Mark)
	}
	if got := logs.String(); !strings.Contains(got, `prefix="marked "`) || !strings.Contains(got, "DPT=8080") || !strings.Contains(got, "SRC=192.0.2.1") {
		t.Errorf("LOG output %q lacks prefix/DPT/SRC", got)
	}
	v := rs.Eval(TableNAT, p)
	if v.Kind != DNAT || v.NAT == nil || v.NAT.MinAddr != netip.MustParseAddr("10.0.0.1") || v.NAT.MinPort != 80 || v.NAT.MaxPort != 80 {
		t.Fatalf("nat Eval = %+v, want DNAT 10.0.0.1:80", v)
	}
	p.DstPort = 8081
	if v := rs.Eval(TableNAT, p); v.Kind != Redirect || v.NAT.MinPort != 80 {
		t.Fatalf("nat Eval = %+v, want REDIRECT 80", v)
	}
	p.Hook, p.OutIface = Postrouting, "eth0"
	if v := rs.Eval(TableNAT, p); v.Kind != Masquerade {
		t.Fatalf("nat POSTROUTING Eval = %+v, want MASQUERADE", v)
	}
	// Tables or hooks without chains accept.
	if v := rs.Eval(TableFilter, p); v.Kind != Accept {
		t.Errorf("unloaded filter table: Eval = %v, want ACCEPT", v.Kind)
	}
}

func TestLimitBurst(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT DROP [0:0]
-A INPUT -m limit --limit 2/sec --limit-burst 3 -j ACCEPT
COMMIT
`, IPv4)
	now := time.Unix(5000, 0)
	send := func() VerdictKind {
		p := tcpPacket("192.0.2.1", "10.0.0.1", 1, 80, TCPSyn)
		p.Now = now
		return rs.Eval(TableFilter, p).Kind
	}
	// The burst passes at once, the fourth is limited.
	for i := 0; i < 3; i++ {
		if v := send(); v != Accept {
			t.Fatalf("packet %d of burst: %v, want ACCEPT", i+1, v)
		}
	}
	if v := send(); v != Drop {
		t.Fatalf("packet past burst: %v, want DROP", v)
	}
	// One token per 500 ms.
	now = now.Add(499 * time.Millisecond)
	if v := send(); v != Drop {
		t.Fatalf("after 499ms: %v, want DROP", v)
	}
	now = now.Add(time.Millisecond)
	if v := send(); v != Accept {
		t.Fatalf("after 500ms: %v, want ACCEPT", v)
	}
	if v := send(); v != Drop {
		t.Fatalf("second packet after 500ms: %v, want DROP", v)
	}
	// A long pause refills only up to the burst.
	now = now.Add(time.Hour)
	for i := 0; i < 3; i++ {
		if v := send(); v != Accept {
			t.Fatalf("after an hour, packet %d: %v, want ACCEPT", i+1, v)
		}
	}
	if v := send(); v != Drop {
		t.Fatalf("after an hour, packet 4: %v, want DROP", v)
	}
}

func TestHashlimitPerSource(t *testing.T) {
	rs := mustParse(t, `*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --syn -m hashlimit --hashlimit-above 1/sec --hashlimit-burst 2 --hashlimit-mode srcip --hashlimit-srcmask 24 --hashlimit-name syn -j DROP
COMMIT
`, IPv4)
	now := time.Unix(100, 0)
	send := func(src string) VerdictKind {
		p := tcpPacket(src, "10.0.0.1", 1, 80, TCPSyn)
		p.Hook = Prerouting
		p.Now = now
		return rs.Eval(TableRaw, p).Kind
	}
	// Two per /24 pass, the third from the same /24 is over the rate.
	if send("192.0.2.1") != Accept || send("192.0.2.2") != Accept {
		t.Fatal("first two SYNs from 192.0.2.0/24 dropped")
	}
	if v := send("192.0.2.3"); v != Drop {
		t.Fatalf("third SYN from 192.0.2.0/24: %v, want DROP", v)
	}
	// Another /24 has its own bucket.
	if v := send("198.51.100.7"); v != Accept {
		t.Fatalf("first SYN from 198.51.100.0/24: %v, want ACCEPT", v)
	}
	// A second later one more passes.
	now = now.Add(time.Second)
	if v := send("192.0.2.9"); v != Accept {
		t.Fatalf("after 1s: %v, want ACCEPT", v)
	}
	// Idle buckets expire (default: one rate unit, 1 s): the next packet's
	// garbage collection leaves only its own bucket.
	now = now.Add(10 * time.Second)
	if v := send("203.0.113.1"); v != Accept {
		t.Fatalf("new source after expiry: %v, want ACCEPT", v)
	}
	hl := rs.Table(TableRaw).Chain("PREROUTING").Rules[0].Matches[1].(*HashlimitMatch)
	tbl := hl.tbl.Load()
	tbl.mu.Lock()
	n := len(tbl.buckets)
	tbl.mu.Unlock()
	if n != 1 {
		t.Errorf("buckets after expiry = %d, want 1", n)
	}
}

type fakeConns map[uint64]bool

func (f fakeConns) Alive(id uint64) bool { return f[id] }

func TestConnlimit(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT ACCEPT [0:0]
-A INPUT -p tcp --syn -m connlimit --connlimit-above 2 --connlimit-mask 32 -j REJECT --reject-with tcp-reset
COMMIT
`, IPv4)
	alive := fakeConns{}
	open := func(src string, id uint64) VerdictKind {
		alive[id] = true
		p := tcpPacket(src, "10.0.0.1", uint16(id), 80, TCPSyn)
		p.ConnID, p.Conns = id, alive
		return rs.Eval(TableFilter, p).Kind
	}
	if open("192.0.2.1", 1) != Accept || open("192.0.2.1", 2) != Accept {
		t.Fatal("first two connections rejected")
	}
	if v := open("192.0.2.1", 3); v != Reject {
		t.Fatalf("third connection: %v, want REJECT", v)
	}
	if v := open("192.0.2.2", 4); v != Accept {
		t.Fatalf("other source: %v, want ACCEPT", v)
	}
	// Closing connections frees their slots.
	delete(alive, 1)
	delete(alive, 3)
	if v := open("192.0.2.1", 5); v != Accept {
		t.Fatalf("after closes: %v, want ACCEPT", v)
	}
}

func TestEvalIPv6(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT DROP [0:0]
-A INPUT -s fd00::/64 -p ipv6-icmp --icmpv6-type echo-request -j ACCEPT
-A INPUT -d fd00:0:0:2::100 -p tcp --dport 22 -j ACCEPT
COMMIT
`, IPv6)
	p := &Packet{Family: IPv6, Hook: Input, Src: netip.MustParseAddr("fd00::5"), Dst: netip.MustParseAddr("fd00::1"),
		Protocol: ProtoICMPv6, ICMPType: 128, Length: 104}
	if v := rs.Eval(TableFilter, p); v.Kind != Accept {
		t.Fatalf("echo from fd00::/64: %v, want ACCEPT", v.Kind)
	}
	p.Src = netip.MustParseAddr("fd00:0:0:1::5")
	if v := rs.Eval(TableFilter, p); v.Kind != Drop {
		t.Fatalf("echo from outside: %v, want DROP", v.Kind)
	}
	p = &Packet{Family: IPv6, Hook: Input, Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("fd00:0:0:2::100"),
		Protocol: ProtoTCP, DstPort: 22, Length: 80}
	if v := rs.Eval(TableFilter, p); v.Kind != Accept {
		t.Fatalf("ssh to fd00:0:0:2::100: %v, want ACCEPT", v.Kind)
	}
}

// nonMatching returns a filter table with n rules no packet of
// benchPacket matches, spread over the common rule shapes.
func nonMatching(n int) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for i := 0; i < n; i++ {
		switch i % 4 {
		case 0:
			fmt.Fprintf(&b, "-A INPUT -p tcp --dport %d -j DROP\n", 10000+i)
		case 1:
			fmt.Fprintf(&b, "-A INPUT -s 10.%d.%d.0/24 -j DROP\n", i/256, i%256)
		case 2:
			fmt.Fprintf(&b, "-A INPUT -p udp -m multiport --dports %d,%d -j REJECT\n", 20000+i, 30000+i)
		case 3:
			fmt.Fprintf(&b, "-A INPUT -i eth%d -p tcp -m conntrack --ctstate NEW -j DROP\n", i)
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func benchPacket() *Packet {
	return tcpPacket("192.0.2.1", "10.0.0.1", 40000, 443, TCPAck)
}

func TestEvalDoesNotAllocate(t *testing.T) {
	rs := mustParse(t, nonMatching(100)+`*nat
:PREROUTING ACCEPT [0:0]
:c - [0:0]
-A PREROUTING -j c
-A c -p tcp -j MARK --set-mark 1
-A c -p tcp --dport 443 -j DNAT --to-destination 10.0.0.2
COMMIT
`, IPv4)
	p := benchPacket()
	allocs := testing.AllocsPerRun(100, func() {
		p.Hook = Input
		if v := rs.Eval(TableFilter, p); v.Kind != Accept {
			t.Fatalf("Eval = %v", v.Kind)
		}
		p.Hook = Prerouting
		if v := rs.Eval(TableNAT, p); v.Kind != DNAT {
			t.Fatalf("Eval nat = %v", v.Kind)
		}
	})
	if allocs != 0 {
		t.Errorf("Eval allocates %v times per packet, want 0", allocs)
	}
}

func BenchmarkEval(b *testing.B) {
	for _, n := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			rs := mustParse(b, nonMatching(n), IPv4)
			p := benchPacket()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if rs.Eval(TableFilter, p).Kind != Accept {
					b.Fatal("not accepted")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/packet")
		})
	}
}

func TestHashlimitSharedByName(t *testing.T) {
	text := `*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A INPUT -m hashlimit --hashlimit-above 1/min --hashlimit-burst 2 --hashlimit-mode srcip --hashlimit-name shared -j DROP
-A FORWARD -m hashlimit --hashlimit-above 1/min --hashlimit-burst 2 --hashlimit-mode srcip --hashlimit-name shared -j DROP
COMMIT
`
	rs := mustParse(t, text, IPv4)
	now := time.Unix(100, 0)
	send := func(rs *Ruleset, hook Hook) VerdictKind {
		p := tcpPacket("192.0.2.1", "10.0.0.1", 1, 80, TCPSyn)
		p.Hook, p.Now = hook, now
		return rs.Eval(TableFilter, p).Kind
	}
	// The two rules spend one bucket.
	if send(rs, Input) != Accept || send(rs, Forward) != Accept {
		t.Fatal("first two packets dropped")
	}
	if v := send(rs, Input); v != Drop {
		t.Fatalf("third packet through the shared table: %v, want DROP", v)
	}
	// Replacing the table (iptables-restore) keeps the table by name.
	rs2, err := Restore(rs, strings.NewReader(text), RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := send(rs2, Forward); v != Drop {
		t.Fatalf("after restore: %v, want DROP (bucket state kept by name)", v)
	}
	// A separate Parse is a separate world.
	if v := send(mustParse(t, text, IPv4), Input); v != Accept {
		t.Fatalf("fresh rule set: %v, want ACCEPT", v)
	}
}

func TestHashlimitTableFullDrops(t *testing.T) {
	rs := mustParse(t, `*filter
:INPUT ACCEPT [0:0]
-A INPUT -m hashlimit --hashlimit-upto 100/sec --hashlimit-mode srcip --hashlimit-name full --hashlimit-htable-max 2 -j ACCEPT
COMMIT
`, IPv4)
	now := time.Unix(100, 0)
	for i, src := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		p := tcpPacket(src, "10.0.0.1", 1, 80, TCPSyn)
		p.Now = now
		v := rs.Eval(TableFilter, p)
		want := Accept
		if i == 2 {
			want = Drop // no room for a third flow: hotdrop
		}
		if v.Kind != want {
			t.Fatalf("flow %d: %v, want %v", i+1, v.Kind, want)
		}
	}
}

// BenchmarkEvalShapes measures 100 non-matching rules of one shape each.
func BenchmarkEvalShapes(b *testing.B) {
	shapes := []struct{ name, format string }{
		{"tcp-dport", "-A INPUT -p tcp --dport %d -j DROP\n"},
		{"udp-only", "-A INPUT -p udp --dport %d -j DROP\n"},
		{"source", "-A INPUT -s 10.%d.0.0/16 -j DROP\n"},
		{"iface", "-A INPUT -i veth%d -j DROP\n"},
		{"ctstate-dport", "-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport %d -j DROP\n"},
	}
	for _, sh := range shapes {
		b.Run(sh.name, func(b *testing.B) {
			var t strings.Builder
			t.WriteString("*filter\n:INPUT ACCEPT [0:0]\n")
			for i := 0; i < 100; i++ {
				fmt.Fprintf(&t, sh.format, 100+i)
			}
			t.WriteString("COMMIT\n")
			rs := mustParse(b, t.String(), IPv4)
			p := benchPacket()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if rs.Eval(TableFilter, p).Kind != Accept {
					b.Fatal("not accepted")
				}
			}
		})
	}
}

// ifaceMatch is the plain-string meaning of -i/-o.
func ifaceMatch(pattern, name string) bool {
	if n := len(pattern); n > 0 && pattern[n-1] == '+' {
		return len(name) >= n-1 && name[:n-1] == pattern[:n-1]
	}
	return pattern == name
}

func TestIfacePattern(t *testing.T) {
	patterns := []string{"eth0", "eth+", "+", "veth12345678901", "lo", "e+"}
	names := []string{"", "eth0", "eth1", "eth", "eth0.1", "veth12345678901", "veth1234567890", "lo", "l", "e"}
	for _, pat := range patterns {
		ip := toIfacePattern(pat)
		for _, name := range names {
			n := toIfaceName(name)
			if got, want := ip.match(&n), ifaceMatch(pat, name); got != want {
				t.Errorf("pattern %q name %q: match = %v, want %v", pat, name, got, want)
			}
		}
	}
}

// FuzzEval evaluates arbitrary packets against the golden rule sets: no
// panics, and every verdict is one Eval can give for that table.
func FuzzEval(f *testing.F) {
	f.Add(uint8(1), uint8(6), []byte{10, 0, 0, 1}, []byte{1, 2, 3, 4}, uint16(1), uint16(80), uint8(2), uint8(8), uint8(0), 60, false, uint32(0), uint16(8), "eth0", "")
	f.Fuzz(func(t *testing.T, hook, proto uint8, src, dst []byte, sport, dport uint16, flags, itype, icode uint8, length int, frag bool, mark uint32, ct uint16, in, out string) {
		for _, name := range []string{"filter", "nat", "mangle"} {
			data, err := os.ReadFile(filepath.Join("testdata", "golden", name+".rules"))
			if err != nil {
				t.Fatal(err)
			}
			rs, err := Parse(bytes.NewReader(data), IPv4)
			if err != nil {
				t.Fatal(err)
			}
			rs.SetLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			var s4, d4 [4]byte
			copy(s4[:], src)
			copy(d4[:], dst)
			p := &Packet{Family: IPv4, Hook: Hook(hook % uint8(NumHooks+1)), InIface: in, OutIface: out,
				Src: netip.AddrFrom4(s4), Dst: netip.AddrFrom4(d4), Protocol: proto, SrcPort: sport, DstPort: dport,
				TCPFlags: flags, ICMPType: itype, ICMPCode: icode, Length: length, Fragment: frag, Mark: mark,
				CTState: CTState(ct), ConnID: uint64(sport), Now: time.Unix(int64(length), 0)}
			for _, tb := range rs.Tables() {
				v := rs.Eval(tb.Name, p)
				if v.Kind > Redirect || (v.Kind >= DNAT) != (v.NAT != nil) {
					t.Fatalf("Eval(%s) = %+v", tb.Name, v)
				}
			}
		}
	})
}
