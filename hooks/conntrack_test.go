package hooks

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// ctClock is a manual clock for Conntrack, safe to read from the GC
// timer's goroutine.
type ctClock struct{ ns atomic.Int64 }

func newCTClock() *ctClock {
	c := &ctClock{}
	c.ns.Store(time.Unix(1000, 0).UnixNano())
	return c
}

func (c *ctClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *ctClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// track runs one packet through In and Confirm and returns its state.
func track(t *testing.T, ct *Conntrack, proto uint8, sport, dport uint16) CTState {
	t.Helper()
	src, dst := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	p := NewPacket(Prerouting, buildPacket(t, false, proto, src, dst, sport, dport, nil))
	ct.In(p)
	st := p.State
	ct.Confirm(p)
	return st
}

func TestConntrackSweep(t *testing.T) {
	clk := newCTClock()
	ct := NewConntrack(ConntrackOptions{Now: clk.now, GCInterval: -1})
	const n = 500
	for i := range n {
		if st := track(t, ct, ProtoUDP, uint16(10000+i), 53); st != StateNew {
			t.Fatalf("UDP flow %d: %v, want NEW", i, st)
		}
	}
	// A TCP connection picked up by its ACK is established: 6 h.
	if st := track(t, ct, ProtoTCP, 40000, 80); st != StateNew {
		t.Fatalf("TCP flow: %v, want NEW", st)
	}
	if got := ct.Len(); got != n+1 {
		t.Fatalf("Len() = %d, want %d", got, n+1)
	}
	if got := ct.Sweep(); got != 0 {
		t.Fatalf("Sweep() before any timeout = %d, want 0", got)
	}
	clk.advance(timeoutUDP + time.Second)
	if got := ct.Sweep(); got != n {
		t.Errorf("Sweep() after the UDP timeout = %d, want %d", got, n)
	}
	if got, exp := ct.Len(), ct.Stats.Expired.Load(); got != 1 || exp != n {
		t.Errorf("after Sweep: Len() = %d, Stats.Expired = %d, want 1 and %d", got, exp, n)
	}
	// The swept tuples are free again: the same flows are NEW.
	if st := track(t, ct, ProtoUDP, 10000, 53); st != StateNew {
		t.Errorf("flow after its entry was swept: %v, want NEW", st)
	}
}

// TestConntrackGCTimer: expired connections leave the table with no
// further traffic, the timer stops when the table is empty, starts again
// with the next connection, and Close stops it.
func TestConntrackGCTimer(t *testing.T) {
	clk := newCTClock()
	ct := NewConntrack(ConntrackOptions{Now: clk.now, GCInterval: time.Millisecond})
	defer ct.Close()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s after 10 s (Len %d, armed %v)", what, ct.Len(), ct.gcArmed.Load())
			}
		}
	}
	for i := range 100 {
		track(t, ct, ProtoUDP, uint16(10000+i), 53)
	}
	if !ct.gcArmed.Load() {
		t.Fatal("GC timer not armed after inserts")
	}
	clk.advance(timeoutUDP + time.Second)
	waitFor("sweep of the expired connections", func() bool { return ct.Len() == 0 })
	waitFor("timer stop on an empty table", func() bool { return !ct.gcArmed.Load() })

	track(t, ct, ProtoUDP, 20000, 53)
	if !ct.gcArmed.Load() {
		t.Fatal("GC timer not rearmed by an insert into the empty table")
	}
	clk.advance(timeoutUDP + time.Second)
	waitFor("sweep after rearming", func() bool { return ct.Len() == 0 })

	ct.Close()
	track(t, ct, ProtoUDP, 20001, 53)
	clk.advance(timeoutUDP + time.Second)
	time.Sleep(20 * time.Millisecond) // 20 intervals
	if got := ct.Len(); got != 1 {
		t.Errorf("Len() = %d after Close and the timeout, want 1 (no sweep after Close)", got)
	}
}
