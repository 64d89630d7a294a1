package netstack

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/nsappliance/appliance/outcome"
)

var (
	peerAddr  = tcpip.AddrFrom4([4]byte{10, 9, 0, 1})
	localAddr = tcpip.AddrFrom4([4]byte{10, 9, 0, 2})
)

const peerPort, localPort = 40000, 80

// rawPeer drives one TCP connection into a stack by hand over a channel
// link: it writes segments and reads the stack's replies.
type rawPeer struct {
	t      *testing.T
	ep     *channel.Endpoint
	sndNxt seqnum.Value // the peer's next sequence number
	rcvNxt seqnum.Value // the stack's next sequence number
	wnd    uint16       // the stack's last advertised window (unscaled)
}

func (p *rawPeer) send(flags header.TCPFlags, seq seqnum.Value, payload []byte) {
	p.sendOpts(flags, seq, payload, nil)
}

func (p *rawPeer) sendOpts(flags header.TCPFlags, seq seqnum.Value, payload, opts []byte) {
	pkt := p.packet(flags, seq, payload, opts)
	p.ep.InjectInbound(ipv4.ProtocolNumber, pkt)
	pkt.DecRef()
}

// packet is the peer's segment, with valid checksums.
func (p *rawPeer) packet(flags header.TCPFlags, seq seqnum.Value, payload, opts []byte) *stack.PacketBuffer {
	tl := header.TCPMinimumSize + len(opts)
	b := make([]byte, header.IPv4MinimumSize+tl+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: peerAddr, DstAddr: localAddr})
	ip.SetChecksum(^ip.CalculateChecksum())
	tc := header.TCP(b[header.IPv4MinimumSize:])
	tc.Encode(&header.TCPFields{SrcPort: peerPort, DstPort: localPort, SeqNum: uint32(seq), AckNum: uint32(p.rcvNxt),
		DataOffset: uint8(tl), Flags: flags, WindowSize: 65535})
	copy(tc[header.TCPMinimumSize:], opts)
	copy(tc[tl:], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, peerAddr, localAddr, uint16(len(tc)))
	tc.SetChecksum(^checksum.Checksum(tc, xsum))
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}

// read returns the next segment the stack sent, within 5 s.
func (p *rawPeer) read() header.TCP {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pkt := p.ep.ReadContext(ctx)
	if pkt == nil {
		p.t.Fatal("no segment from the stack within 5s")
	}
	defer pkt.DecRef()
	v := pkt.ToView().AsSlice()
	ip := header.IPv4(v)
	tc := header.TCP(append([]byte(nil), ip.Payload()...))
	p.wnd = tc.WindowSize()
	return tc
}

// drain discards what the stack sent so far.
func (p *rawPeer) drain() {
	for {
		pkt := p.ep.Read()
		if pkt == nil {
			return
		}
		pkt.DecRef()
	}
}

// rawStack is a test stack with one NIC, eth0 (localAddr/24, default
// route), on a channel link for a rawPeer.
func rawStack(t *testing.T) (*Stack, *channel.Endpoint) {
	t.Helper()
	return rawStackWith(t, Options{})
}

// rawStackWith is rawStack with opts.
func rawStackWith(t *testing.T, opts Options) (*Stack, *channel.Endpoint) {
	t.Helper()
	s := newTestStack(t, opts)
	ep := channel.New(256, 1500, "")
	if _, err := s.AttachNIC(ep, NICOptions{Name: "eth0", Addresses: []tcpip.AddressWithPrefix{{Address: localAddr, PrefixLen: 24}}, DefaultRoute: true}); err != nil {
		t.Fatal(err)
	}
	return s, ep
}

// connect opens a connection from the peer to a listener on s and returns
// the accepted end. The stack uses window scale 0 (no option sent).
func connectRaw(t *testing.T, s *Stack, ep *channel.Endpoint) (*rawPeer, net.Conn) {
	t.Helper()
	ln, err := gonet.ListenTCP(s.Stack, tcpip.FullAddress{Port: localPort}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	p := &rawPeer{t: t, ep: ep, sndNxt: 1000}
	p.send(header.TCPFlagSyn, p.sndNxt, nil)
	p.sndNxt++
	synAck := p.read()
	if synAck.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
		t.Fatalf("reply to SYN: flags %v, want SYN|ACK", synAck.Flags())
	}
	p.rcvNxt = seqnum.Value(synAck.SequenceNumber()) + 1
	p.send(header.TCPFlagAck, p.sndNxt, nil)
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c
}

// TestTCPLateDrops sends segments a connected TCP endpoint discards after
// netstack delivered them (gVisor patch 0015) and checks that each raises
// exactly its own drop reason by one, and that consumed data counts as
// delivered once.
func TestTCPLateDrops(t *testing.T) {
	s, ep := rawStack(t)
	link := s.Outcomes().Link("eth0")
	p, c := connectRaw(t, s, ep)
	p.drain()

	reasons := []outcome.Reason{outcome.Delivered, outcome.TCPOldData, outcome.TCPOldSequence, outcome.TCPOverWindow,
		outcome.TCPZeroWindow, outcome.TCPInvalidSYN, outcome.TCPReset, outcome.TCPOFODrop, outcome.SocketFull,
		outcome.TCPClose, outcome.NotSpecified}
	snapshot := func() map[outcome.Reason]uint64 {
		m := map[outcome.Reason]uint64{}
		for _, r := range reasons {
			m[r] = link.Packets(r)
		}
		return m
	}
	// expect sends a segment and waits until one packet's outcome has
	// been counted: it must be want.
	expect := func(name string, want outcome.Reason, sendIt func()) {
		t.Helper()
		before := snapshot()
		sum := func(m map[outcome.Reason]uint64) (n uint64) {
			for _, v := range m {
				n += v
			}
			return n
		}
		sendIt()
		deadline := time.Now().Add(5 * time.Second)
		after := snapshot()
		for sum(after) == sum(before) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			after = snapshot()
		}
		for _, r := range reasons {
			d := after[r] - before[r]
			if r == want && d != 1 || r != want && d != 0 {
				t.Errorf("%s: %s rose by %d, want %d", name, s.Outcomes().Name(r), d, map[bool]int{true: 1}[r == want])
			}
		}
		p.drain()
	}

	data := []byte("hello")
	expect("in-order data, read", outcome.Delivered, func() {
		p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, data)
		buf := make([]byte, len(data))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	})
	old := p.sndNxt
	p.sndNxt += seqnum.Value(len(data))
	expect("retransmitted data", outcome.TCPOldData, func() { p.send(header.TCPFlagAck, old, data) })
	expect("keepalive probe", outcome.TCPOldSequence, func() { p.send(header.TCPFlagAck, p.sndNxt-1, nil) })
	expect("data beyond the window", outcome.TCPOverWindow, func() { p.send(header.TCPFlagAck, p.sndNxt+seqnum.Value(16<<20), data) })
	expect("SYN on an established connection", outcome.TCPInvalidSYN, func() { p.send(header.TCPFlagSyn, p.sndNxt, nil) })
	expect("RST in the window, not at RCV.NXT", outcome.TCPReset, func() { p.send(header.TCPFlagRst, p.sndNxt+10, nil) })

	// Out of order twice: the second copy is found already received
	// once the hole is filled.
	hole := p.sndNxt
	p.sndNxt += seqnum.Value(len(data))
	ooo := p.sndNxt
	p.sndNxt += seqnum.Value(len(data))
	p.send(header.TCPFlagAck, ooo, data)
	p.send(header.TCPFlagAck, ooo, data)
	expect("out-of-order duplicate", outcome.TCPOFODrop, func() {
		p.send(header.TCPFlagAck, hole, data)
	})
	// Read the two segments now in the receive queue: delivered, one
	// each (the hole and the first out-of-order copy).
	buf := make([]byte, 2*len(data))
	before := link.Packets(outcome.Delivered)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two segments delivered", func() bool { return link.Packets(outcome.Delivered) == before+2 })

	// A small receive buffer that the peer fills without the reader
	// reading: data beyond what the out-of-order queue may hold is
	// dropped as receive-buffer full.
	var tep *tcp.Endpoint
	for _, te := range s.RegisteredEndpoints() {
		if e, ok := te.(*tcp.Endpoint); ok && e.EndpointState() == tcp.StateEstablished {
			tep = e
		}
	}
	if tep == nil {
		t.Fatal("no established endpoint")
	}
	tep.SocketOptions().SetReceiveBufferSize(4096, true)
	chunk := make([]byte, 1400)
	p.sndNxt++ // leave a hole: everything after it is out of order
	p.send(header.TCPFlagAck, p.sndNxt, chunk)
	p.sndNxt += seqnum.Value(len(chunk))
	waitFor(t, "out-of-order queue filled", func() bool { return tep.MemInfo().OOOMem > 0 })
	expect("out of order beyond the buffer", outcome.SocketFull, func() { p.send(header.TCPFlagAck, p.sndNxt, chunk) })

	if d := tep.Drops(); d != 7 {
		t.Errorf("endpoint drops = %d, want 7 (one per discarded segment)", d)
	}
	if mi := tep.MemInfo(); mi.Drops != tep.Drops() {
		t.Errorf("MemInfo().Drops = %d, want %d", mi.Drops, tep.Drops())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSkmemMemInfo checks the memory ss -m prints beyond r and t on a
// live endpoint: a segment waiting in the segment queue is backlog and
// not charged (gVisor patch 0016); once processed and held unread it is
// charged in whole pages (charged minus used is Linux's fwd_alloc, under
// a page); once read the charge goes back to zero.
func TestSkmemMemInfo(t *testing.T) {
	s, ep := rawStack(t)
	p, c := connectRaw(t, s, ep)
	var tep *tcp.Endpoint
	waitFor(t, "established endpoint", func() bool {
		for _, te := range s.RegisteredEndpoints() {
			if e, ok := te.(*tcp.Endpoint); ok && e.EndpointState() == tcp.StateEstablished {
				tep = e
			}
		}
		return tep != nil
	})
	waitFor(t, "handshake charge released", func() bool { return tcp.RcvMemCharged(s.Stack) == 0 })

	// Deferred processing (patch 0004) leaves the segment in the queue
	// until ProcessDeferred; it is process-wide, so restore it.
	tcp.SetDeferredProcessing(true)
	t.Cleanup(func() { tcp.SetDeferredProcessing(false) })
	data := make([]byte, 1000)
	p.send(header.TCPFlagAck, p.sndNxt, data)
	p.sndNxt += seqnum.Value(len(data))
	mi := tep.MemInfo()
	if mi.Backlog == 0 || mi.RcvMemUsed < mi.Backlog || mi.RcvCharged != 0 {
		t.Errorf("segment in the queue: %+v, want backlog > 0, counted in RcvMemUsed, not charged", mi)
	}
	tcp.ProcessDeferred()
	mi = tep.MemInfo()
	fwd := mi.RcvCharged - (mi.RcvMemUsed - mi.Backlog)
	if mi.Backlog != 0 || mi.RcvMem == 0 || mi.RcvCharged%4096 != 0 || fwd < 0 || fwd >= 4096 {
		t.Errorf("segment held unread: %+v, want no backlog, charged in pages, charged-used in [0, 4096)", mi)
	}
	if got := tcp.RcvMemCharged(s.Stack); got != int64(mi.RcvCharged) {
		t.Errorf("stack charge %d, want the endpoint's %d", got, mi.RcvCharged)
	}
	tcp.SetDeferredProcessing(false)
	buf := make([]byte, len(data))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "charge released after the read", func() bool { return tcp.RcvMemCharged(s.Stack) == 0 })
}
