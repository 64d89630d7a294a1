package bench

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// startProxy relays a loopback listener to target until the test ends.
func startProxy(tb testing.TB, target string) string {
	tb.Helper()
	return serveLoopback(tb, "Proxy", func(ctx context.Context, ln net.Listener) error {
		return Proxy(ctx, ln, target)
	})
}

// TestProxyRRAndCRR runs the netperf protocol through the relay: CRR's
// client waits for the server's FIN after the answer, so every connection
// also checks that the relay passes a half-close on.
func TestProxyRRAndCRR(t *testing.T) {
	addr := startProxy(t, startServer(t))
	ctx := context.Background()
	rr, err := RR(ctx, addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if rr.Transactions == 0 {
		t.Errorf("RR through the proxy = %+v", rr)
	}
	crr, err := CRR(ctx, addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if crr.Connections == 0 || crr.Errors != 0 {
		t.Errorf("CRR through the proxy = %+v", crr)
	}
}

// TestProxyHalfClose: after the client shuts down its writing side, the
// server still sends through the relay, and sees the client's EOF.
func TestProxyHalfClose(t *testing.T) {
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := sl.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the client's FIN
		c.Write(bytes.ToUpper(b))
		got <- b
	}()
	c, err := net.Dial("tcp", startProxy(t, sl.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("half")); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if sent := <-got; string(sent) != "half" || string(answer) != "HALF" {
		t.Errorf("server read %q, client read %q; want \"half\" and \"HALF\"", sent, answer)
	}
}

// TestProxyRefusedAndNoLeak: a refused dial closes the accepted
// connection, and connections that ended leave no goroutine behind.
func TestProxyRefusedAndNoLeak(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there now: the dial is refused
	before := runtime.NumGoroutine()
	addr := startProxy(t, deadAddr)
	for range 20 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		if n, err := c.Read(b[:]); n != 0 || err == nil {
			t.Fatalf("read through a refused relay = %d, %v; want the connection closed", n, err)
		}
		c.Close()
	}
	// The accept loop remains; the 20 handlers must be gone.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+2 {
		t.Errorf("%d goroutines after 20 refused relays, %d before", n, before)
	}
}

// TestProxyServeListenFails: when one pair cannot listen, ProxyServe
// returns that error and leaves none of the others listening.
func TestProxyServeListenFails(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	err = ProxyServe(context.Background(), []ProxyPair{
		{Listen: freeAddr, Target: busy.Addr().String()},
		{Listen: busy.Addr().String(), Target: freeAddr},
	})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("ProxyServe with a busy address = %v, want address already in use", err)
	}
	ln, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the first pair's address is still taken after the failure: %v", err)
	}
	ln.Close()
}
