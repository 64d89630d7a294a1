package tun

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// echoOnce sends an echo request into the device's peer end and checks
// the stack's reply comes back out of it.
func echoOnce(t *testing.T, peer int, seq uint16) {
	t.Helper()
	if _, err := unix.Write(peer, echoRequest(seq)); err != nil {
		t.Fatal(err)
	}
	got := readPacket(t, peer)
	ic := header.ICMPv4(header.IPv4(got).Payload())
	if ic.Type() != header.ICMPv4EchoReply || ic.Sequence() != seq {
		t.Fatalf("reply type %d seq %d, want echo reply %d", ic.Type(), ic.Sequence(), seq)
	}
}

func TestReaderGroup(t *testing.T) {
	g, err := NewReaderGroup()
	if err != nil {
		t.Fatal(err)
	}
	devA, peerA := fakeDevice(t, false)
	devB, peerB := fakeDevice(t, false)
	sA, epA := newTestStackOpts(t, devA, EndpointOptions{Group: g})
	_, epB := newTestStackOpts(t, devB, EndpointOptions{Group: g})

	// One goroutine serves both devices, in any order.
	for i := uint16(1); i <= 20; i++ {
		echoOnce(t, peerA, i)
		echoOnce(t, peerB, 100+i)
	}
	g.mu.Lock()
	n := len(g.members)
	g.mu.Unlock()
	if n != 2 {
		t.Fatalf("group has %d members, want 2", n)
	}
	if err := g.Close(); err == nil {
		t.Fatal("Close with endpoints attached: want error")
	}

	// B's device goes away: B stops with an error, A goes on.
	unix.Close(peerB)
	select {
	case <-epB.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("B's reader did not stop after its device went away")
	}
	if epB.Err() == nil {
		t.Fatal("B: Err() = nil after the device went away")
	}
	echoOnce(t, peerA, 500)

	// Closing A (the stack closes its NIC) leaves the group empty; its
	// goroutine ends and Close succeeds.
	sA.Close()
	sA.Wait()
	select {
	case <-epA.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("A's reader did not stop after Close")
	}
	if epA.Err() != nil {
		t.Fatalf("A: Err() = %v after a plain Close, want nil", epA.Err())
	}
	if err := g.Close(); err != nil {
		t.Fatalf("Close after every endpoint left: %v", err)
	}
}
