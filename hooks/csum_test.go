package hooks

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// full is the RFC 1071 checksum of b with the field at off taken as zero.
func full(b []byte, off int) uint16 {
	c := make([]byte, len(b))
	copy(c, b)
	c[off], c[off+1] = 0, 0
	return ^checksum.Checksum(c, 0)
}

func TestUpdateChecksumMatchesFullRecomputation(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		n := 8 + 2*rng.IntN(40)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		// Corner values: nearly all-zero and all-ones data. (Data that is
		// all zero sums to zero, which no IP or transport header can; there
		// eqn. 3 and a recomputation disagree on +0 / -0.)
		if i%50 == 0 {
			for j := range b {
				b[j] = 0
			}
			b[n-1] = 0x45
		} else if i%50 == 1 {
			for j := range b {
				b[j] = 0xff
			}
		}
		const csumOff = 0
		binary.BigEndian.PutUint16(b[csumOff:], full(b, csumOff))
		// Change a 16-bit word and a 4-byte "address" elsewhere.
		w := 2 + 2*rng.IntN(n/2-3)
		if w >= n-2 {
			w = n - 4
		}
		old16 := binary.BigEndian.Uint16(b[w:])
		new16 := uint16(rng.Uint32())
		if i%7 == 0 {
			new16 = ^old16
		}
		binary.BigEndian.PutUint16(b[w:], new16)
		c := UpdateChecksum16(binary.BigEndian.Uint16(b[csumOff:]), old16, new16)
		if want := full(b, csumOff); c != want && !(c == 0xffff && want == 0 || c == 0 && want == 0xffff) {
			t.Fatalf("case %d: UpdateChecksum16 = %#04x, full recomputation %#04x", i, c, want)
		}
		binary.BigEndian.PutUint16(b[csumOff:], c)
		if checksum.Checksum(b, 0) != 0xffff {
			t.Fatalf("case %d: data no longer sums to 0xffff after UpdateChecksum16", i)
		}
		a := 2 + 2*rng.IntN(n/2-3)
		if a+4 > n {
			a = n - 4
		}
		old := append([]byte(nil), b[a:a+4]...)
		nw := []byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
		copy(b[a:], nw)
		c = UpdateChecksum(c, old, nw)
		binary.BigEndian.PutUint16(b[csumOff:], c)
		if got := checksum.Checksum(b, 0); got != 0xffff {
			t.Fatalf("case %d: after UpdateChecksum data sums to %#04x, want 0xffff (full %#04x, got field %#04x)", i, got, full(b, csumOff), c)
		}
	}
}

func TestUpdatePartialMatchesRecomputedPseudoHeader(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 5000; i++ {
		ph := make([]byte, 12) // IPv4 pseudo-header: src, dst, 0, proto, len
		for j := range ph {
			ph[j] = byte(rng.Uint32())
		}
		p := checksum.Checksum(ph, 0) // partial field: uncomplemented sum
		nw := []byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
		old := append([]byte(nil), ph[4:8]...)
		copy(ph[4:], nw)
		got := UpdatePartial(p, old, nw)
		want := checksum.Checksum(ph, 0)
		if got != want && !(got == 0xffff && want == 0 || got == 0 && want == 0xffff) {
			t.Fatalf("case %d: UpdatePartial = %#04x, recomputed %#04x", i, got, want)
		}
	}
}
