package appliance

import (
	"strings"
	"testing"

	"github.com/nsappliance/appliance/iptables"
)

func ipv4TCP(src, dst [4]byte, sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	b[3] = 40
	b[9] = 6
	copy(b[12:], src[:])
	copy(b[16:], dst[:])
	b[20], b[21] = byte(sport>>8), byte(sport)
	b[22], b[23] = byte(dport>>8), byte(dport)
	b[32] = 5 << 4
	b[33] = flags
	return b
}

func TestEarlyFilterCompilesLeadingRules(t *testing.T) {
	rs, err := iptables.Parse(strings.NewReader(`*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 192.0.2.0/24 -j DROP
-A PREROUTING -p tcp -m tcp --dport 22 --tcp-flags FIN,SYN,RST,ACK SYN -m hashlimit --hashlimit-above 2/sec --hashlimit-burst 3 --hashlimit-mode srcip --hashlimit-srcmask 24 --hashlimit-name syn -j DROP
-A PREROUTING -i tun0 -p udp -j DROP
-A PREROUTING -p tcp -j DROP
COMMIT
`), iptables.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	rules, n := compileEarly(rs)
	if n != 2 {
		t.Fatalf("compiled %d rules, want 2 (the -i rule and what follows stay in the slow path)", n)
	}
	slow := withoutLeading(rs, n)
	if got := len(slow.Table("raw").Chain("PREROUTING").Rules); got != 2 {
		t.Fatalf("slow path keeps %d raw PREROUTING rules, want 2", got)
	}
	f := NewEarlyFilter()
	var now int64 = 1e12
	f.now = func() int64 { return now }
	f.prog.Store(&earlyProg{v4: rules})

	if !f.Filter(ipv4TCP([4]byte{192, 0, 2, 9}, [4]byte{10, 0, 0, 1}, 1000, 80, 0x10)) {
		t.Error("source in 192.0.2.0/24 not dropped")
	}
	syn := ipv4TCP([4]byte{198, 51, 100, 7}, [4]byte{10, 0, 0, 1}, 1000, 22, 0x02)
	var verdicts []bool
	for i := 0; i < 5; i++ {
		verdicts = append(verdicts, f.Filter(syn))
	}
	if want := []bool{false, false, false, true, true}; !equalBools(verdicts, want) {
		t.Errorf("SYN flood verdicts = %v, want %v (burst 3)", verdicts, want)
	}
	// Another source in the same /24 shares the bucket; another /24 not.
	if !f.Filter(ipv4TCP([4]byte{198, 51, 100, 8}, [4]byte{10, 0, 0, 1}, 1000, 22, 0x02)) {
		t.Error("same /24 not limited")
	}
	if f.Filter(ipv4TCP([4]byte{198, 51, 101, 8}, [4]byte{10, 0, 0, 1}, 1000, 22, 0x02)) {
		t.Error("other /24 limited")
	}
	// Refill: 2/s is one packet per 500ms.
	now += 600e6
	if f.Filter(syn) {
		t.Error("not refilled after 600ms")
	}
	// Not a SYN, not port 22: passes (the slow path's -p tcp DROP is not
	// the early filter's business).
	if f.Filter(ipv4TCP([4]byte{198, 51, 100, 7}, [4]byte{10, 0, 0, 1}, 1000, 22, 0x10)) {
		t.Error("ACK dropped")
	}
	if p, _ := rs.Table("raw").Chain("PREROUTING").Rules[1].Counters.Load(); p != 3 {
		t.Errorf("hashlimit rule counted %d packets, want 3", p)
	}
	if f.Dropped.Load() != 4 {
		t.Errorf("Dropped = %d, want 4", f.Dropped.Load())
	}
	if a := testing.AllocsPerRun(100, func() { f.Filter(syn) }); a != 0 {
		t.Errorf("Filter allocates %v times per packet", a)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func BenchmarkEarlyFilter(b *testing.B) {
	rs, err := iptables.Parse(strings.NewReader("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"+
		"-A PREROUTING -s 192.0.2.0/24 -j DROP\n-A PREROUTING -p udp -m udp --dport 9 -j DROP\n"+
		"-A PREROUTING -p tcp -m tcp --syn -m hashlimit --hashlimit-above 1000/sec --hashlimit-mode srcip --hashlimit-name s -j DROP\nCOMMIT\n"), iptables.IPv4)
	if err != nil {
		b.Fatal(err)
	}
	rules, _ := compileEarly(rs)
	f := NewEarlyFilter()
	f.prog.Store(&earlyProg{v4: rules})
	pkt := ipv4TCP([4]byte{10, 0, 2, 100}, [4]byte{10, 0, 0, 1}, 1000, 80, 0x10)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f.Filter(pkt)
	}
}
