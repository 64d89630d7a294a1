package netstack

import (
	"reflect"
	"strings"
	"unicode"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Counters returns every counter of netstack's statistics (tcpip.Stats) by
// snake_case field path, e.g. "tcp_valid_segments_received". It walks the
// structure, so counters a newer gVisor adds appear by themselves.
func (s *Stack) Counters() map[string]uint64 {
	st := s.Stats()
	out := make(map[string]uint64, 512)
	walkStats(reflect.ValueOf(&st).Elem(), "", func(name string, v uint64) { out[name] = v })
	return out
}

var statCounterType = reflect.TypeOf((*tcpip.StatCounter)(nil))

func walkStats(v reflect.Value, prefix string, emit func(string, uint64)) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		fv := v.Field(i)
		name := snake(f.Name)
		if f.Anonymous {
			name = "" // promoted fields keep the outer path, as Go names them
		}
		if prefix != "" && name != "" {
			name = prefix + "_" + name
		} else if name == "" {
			name = prefix
		}
		switch {
		case f.Type == statCounterType:
			if !fv.IsNil() {
				emit(name, fv.Interface().(*tcpip.StatCounter).Value())
			}
		case f.Type.Kind() == reflect.Struct:
			walkStats(fv, name, emit)
		case f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct && !fv.IsNil():
			walkStats(fv.Elem(), name, emit)
		}
	}
}

// snake turns a Go field name into snake_case: PacketsReceived ->
// packets_received, ICMPv4 -> icmpv4, MalformedRcvdPackets ->
// malformed_rcvd_packets.
func snake(s string) string {
	r := []rune(s)
	var b strings.Builder
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 {
			prev := r[i-1]
			// A lower-case letter after an acronym starts a word, except
			// the version in ICMPv4 / IPv6 and a plural (NICs).
			nextLower := i+1 < len(r) && unicode.IsLower(r[i+1]) &&
				!(r[i+1] == 'v' && i+2 < len(r) && unicode.IsDigit(r[i+2])) &&
				!(r[i+1] == 's' && (i+2 == len(r) || unicode.IsUpper(r[i+2])))
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || (unicode.IsUpper(prev) && nextLower) {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}
