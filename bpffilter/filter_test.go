package bpffilter

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// load loads the rules or skips the test where the kernel refuses BPF.
func load(t *testing.T, v4, v6 []Rule) *Program {
	t.Helper()
	p, err := Load(v4, v6)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) {
		if os.Geteuid() != 0 {
			t.Skip("needs root (CAP_BPF) to load BPF programs")
		}
		t.Skipf("kernel refuses BPF: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// pkt4 builds an IPv4 packet with a transport header of l4len bytes.
func pkt4(src, dst string, proto uint8, sport, dport uint16, flags uint8, l4len int) []byte {
	b := make([]byte, 20+l4len)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	if l4len >= 4 {
		binary.BigEndian.PutUint16(b[20:], sport)
		binary.BigEndian.PutUint16(b[22:], dport)
	}
	if l4len >= 14 {
		b[33] = flags
	}
	return b
}

func pkt6(src, dst string, proto uint8, sport, dport uint16, flags uint8, l4len int) []byte {
	b := make([]byte, 40+l4len)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(l4len))
	b[6] = proto
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	if l4len >= 4 {
		binary.BigEndian.PutUint16(b[40:], sport)
		binary.BigEndian.PutUint16(b[42:], dport)
	}
	if l4len >= 14 {
		b[53] = flags
	}
	return b
}

func TestProgram(t *testing.T) {
	v4 := []Rule{
		{Src: netip.MustParsePrefix("203.0.113.0/24")},
		{Proto: 6, Ports: true, SrcPorts: PortRange{0, 0xffff}, DstPorts: PortRange{9998, 9998}, FlagsMask: 0x17, Flags: 0x02},
		{Proto: 17, Ports: true, SrcPorts: PortRange{0, 0xffff}, DstPorts: PortRange{1000, 2000}, DstPortsInvert: true, Dst: netip.MustParsePrefix("10.9.0.0/16"), DstInvert: true},
	}
	v6 := []Rule{
		{Src: netip.MustParsePrefix("2001:db8:0:1::/64"), Proto: 58},
		{Dst: netip.MustParsePrefix("2001:db8::/33"), Proto: 17, ProtoInvert: true},
	}
	p := load(t, v4, v6)
	for _, tc := range []struct {
		name string
		pkt  []byte
		drop bool
		rule int
	}{
		{"v4 src in prefix", pkt4("203.0.113.7", "10.0.0.1", 17, 1, 2, 0, 8), true, 0},
		{"v4 src outside", pkt4("203.0.114.7", "10.9.0.1", 17, 1, 1500, 0, 8), false, -1},
		{"v4 syn to 9998", pkt4("10.0.0.2", "10.0.0.1", 6, 1234, 9998, 0x02, 20), true, 1},
		{"v4 syn-ack to 9998", pkt4("10.0.0.2", "10.0.0.1", 6, 1234, 9998, 0x12, 20), false, -1},
		{"v4 syn, short tcp header", pkt4("10.0.0.2", "10.0.0.1", 6, 1234, 9998, 0x02, 10), false, -1},
		{"v4 udp outside range and prefix", pkt4("10.0.0.2", "10.8.0.1", 17, 1, 999, 0, 8), true, 2},
		{"v4 udp in range", pkt4("10.0.0.2", "10.8.0.1", 17, 1, 1500, 0, 8), false, -1},
		{"v4 udp in prefix", pkt4("10.0.0.2", "10.9.3.1", 17, 1, 999, 0, 8), false, -1},
		{"v4 udp no ports", pkt4("10.0.0.2", "10.8.0.1", 17, 1, 999, 0, 2), false, -1},
		{"v6 icmp from prefix", pkt6("2001:db8:0:1::5", "2001:db8::1", 58, 0, 0, 0, 8), true, 3},
		{"v6 icmp from elsewhere", pkt6("2001:db8:0:2::5", "2001:db9::1", 58, 0, 0, 0, 8), false, -1},
		{"v6 tcp to /33", pkt6("2001:db8:0:2::5", "2001:db8:7fff::1", 6, 1, 2, 0x10, 20), true, 4},
		{"v6 tcp outside /33", pkt6("2001:db8:0:2::5", "2001:db8:8000::1", 6, 1, 2, 0x10, 20), false, -1},
		{"v6 udp to /33", pkt6("2001:db8:0:2::5", "2001:db8::1", 17, 1, 2, 0, 8), false, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := p.Counts()
			if err != nil {
				t.Fatal(err)
			}
			drop, err := p.Run(tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if drop != tc.drop {
				t.Errorf("Run = drop %v, want %v", drop, tc.drop)
			}
			after, _ := p.Counts()
			for i := range after {
				d := after[i].Packets - before[i].Packets
				want := uint64(0)
				if tc.drop && i/int(numClasses) == tc.rule {
					want = 1 // exactly one class of the rule
				}
				if want == 0 && d != 0 || want == 1 && d > 1 {
					t.Errorf("counter %d (rule %d class %d) moved by %d", i, i/4, i%4, d)
				}
				if d == 1 && after[i].Bytes-before[i].Bytes != uint64(len(tc.pkt)) {
					t.Errorf("counter %d bytes moved by %d, want %d", i, after[i].Bytes-before[i].Bytes, len(tc.pkt))
				}
			}
		})
	}
}

// TestProgramCatchAll: a rule matching everything ends its family's rules
// (the verifier refuses the unreachable rest) and still loads.
func TestProgramCatchAll(t *testing.T) {
	p := load(t, []Rule{{}, {Proto: 6}}, []Rule{{Src: netip.MustParsePrefix("::/0"), SrcInvert: true}})
	if drop, err := p.Run(pkt4("10.0.0.2", "10.0.0.1", 17, 1, 2, 0, 8)); err != nil || !drop {
		t.Errorf("v4 packet: drop %v, %v; want dropped by the catch-all", drop, err)
	}
	if drop, err := p.Run(pkt6("::1", "::2", 17, 1, 2, 0, 8)); err != nil || drop {
		t.Errorf("v6 packet: drop %v, %v; want passed (the rule never matches)", drop, err)
	}
}
