package netstack

import (
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// synAckGate holds the first SYN-ACK written through it until open is
// closed, telling blocked when it waits.
type synAckGate struct {
	WrappedLink
	blocked chan []byte // the SYN-ACK's TCP header and payload
	open    chan struct{}
	once    atomic.Bool
}

func (g *synAckGate) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	for _, pkt := range pkts.AsSlice() {
		v := pkt.ToView()
		ip := header.IPv4(v.AsSlice())
		if ip.TransportProtocol() == header.TCPProtocolNumber &&
			header.TCP(ip.Payload()).Flags() == header.TCPFlagSyn|header.TCPFlagAck && g.once.CompareAndSwap(false, true) {
			g.blocked <- append([]byte(nil), ip.Payload()...)
			<-g.open
		}
		v.Release()
	}
	return g.LinkEndpoint.WritePackets(pkts)
}

// TestHandshakeACKWaitsForLock covers gVisor patch 0028: when the ACK that
// completes a forwarded connection's handshake is processed while the
// forwarder's handler still holds the new endpoint's lock (it is sending
// the SYN-ACK), the processing waits for the lock and completes the
// handshake, rather than handing the endpoint to a processor goroutine
// that spun on TryLock until the handler let go.
func TestHandshakeACKWaitsForLock(t *testing.T) {
	s := newTestStack(t, Options{})
	ch := channel.New(256, 1500, "")
	gate := &synAckGate{WrappedLink: WrappedLink{LinkEndpoint: ch}, blocked: make(chan []byte, 1), open: make(chan struct{})}
	if _, err := s.AttachNIC(gate, NICOptions{Name: "eth0", Addresses: []tcpip.AddressWithPrefix{{Address: localAddr, PrefixLen: 24}}, DefaultRoute: true, Promiscuous: true}); err != nil {
		t.Fatal(err)
	}
	tcp.SetDeferredProcessing(true)
	t.Cleanup(func() { tcp.SetDeferredProcessing(false) })
	established := make(chan tcpip.Error, 1)
	fwd := tcp.NewForwarder(s.Stack, 0, 10, func(r *tcp.ForwarderRequest) {
		var wq waiter.Queue
		ep, err := r.CreateEndpoint(&wq)
		if err == nil {
			defer ep.Close()
		}
		r.Complete(err != nil)
		established <- err
	})
	s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)

	p := &rawPeer{t: t, ep: ch, sndNxt: 1000}
	p.send(header.TCPFlagSyn, p.sndNxt, nil)
	p.sndNxt++
	var synAck header.TCP
	select {
	case synAck = <-gate.blocked: // the handler holds the endpoint's lock
	case <-time.After(5 * time.Second):
		t.Fatal("no SYN-ACK within 5s")
	}
	p.rcvNxt = seqnum.Value(synAck.SequenceNumber()) + 1
	p.send(header.TCPFlagAck, p.sndNxt, nil) // queued for deferred processing

	var released atomic.Bool
	go func() {
		time.Sleep(100 * time.Millisecond)
		released.Store(true)
		close(gate.open)
	}()
	tcp.ProcessDeferred()
	if !released.Load() {
		close(gate.open) // let the handler finish either way
		t.Fatal("ProcessDeferred returned while the handler held the connecting endpoint's lock: " +
			"the ACK went to a processor goroutine, which spins on TryLock until the lock is free")
	}
	select {
	case err := <-established:
		if err != nil {
			t.Fatalf("CreateEndpoint: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handshake did not complete within 5s")
	}
}
