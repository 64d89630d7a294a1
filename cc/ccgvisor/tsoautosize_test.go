package ccgvisor_test

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/emulate"
)

// gsoLink claims host GSO for a's pipe endpoint (the pipe passes the
// super-packet whole; b's netstack takes it) and records the payload
// of each TCP data packet a sends.
type gsoLink struct {
	stack.LinkEndpoint

	mu      sync.Mutex
	start   time.Time
	sizes   []int // payload bytes of data packets sent after the warm-up
	maxSeen int   // largest payload over the whole transfer
}

var _ stack.GSOEndpoint = (*gsoLink)(nil)

func (*gsoLink) GSOMaxSize() uint32               { return 1 << 16 }
func (*gsoLink) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

func (g *gsoLink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	g.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		if pkt.TransportProtocolNumber != header.TCPProtocolNumber {
			continue
		}
		fillChecksum(pkt)
		n := pkt.Data().Size()
		if n == 0 {
			continue
		}
		if g.start.IsZero() {
			g.start = time.Now()
		}
		g.maxSeen = max(g.maxSeen, n)
		if time.Since(g.start) > 300*time.Millisecond {
			g.sizes = append(g.sizes, n)
		}
	}
	g.mu.Unlock()
	return g.LinkEndpoint.WritePackets(pkts)
}

// fillChecksum completes the TCP checksum a host-GSO packet leaves to
// the device (the pipe delivers it unchecked to b, which verifies it).
func fillChecksum(pkt *stack.PacketBuffer) {
	if pkt.GSOOptions.Type == stack.GSONone || pkt.NetworkProtocolNumber != header.IPv4ProtocolNumber {
		return
	}
	ip := header.IPv4(pkt.NetworkHeader().Slice())
	h := header.TCP(pkt.TransportHeader().Slice())
	n := len(h) + pkt.Data().Size()
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(n))
	xsum = checksum.Combine(xsum, pkt.Data().Checksum())
	h.SetChecksum(0)
	h.SetChecksum(^h.CalculateChecksum(xsum))
}

// TestTSOAutosize: an unpaced controller's GSO packets hold about 1 ms
// of data at Linux's default pacing rate, at least two segments (patch
// 0010, Linux tcp_tso_autosize), not the 64 KiB GSO limit. At 20 Mbit/s
// and a 20 ms RTT that is 2-4 segments; the bound leaves room for a
// slow machine's inflated cwnd/srtt.
func TestTSOAutosize(t *testing.T) {
	g := &gsoLink{}
	reg := registry(t, nil)
	p := newPair(t, pairOpts{
		reg:     reg,
		ccName:  "reno",
		emulate: emulate.Spec{Delay: 10 * time.Millisecond, Rate: 20_000_000, Limit: 1000},
		wrap: func(l stack.LinkEndpoint) stack.LinkEndpoint {
			g.LinkEndpoint = l
			return g
		},
	})
	p.transfer(t, 3<<20, 0, nil)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.sizes) == 0 {
		t.Fatal("no data packets after the warm-up")
	}
	if g.maxSeen <= 1448 {
		t.Fatalf("largest data packet %d bytes: the sender never used GSO", g.maxSeen)
	}
	big := 0
	for _, n := range g.sizes {
		if n > 16<<10 {
			big++
		}
	}
	if big*10 > len(g.sizes) {
		t.Errorf("%d of %d data packets after the warm-up hold more than 16 KiB (largest %d), want few: 1 ms at 20 Mbit/s is 2-4 segments", big, len(g.sizes), g.maxSeen)
	}
	t.Logf("%d packets after warm-up, largest over the transfer %d bytes, %d above 16 KiB", len(g.sizes), g.maxSeen, big)
}
