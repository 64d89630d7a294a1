package netstack

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

func TestTCPMemSysctl(t *testing.T) {
	s := newTestStack(t, Options{})
	def := s.MemState()
	if def.Min <= 0 || def.Min > def.Pressure || def.Pressure > def.Max {
		t.Errorf("default tcp_mem %d %d %d: want 0 < min <= pressure <= max", def.Min, def.Pressure, def.Max)
	}
	if err := s.Sysctl().Set("net.ipv4.tcp_mem", "10 20 30"); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Sysctl().Get("net.ipv4.tcp_mem"); v != "10\t20\t30" {
		t.Errorf("tcp_mem = %q, want 10\\t20\\t30", v)
	}
	for _, bad := range []string{"30 20 10", "1 2", "a b c", "0 1 2"} {
		if err := s.Sysctl().Set("net.ipv4.tcp_mem", bad); err == nil {
			t.Errorf("Set tcp_mem %q succeeded, want error", bad)
		}
	}
	if s.RefuseNew() {
		t.Error("RefuseNew with no sockets")
	}
}

// pairStacks links two stacks (10.9.0.1 and 10.9.0.2) by channel
// endpoints and pumps packets between them until the test ends.
func pairStacks(t *testing.T) (a, b *Stack) {
	t.Helper()
	a, b = newTestStack(t, Options{}), newTestStack(t, Options{})
	ea, eb := channel.New(1024, 65520, ""), channel.New(1024, 65520, "")
	for i, p := range []struct {
		s  *Stack
		ep *channel.Endpoint
	}{{a, ea}, {b, eb}} {
		addr := tcpip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)})
		if _, err := p.s.AttachNIC(p.ep, NICOptions{Name: "eth0", Addresses: []tcpip.AddressWithPrefix{{Address: addr, PrefixLen: 24}}, DefaultRoute: true}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	pump := func(from, to *channel.Endpoint) {
		defer wg.Done()
		for {
			pkt := from.ReadContext(ctx)
			if pkt == nil {
				return
			}
			np := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: pkt.ToBuffer()})
			pkt.DecRef()
			to.InjectInbound(ipv4.ProtocolNumber, np)
			np.DecRef()
		}
	}
	wg.Add(2)
	go pump(ea, eb)
	go pump(eb, ea)
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, b
}

// TestMemoryPressure fills a receiver that does not read: the accounting
// sees its queue, enters pressure above tcp_mem's pressure, refuses new
// connections above max, clamps the receive buffer and stops its
// auto-tuning; once drained, pressure ends and the buffer is restored.
func TestMemoryPressure(t *testing.T) {
	a, b := pairStacks(t)
	if err := b.Sysctl().Set("net.ipv4.tcp_mem", "8 16 32"); err != nil {
		t.Fatal(err)
	}
	ln, err := gonet.ListenTCP(b.Stack, tcpip.FullAddress{Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, a.Stack, tcpip.FullAddress{Addr: tcpip.AddrFrom4([4]byte{10, 9, 0, 2}), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const size = 1 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(data); werr <- err }()

	waitMem(t, b, "pressure and over max", func(m MemState) bool { return m.UnderPressure && m.OverMax && m.Clamped == 1 })
	m := b.MemState()
	if m.Pages <= 32 || m.PressureEntered != 1 {
		t.Errorf("MemState = %+v, want pages > 32 and one pressure entry", m)
	}
	if !b.RefuseNew() || b.MemState().Refused != 1 {
		t.Errorf("RefuseNew above max = false or not counted: %+v", b.MemState())
	}
	var ep *tcp.Endpoint
	for _, te := range b.RegisteredEndpoints() {
		if e, ok := te.(*tcp.Endpoint); ok && e.State() == uint32(tcp.StateEstablished) {
			ep = e
		}
	}
	if ep == nil {
		t.Fatal("no established endpoint on the receiver")
	}
	if mi := ep.MemInfo(); mi.RcvAutoTuning || mi.RcvMem < mi.RcvQueued || mi.RcvQueued == 0 {
		t.Errorf("receiver under pressure: %+v, want auto-tuning off and truesize >= queued > 0", mi)
	}

	got := make([]byte, 0, size)
	buf := make([]byte, 64<<10)
	for len(got) < size {
		n, err := srv.Read(buf)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	if err := <-werr; err != nil || !bytes.Equal(got, data) {
		t.Fatalf("transfer under pressure: write %v, %d bytes equal %v", err, len(got), bytes.Equal(got, data))
	}
	waitMem(t, b, "pressure over", func(m MemState) bool { return !m.UnderPressure && !m.OverMax && m.Clamped == 0 })
	if mi := ep.MemInfo(); !mi.RcvAutoTuning {
		t.Errorf("receiver after pressure: %+v, want auto-tuning back on", mi)
	}
	if b.RefuseNew() {
		t.Error("RefuseNew after pressure ended")
	}
}

func waitMem(t *testing.T, s *Stack, what string, cond func(MemState) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(s.MemState()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, s.MemState())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
