package netstack

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// readerLink is a link with a reader goroutine, as the TUN endpoint has:
// Attach(nil) tells the reader to stop, and Wait and Close return once it
// has returned. The reader delivers one packet, once start is closed.
type readerLink struct {
	*channel.Endpoint
	pkt       *stack.PacketBuffer
	start     chan struct{} // closed by the test once the NIC is set up
	stop      chan struct{} // closed by Attach(nil)
	stopOnce  sync.Once
	delivered chan struct{} // closed when the reader returns
}

func (l *readerLink) Attach(d stack.NetworkDispatcher) {
	l.Endpoint.Attach(d)
	if d == nil {
		l.stopOnce.Do(func() { close(l.stop) })
		return
	}
	go func() {
		defer close(l.delivered)
		<-l.start
		d.DeliverNetworkPacket(ipv4.ProtocolNumber, l.pkt)
		l.pkt.DecRef()
	}()
}

func (l *readerLink) Wait() { <-l.delivered }

func (l *readerLink) Close() {
	l.Endpoint.Close()
	l.Wait()
}

// TestDestroyWhileReaderDelivers is the appliance that hung on SIGTERM
// (TestSIGTERM/transfer, about one run in 25): the TUN reader was
// delivering a segment for a connection Close had just aborted when the
// stack was destroyed. The segment's RST needs the stack's lock for its
// route, and gVisor's Stack.Wait held that lock while it waited for the
// reader. Here the segment's delivery is held, past the NIC's checks, until
// the link is told to stop.
func TestDestroyWhileReaderDelivers(t *testing.T) {
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	// A data segment for no connection: netstack answers it with a RST
	// once the transport handler below declines it.
	p := &rawPeer{t: t, sndNxt: 1000, rcvNxt: 5000}
	l := &readerLink{
		Endpoint:  channel.New(16, 1500, ""),
		pkt:       p.packet(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, []byte("late"), nil),
		start:     make(chan struct{}),
		stop:      make(chan struct{}),
		delivered: make(chan struct{}),
	}
	held := make(chan struct{})
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, func(stack.TransportEndpointID, *stack.PacketBuffer) bool {
		close(held)
		<-l.stop
		return false
	})
	if _, err := s.AttachNIC(l, NICOptions{Name: "eth0", Addresses: []tcpip.AddressWithPrefix{{Address: localAddr, PrefixLen: 24}}, DefaultRoute: true}); err != nil {
		t.Fatal(err)
	}
	// The NIC has its address and route only once AttachNIC returns.
	close(l.start)
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the segment never reached the TCP handler")
	}
	destroyed := make(chan struct{})
	go func() {
		defer close(destroyed)
		s.Destroy()
	}()
	select {
	case <-destroyed:
	case <-time.After(30 * time.Second):
		t.Fatal("Destroy still waiting after 30s: the link's reader is blocked on the stack's lock, held while Destroy waits for the reader")
	}
	select {
	case <-l.delivered:
	default:
		t.Fatal("Destroy returned before the link's reader did")
	}
}
