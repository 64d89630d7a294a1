package netstack

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
)

// TestDelayedAckPingPong checks netstack's delayed ACK (gVisor patch 0036),
// as Linux's: a connection that answers what it receives enters ping-pong
// mode, after which the answer carries the ACK of a small request instead
// of a bare ACK before it; a request left unanswered is acknowledged by the
// delayed-ACK timer, no sooner than 40 ms, which also leaves ping-pong mode.
func TestDelayedAckPingPong(t *testing.T) {
	s, ep := rawStack(t)
	p, c := connectRaw(t, s, ep)
	p.drain()
	delayed := func() uint64 { return s.Stats().TCP.DelayedAcks.Value() }

	request := func(b byte) {
		t.Helper()
		sendRequest(t, p, c, b)
	}
	// answer writes one byte and returns the segments the peer got up to
	// and including the one that carries it.
	answer := func(b byte) []header.TCP {
		t.Helper()
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		var segs []header.TCP
		for {
			seg := p.read()
			segs = append(segs, seg)
			if len(seg.Payload()) > 0 {
				p.rcvNxt = seqnum.Value(seg.SequenceNumber()).Add(seqnum.Size(len(seg.Payload())))
				return segs
			}
		}
	}

	// The first exchange: not yet ping-pong, so the request is ACKed at
	// once. The answer, within 40 ms of it, enters ping-pong mode.
	request('a')
	answer('A')

	// In ping-pong mode the answer carries the ACK: no bare ACK first.
	for _, b := range []byte("bcd") {
		request(b)
		segs := answer(b - 'a' + 'A')
		if len(segs) != 1 {
			t.Fatalf("request %q: %d segments before the answer's, want the answer alone (the bare ACK was not delayed)", b, len(segs)-1)
		}
		if got := seqnum.Value(segs[0].AckNumber()); got != p.sndNxt {
			t.Fatalf("request %q: the answer acknowledges %d, want %d", b, got, p.sndNxt)
		}
	}
	if n := delayed(); n != 0 {
		t.Fatalf("%d delayed ACKs sent by the timer, want 0: every answer carried its ACK", n)
	}

	// A request left unanswered: the timer sends the ACK, no sooner than
	// 40 ms after the request.
	start := time.Now()
	request('e')
	ack := p.read()
	waited := time.Since(start)
	if len(ack.Payload()) != 0 || seqnum.Value(ack.AckNumber()) != p.sndNxt {
		t.Fatalf("after an unanswered request: a segment of %d bytes acknowledging %d, want a bare ACK of %d", len(ack.Payload()), ack.AckNumber(), p.sndNxt)
	}
	if waited < 40*time.Millisecond {
		t.Errorf("the unanswered request was ACKed after %v, want the 40 ms delayed-ACK timeout", waited)
	}
	if n := delayed(); n != 1 {
		t.Errorf("%d delayed ACKs sent by the timer, want 1", n)
	}

	// The timer left ping-pong mode: the next request is ACKed at once,
	// before its answer, and not by the timer.
	request('f')
	segs := answer('F')
	if len(segs) != 2 || len(segs[0].Payload()) != 0 {
		t.Errorf("after the timer fired: %d segments up to the answer, want a bare ACK, then the answer", len(segs))
	}
	if n := delayed(); n != 1 {
		t.Errorf("%d delayed ACKs sent by the timer, want still 1", n)
	}
}

// TestDelayedAckTimerAfterReset: the delayed-ACK timer fires, and before
// its handler gets the endpoint's lock a reset cleans the endpoint up
// (gVisor patch 0045). The handler must then do nothing; without the
// patch it dereferenced the cleaned-up timer's nil clock and the process
// panicked (seen in RR runs through the gateway). The fake clock holds
// the 40 ms timer and the test calls its callback itself, after the
// reset: the order the race produced.
func TestDelayedAckTimerAfterReset(t *testing.T) {
	clock := &heldTimerClock{Clock: tcpip.NewStdClock(), hold: 40 * time.Millisecond}
	s, ep := rawStackWith(t, Options{Clock: clock})
	p, c := connectRaw(t, s, ep)
	p.drain()
	exchange := func(b byte) {
		t.Helper()
		sendRequest(t, p, c, b)
		if b == 'b' {
			return // left unanswered: the delayed ACK is armed
		}
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		for {
			seg := p.read()
			if len(seg.Payload()) > 0 {
				p.rcvNxt = seqnum.Value(seg.SequenceNumber()).Add(seqnum.Size(len(seg.Payload())))
				return
			}
		}
	}
	exchange('a') // the answer enters ping-pong mode
	exchange('b')
	fire := clock.held()
	if fire == nil {
		t.Fatal("no 40 ms timer was started: the request's ACK was not delayed")
	}
	p.send(header.TCPFlagRst|header.TCPFlagAck, p.sndNxt, nil)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("read after the peer's RST = %v, want the reset", err)
	}
	p.drain()
	// On a goroutine of its own, as the timer runs it: a panic there
	// ends the test binary at once (on the test's goroutine, the
	// endpoint's lock, held by the panicking handler, would hang the
	// cleanups instead).
	fired := make(chan struct{})
	go func() {
		defer close(fired)
		fire() // panicked before patch 0045
	}()
	<-fired
	if n := s.Stats().TCP.DelayedAcks.Value(); n != 0 {
		t.Errorf("the timer sent %d delayed ACKs on a reset connection, want 0", n)
	}
	if pkt := ep.Read(); pkt != nil {
		pkt.DecRef()
		t.Error("a segment was sent on the reset connection after the timer fired")
	}
}

// sendRequest sends one byte from p and waits until the application
// reading c has it.
func sendRequest(t *testing.T, p *rawPeer, c net.Conn, b byte) {
	t.Helper()
	p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, []byte{b})
	p.sndNxt++
	var got [1]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(got[:]); err != nil || got[0] != b {
		t.Fatalf("read %q, %v; want %q", got[0], err, b)
	}
}

// heldTimerClock is the real clock except for timers of duration hold:
// those never fire by themselves (Stop and Reset do nothing), and held
// returns the last one's callback for the test to call.
type heldTimerClock struct {
	tcpip.Clock
	hold time.Duration
	mu   sync.Mutex
	f    func()
}

func (c *heldTimerClock) AfterFunc(d time.Duration, f func()) tcpip.Timer {
	if d != c.hold {
		return c.Clock.AfterFunc(d, f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.f = f
	return heldTimer{}
}

func (c *heldTimerClock) held() func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.f
}

type heldTimer struct{}

func (heldTimer) Stop() bool            { return true }
func (heldTimer) Reset(d time.Duration) {}
