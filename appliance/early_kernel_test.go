package appliance

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsappliance/appliance/bpffilter"
	"github.com/nsappliance/appliance/iptables"
)

// progDevice is a KernelDevice that keeps the attached program, so a
// test can run packets through it as the kernel would.
type progDevice struct{ fd int }

func (d *progDevice) SetKernelFilter(fd int) error { d.fd = fd; return nil }

// randomEarlyRules draws n raw PREROUTING drop rules the kernel program
// can run, for family fam.
func randomEarlyRules(r *rand.Rand, fam iptables.Family, n int) string {
	var b strings.Builder
	b.WriteString("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	inv := func() string {
		if r.IntN(4) == 0 {
			return "! "
		}
		return ""
	}
	addr := func() string {
		if fam == iptables.IPv6 {
			return []string{"2001:db8::/32", "2001:db8:0:1::/64", "2001:db8::1/128", "2001:db8:8000::/33", "fd00::/8"}[r.IntN(5)]
		}
		return []string{"10.0.0.0/8", "10.1.2.0/24", "10.1.2.3/32", "10.1.0.0/17", "192.0.2.0/25"}[r.IntN(5)]
	}
	for i := 0; i < n; i++ {
		b.WriteString("-A PREROUTING")
		if r.IntN(2) == 0 {
			fmt.Fprintf(&b, " %s-s %s", inv(), addr())
		}
		if r.IntN(2) == 0 {
			fmt.Fprintf(&b, " %s-d %s", inv(), addr())
		}
		switch r.IntN(4) {
		case 0:
			icmp := "icmp"
			if fam == iptables.IPv6 {
				icmp = "ipv6-icmp"
			}
			fmt.Fprintf(&b, " %s-p %s", inv(), icmp)
		case 1, 2:
			proto := []string{"tcp", "udp"}[r.IntN(2)]
			fmt.Fprintf(&b, " -p %s -m %s", proto, proto)
			port := func() string {
				p := []string{"53", "1000:2000", "80", ":1023", "1024:"}[r.IntN(5)]
				return p
			}
			if r.IntN(2) == 0 {
				fmt.Fprintf(&b, " %s--sport %s", inv(), port())
			}
			if r.IntN(2) == 0 {
				fmt.Fprintf(&b, " %s--dport %s", inv(), port())
			}
			if proto == "tcp" && r.IntN(2) == 0 {
				fmt.Fprintf(&b, " %s--tcp-flags %s", inv(), []string{"FIN,SYN,RST,ACK SYN", "SYN,ACK SYN,ACK", "RST RST"}[r.IntN(3)])
			}
		}
		b.WriteString(" -j DROP\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// randomPacket draws a packet that may or may not hit the rules above:
// pooled addresses and ports, fragments and truncated transport headers.
func randomPacket(r *rand.Rand, fam iptables.Family) []byte {
	protos := []uint8{6, 17, 1, 47}
	if fam == iptables.IPv6 {
		protos[2] = 58
	}
	proto := protos[r.IntN(4)]
	l4len := []int{20, 8, 3, 12}[r.IntN(4)]
	var b []byte
	var l4 int
	if fam == iptables.IPv4 {
		pool := [][4]byte{{10, 1, 2, 3}, {10, 1, 2, 9}, {10, 1, 200, 1}, {192, 0, 2, 1}, {192, 0, 2, 200}, {8, 8, 8, 8}}
		b = make([]byte, 20+l4len)
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		if r.IntN(8) == 0 {
			binary.BigEndian.PutUint16(b[6:], 185) // a non-first fragment
		}
		b[9] = proto
		s, d := pool[r.IntN(len(pool))], pool[r.IntN(len(pool))]
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		l4 = 20
	} else {
		pool := []string{"2001:db8::1", "2001:db8:0:1::7", "2001:db8:8000::1", "2001:db9::1", "fd00::5"}
		b = make([]byte, 40+l4len)
		b[0] = 0x60
		binary.BigEndian.PutUint16(b[4:], uint16(l4len))
		b[6] = proto
		s, d := mustAddr16(pool[r.IntN(len(pool))]), mustAddr16(pool[r.IntN(len(pool))])
		copy(b[8:], s[:])
		copy(b[24:], d[:])
		l4 = 40
	}
	ports := []uint16{53, 80, 1000, 1500, 2000, 2001, 1023, 1024, 40000}
	if l4len >= 4 {
		binary.BigEndian.PutUint16(b[l4:], ports[r.IntN(len(ports))])
		binary.BigEndian.PutUint16(b[l4+2:], ports[r.IntN(len(ports))])
	}
	if l4len >= 14 {
		b[l4+13] = []uint8{0x02, 0x12, 0x10, 0x04, 0x01, 0x03}[r.IntN(6)]
	}
	return b
}

func mustAddr16(s string) [16]byte {
	var a [16]byte
	copy(a[:], netip.MustParseAddr(s).AsSlice())
	return a
}

// TestEarlyFilterKernelMatchesReader: the kernel program compiled from
// random early rules drops exactly the packets the reader's filter drops,
// and counts each drop on the rule the reader counts it on.
func TestEarlyFilterKernelMatchesReader(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 0))
	for set := 0; set < 40; set++ {
		fam := iptables.IPv4
		if set%2 == 1 {
			fam = iptables.IPv6
		}
		text := randomEarlyRules(r, fam, 1+r.IntN(6))
		t.Run(fmt.Sprint(set), func(t *testing.T) {
			rsReader, err := iptables.Parse(strings.NewReader(text), fam)
			if err != nil {
				t.Fatalf("%v\n%s", err, text)
			}
			rsKernel, _ := iptables.Parse(strings.NewReader(text), fam)
			reader := NewEarlyFilter()
			rules, _ := compileEarly(rsReader)
			p := &earlyProg{}
			if fam == iptables.IPv4 {
				p.v4 = rules
			} else {
				p.v6 = rules
			}
			reader.prog.Store(p)

			dev := &progDevice{fd: -1}
			kernel := NewEarlyFilter()
			kernel.UseKernel(dev, nil)
			krules, _ := compileEarly(rsKernel)
			kp := &earlyProg{}
			if fam == iptables.IPv4 {
				kp.v4 = krules
			} else {
				kp.v6 = krules
			}
			kernel.install(kp)
			kernel.kmu.Lock()
			k := kernel.kern
			kernel.kmu.Unlock()
			if k == nil {
				skipNoBPF(t)
			}
			for i := 0; i < 300; i++ {
				pkt := randomPacket(r, fam)
				want := reader.Filter(pkt)
				got, err := k.prog.Run(pkt)
				if err != nil {
					t.Fatal(err)
				}
				if !got {
					// What the kernel passes, the reader side of the
					// filter sees (with no rule left to run here).
					got = kernel.Filter(pkt)
				}
				if got != want {
					t.Fatalf("packet %x: kernel drop %v, reader drop %v\nrules:\n%s", pkt, got, want, text)
				}
			}
			kernel.Sync()
			rc := rsReader.Table("raw").Chain("PREROUTING").Rules
			kc := rsKernel.Table("raw").Chain("PREROUTING").Rules
			for i := range rc {
				wp, wb := rc[i].Counters.Load()
				gp, gb := kc[i].Counters.Load()
				if gp != wp || gb != wb {
					t.Errorf("rule %d counters: kernel %d/%d, reader %d/%d\n%s", i+1, gp, gb, wp, wb, text)
				}
			}
			if kernel.Dropped.Load() != reader.Dropped.Load() || kernel.KernelDropped.Load() != kernel.Dropped.Load() {
				t.Errorf("Dropped: kernel %d (kernel program %d), reader %d", kernel.Dropped.Load(), kernel.KernelDropped.Load(), reader.Dropped.Load())
			}
			kernel.Close()
		})
	}
}

// TestEarlyFilterKernelKeepsHashlimitInReader: a hashlimit rule and what
// follows stay on the reader; the rules before it go to the kernel.
func TestEarlyFilterKernelKeepsHashlimitInReader(t *testing.T) {
	rs, err := iptables.Parse(strings.NewReader(`*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -s 192.0.2.0/24 -j DROP
-A PREROUTING -p tcp -m tcp --syn -m hashlimit --hashlimit-above 2/sec --hashlimit-burst 1 --hashlimit-mode srcip --hashlimit-name syn -j DROP
-A PREROUTING -p udp -m udp --dport 9 -j DROP
COMMIT
`), iptables.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	dev := &progDevice{fd: -1}
	f := NewEarlyFilter()
	f.UseKernel(dev, nil)
	rules, _ := compileEarly(rs)
	f.install(&earlyProg{v4: rules})
	if f.kern == nil {
		skipNoBPF(t)
	}
	if c := f.Counters(); c["early_kernel_rules"] != 1 || dev.fd < 0 {
		t.Fatalf("kernel rules = %d (attached fd %d), want 1", c["early_kernel_rules"], dev.fd)
	}
	// The reader no longer runs rule 1 (the kernel would have dropped
	// the packet), but still runs the hashlimit and the UDP rule.
	if f.Filter(ipv4TCP([4]byte{192, 0, 2, 9}, [4]byte{10, 0, 0, 1}, 1000, 80, 0x10)) {
		t.Error("reader ran the rule the kernel runs")
	}
	syn := ipv4TCP([4]byte{198, 51, 100, 7}, [4]byte{10, 0, 0, 1}, 1000, 22, 0x02)
	if f.Filter(syn) || !f.Filter(syn) {
		t.Error("hashlimit (burst 1) not applied by the reader")
	}
	// Replacing the rules with ones the kernel cannot run detaches it.
	rs2, _ := iptables.Parse(strings.NewReader("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"+
		"-A PREROUTING -p tcp -m tcp --syn -m hashlimit --hashlimit-above 2/sec --hashlimit-mode srcip --hashlimit-name syn -j DROP\nCOMMIT\n"), iptables.IPv4)
	rules2, _ := compileEarly(rs2)
	f.install(&earlyProg{v4: rules2})
	if f.kern != nil || dev.fd != -1 {
		t.Errorf("kernel program still attached (fd %d) with no rule it can run", dev.fd)
	}
}

func skipNoBPF(t *testing.T) {
	t.Helper()
	_, err := bpffilter.Load([]bpffilter.Rule{{Proto: 6}}, nil)
	if os.Geteuid() != 0 || errors.Is(err, unix.EPERM) {
		t.Skip("needs root (CAP_BPF) to load BPF programs")
	}
	t.Fatalf("kernel program not loaded: %v", err)
}
