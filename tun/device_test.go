package tun

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsappliance/appliance/internal/testbed"
)

// TestCreateUnpolled: a device made by Create, with offloads (our own
// open) and without (water's), is non-blocking and outside Go's netpoller,
// which must not wake for packets the reader's own ppoll waits for. Needs
// root, as CI runs it.
func TestCreateUnpolled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a namespace and a TUN device")
	}
	ns, err := testbed.NewNetns("tuncreate")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for _, off := range []bool{false, true} {
		dev, err := Create(ns.Path, Config{Name: "tun0", MTU: 1500, DisableOffload: off})
		if err != nil {
			t.Fatalf("offload off=%v: %v", off, err)
		}
		if dev.VnetHdr == off {
			t.Errorf("offload off=%v: VnetHdr %v", off, dev.VnetHdr)
		}
		if err := dev.File.SetDeadline(time.Now().Add(time.Hour)); !errors.Is(err, os.ErrNoDeadline) {
			t.Errorf("offload off=%v: the TUN file takes deadlines (%v): it is in Go's netpoller", off, err)
		}
		rc, err := dev.File.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		// Whatever the kernel queued as the link came up (IPv6 router
		// solicitations and the like) drains, then the read says EAGAIN.
		var rerr error
		for i := 0; i < 100 && rerr == nil; i++ {
			_ = rc.Read(func(fd uintptr) bool {
				_, rerr = unix.Read(int(fd), make([]byte, 70000))
				return true
			})
		}
		if rerr != unix.EAGAIN {
			t.Errorf("offload off=%v: read of an idle device: %v, want EAGAIN (non-blocking)", off, rerr)
		}
		dev.File.Close()
		// The next round reuses the name once the device is gone.
		deadline := time.Now().Add(5 * time.Second)
		for ns.IP("link", "show", "tun0") == nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}
