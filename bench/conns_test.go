package bench

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

func TestHoldLoopback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srvCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- HoldServe(srvCtx, []string{addr}) }()
	var conns []net.Conn
	var r HoldResult
	for i := 0; i < 50; i++ { // the server may not listen yet
		if conns, r = Hold(ctx, []string{addr}, 20, 4); r.Opened == 20 {
			break
		}
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r.Opened != 20 || r.Failed != 0 || len(conns) != 20 {
		t.Fatalf("Hold = %+v, %d conns; want 20 opened", r, len(conns))
	}
	for _, c := range conns {
		c.Close()
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("HoldServe: %v", err)
	}
}

func TestWriteConnsTable(t *testing.T) {
	var b bytes.Buffer
	WriteConnsTable(&b, []ConnsResult{
		{Path: PathKernel, Conns: 10, Slab: 10240},
		{Path: PathAppliance, Conns: 10, RSS: 7168, Heap: 6144, Goroutines: 12, HeapGrowth: 1 << 20, HeapGrowthExpired: 3 << 20, HeapGrowth2Expired: 1 << 19},
		{Path: PathAppliance, Conns: 50000, Skipped: "needs 50256 open files"},
		{Path: PathAppliance, Conns: 7, Error: "boom"},
	})
	out := b.String()
	for _, want := range []string{"10.00", "7.00", "6.00", "1.0M/0.0M", "after ct expiry 1/2", "3.0M/0.5M", "skipped: needs 50256", "error: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
