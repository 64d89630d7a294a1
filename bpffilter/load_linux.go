package bpffilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Program is a loaded filter program and its counter map. Close releases
// both; a device it is attached to keeps the program alive until detached.
type Program struct {
	mu     sync.Mutex
	prog   *ebpf.Program
	counts *ebpf.Map
	rules  int
}

// Load compiles v4 and v6 (rule i of v6 is rule len(v4)+i in Counts),
// creates the counter map and loads the program into the kernel. It needs
// CAP_BPF (or CAP_SYS_ADMIN) unless unprivileged BPF is allowed.
func Load(v4, v6 []Rule) (*Program, error) {
	if err := validate(v4, false); err != nil {
		return nil, err
	}
	if err := validate(v6, true); err != nil {
		return nil, err
	}
	n := len(v4) + len(v6)
	if n == 0 {
		return nil, errors.New("bpffilter: no rules")
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  16, // Count: packets, bytes
		MaxEntries: uint32(n * int(numClasses)),
	})
	if err != nil {
		return nil, fmt.Errorf("bpffilter: create map: %w", err)
	}
	insns, err := compile(v4, v6, m.FD())
	if err != nil {
		m.Close()
		return nil, err
	}
	prog, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name:         "nsa_early",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: insns,
	}, ebpf.ProgramOptions{})
	if err != nil {
		m.Close()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("bpffilter: load program: %w: verifier: %s", ve.Cause, lastLine(ve.Log))
		}
		return nil, fmt.Errorf("bpffilter: load program: %w", err)
	}
	return &Program{prog: prog, counts: m, rules: n}, nil
}

// lastLine is the verifier log's last line, which says what it refused,
// without the statistics line some log levels end with.
func lastLine(log []string) string {
	for i := len(log) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(log[i]); l != "" && !strings.HasPrefix(l, "processed ") {
			return l
		}
	}
	return ""
}

// FD is the program's file descriptor, for TUNSETFILTEREBPF.
func (p *Program) FD() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prog == nil {
		return -1
	}
	return p.prog.FD()
}

// Rules is the number of rules the program has.
func (p *Program) Rules() int { return p.rules }

// Counts returns, for rule i and class c, what it dropped so far at
// index i*4+c.
func (p *Program) Counts() ([]Count, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts == nil {
		return nil, errors.New("bpffilter: program closed")
	}
	out := make([]Count, p.rules*int(numClasses))
	for i := range out {
		if err := p.counts.Lookup(uint32(i), &out[i]); err != nil {
			return nil, fmt.Errorf("bpffilter: read counter %d: %w", i, err)
		}
	}
	return out, nil
}

// Run runs the program on one raw IP packet (BPF_PROG_TEST_RUN) and
// reports whether it drops it. It counts like a real drop. For tests.
func (p *Program) Run(pkt []byte) (drop bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prog == nil {
		return false, errors.New("bpffilter: program closed")
	}
	// The test run takes an Ethernet frame and starts a socket filter
	// at its network header.
	data := make([]byte, 14+len(pkt))
	typ := uint16(unix.ETH_P_IP)
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		typ = unix.ETH_P_IPV6
	}
	binary.BigEndian.PutUint16(data[12:], typ)
	copy(data[14:], pkt)
	ret, err := p.prog.Run(&ebpf.RunOptions{Data: data, Repeat: 1})
	if err != nil {
		return false, fmt.Errorf("bpffilter: test run: %w", err)
	}
	return ret == 0, nil
}

// Close releases the program and its map.
func (p *Program) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.prog != nil {
		p.prog.Close()
		p.counts.Close()
		p.prog, p.counts = nil, nil
	}
}
