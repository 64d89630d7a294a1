package netstack

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Sysctls reads and writes the stack's tunables under their Linux names
// (net.ipv4.tcp_rmem and friends). Values use Linux's text formats:
// whitespace-separated integers, 0/1 booleans, algorithm names.
type Sysctls struct {
	s  *Stack
	mu sync.Mutex // serialises writes so a read never sees half of a write
	// keys is fixed after construction.
	keys map[string]sysctlKey
}

type sysctlKey struct {
	get func() (string, error)
	set func(string) error // nil means read-only
}

// KV is one sysctl key and its value.
type KV struct {
	Key, Value string
}

func newSysctls(s *Stack) *Sysctls {
	y := &Sysctls{s: s, keys: map[string]sysctlKey{}}
	y.keys["net.ipv4.tcp_congestion_control"] = sysctlKey{
		get: func() (string, error) {
			var v tcpip.CongestionControlOption
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return string(v), Error("get cc", err)
		},
		set: func(v string) error {
			o := tcpip.CongestionControlOption(strings.TrimSpace(v))
			if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &o); err != nil {
				// Called with y.mu held: read the list directly.
				avail, _ := y.keys["net.ipv4.tcp_available_congestion_control"].get()
				return fmt.Errorf("congestion control %q not available (have: %s)", o, avail)
			}
			return nil
		},
	}
	y.keys["net.ipv4.tcp_available_congestion_control"] = sysctlKey{
		get: func() (string, error) {
			var v tcpip.TCPAvailableCongestionControlOption
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return string(v), Error("get available cc", err)
		},
	}
	y.keys["net.ipv4.tcp_mem"] = tcpMemKey(s.mem)
	y.keys["net.ipv4.tcp_rmem"] = bufKey(s, "tcp_rmem",
		func() (int, int, int, tcpip.Error) {
			var v tcpip.TCPReceiveBufferSizeRangeOption
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return v.Min, v.Default, v.Max, err
		},
		func(min, def, max int) tcpip.SettableTransportProtocolOption {
			return &tcpip.TCPReceiveBufferSizeRangeOption{Min: min, Default: def, Max: max}
		})
	y.keys["net.ipv4.tcp_wmem"] = bufKey(s, "tcp_wmem",
		func() (int, int, int, tcpip.Error) {
			var v tcpip.TCPSendBufferSizeRangeOption
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return v.Min, v.Default, v.Max, err
		},
		func(min, def, max int) tcpip.SettableTransportProtocolOption {
			return &tcpip.TCPSendBufferSizeRangeOption{Min: min, Default: def, Max: max}
		})
	y.keys["net.ipv4.tcp_sack"] = boolKey(s, func() tcpip.GettableTransportProtocolOption { return new(tcpip.TCPSACKEnabled) },
		func(p tcpip.GettableTransportProtocolOption) bool { return bool(*p.(*tcpip.TCPSACKEnabled)) },
		func(b bool) tcpip.SettableTransportProtocolOption { o := tcpip.TCPSACKEnabled(b); return &o })
	y.keys["net.ipv4.tcp_moderate_rcvbuf"] = boolKey(s, func() tcpip.GettableTransportProtocolOption { return new(tcpip.TCPModerateReceiveBufferOption) },
		func(p tcpip.GettableTransportProtocolOption) bool {
			return bool(*p.(*tcpip.TCPModerateReceiveBufferOption))
		},
		func(b bool) tcpip.SettableTransportProtocolOption {
			o := tcpip.TCPModerateReceiveBufferOption(b)
			return &o
		})
	y.keys["net.ipv4.tcp_recovery"] = sysctlKey{
		get: func() (string, error) {
			var v tcpip.TCPRecovery
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return strconv.Itoa(int(v)), Error("get tcp_recovery", err)
		},
		set: func(v string) error {
			n, err := ints(v, 1)
			if err != nil {
				return err
			}
			if n[0] < 0 || n[0] > 7 {
				return fmt.Errorf("value %d out of range 0..7", n[0])
			}
			o := tcpip.TCPRecovery(n[0])
			return Error("set tcp_recovery", s.SetTransportProtocolOption(tcp.ProtocolNumber, &o))
		},
	}
	y.keys["net.ipv4.tcp_max_tw_buckets"] = sysctlKey{
		get: func() (string, error) {
			var v tcpip.TCPMaxTimeWaitOption
			err := s.TransportProtocolOption(tcp.ProtocolNumber, &v)
			return strconv.Itoa(int(v)), Error("get tcp_max_tw_buckets", err)
		},
		set: func(v string) error {
			n, err := ints(v, 1)
			if err != nil {
				return err
			}
			if n[0] < 0 {
				return fmt.Errorf("value %d is negative", n[0])
			}
			o := tcpip.TCPMaxTimeWaitOption(n[0])
			return Error("set tcp_max_tw_buckets", s.SetTransportProtocolOption(tcp.ProtocolNumber, &o))
		},
	}
	for _, p := range []struct {
		key   string
		proto tcpip.NetworkProtocolNumber
	}{{"net.ipv4.ip_default_ttl", ipv4.ProtocolNumber}, {"net.ipv6.conf.all.hop_limit", ipv6.ProtocolNumber}} {
		proto := p.proto
		y.keys[p.key] = sysctlKey{
			get: func() (string, error) {
				var v tcpip.DefaultTTLOption
				err := s.NetworkProtocolOption(proto, &v)
				return strconv.Itoa(int(v)), Error("get ttl", err)
			},
			set: func(v string) error {
				n, err := ints(v, 1)
				if err != nil {
					return err
				}
				if n[0] < 1 || n[0] > 255 {
					return fmt.Errorf("value %d out of range 1..255", n[0])
				}
				o := tcpip.DefaultTTLOption(n[0])
				return Error("set ttl", s.SetNetworkProtocolOption(proto, &o))
			},
		}
	}
	return y
}

// bufKey is a "min default max" buffer range key (tcp_rmem, tcp_wmem).
func bufKey(s *Stack, name string, get func() (int, int, int, tcpip.Error), mk func(min, def, max int) tcpip.SettableTransportProtocolOption) sysctlKey {
	return sysctlKey{
		get: func() (string, error) {
			min, def, max, err := get()
			return fmt.Sprintf("%d\t%d\t%d", min, def, max), Error("get "+name, err)
		},
		set: func(v string) error {
			n, err := ints(v, 3)
			if err != nil {
				return err
			}
			if err := bufRange(n); err != nil {
				return err
			}
			return Error("set "+name, s.SetTransportProtocolOption(tcp.ProtocolNumber, mk(n[0], n[1], n[2])))
		},
	}
}

func boolKey(s *Stack, zero func() tcpip.GettableTransportProtocolOption, val func(tcpip.GettableTransportProtocolOption) bool, mk func(bool) tcpip.SettableTransportProtocolOption) sysctlKey {
	return sysctlKey{
		get: func() (string, error) {
			p := zero()
			if err := s.TransportProtocolOption(tcp.ProtocolNumber, p); err != nil {
				return "", Error("get", err)
			}
			if val(p) {
				return "1", nil
			}
			return "0", nil
		},
		set: func(v string) error {
			switch strings.TrimSpace(v) {
			case "0":
				return Error("set", s.SetTransportProtocolOption(tcp.ProtocolNumber, mk(false)))
			case "1":
				return Error("set", s.SetTransportProtocolOption(tcp.ProtocolNumber, mk(true)))
			}
			return fmt.Errorf("value %q is not 0 or 1", v)
		},
	}
}

func ints(v string, n int) ([]int, error) {
	f := strings.Fields(v)
	if len(f) != n {
		return nil, fmt.Errorf("value %q: want %d integers", v, n)
	}
	out := make([]int, n)
	for i, s := range f {
		x, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("value %q: %q is not an integer", v, s)
		}
		out[i] = x
	}
	return out, nil
}

func bufRange(n []int) error {
	if n[0] <= 0 || n[0] > n[1] || n[1] > n[2] {
		return fmt.Errorf("want 0 < min <= default <= max, got %d %d %d", n[0], n[1], n[2])
	}
	return nil
}

// Get returns the value of key.
func (y *Sysctls) Get(key string) (string, error) {
	k, ok := y.keys[key]
	if !ok {
		return "", fmt.Errorf("%s: %w", key, ErrUnknownSysctl)
	}
	y.mu.Lock()
	defer y.mu.Unlock()
	v, err := k.get()
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	return v, nil
}

// Set writes value to key. The stack is unchanged when it fails.
func (y *Sysctls) Set(key, value string) error {
	if err := y.set(key, value); err != nil {
		return err
	}
	y.s.log.Info("sysctl set", "key", key, "value", value)
	return nil
}

func (y *Sysctls) set(key, value string) error {
	k, ok := y.keys[key]
	if !ok {
		return fmt.Errorf("%s: %w", key, ErrUnknownSysctl)
	}
	if k.set == nil {
		return fmt.Errorf("%s: %w", key, ErrReadOnly)
	}
	y.mu.Lock()
	defer y.mu.Unlock()
	if err := k.set(value); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	return nil
}

// All returns every key and value, sorted by key.
func (y *Sysctls) All() ([]KV, error) {
	names := make([]string, 0, len(y.keys))
	for k := range y.keys {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]KV, 0, len(names))
	for _, k := range names {
		v, err := y.Get(k)
		if err != nil {
			return nil, err
		}
		out = append(out, KV{k, v})
	}
	return out, nil
}
