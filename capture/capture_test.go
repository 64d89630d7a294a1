package capture

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestWrapWritesPcap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.pcap")
	ch := channel.New(4, 1500, "")
	ep, pf, err := Wrap(ch, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 60)
	payload[0] = 0x45
	for i := 0; i < 3; i++ {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(payload)})
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		var l stack.PacketBufferList
		l.PushBack(pkt)
		if _, err := ep.WritePackets(l); err != nil {
			t.Fatal(err)
		}
		l.DecRef()
		if p := ch.Read(); p != nil {
			p.DecRef()
		}
	}
	if err := pf.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 24 || binary.LittleEndian.Uint32(b) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(b[20:]) != 101 {
		t.Fatalf("no pcap header with LINKTYPE_RAW: % x", b[:min(len(b), 24)])
	}
	// Three records of 16-byte header + 60 bytes.
	if want := 24 + 3*(16+60); len(b) != want {
		t.Fatalf("pcap is %d bytes, want %d", len(b), want)
	}
	// The packets go to the file only, not also as text lines to stderr.
	if sniffer.LogPackets.Load() != 0 {
		t.Error("gVisor's sniffer still logs every packet to stderr (sniffer.LogPackets)")
	}
}

func TestWriteAfterFailureDrops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "y.pcap")
	_, pf, err := Wrap(channel.New(1, 1500, ""), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	pf.f.Close() // make every later flush fail
	pf.mu.Lock()
	pf.w.Write(make([]byte, 2<<20)) // forces a flush to the closed file
	pf.flushLocked()
	pf.mu.Unlock()
	if n, err := pf.Write([]byte("x")); n != 1 || err != nil {
		t.Fatalf("Write after failure = %d, %v; want 1, nil", n, err)
	}
	if pf.Dropped() == 0 {
		t.Fatal("Dropped() = 0 after a failed write")
	}
	if err := pf.Close(); err == nil {
		t.Fatal("Close after a failed write: want the error")
	}
}
