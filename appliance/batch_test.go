package appliance

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

func TestLinkBatchQueue(t *testing.T) {
	b := NewLinkBatch(false)
	if b.runInline(func() {}) {
		t.Fatal("runInline outside a batch queued the work; nothing would run it")
	}
	var order []int
	b.Begin()
	if !b.runInline(func() {
		order = append(order, 1)
		// Work queued by work runs in the same End.
		if !b.runInline(func() { order = append(order, 2) }) {
			t.Error("runInline from queued work refused during End")
		}
	}) {
		t.Fatal("runInline inside a batch refused")
	}
	if len(order) != 0 {
		t.Fatal("queued work ran before End")
	}
	b.End()
	if len(order) != 2 || order[0] != 1 || order[1] != 2 {
		t.Fatalf("End ran %v, want [1 2]", order)
	}
	if b.runInline(func() {}) {
		t.Fatal("runInline after End queued the work")
	}
	var nilBatch *LinkBatch
	if nilBatch.runInline(func() {}) {
		t.Fatal("a nil LinkBatch queued work")
	}
}

// batchNet is a test network whose link deliveries are bracketed by a
// LinkBatch, as the TUN reader's are, with deferred TCP processing.
func batchNet(t *testing.T) (*LinkBatch, *testNet) {
	t.Helper()
	tcp.SetDeferredProcessing(true)
	t.Cleanup(func() { tcp.SetDeferredProcessing(false) })
	batch := NewLinkBatch(true)
	beforeInject, afterInject = batch.Begin, batch.End
	t.Cleanup(func() { beforeInject, afterInject = nil, nil })
	opts := testOptions()
	opts.AllowHostLoopback = true
	opts.Batch = batch
	return batch, newTestNet(t, opts, true)
}

// TestLinkBatchRelay: with the link's deliveries bracketed by a LinkBatch
// (as the TUN reader does) and deferred TCP processing with its ACKs owed
// until the batch's work ran (patches 0004, 0021), container data goes to
// the host inline on the delivering goroutine, and both request/response
// exchanges and a bulk echo arrive intact.
func TestLinkBatchRelay(t *testing.T) {
	batch, n := batchNet(t)
	defer n.close()

	// Request/response: the server answers each line-sized request.
	rr := hostServer(t, func(c net.Conn) {
		b := make([]byte, 64)
		for {
			k, err := c.Read(b)
			if err != nil {
				return
			}
			if _, err := c.Write(bytes.ToUpper(b[:k])); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(rr)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	before := batch.ran.Load()
	for i := 0; i < 200; i++ {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatalf("exchange %d: write: %v", i, err)
		}
		var got [4]byte
		if _, err := io.ReadFull(c, got[:]); err != nil || string(got[:]) != "PING" {
			t.Fatalf("exchange %d: read %q, %v; want PING", i, got, err)
		}
	}
	c.Close()
	if ran := batch.ran.Load() - before; ran < 100 {
		t.Fatalf("only %d of 200 requests were relayed inline by the batch; want most", ran)
	}

	// Bulk: relayed inline as well (a worker takes over only when a pass
	// is interrupted), and the reverse direction by workers.
	l := hostServer(t, readAllThenEcho)
	c2, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c2.Close()
	want := make([]byte, 2<<20+7)
	rand.Read(want)
	go func() {
		c2.Write(want)
		c2.CloseWrite()
	}()
	c2.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c2)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("bulk echo: %d of %d bytes, equal %v, err %v", len(got), len(want), bytes.Equal(got, want), err)
	}
}

// TestLinkBatchShortConnections: connections that send a request, get the
// answer and close (netperf's TCP_CRR) are relayed without a worker
// goroutine, with the link's deliveries bracketed by a LinkBatch as the
// TUN reader does. Before, each connection started up to three: both
// directions were kicked when the relay started, on the SYN's handler;
// at the close, the hang-up netstack reported after the data kicked a
// direction that had already ended, or, arriving in the same batch as the
// data, made the inline pass look again on a goroutine. And the batches
// that deliver a SYN and its handshake's ACK yield to the handler
// goroutine they start or wake.
func TestLinkBatchShortConnections(t *testing.T) {
	batch, n := batchNet(t)
	defer n.close()

	// The server answers one request and closes, as netperf's does.
	l := hostServer(t, func(c net.Conn) {
		defer c.Close()
		b := make([]byte, 16)
		k, err := c.Read(b)
		if err != nil {
			return
		}
		c.Write(bytes.ToUpper(b[:k]))
	})
	const conns = 50
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	workers := func() uint64 { return n.gw.Counters()["tcp_relay_workers"] }
	before, yieldsBefore := workers(), batch.yields.Load()
	for i := range conns {
		c, err := n.dial(ctx, gwAddr(tcpPort(l)))
		if err != nil {
			t.Fatalf("connection %d: dial: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatalf("connection %d: write: %v", i, err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "X" {
			t.Fatalf("connection %d: read %q, %v; want X, then EOF", i, got, err)
		}
		c.Close()
	}
	// Wait for the relays to finish: the last close may still be on its way.
	deadline := time.Now().Add(10 * time.Second)
	for n.gw.Counters()["tcp_flows_closed"] < conns && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Before, at least one per connection; a few remain where a kick
	// from another goroutine interrupts an inline pass.
	if w := workers() - before; w > conns/2 {
		t.Errorf("%d relay worker goroutines for %d short connections; want few", w, conns)
	}
	// The batch of each SYN yielded to the forwarder's handler goroutine
	// it started, and the batch of each handshake's ACK to the handler it
	// woke.
	if y := batch.yields.Load() - yieldsBefore; y < 2*conns {
		t.Errorf("the batches yielded %d times for %d connections; want twice per connection (SYN, handshake's ACK)", y, conns)
	}
}
