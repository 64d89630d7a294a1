package netstack

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// PageSize is the unit of tcp_mem and sockstat's mem, as on Linux x86.
const PageSize = 4096

// Bounds of the accounting scan's interval: it scans every endpoint, so
// it backs off as they grow (at most about 2% of a core).
const (
	memScanMin = 50 * time.Millisecond
	memScanMax = 2 * time.Second
)

// pressureRcvBuf is the receive buffer a connection is clamped to under
// memory pressure (or what it holds already, if more): Linux clamps the
// window's growth to 4 x advmss; with 64 KiB segments that is 256 KiB.
const pressureRcvBuf = 256 << 10

// MemState is the stack's TCP memory accounting, as Linux's
// tcp_memory_allocated, tcp_memory_pressure and sysctl_tcp_mem.
type MemState struct {
	// Pages is the truesize of every TCP socket's receive, out-of-order
	// and send queues, in pages, at the last scan.
	Pages int64 `json:"pages"`
	// Min, Pressure, Max are net.ipv4.tcp_mem.
	Min      int64 `json:"min"`
	Pressure int64 `json:"pressure"`
	Max      int64 `json:"max"`
	// UnderPressure is set from crossing Pressure until falling below Min.
	UnderPressure bool `json:"under_pressure"`
	// OverMax is set while Pages exceeds Max: new connections are refused.
	OverMax bool `json:"over_max"`
	// PressureEntered counts entries into pressure (TCPMemoryPressures);
	// PressureMillis the time spent there (TCPMemoryPressuresChrono).
	PressureEntered uint64 `json:"pressure_entered"`
	PressureMillis  uint64 `json:"pressure_ms"`
	// Refused counts new connections refused above Max (RefuseNew).
	Refused uint64 `json:"refused"`
	// Clamped is how many connections have their receive buffer clamped
	// now.
	Clamped int `json:"clamped"`
}

// memAccount keeps MemState up to date with a background scan and acts on
// pressure: it clamps every connection's receive buffer and stops its
// auto-tuning, and restores both when pressure ends. Connections above
// Max are refused by whoever accepts them (RefuseNew).
type memAccount struct {
	s *Stack

	limits    atomic.Pointer[[3]int64] // tcp_mem: min, pressure, max (pages)
	pages     atomic.Int64
	sndBytes  atomic.Int64 // send queues' truesize at the last scan
	pressure  atomic.Bool
	overMax   atomic.Bool
	entered   atomic.Uint64
	pressMs   atomic.Uint64
	refused   atomic.Uint64
	nClamped  atomic.Int64
	kick      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	pressSince atomic.Int64 // unix nanoseconds pressure began

	// clamped holds the saved receive buffer sizes of the connections
	// clamped under pressure. Owned by the scan goroutine.
	clamped map[*tcp.Endpoint]int64
}

// defaultTCPMem is Linux's tcp_init_mem: a sixteenth of memory (at least
// 128 pages) is the pressure threshold, three quarters of it the minimum
// and twice the minimum the maximum.
func defaultTCPMem() [3]int64 {
	var si unix.Sysinfo_t
	limit := int64(128)
	if unix.Sysinfo(&si) == nil {
		limit = max(limit, int64(si.Totalram)*int64(si.Unit)/PageSize/16)
	}
	return [3]int64{limit / 4 * 3, limit, limit / 4 * 3 * 2}
}

func newMemAccount(s *Stack) *memAccount {
	m := &memAccount{s: s, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		clamped: map[*tcp.Endpoint]int64{}}
	d := defaultTCPMem()
	m.limits.Store(&d)
	go m.run() // owned: close stops it and waits
	return m
}

func (m *memAccount) close() {
	m.closeOnce.Do(func() {
		close(m.stop)
		<-m.done
	})
}

func (m *memAccount) run() {
	defer close(m.done)
	interval := memScanMin
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		case <-m.kick:
		}
		start := time.Now()
		m.scan(start)
		interval = min(memScanMax, max(memScanMin, 50*time.Since(start)))
		t.Reset(interval)
	}
}

// scan sums every TCP endpoint's send truesize, adds the receive memory
// netstack charges per segment (gVisor patch 0016) and moves the
// pressure state.
func (m *memAccount) scan(now time.Time) {
	var eps []*tcp.Endpoint
	var snd int64
	for _, te := range m.s.RegisteredEndpoints() {
		ep, ok := te.(*tcp.Endpoint)
		if !ok {
			continue
		}
		eps = append(eps, ep)
		snd += int64(ep.MemInfo().SndMem)
	}
	m.sndBytes.Store(snd)
	lim := *m.limits.Load()
	total := tcp.RcvMemCharged(m.s.Stack) + snd
	pages := (total + PageSize - 1) / PageSize
	m.pages.Store(pages)
	m.overMax.Store(pages > lim[2])
	switch {
	case !m.pressure.Load() && pages > lim[1]:
		m.pressure.Store(true)
		m.entered.Add(1)
		m.pressSince.Store(now.UnixNano())
		m.s.log.Warn("tcp memory pressure", "pages", pages, "tcp_mem", lim)
	case m.pressure.Load() && pages < lim[0]:
		m.pressure.Store(false)
		m.pressMs.Add(uint64(now.Sub(time.Unix(0, m.pressSince.Load())).Milliseconds()))
		m.s.log.Info("tcp memory pressure over", "pages", pages)
		for ep, size := range m.clamped {
			ep.SocketOptions().SetReceiveBufferSize(size, true)
			ep.SetRcvAutoTuning(true)
		}
		clear(m.clamped)
	}
	if m.pressure.Load() {
		for _, ep := range eps {
			if _, ok := m.clamped[ep]; ok || tcp.EndpointState(ep.State()) != tcp.StateEstablished && tcp.EndpointState(ep.State()) != tcp.StateCloseWait {
				continue
			}
			mi := ep.MemInfo()
			m.clamped[ep] = int64(mi.RcvBuf)
			ep.SetRcvAutoTuning(false)
			if c := int64(max(pressureRcvBuf, mi.RcvQueued)); c < int64(mi.RcvBuf) {
				ep.SocketOptions().SetReceiveBufferSize(c, true)
			}
		}
	}
	// Forget endpoints that are gone.
	if len(m.clamped) > 0 {
		live := make(map[*tcp.Endpoint]bool, len(eps))
		for _, ep := range eps {
			live[ep] = true
		}
		for ep := range m.clamped {
			if !live[ep] {
				delete(m.clamped, ep)
			}
		}
	}
	m.nClamped.Store(int64(len(m.clamped)))
}

// state returns the current accounting.
func (m *memAccount) state() MemState {
	lim := *m.limits.Load()
	st := MemState{Pages: m.pages.Load(), Min: lim[0], Pressure: lim[1], Max: lim[2],
		UnderPressure: m.pressure.Load(), OverMax: m.overMax.Load(),
		PressureEntered: m.entered.Load(), PressureMillis: m.pressMs.Load(),
		Refused: m.refused.Load(), Clamped: int(m.nClamped.Load())}
	if st.UnderPressure {
		st.PressureMillis += uint64(time.Since(time.Unix(0, m.pressSince.Load())).Milliseconds())
	}
	return st
}

// MemState returns the stack's TCP memory accounting (updated by a
// background scan, every 50 ms to 2 s depending on how many sockets there
// are).
func (s *Stack) MemState() MemState { return s.mem.state() }

// RefuseNew reports whether a new TCP connection must be refused because
// the stack's TCP memory is above tcp_mem's max, and counts the refusal.
// Established connections keep working.
func (s *Stack) RefuseNew() bool {
	// The receive side is live (charged per segment), the send side as of
	// the last scan.
	m := s.mem
	live := tcp.RcvMemCharged(s.Stack)+m.sndBytes.Load() > (*m.limits.Load())[2]*PageSize
	if !m.overMax.Load() && !live {
		return false
	}
	s.mem.refused.Add(1)
	return true
}

// Destroy stops the memory accounting and destroys the gVisor stack. It is
// gVisor's Destroy (abort every endpoint, then wait for them and for the
// links) with the NICs removed in between: gVisor's Stack.Wait waits for
// each link endpoint's reader while it holds the stack's lock, and a reader
// that was delivering a packet needing that lock (a RST's FindRoute for a
// segment to an endpoint just aborted) would never return. RemoveNIC tells
// the reader to stop under the lock but closes the link, which waits for
// the reader, after releasing it.
func (s *Stack) Destroy() {
	s.mem.close()
	s.Stack.Close()
	for id := range s.NICInfo() {
		_ = s.RemoveNIC(id)
	}
	s.Stack.Wait()
}

// tcpMemKey is net.ipv4.tcp_mem: "min pressure max" in pages.
func tcpMemKey(m *memAccount) sysctlKey {
	return sysctlKey{
		get: func() (string, error) {
			l := *m.limits.Load()
			return fmt.Sprintf("%d\t%d\t%d", l[0], l[1], l[2]), nil
		},
		set: func(v string) error {
			f := strings.Fields(v)
			if len(f) != 3 {
				return fmt.Errorf("tcp_mem %q: want three page counts: min pressure max", v)
			}
			var l [3]int64
			for i, s := range f {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil || n <= 0 {
					return fmt.Errorf("tcp_mem %q: %q is not a positive page count", v, s)
				}
				l[i] = n
			}
			if l[0] > l[1] || l[1] > l[2] {
				return fmt.Errorf("tcp_mem %q: want min <= pressure <= max", v)
			}
			m.limits.Store(&l)
			select {
			case m.kick <- struct{}{}:
			default:
			}
			return nil
		},
	}
}
