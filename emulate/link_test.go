package emulate

import (
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// sink records what a Link sends down (WritePackets of the lower
// endpoint) and up (the stack's dispatcher), with the clock's time.
type sink struct {
	*channel.Endpoint
	clock *ManualClock
	mu    sync.Mutex
	down  []time.Duration
	up    []time.Duration
}

func (s *sink) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range pkts.AsSlice() {
		s.down = append(s.down, s.clock.Now().Sub(t0))
	}
	return pkts.Len(), nil
}

func (s *sink) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up = append(s.up, s.clock.Now().Sub(t0))
}

func (*sink) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (s *sink) counts() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.down), len(s.up)
}

func newLink(t *testing.T, spec string) (*Link, *sink) {
	t.Helper()
	s, err := ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	sk := &sink{Endpoint: channel.New(16, 1500, ""), clock: NewManualClock(t0)}
	l, err := New(sk, s, Options{Clock: sk.clock})
	if err != nil {
		t.Fatal(err)
	}
	l.Attach(sk)
	t.Cleanup(l.Close)
	return l, sk
}

func (s *sink) write(l *Link, n int) {
	var pkts stack.PacketBufferList
	for i := 0; i < n; i++ {
		pkts.PushBack(packet(1250))
	}
	l.WritePackets(pkts)
	pkts.DecRef()
}

func (s *sink) inject(n int) {
	for i := 0; i < n; i++ {
		p := packet(1250)
		s.InjectInbound(header.IPv4ProtocolNumber, p)
		p.DecRef()
	}
}

// waitCounts waits for the goroutines to have sent down and up packets.
func waitCounts(t *testing.T, s *sink, down, up int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		d, u := s.counts()
		if d == down && u == up {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sent %d down, %d up; want %d, %d", d, u, down, up)
		}
		time.Sleep(time.Millisecond)
	}
}

// settle lets the goroutines go back to sleep on their timers.
func settle(s *sink, timers int) {
	deadline := time.Now().Add(time.Second)
	for s.clock.Waiters() < timers && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond)
}

func TestLinkDelayBothDirections(t *testing.T) {
	l, s := newLink(t, "delay=20ms")
	s.write(l, 3)
	s.inject(2)
	settle(s, 2)
	s.clock.Advance(19 * time.Millisecond)
	settle(s, 2)
	if d, u := s.counts(); d != 0 || u != 0 {
		t.Fatalf("after 19ms sent %d down, %d up; want none", d, u)
	}
	s.clock.Advance(time.Millisecond)
	waitCounts(t, s, 3, 2)
	for _, at := range append(s.down, s.up...) {
		if at != 20*time.Millisecond {
			t.Errorf("packet left at %v, want 20ms", at)
		}
	}
	st := l.Stats()
	if st["out_delivered"] != 3 || st["in_delivered"] != 2 || st["out_queued"] != 0 {
		t.Errorf("stats %v", st)
	}
}

func TestLinkPassThrough(t *testing.T) {
	l, s := newLink(t, "")
	s.write(l, 4)
	s.inject(3)
	if d, u := s.counts(); d != 4 || u != 3 {
		t.Errorf("empty spec: sent %d down, %d up at once; want 4, 3", d, u)
	}
	if st := l.Stats(); st["out_delivered"] != 4 || st["in_delivered"] != 3 {
		t.Errorf("stats %v", st)
	}
}

func TestLinkSetSpecKeepsQueue(t *testing.T) {
	l, s := newLink(t, "rate=1mbit") // 10ms per 1250-byte packet
	s.write(l, 10)
	settle(s, 1)
	s.clock.Advance(10 * time.Millisecond)
	waitCounts(t, s, 1, 0)
	spec, _ := ParseSpec("rate=10mbit") // 1ms per packet
	if err := l.SetSpec(spec); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 9; i++ {
		settle(s, 1)
		s.clock.Advance(time.Millisecond)
	}
	waitCounts(t, s, 10, 0)
	if got := s.down[9]; got != 19*time.Millisecond {
		t.Errorf("last packet left at %v, want 19ms", got)
	}
	if st := l.Stats(); st["out_dropped_queue"] != 0 || st["out_delivered"] != 10 {
		t.Errorf("stats %v", st)
	}
	// Turning emulation off lets new packets pass at once.
	if err := l.SetSpec(Spec{}); err != nil {
		t.Fatal(err)
	}
	s.write(l, 1)
	waitCounts(t, s, 11, 0)
}

func TestLinkCloseReleasesQueued(t *testing.T) {
	l, s := newLink(t, "delay=1s")
	s.write(l, 5)
	s.inject(5)
	l.Close()
	if st := l.Stats(); st["out_dropped_closed"] != 5 || st["in_dropped_closed"] != 5 {
		t.Errorf("stats after Close %v", st)
	}
	// The leak check in TestMain verifies every packet was released.
}
