// Package tun creates Linux TUN devices inside a target network namespace
// and exposes them as netstack link endpoints with virtio-net offloads.
// Start with Create, then NewEndpoint.
package tun

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"unsafe"

	"github.com/songgao/water"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nsappliance/appliance/internal/unpolled"
)

// Config describes the device to create. The zero value of each field is
// the documented default.
type Config struct {
	// Name is the device name inside the namespace. Empty means "tun0".
	Name string
	// MTU of the device. Zero means 65520.
	MTU int
	// Addresses are assigned to the device inside the namespace (IPv6 ones
	// without duplicate address detection, so they work at once).
	Addresses []netip.Prefix
	// Gateways get a default route each (one IPv4, one IPv6 at most).
	Gateways []netip.Addr
	// DisableOffload opens the device without a virtio-net header: no
	// checksum or segmentation offload. The device is then opened through
	// github.com/songgao/water.
	DisableOffload bool
	// Logger receives state changes; nil means slog.Default().
	Logger *slog.Logger
}

// Device is an open TUN device. Its file descriptor lives in the caller's
// namespace; the device itself lives in the target namespace.
type Device struct {
	File *os.File
	Name string
	MTU  int
	// VnetHdr tells whether every packet carries a virtio-net header.
	VnetHdr bool
	// Offloads is the TUN_F_* set the kernel accepted.
	Offloads int
}

// OffloadString names the accepted offloads, e.g. "csum,tso4,tso6".
func (d *Device) OffloadString() string {
	var s []string
	for _, f := range []struct {
		bit  int
		name string
	}{{tunFCsum, "csum"}, {tunFTSO4, "tso4"}, {tunFTSO6, "tso6"}, {tunFUSO4, "uso4"}, {tunFUSO6, "uso6"}} {
		if d.Offloads&f.bit != 0 {
			s = append(s, f.name)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

// offloadSets are tried in order until the kernel takes one. USO arrived in
// Linux 6.2; older kernels refuse the whole set with EINVAL.
var offloadSets = []int{
	tunFCsum | tunFTSO4 | tunFTSO6 | tunFUSO4 | tunFUSO6,
	tunFCsum | tunFTSO4 | tunFTSO6,
	tunFCsum,
}

// Create makes a TUN device inside the network namespace at nsPath (a
// /run/netns/NAME or /proc/PID/ns/net path) and configures its MTU,
// addresses, default routes and link state there through netlink. The
// returned file descriptor belongs to the calling process's namespace and
// holds no reference on the target: when the target namespace dies, the
// device goes with it and reads fail. Closing the file removes the device.
func Create(nsPath string, cfg Config) (*Device, error) {
	if cfg.Name == "" {
		cfg.Name = "tun0"
	}
	if len(cfg.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tun name %q: longer than %d bytes", cfg.Name, unix.IFNAMSIZ-1)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 65520
	}
	if cfg.MTU < 1280 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("tun mtu %d: want 1280..65535", cfg.MTU)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %q: %w", nsPath, err)
	}
	defer target.Close()

	// Open the device here under a temporary name and move it into the
	// target. A TUN fd's socket holds a reference on the namespace it was
	// opened in; opened inside the target, it would keep that namespace
	// alive after its last process and its bind mount are gone, and the
	// appliance could never notice the container dying.
	tmp := fmt.Sprintf("apl%08x", rand.Uint32())
	dev, err := open(tmp, cfg.DisableOffload)
	if err != nil {
		return nil, err
	}
	dev.MTU = cfg.MTU
	if err := moveAndConfigure(target, dev, tmp, cfg); err != nil {
		dev.File.Close()
		return nil, err
	}
	log.Info("tun created", "netns", nsPath, "dev", dev.Name, "mtu", dev.MTU, "vnet_hdr", dev.VnetHdr, "offloads", dev.OffloadString())
	return dev, nil
}

// open opens /dev/net/tun in the calling thread's namespace.
func open(name string, disableOffload bool) (*Device, error) {
	if disableOffload {
		return openWater(name)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			// No virtio-net header support: plain TUN.
			return openWater(name)
		}
		return nil, fmt.Errorf("create tun %q: %w", name, err)
	}
	hdrSize := vnetHdrLen
	if err := ioctlInt(fd, unix.TUNSETVNETHDRSZ, &hdrSize); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tun %q: set vnet header size: %w", name, err)
	}
	offloads := 0
	for _, set := range offloadSets {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, set); err == nil {
			offloads = set
			break
		}
	}
	f, err := unpolled.File(fd, "/dev/net/tun:"+ifr.Name())
	if err != nil {
		return nil, fmt.Errorf("tun %q: %w", name, err)
	}
	return &Device{
		File:     f,
		Name:     ifr.Name(),
		VnetHdr:  true,
		Offloads: offloads,
	}, nil
}

func ioctlInt(fd int, req uint, v *int) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(v)))
	if e != 0 {
		return e
	}
	return nil
}

// openWater opens a plain TUN (no packet info, no virtio-net header) with
// github.com/songgao/water, which does exactly that and nothing more.
func openWater(name string) (*Device, error) {
	ifce, err := water.New(water.Config{
		DeviceType:             water.TUN,
		PlatformSpecificParams: water.PlatformSpecificParams{Name: name},
	})
	if err != nil {
		return nil, fmt.Errorf("create tun %q: %w", name, err)
	}
	wf, ok := ifce.ReadWriteCloser.(*os.File)
	if !ok {
		ifce.Close()
		return nil, fmt.Errorf("create tun %q: water returned %T, not a file", name, ifce.ReadWriteCloser)
	}
	// water's os.OpenFile put the descriptor in Go's poller: keep a
	// duplicate outside it (see package unpolled) and close water's.
	rc, err := wf.SyscallConn()
	if err != nil {
		wf.Close()
		return nil, fmt.Errorf("create tun %q: %w", name, err)
	}
	fd, err := unpolled.Dup(rc)
	wf.Close()
	if err != nil {
		return nil, fmt.Errorf("create tun %q: %w", name, err)
	}
	f, err := unpolled.File(fd, "/dev/net/tun:"+ifce.Name())
	if err != nil {
		return nil, fmt.Errorf("create tun %q: %w", name, err)
	}
	return &Device{File: f, Name: ifce.Name()}, nil
}

// moveAndConfigure moves the device named tmp into ns, renames it to
// cfg.Name there and sets MTU, addresses, link state and routes.
func moveAndConfigure(ns netns.NsHandle, dev *Device, tmp string, cfg Config) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in target netns: %w", err)
	}
	defer h.Close()
	if _, err := h.LinkByName(cfg.Name); err == nil {
		return fmt.Errorf("target netns already has a device named %q (choose another with --tun)", cfg.Name)
	}
	own, err := netlink.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("find new tun %s: %w", tmp, err)
	}
	if err := netlink.LinkSetNsFd(own, int(ns)); err != nil {
		return fmt.Errorf("move tun into target netns: %w", err)
	}
	link, err := h.LinkByName(tmp)
	if err != nil {
		return fmt.Errorf("find %s in target netns: %w", tmp, err)
	}
	if err := h.LinkSetName(link, cfg.Name); err != nil {
		return fmt.Errorf("rename %s to %s in target netns: %w", tmp, cfg.Name, err)
	}
	dev.Name = cfg.Name
	if err := h.LinkSetMTU(link, cfg.MTU); err != nil {
		return fmt.Errorf("set mtu %d on %s: %w", cfg.MTU, dev.Name, err)
	}
	for _, p := range cfg.Addresses {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, a); err != nil {
			hint := ""
			if p.Addr().Is6() {
				hint = " (is IPv6 disabled in the namespace? try --no-ipv6)"
			}
			return fmt.Errorf("add address %s to %s: %w%s", p, dev.Name, err, hint)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", dev.Name, err)
	}
	for _, gw := range cfg.Gateways {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()}
		if gw.Is4() {
			r.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		} else {
			r.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s: %w", gw, err)
		}
	}
	return nil
}
