package leakcheck

import (
	"errors"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestMain(m *testing.M) { Main(m) }

// TestCheckFindsLeak leaks a packet buffer on purpose: Check must name it,
// and pass again once it is released.
func TestCheckFindsLeak(t *testing.T) {
	if !Enabled() {
		t.Fatal("leak tracking is off under Main")
	}
	if err := Check(); err != nil {
		t.Fatalf("Check before the leak = %v, want nil", err)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte("leaked"))})
	err := Check()
	if !errors.Is(err, ErrLeak) || !strings.Contains(err.Error(), "PacketBuffer") {
		t.Errorf("Check with a live packet buffer = %v, want ErrLeak naming the PacketBuffer", err)
	}
	pkt.DecRef()
	if err := Check(); err != nil {
		t.Errorf("Check after the release = %v, want nil", err)
	}
}
