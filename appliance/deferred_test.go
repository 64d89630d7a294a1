package appliance

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// TestDeferredTCPProcessing covers gVisor patch 0004 as gateway mode uses
// it: with deferral on and ProcessDeferred called after each delivery, a
// relayed connection moves data intact. (Whether a given segment waits for
// ProcessDeferred depends on whether a user goroutine holds the endpoint at
// that moment, so "nothing moves without it" cannot be asserted reliably.)
func TestDeferredTCPProcessing(t *testing.T) {
	tcp.SetDeferredProcessing(true)
	t.Cleanup(func() { tcp.SetDeferredProcessing(false) })
	opts := testOptions()
	opts.AllowHostLoopback = true
	l := hostServer(t, readAllThenEcho)

	afterInject = tcp.ProcessDeferred
	t.Cleanup(func() { afterInject = nil })
	n := newTestNet(t, opts, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial with deferred processing: %v", err)
	}
	defer c.Close()
	want := make([]byte, 2<<20+7)
	rand.Read(want)
	go func() {
		c.Write(want)
		c.CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("echo with deferred processing: %d of %d bytes, equal %v, err %v", len(got), len(want), bytes.Equal(got, want), err)
	}
}

// TestCloseDuringHandshake: a SYN whose handshake never completes (the
// container never sees the SYN-ACK) must not hold Close for the SYN-ACK
// retries.
func TestCloseDuringHandshake(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	l := hostServer(t, readAllThenEcho)
	n := newTestNet(t, opts, false) // the gateway's output goes nowhere
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	go n.dial(ctx, gwAddr(tcpPort(l)))
	waitFor(t, 5*time.Second, "the handshake to start", func() bool {
		return n.gw.Counters()["tcp_flows_opened"] > 0 || len(n.gw.stack.RegisteredEndpoints()) > 0
	})
	done := make(chan struct{})
	go func() { n.gw.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second): // a liveness bound, not a speed target
		t.Fatal("Gateway.Close still blocked 30s after a half-open handshake")
	}
}
