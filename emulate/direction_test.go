package emulate

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

var t0 = time.Unix(1_700_000_000, 0)

// harness drives a direction by hand (no goroutine): enqueue at a time,
// poll at a time, and record what left when.
type harness struct {
	t    *testing.T
	d    *direction
	out  []item
	left []time.Time
	seqs []uint64
}

func newHarness(t *testing.T, spec string) *harness {
	t.Helper()
	s, err := ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t}
	h.d = newDirection("out", s, NewManualClock(t0), nil)
	t.Cleanup(func() {
		for _, it := range h.out {
			it.pkt.DecRef()
		}
		h.d.close()
	})
	return h
}

func packet(size int) *stack.PacketBuffer {
	b := make([]byte, size)
	b[0] = 0x45
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}

func (h *harness) send(at time.Time, size int) {
	p := packet(size)
	h.d.mu.Lock()
	h.d.enqueueLocked(at, p, header.IPv4ProtocolNumber)
	h.d.mu.Unlock()
	p.DecRef()
}

// poll releases what is due at now and returns the next event.
func (h *harness) poll(now time.Time) time.Time {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	n := len(h.out)
	var next time.Time
	h.out, next = h.d.pollLocked(now, h.out)
	for _, it := range h.out[n:] {
		h.left = append(h.left, now)
		h.seqs = append(h.seqs, it.seq)
		it.pkt.DecRef()
	}
	h.out = h.out[:n]
	return next
}

// runUntil polls at every event up to end, as the goroutine would with a
// perfect timer.
func (h *harness) runUntil(end time.Time) {
	now := t0
	for {
		next := h.poll(now)
		if next.IsZero() || next.After(end) {
			return
		}
		now = next
	}
}

func (h *harness) stat(k string) uint64 {
	m := map[string]uint64{}
	h.d.addStats(m)
	return m["out_"+k]
}

func TestDelayLine(t *testing.T) {
	h := newHarness(t, "delay=20ms")
	for i := 0; i < 5; i++ {
		h.send(t0.Add(time.Duration(i)*time.Millisecond), 100)
	}
	h.runUntil(t0.Add(time.Second))
	if len(h.left) != 5 {
		t.Fatalf("released %d packets, want 5", len(h.left))
	}
	for i, at := range h.left {
		if want := t0.Add(time.Duration(20+i) * time.Millisecond); !at.Equal(want) {
			t.Errorf("packet %d left at %v, want %v", i, at.Sub(t0), want.Sub(t0))
		}
	}
}

func TestJitterBounds(t *testing.T) {
	h := newHarness(t, "delay=20ms,jitter=5ms,correlation=25%,seed=1")
	for i := 0; i < 1000; i++ {
		h.send(t0, 100)
	}
	h.runUntil(t0.Add(time.Second))
	if len(h.left) != 1000 {
		t.Fatalf("released %d, want 1000", len(h.left))
	}
	for _, at := range h.left {
		if d := at.Sub(t0); d < 15*time.Millisecond || d > 25*time.Millisecond {
			t.Fatalf("released after %v, want 15ms..25ms", d)
		}
	}
}

func TestRate(t *testing.T) {
	h := newHarness(t, "rate=100mbit,limit=100000")
	const n, size = 20000, 1500
	for i := 0; i < n; i++ {
		h.send(t0, size)
	}
	h.runUntil(t0.Add(time.Hour))
	if len(h.left) != n {
		t.Fatalf("released %d, want %d", len(h.left), n)
	}
	el := h.left[n-1].Sub(t0).Seconds()
	got := float64(n*size*8) / el
	if math.Abs(got-100e6)/100e6 > 0.01 {
		t.Errorf("rate %.0f bit/s, want 100e6 ±1%%", got)
	}
	if d := h.left[0].Sub(t0); d != 120*time.Microsecond {
		t.Errorf("first packet left after %v, want 120µs", d)
	}
}

func TestRateThenDelay(t *testing.T) {
	h := newHarness(t, "rate=1mbit,delay=10ms")
	h.send(t0, 1250) // 10ms at 1 Mbit/s
	h.send(t0, 1250)
	h.runUntil(t0.Add(time.Second))
	want := []time.Duration{20 * time.Millisecond, 30 * time.Millisecond}
	for i, at := range h.left {
		if at.Sub(t0) != want[i] {
			t.Errorf("packet %d left at %v, want %v", i, at.Sub(t0), want[i])
		}
	}
}

// gsoPacket is an IPv4/TCP GSO packet: 20-byte IP and TCP headers, 4000
// bytes of payload, MSS 1000, so 4 segments of 1040 bytes on the wire.
func gsoPacket() *stack.PacketBuffer {
	b := make([]byte, 4040)
	b[0], b[20+12] = 0x45, 5<<4
	p := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	p.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, MSS: 1000, L3HdrLen: 20}
	return p
}

func TestWireSizeGSO(t *testing.T) {
	p := gsoPacket()
	defer p.DecRef()
	if b, segs := wireSize(p); b != 4*1040 || segs != 4 {
		t.Errorf("wireSize = %d bytes, %d segments; want %d, 4", b, segs, 4*1040)
	}
}

// TestLimitCountsSegments: limit is in wire packets, so a GSO packet of 4
// segments takes 4 places in the queue.
func TestLimitCountsSegments(t *testing.T) {
	h := newHarness(t, "rate=1mbit,limit=6")
	for i := 0; i < 2; i++ {
		p := gsoPacket()
		h.d.mu.Lock()
		h.d.enqueueLocked(t0, p, header.IPv4ProtocolNumber)
		h.d.mu.Unlock()
		p.DecRef()
	}
	if got := h.d.stats.droppedQueue.Load(); got != 1 {
		t.Fatalf("dropped %d GSO packets at limit=6, want 1 (4+4 segments > 6)", got)
	}
	if got := h.d.held; got != 4 {
		t.Fatalf("held = %d wire packets, want 4", got)
	}
}

func TestLoss(t *testing.T) {
	h := newHarness(t, "loss=5%,seed=42")
	const n = 100000
	for i := 0; i < n; i++ {
		h.send(t0, 64)
		h.poll(t0)
	}
	lost := float64(h.stat("dropped_loss")) / n * 100
	if math.Abs(lost-5) > 0.5 {
		t.Errorf("lost %.2f%%, want 5%% ±0.5", lost)
	}
	if got := uint64(len(h.left)) + h.stat("dropped_loss"); got != n {
		t.Errorf("released + lost = %d, want %d", got, n)
	}
}

// TestLossSeedRepeats: with a seed, which packets are lost depends only on
// their order in the direction, not on their size or timing, so two
// senders crossing the same spec meet the same loss realization (bench
// --cc-matrix --seed pairs the kernel's run and netstack's so).
func TestLossSeedRepeats(t *testing.T) {
	lostAt := func(spec string, size func(i int) int) []int {
		h := newHarness(t, spec)
		var lost []int
		for i := 0; i < 2000; i++ {
			before := h.stat("dropped_loss")
			h.send(t0.Add(time.Duration(i)*time.Millisecond), size(i))
			h.poll(t0.Add(time.Duration(i) * time.Millisecond))
			if h.stat("dropped_loss") != before {
				lost = append(lost, i)
			}
		}
		return lost
	}
	a := lostAt("loss=2%,seed=7", func(int) int { return 64 })
	b := lostAt("loss=2%,seed=7", func(i int) int { return 64 + (i*37)%1400 })
	c := lostAt("loss=2%,seed=8", func(int) int { return 64 })
	if len(a) < 20 || len(a) > 60 {
		t.Fatalf("seed 7 lost %d of 2000 at 2%%, want about 40", len(a))
	}
	if !slices.Equal(a, b) {
		t.Errorf("same seed, other sizes: lost %v, want %v", b, a)
	}
	if slices.Equal(a, c) {
		t.Errorf("seeds 7 and 8 lost the same packets %v", a)
	}
}

func TestGilbertElliott(t *testing.T) {
	h := newHarness(t, "loss=ge:1%,25%,seed=9")
	d := h.d
	const n = 200000
	var bursts, lostPkts int
	run := 0
	d.mu.Lock()
	for i := 0; i < n; i++ {
		if d.lostLocked() {
			run++
			lostPkts++
			continue
		}
		if run > 0 {
			bursts++
			run = 0
		}
	}
	d.mu.Unlock()
	mean := float64(lostPkts) / float64(bursts)
	if math.Abs(mean-4)/4 > 0.05 {
		t.Errorf("mean burst %.2f packets over %d bursts, want 1/R = 4 ±5%%", mean, bursts)
	}
	// Stationary loss: p/(p+r) = 1/26.
	if got, want := float64(lostPkts)/n, 1.0/26; math.Abs(got-want)/want > 0.1 {
		t.Errorf("loss %.4f, want %.4f ±10%%", got, want)
	}
}

func TestTrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t")
	if err := os.WriteFile(path, []byte("0\n5\n5\n12\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, "trace="+path)
	for i := 0; i < 8; i++ {
		h.send(t0, 1500)
	}
	h.send(t0, 750) // two small packets share one opportunity
	h.send(t0, 750)
	h.send(t0, 3000) // a packet of two MTUs takes two opportunities
	h.runUntil(t0.Add(time.Second))
	// Opportunities: 0 5 5 12 | 12 17 17 24 | 24 29 29 36
	want := []time.Duration{0, 5, 5, 12, 12, 17, 17, 24, 24, 24, 29}
	if len(h.left) != len(want) {
		t.Fatalf("released %d, want %d", len(h.left), len(want))
	}
	for i, at := range h.left {
		if got := at.Sub(t0); got != want[i]*time.Millisecond {
			t.Errorf("packet %d left at %v, want %v", i, got, want[i]*time.Millisecond)
		}
	}
	// An idle link wastes its opportunities: a packet arriving at 40ms
	// leaves at the next one, 41ms.
	h.left = nil
	h.send(t0.Add(40*time.Millisecond), 1500)
	h.runUntil(t0.Add(time.Second))
	if len(h.left) != 1 || h.left[0].Sub(t0) != 41*time.Millisecond {
		t.Errorf("late packet left at %v, want 41ms", h.left)
	}
}

func TestRatios(t *testing.T) {
	for _, tc := range []struct {
		spec, stat string
		want       float64
	}{
		{"delay=10ms,reorder=25%,seed=3", "reordered", 25},
		{"duplicate=10%,seed=4", "duplicated", 10},
		{"corrupt=10%,seed=5", "corrupted", 10},
	} {
		t.Run(tc.stat, func(t *testing.T) {
			h := newHarness(t, tc.spec+",limit=100000")
			const n = 50000
			for i := 0; i < n; i++ {
				h.send(t0, 64)
			}
			h.runUntil(t0.Add(time.Second))
			got := float64(h.stat(tc.stat)) / n * 100
			if math.Abs(got-tc.want) > tc.want*0.05 {
				t.Errorf("%s %.2f%%, want %v%% ±5%%", tc.stat, got, tc.want)
			}
			wantOut := n + int(h.stat("duplicated"))
			if len(h.left) != wantOut {
				t.Errorf("released %d, want %d", len(h.left), wantOut)
			}
		})
	}
}

func TestReorderGoesFirst(t *testing.T) {
	h := newHarness(t, "delay=10ms,reorder=100%")
	h.send(t0, 64)
	h.runUntil(t0)
	if len(h.left) != 1 || !h.left[0].Equal(t0) {
		t.Errorf("reordered packet left at %v, want at once", h.left)
	}
}

func TestCorruptFlipsOneBit(t *testing.T) {
	h := newHarness(t, "corrupt=100%,seed=1")
	p := packet(100)
	h.d.mu.Lock()
	h.d.enqueueLocked(t0, p, header.IPv4ProtocolNumber)
	var out []item
	out, _ = h.d.pollLocked(t0, out)
	h.d.mu.Unlock()
	if len(out) != 1 {
		t.Fatalf("released %d, want 1", len(out))
	}
	a, b := packetBytes(p), packetBytes(out[0].pkt)
	diff := 0
	for i := range a {
		for x := a[i] ^ b[i]; x != 0; x &= x - 1 {
			diff++
			if i < 20 {
				t.Errorf("bit flipped in the IP header at byte %d", i)
			}
		}
	}
	if diff != 1 {
		t.Errorf("%d bits differ, want 1", diff)
	}
	p.DecRef()
	out[0].pkt.DecRef()
}

func TestLimitTailDrop(t *testing.T) {
	h := newHarness(t, "delay=10ms,limit=10")
	for i := 0; i < 25; i++ {
		h.send(t0, 64)
	}
	if got := h.stat("dropped_queue"); got != 15 {
		t.Errorf("dropped_queue = %d, want 15", got)
	}
	h.runUntil(t0.Add(time.Second))
	if len(h.left) != 10 {
		t.Errorf("released %d, want 10", len(h.left))
	}
	for i, s := range h.seqs {
		if s != uint64(i) {
			t.Errorf("released seq %d at %d: tail drop must keep the first packets", s, i)
		}
	}
}

func TestCoDelDrops(t *testing.T) {
	// A 1 Mbit/s link fed 2 Mbit/s: the standing queue makes CoDel drop,
	// and the sojourn time of what leaves stays far below tail drop's.
	h := newHarness(t, "rate=1mbit,codel,limit=100000")
	for i := 0; i < 2000; i++ {
		h.send(t0.Add(time.Duration(i)*5*time.Millisecond), 1250) // 10ms each at 1 Mbit/s
		h.poll(t0.Add(time.Duration(i) * 5 * time.Millisecond))
	}
	if h.stat("dropped_codel") == 0 {
		t.Fatalf("CoDel dropped nothing")
	}
	if q := h.stat("queued"); q > 100 {
		t.Errorf("queue %d packets after 10 s of 2x overload, want CoDel to keep it short", q)
	}
}
