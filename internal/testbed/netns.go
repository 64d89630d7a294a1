// Package testbed builds throwaway Linux network namespaces, veth links and
// processes for integration tests and benchmarks, and removes them again.
// Everything that touches the kernel needs root. Start with NewNetns.
//
// Safety: a Netns is created empty (only lo, brought up); veth pairs are made
// directly inside the namespaces they join, never in the caller's namespace,
// and no helper here adds routes toward the caller's namespace. Close kills
// every process started through the Netns and deletes the namespace.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NetnsDir is where named namespaces are bound, as by `ip netns add`.
const NetnsDir = "/run/netns"

// cmdTimeout bounds each short `ip` command.
const cmdTimeout = 20 * time.Second

// UniqueName returns prefix, a dash and 8 random hex digits. Names stay short
// so they fit in interface and instance names.
func UniqueName(prefix string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Netns is a named network namespace this process created. It owns the
// processes started through it.
type Netns struct {
	// Name is the namespace's name (`ip netns exec NAME`).
	Name string
	// Path is /run/netns/NAME, usable as `--netns PATH`.
	Path string

	mu sync.Mutex
	// +checklocks:mu
	procs []*Proc
	// +checklocks:mu
	nveth int
	// +checklocks:mu
	closed bool
}

// NewNetns creates an empty namespace named prefix-RANDOM with lo up.
func NewNetns(prefix string) (*Netns, error) {
	name := UniqueName(prefix)
	if err := ip("netns", "add", name); err != nil {
		return nil, err
	}
	n := &Netns{Name: name, Path: NetnsDir + "/" + name}
	if err := n.IP("link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// IP runs `ip -n NAME ARGS...`.
func (n *Netns) IP(args ...string) error {
	return ip(append([]string{"-n", n.Name}, args...)...)
}

// AddAddr adds p to dev. IPv6 addresses skip duplicate address detection
// (nodad) so they are usable at once.
func (n *Netns) AddAddr(dev string, p netip.Prefix) error {
	args := []string{"addr", "add", p.String(), "dev", dev}
	if p.Addr().Is6() {
		args = append(args, "nodad")
	}
	return n.IP(args...)
}

// SetMTU sets dev's MTU.
func (n *Netns) SetMTU(dev string, mtu int) error {
	return n.IP("link", "set", dev, "mtu", fmt.Sprint(mtu))
}

// Command returns a command that runs name inside the namespace through
// `ip netns exec`. The child gets its own process group (so Kill reaches its
// children) and is killed if this process dies. ctx cancellation kills the
// whole group.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	prepare(cmd)
	return cmd
}

// Run runs name inside the namespace and returns its combined output. A
// failure's error includes the command and its output.
func (n *Netns) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := n.Command(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns %s: %s: %w\n%s", n.Name, strings.Join(cmd.Args[3:], " "), err, out)
	}
	return out, nil
}

// Start starts name inside the namespace. The process is killed by Close at
// the latest.
func (n *Netns) Start(name string, args ...string) (*Proc, error) {
	cmd := n.Command(context.Background(), name, args...)
	p, err := StartCmd(cmd)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	if err := n.Own(p); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// Own hands p to the namespace: Close kills it.
func (n *Netns) Own(p *Proc) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return fmt.Errorf("netns %s: closed", n.Name)
	}
	n.procs = append(n.procs, p)
	return nil
}

// Close kills the processes started through n and deletes the namespace.
// It is safe to call more than once.
func (n *Netns) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	// Processes not started through n (e.g. by a product under test) can
	// keep the namespace alive but no longer reachable by name; that is
	// the product's leak to report, not ours to hide.
	var err error
	for i := 0; i < 3; i++ {
		if err = ip("netns", "del", n.Name); err == nil {
			return nil
		}
		if _, serr := os.Stat(n.Path); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Exists reports whether the namespace is still bound under /run/netns.
func (n *Netns) Exists() bool {
	_, err := os.Stat(n.Path)
	return err == nil
}

func (n *Netns) nextVeth() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := fmt.Sprintf("veth%d", n.nveth)
	n.nveth++
	return s
}

// VethPair names the two ends of a veth link.
type VethPair struct {
	// A is the interface's name in the first namespace, B in the second.
	A, B string
}

// Veth links a and b with a veth pair created inside a (the peer is moved
// straight into b), brings both ends up and adds the addresses. Interfaces
// are named vethN, numbered per namespace.
func Veth(a, b *Netns, addrsA, addrsB []netip.Prefix) (VethPair, error) {
	if a == b {
		return VethPair{}, errors.New("veth: both ends in one namespace")
	}
	v := VethPair{A: a.nextVeth(), B: b.nextVeth()}
	if err := a.IP("link", "add", v.A, "type", "veth", "peer", "name", v.B, "netns", b.Name); err != nil {
		return v, err
	}
	for _, e := range []struct {
		n     *Netns
		dev   string
		addrs []netip.Prefix
	}{{a, v.A, addrsA}, {b, v.B, addrsB}} {
		for _, p := range e.addrs {
			if err := e.n.AddAddr(e.dev, p); err != nil {
				return v, err
			}
		}
		if err := e.n.IP("link", "set", e.dev, "up"); err != nil {
			return v, err
		}
	}
	return v, nil
}

// ListNetns returns the names under /run/netns.
func ListNetns() ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func ip(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// prepare puts cmd (made by exec.CommandContext) in its own process group,
// kills it with this process, and makes context cancellation kill the
// whole group.
func prepare(cmd *exec.Cmd) {
	prepareAttrs(cmd)
	cmd.Cancel = func() error {
		if cmd.Process == nil {
			return nil
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 2 * time.Second
}

// WaitListen waits up to timeout until a socket in n listens on port
// (proto "tcp" or "udp"), as `ss -l` shows it.
func (n *Netns) WaitListen(proto string, port int, timeout time.Duration) error {
	return n.waitListen(proto, fmt.Sprintf("port %d", port), []string{"sport", "=", fmt.Sprintf(":%d", port)}, timeout)
}

// WaitListenOn is WaitListen for a socket bound to the address ap itself.
func (n *Netns) WaitListenOn(proto string, ap netip.AddrPort, timeout time.Duration) error {
	return n.waitListen(proto, ap.String(), []string{"src", ap.String()}, timeout)
}

func (n *Netns) waitListen(proto, what string, filter []string, timeout time.Duration) error {
	flag := "-Hltn"
	if proto == "udp" {
		flag = "-Hlun"
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := n.Run(ctx, "ss", append([]string{flag}, filter...)...)
		cancel()
		if err == nil && len(strings.TrimSpace(string(out))) > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netns %s: nothing listens on %s %s after %v: %w", n.Name, proto, what, timeout, ErrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// prepareAttrs puts cmd in its own process group and kills it with this
// process.
func prepareAttrs(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
