package netstack

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestDeferredAcks covers gVisor patch 0021: with deferred processing, the
// ACK that a data segment calls for waits until FlushDeferredAcks, so the
// batch's own work goes first; data the application writes meanwhile
// carries it and no bare ACK follows; ProcessDeferred alone still ACKs.
func TestDeferredAcks(t *testing.T) {
	s, ep := rawStack(t)
	p, c := connectRaw(t, s, ep)
	p.drain()
	tcp.SetDeferredProcessing(true)
	t.Cleanup(func() { tcp.SetDeferredProcessing(false) })
	noSegment := func(when string) {
		t.Helper()
		if pkt := ep.Read(); pkt != nil {
			pkt.DecRef()
			t.Fatalf("%s: the stack sent a segment", when)
		}
	}
	// request sends one byte. It first lets 50 ms pass: a timer of the
	// endpoint armed by the step before (the 40 ms delayed-ACK timer,
	// patch 0036, is only orphaned when an ACK goes out) whose callback
	// runs while the request waits in the segment queue hands it to a
	// processor goroutine (timerHandler), which ACKs it at once, outside
	// the deferred path this test checks.
	request := func(b string) {
		t.Helper()
		time.Sleep(50 * time.Millisecond)
		p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, []byte(b))
		p.sndNxt += 1
	}

	// A bare ACK waits for the flush.
	request("a")
	tcp.ProcessDeferredOwingAcks()
	noSegment("after ProcessDeferredOwingAcks")
	tcp.FlushDeferredAcks()
	ack := p.read()
	if ack.Flags() != header.TCPFlagAck || len(ack.Payload()) != 0 || ack.AckNumber() != uint32(p.sndNxt) {
		t.Fatalf("after FlushDeferredAcks: flags %v, %d bytes, ack %d; want a bare ACK of %d", ack.Flags(), len(ack.Payload()), ack.AckNumber(), p.sndNxt)
	}

	// A response written before the flush carries the ACK.
	request("b")
	tcp.ProcessDeferredOwingAcks()
	noSegment("after ProcessDeferredOwingAcks")
	if _, err := c.Write([]byte("B")); err != nil {
		t.Fatal(err)
	}
	resp := p.read()
	if string(resp.Payload()) != "B" || resp.AckNumber() != uint32(p.sndNxt) {
		t.Fatalf("response: %q acking %d; want \"B\" acking %d", resp.Payload(), resp.AckNumber(), p.sndNxt)
	}
	p.rcvNxt += 1
	tcp.FlushDeferredAcks()
	noSegment("after FlushDeferredAcks, the response having carried the ACK")

	// ProcessDeferred alone sends the ACK itself.
	request("c")
	tcp.ProcessDeferred()
	ack = p.read()
	if ack.Flags() != header.TCPFlagAck || ack.AckNumber() != uint32(p.sndNxt) {
		t.Fatalf("after ProcessDeferred: flags %v, ack %d; want an ACK of %d", ack.Flags(), ack.AckNumber(), p.sndNxt)
	}
	var buf [3]byte
	if n, err := c.Read(buf[:]); err != nil || string(buf[:n]) == "" {
		t.Fatalf("application read: %q, %v", buf[:n], err)
	}
}
