package bpffilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// bpf(2) commands and types (linux/bpf.h).
const (
	cmdMapCreate     = 0
	cmdMapLookupElem = 1
	cmdProgLoad      = 5
	cmdProgTestRun   = 10

	mapTypeArray         = 2
	progTypeSocketFilter = 1
)

// Program is a loaded filter program and its counter map. Close releases
// both; a device it is attached to keeps the program alive until detached.
type Program struct {
	mu     sync.Mutex
	progFD int
	mapFD  int
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
	var mattr [64]byte
	binary.NativeEndian.PutUint32(mattr[0:], mapTypeArray)
	binary.NativeEndian.PutUint32(mattr[4:], 4)  // key size
	binary.NativeEndian.PutUint32(mattr[8:], 16) // value: packets, bytes
	binary.NativeEndian.PutUint32(mattr[12:], uint32(n*int(numClasses)))
	mapFD, err := bpf(cmdMapCreate, mattr[:])
	if err != nil {
		return nil, fmt.Errorf("bpffilter: create map: %w", err)
	}
	code, err := compile(v4, v6, mapFD)
	if err != nil {
		unix.Close(mapFD)
		return nil, err
	}
	progFD, err := loadProg(code, false)
	if err != nil {
		// Load again with the verifier's log, for the error.
		if _, lerr := loadProg(code, true); lerr != nil {
			err = lerr
		}
		unix.Close(mapFD)
		return nil, fmt.Errorf("bpffilter: load program: %w", err)
	}
	return &Program{progFD: progFD, mapFD: mapFD, rules: n}, nil
}

func loadProg(code []byte, withLog bool) (int, error) {
	license := []byte("GPL\x00")
	var logBuf []byte
	var attr [128]byte
	binary.NativeEndian.PutUint32(attr[0:], progTypeSocketFilter)
	binary.NativeEndian.PutUint32(attr[4:], uint32(len(code)/8))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&code[0]))))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&license[0]))))
	if withLog {
		logBuf = make([]byte, 1<<16)
		binary.NativeEndian.PutUint32(attr[24:], 1)
		binary.NativeEndian.PutUint32(attr[28:], uint32(len(logBuf)))
		binary.NativeEndian.PutUint64(attr[32:], uint64(uintptr(unsafe.Pointer(&logBuf[0]))))
	}
	copy(attr[48:64], "nsa_early")
	fd, err := bpf(cmdProgLoad, attr[:])
	runtime.KeepAlive(code)
	runtime.KeepAlive(license)
	runtime.KeepAlive(logBuf)
	if err != nil && withLog {
		log := strings.TrimRight(string(logBuf[:max(0, strings.IndexByte(string(logBuf), 0))]), "\n")
		if i := strings.LastIndexByte(log, '\n'); i >= 0 && len(log)-i < 200 {
			log = log[i+1:]
		}
		return -1, fmt.Errorf("%w: verifier: %s", err, log)
	}
	return fd, err
}

func bpf(cmd int, attr []byte) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_BPF, uintptr(cmd), uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	runtime.KeepAlive(attr)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// FD is the program's file descriptor, for TUNSETFILTEREBPF.
func (p *Program) FD() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.progFD
}

// Rules is the number of rules the program has.
func (p *Program) Rules() int { return p.rules }

// Counts returns, for rule i and class c, what it dropped so far at
// index i*4+c.
func (p *Program) Counts() ([]Count, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mapFD < 0 {
		return nil, errors.New("bpffilter: program closed")
	}
	out := make([]Count, p.rules*int(numClasses))
	var attr [32]byte
	var key uint32
	var val [2]uint64
	binary.NativeEndian.PutUint32(attr[0:], uint32(p.mapFD))
	binary.NativeEndian.PutUint64(attr[8:], uint64(uintptr(unsafe.Pointer(&key))))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&val[0]))))
	for i := range out {
		key = uint32(i)
		if _, err := bpf(cmdMapLookupElem, attr[:]); err != nil {
			return nil, fmt.Errorf("bpffilter: read counter %d: %w", i, err)
		}
		out[i] = Count{Packets: val[0], Bytes: val[1]}
	}
	runtime.KeepAlive(&key)
	runtime.KeepAlive(&val)
	return out, nil
}

// Run runs the program on one raw IP packet (BPF_PROG_TEST_RUN) and
// reports whether it drops it. It counts like a real drop. For tests.
func (p *Program) Run(pkt []byte) (drop bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.progFD < 0 {
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
	var attr [80]byte
	binary.NativeEndian.PutUint32(attr[0:], uint32(p.progFD))
	binary.NativeEndian.PutUint32(attr[8:], uint32(len(data)))
	binary.NativeEndian.PutUint64(attr[16:], uint64(uintptr(unsafe.Pointer(&data[0]))))
	binary.NativeEndian.PutUint32(attr[32:], 1) // repeat
	_, err = bpf(cmdProgTestRun, attr[:])
	runtime.KeepAlive(data)
	if err != nil {
		return false, fmt.Errorf("bpffilter: test run: %w", err)
	}
	return binary.NativeEndian.Uint32(attr[4:]) == 0, nil
}

// Close releases the program and its map.
func (p *Program) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.progFD >= 0 {
		unix.Close(p.progFD)
		unix.Close(p.mapFD)
		p.progFD, p.mapFD = -1, -1
	}
}
