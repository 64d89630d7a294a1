package iptables

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// newMatch returns a fresh match for -m name.
func newMatch(f Family, name string) (Match, error) {
	switch name {
	case "tcp":
		return &TCPMatch{proto: ProtoTCP, SrcPorts: anyPorts, DstPorts: anyPorts}, nil
	case "udp":
		return &UDPMatch{TCPMatch{proto: ProtoUDP, SrcPorts: anyPorts, DstPorts: anyPorts}}, nil
	case "icmp":
		if f != IPv4 {
			return nil, fmt.Errorf("match %q is IPv4 only (use icmp6): %w", name, ErrUnknownExtension)
		}
		return &ICMPMatch{v6: false, Type: 0xff, CodeMax: 0xff}, nil
	case "icmp6":
		if f != IPv6 {
			return nil, fmt.Errorf("match %q is IPv6 only (use icmp): %w", name, ErrUnknownExtension)
		}
		return &ICMPMatch{v6: true, Type: 0xff, CodeMax: 0xff}, nil
	case "multiport":
		return &MultiportMatch{}, nil
	case "conntrack":
		return &StateMatch{Conntrack: true}, nil
	case "state":
		return &StateMatch{}, nil
	case "limit":
		return newLimitMatch(), nil
	case "hashlimit":
		return newHashlimitMatch(f), nil
	case "connlimit":
		return newConnlimitMatch(f), nil
	case "iprange":
		return &IPRangeMatch{}, nil
	case "mark":
		return &MarkMatch{Mask: 0xffffffff}, nil
	case "comment":
		return &CommentMatch{}, nil
	case "length":
		return &LengthMatch{}, nil
	}
	return nil, fmt.Errorf("couldn't load match %q: %w", name, ErrUnknownExtension)
}

// cloneMatches deep-copies stateful matches so copies do not share state.
func cloneMatches(ms []Match) []Match {
	out := make([]Match, len(ms))
	for i, m := range ms {
		switch m := m.(type) {
		case *LimitMatch:
			out[i] = m.clone()
		case *HashlimitMatch:
			out[i] = m.clone()
		case *ConnlimitMatch:
			out[i] = m.clone()
		default:
			out[i] = m
		}
	}
	return out
}

// PortRange is an inclusive port range.
type PortRange struct{ Min, Max uint16 }

var anyPorts = PortRange{0, 0xffff}

func (r PortRange) contains(p uint16) bool { return p >= r.Min && p <= r.Max }

func (r PortRange) appendText(b []byte) []byte {
	b = strconv.AppendUint(b, uint64(r.Min), 10)
	if r.Min != r.Max {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(r.Max), 10)
	}
	return b
}

// parsePort parses a port number or (a few well-known) service name.
func parsePort(s string) (uint16, error) {
	if n, err := strconv.ParseUint(s, 10, 16); err == nil {
		return uint16(n), nil
	}
	for _, sv := range services {
		if sv.name == s {
			return sv.port, nil
		}
	}
	return 0, fmt.Errorf("invalid port/service %q specified", s)
}

// parsePortRange parses PORT, PORT:PORT, :PORT or PORT:.
func parsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, ":")
	if !isRange {
		p, err := parsePort(s)
		return PortRange{p, p}, err
	}
	r := PortRange{0, 0xffff}
	var err error
	if lo != "" {
		if r.Min, err = parsePort(lo); err != nil {
			return r, err
		}
	}
	if hi != "" {
		if r.Max, err = parsePort(hi); err != nil {
			return r, err
		}
	}
	if r.Min > r.Max {
		return r, fmt.Errorf("invalid portrange %q specified (min > max)", s)
	}
	return r, nil
}

// TCPMatch is -m tcp (and, as UDPMatch, -m udp): ports and TCP flags.
type TCPMatch struct {
	proto                uint8
	SrcPorts, DstPorts   PortRange
	SrcInvert, DstInvert bool
	// FlagsMask and FlagsCmp are --tcp-flags MASK COMP (and --syn).
	FlagsMask, FlagsCmp uint8
	FlagsInvert         bool
	seen                uint8
}

// UDPMatch is -m udp.
type UDPMatch struct{ TCPMatch }

// Name implements Match.
func (m *TCPMatch) Name() string {
	if m.proto == ProtoUDP {
		return "udp"
	}
	return "tcp"
}

var tcpFlagNames = []struct {
	name string
	flag uint8
}{
	{"FIN", 0x01}, {"SYN", 0x02}, {"RST", 0x04}, {"PSH", 0x08}, {"ACK", 0x10}, {"URG", 0x20}, {"ALL", 0x3f}, {"NONE", 0},
}

func parseTCPFlags(s string) (uint8, error) {
	var f uint8
	for _, n := range strings.Split(s, ",") {
		found := false
		for _, fn := range tcpFlagNames {
			if strings.EqualFold(fn.name, n) {
				f |= fn.flag
				found = true
				break
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown TCP flag %q", n)
		}
	}
	return f, nil
}

func appendTCPFlags(b []byte, f uint8) []byte {
	if f == 0 {
		return append(b, "NONE"...)
	}
	first := true
	for _, fn := range tcpFlagNames[:6] {
		if f&fn.flag != 0 {
			if !first {
				b = append(b, ',')
			}
			b = append(b, fn.name...)
			first = false
		}
	}
	return b
}

func (m *TCPMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	switch opt {
	case "--sport", "--source-port", "--dport", "--destination-port":
		bit := uint8(1)
		if opt == "--dport" || opt == "--destination-port" {
			bit = 2
		}
		if m.seen&bit != 0 {
			return true, p.errf(opt, "only one port option allowed")
		}
		m.seen |= bit
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		r, err := parsePortRange(v)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		if bit == 1 {
			m.SrcPorts, m.SrcInvert = r, inv
		} else {
			m.DstPorts, m.DstInvert = r, inv
		}
		return true, nil
	case "--tcp-flags", "--syn":
		if m.proto != ProtoTCP {
			return false, nil
		}
		if m.seen&4 != 0 {
			return true, p.errf(opt, "only one of --syn or --tcp-flags allowed")
		}
		m.seen |= 4
		if opt == "--syn" {
			m.FlagsMask, m.FlagsCmp, m.FlagsInvert = TCPFin|TCPSyn|TCPRst|TCPAck, TCPSyn, inv
			return true, nil
		}
		ms, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		cs, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		mask, err := parseTCPFlags(ms)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		cmp, err := parseTCPFlags(cs)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		m.FlagsMask, m.FlagsCmp, m.FlagsInvert = mask, cmp, inv
		return true, nil
	}
	return false, nil
}

func (m *TCPMatch) finish(p *ruleParser) error {
	if p.rule.Proto != m.proto || p.rule.ProtoInvert {
		return p.errf("-m "+m.Name(), "%s match needs -p %s", m.Name(), m.Name())
	}
	return nil
}

func (m *TCPMatch) appendSave(b []byte) []byte {
	b = append(b, " -m "...)
	b = append(b, m.Name()...)
	if m.SrcPorts != anyPorts {
		if m.SrcInvert {
			b = append(b, " !"...)
		}
		b = append(b, " --sport "...)
		b = m.SrcPorts.appendText(b)
	}
	if m.DstPorts != anyPorts {
		if m.DstInvert {
			b = append(b, " !"...)
		}
		b = append(b, " --dport "...)
		b = m.DstPorts.appendText(b)
	}
	if m.FlagsMask != 0 || m.FlagsInvert {
		if m.FlagsInvert {
			b = append(b, " !"...)
		}
		b = append(b, " --tcp-flags "...)
		b = appendTCPFlags(b, m.FlagsMask)
		b = append(b, ' ')
		b = appendTCPFlags(b, m.FlagsCmp)
	}
	return b
}

func appendListPorts(b []byte, name string, r PortRange, inv, numeric bool) []byte {
	b = append(b, ' ')
	b = append(b, name...)
	if r.Min != r.Max {
		b = append(b, 's')
	}
	b = append(b, ':')
	if inv {
		b = append(b, '!')
	}
	b = appendService(b, r.Min, numeric)
	if r.Min != r.Max {
		b = append(b, ':')
		b = appendService(b, r.Max, numeric)
	}
	return b
}

func (m *TCPMatch) appendList(b []byte, numeric bool) []byte {
	b = append(b, ' ')
	b = append(b, m.Name()...)
	if m.SrcPorts != anyPorts || m.SrcInvert {
		b = appendListPorts(b, "spt", m.SrcPorts, m.SrcInvert, numeric)
	}
	if m.DstPorts != anyPorts || m.DstInvert {
		b = appendListPorts(b, "dpt", m.DstPorts, m.DstInvert, numeric)
	}
	if m.FlagsMask != 0 || m.FlagsInvert {
		b = append(b, " flags:"...)
		if m.FlagsInvert {
			b = append(b, '!')
		}
		if numeric {
			b = fmt.Appendf(b, "0x%02X/0x%02X", m.FlagsMask, m.FlagsCmp)
		} else {
			b = appendTCPFlags(b, m.FlagsMask)
			b = append(b, '/')
			b = appendTCPFlags(b, m.FlagsCmp)
		}
	}
	return b
}

func (m *TCPMatch) match(p *Packet, _ *evalPacket) bool {
	if p.Fragment {
		return false
	}
	if m.SrcPorts.contains(p.SrcPort) == m.SrcInvert {
		return false
	}
	if m.DstPorts.contains(p.DstPort) == m.DstInvert {
		return false
	}
	if m.FlagsMask != 0 && (p.TCPFlags&m.FlagsMask == m.FlagsCmp) == m.FlagsInvert {
		return false
	}
	return true
}

// ICMPMatch is -m icmp --icmp-type or -m icmp6 --icmpv6-type.
type ICMPMatch struct {
	v6 bool
	// Type 0xff is "any"; codes are an inclusive range.
	Type             uint8
	CodeMin, CodeMax uint8
	Invert           bool
	seen             bool
}

// Name implements Match.
func (m *ICMPMatch) Name() string {
	if m.v6 {
		return "icmp6"
	}
	return "icmp"
}

type icmpName struct {
	name             string
	typ              uint8
	codeMin, codeMax uint8
}

// icmpNames are libxt_icmp's names (xtables icmp_codes).
var icmpNames = []icmpName{
	{"any", 0xff, 0, 0xff},
	{"echo-reply", 0, 0, 0xff},
	{"destination-unreachable", 3, 0, 0xff},
	{"network-unreachable", 3, 0, 0},
	{"host-unreachable", 3, 1, 1},
	{"protocol-unreachable", 3, 2, 2},
	{"port-unreachable", 3, 3, 3},
	{"fragmentation-needed", 3, 4, 4},
	{"source-route-failed", 3, 5, 5},
	{"network-unknown", 3, 6, 6},
	{"host-unknown", 3, 7, 7},
	{"network-prohibited", 3, 9, 9},
	{"host-prohibited", 3, 10, 10},
	{"TOS-network-unreachable", 3, 11, 11},
	{"TOS-host-unreachable", 3, 12, 12},
	{"communication-prohibited", 3, 13, 13},
	{"host-precedence-violation", 3, 14, 14},
	{"precedence-cutoff", 3, 15, 15},
	{"source-quench", 4, 0, 0xff},
	{"redirect", 5, 0, 0xff},
	{"network-redirect", 5, 0, 0},
	{"host-redirect", 5, 1, 1},
	{"TOS-network-redirect", 5, 2, 2},
	{"TOS-host-redirect", 5, 3, 3},
	{"echo-request", 8, 0, 0xff},
	{"router-advertisement", 9, 0, 0xff},
	{"router-solicitation", 10, 0, 0xff},
	{"time-exceeded", 11, 0, 0xff},
	{"ttl-zero-during-transit", 11, 0, 0},
	{"ttl-zero-during-reassembly", 11, 1, 1},
	{"parameter-problem", 12, 0, 0xff},
	{"ip-header-bad", 12, 0, 0},
	{"required-option-missing", 12, 1, 1},
	{"timestamp-request", 13, 0, 0xff},
	{"timestamp-reply", 14, 0, 0xff},
	{"address-mask-request", 17, 0, 0xff},
	{"address-mask-reply", 18, 0, 0xff},
}

// icmp6Names are libxt_icmp6's names.
var icmp6Names = []icmpName{
	{"destination-unreachable", 1, 0, 0xff},
	{"no-route", 1, 0, 0},
	{"communication-prohibited", 1, 1, 1},
	{"beyond-scope", 1, 2, 2},
	{"address-unreachable", 1, 3, 3},
	{"port-unreachable", 1, 4, 4},
	{"failed-policy", 1, 5, 5},
	{"reject-route", 1, 6, 6},
	{"packet-too-big", 2, 0, 0xff},
	{"time-exceeded", 3, 0, 0xff},
	{"ttl-zero-during-transit", 3, 0, 0},
	{"ttl-zero-during-reassembly", 3, 1, 1},
	{"parameter-problem", 4, 0, 0xff},
	{"bad-header", 4, 0, 0},
	{"unknown-header-type", 4, 1, 1},
	{"unknown-option", 4, 2, 2},
	{"echo-request", 128, 0, 0xff},
	{"echo-reply", 129, 0, 0xff},
	{"router-solicitation", 133, 0, 0xff},
	{"router-advertisement", 134, 0, 0xff},
	{"neighbour-solicitation", 135, 0, 0xff},
	{"neighbour-advertisement", 136, 0, 0xff},
	{"redirect", 137, 0, 0xff},
}

func (m *ICMPMatch) names() []icmpName {
	if m.v6 {
		return icmp6Names
	}
	return icmpNames
}

func (m *ICMPMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if !(opt == "--icmp-type" && !m.v6 || opt == "--icmpv6-type" && m.v6) {
		return false, nil
	}
	if m.seen {
		return true, p.errf(opt, "only one %s allowed", opt)
	}
	m.seen = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	m.Invert = inv
	names := m.names()
	for _, n := range names {
		if n.name == v {
			m.Type, m.CodeMin, m.CodeMax = n.typ, n.codeMin, n.codeMax
			return true, nil
		}
	}
	// Unique prefixes of names are accepted, in any case, as iptables
	// does.
	var hit *icmpName
	for i := range names {
		if len(v) <= len(names[i].name) && strings.EqualFold(names[i].name[:len(v)], v) {
			if hit != nil {
				return true, p.errf(opt, "ambiguous ICMP type %q", v)
			}
			hit = &names[i]
		}
	}
	if hit != nil {
		m.Type, m.CodeMin, m.CodeMax = hit.typ, hit.codeMin, hit.codeMax
		return true, nil
	}
	ts, cs, hasCode := strings.Cut(v, "/")
	t, err := strconv.ParseUint(ts, 10, 8)
	if err != nil || (!m.v6 && t == 0xff && false) {
		return true, p.errf(opt, "invalid ICMP type %q", v)
	}
	m.Type, m.CodeMin, m.CodeMax = uint8(t), 0, 0xff
	if hasCode {
		c, err := strconv.ParseUint(cs, 10, 8)
		if err != nil {
			return true, p.errf(opt, "invalid ICMP code %q", cs)
		}
		m.CodeMin, m.CodeMax = uint8(c), uint8(c)
	}
	return true, nil
}

func (m *ICMPMatch) finish(p *ruleParser) error {
	want := ProtoICMP
	if m.v6 {
		want = ProtoICMPv6
	}
	if p.rule.Proto != want || p.rule.ProtoInvert {
		return p.errf("-m "+m.Name(), "%s match needs -p %s", m.Name(), protoName(want))
	}
	return nil
}

func (m *ICMPMatch) appendSave(b []byte) []byte {
	b = append(b, " -m "...)
	b = append(b, m.Name()...)
	if m.Invert {
		b = append(b, " !"...)
	}
	if m.v6 {
		b = append(b, " --icmpv6-type "...)
	} else {
		b = append(b, " --icmp-type "...)
	}
	if m.Type == 0xff && !m.v6 {
		return append(b, "any"...)
	}
	b = strconv.AppendUint(b, uint64(m.Type), 10)
	if m.CodeMin != 0 || m.CodeMax != 0xff {
		b = append(b, '/')
		b = strconv.AppendUint(b, uint64(m.CodeMin), 10)
	}
	return b
}

func (m *ICMPMatch) appendList(b []byte, numeric bool) []byte {
	if !numeric {
		for _, n := range m.names() {
			if n.typ == m.Type && n.codeMin == m.CodeMin && n.codeMax == m.CodeMax {
				if m.v6 {
					b = append(b, " ipv6-icmp "...)
				} else {
					b = append(b, " icmp "...)
				}
				if m.Invert {
					b = append(b, '!')
				}
				return append(b, n.name...)
			}
		}
	}
	if m.v6 {
		b = append(b, " ipv6-icmp"...)
	} else {
		b = append(b, " icmp"...)
	}
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, "type "...)
	b = strconv.AppendUint(b, uint64(m.Type), 10)
	if m.CodeMin == m.CodeMax {
		b = append(b, " code "...)
		b = strconv.AppendUint(b, uint64(m.CodeMin), 10)
	} else if m.CodeMin != 0 || m.CodeMax != 0xff {
		b = fmt.Appendf(b, " codes %d-%d", m.CodeMin, m.CodeMax)
	}
	return b
}

func (m *ICMPMatch) match(p *Packet, _ *evalPacket) bool {
	if p.Fragment {
		return false
	}
	hit := m.Type == 0xff && !m.v6 || p.ICMPType == m.Type && p.ICMPCode >= m.CodeMin && p.ICMPCode <= m.CodeMax
	return hit != m.Invert
}

// MultiportMatch is -m multiport: up to 15 ports or ranges.
type MultiportMatch struct {
	// Dir is "sports", "dports" or "ports" (either).
	Dir    string
	Ports  []PortRange
	Invert bool
}

// Name implements Match.
func (m *MultiportMatch) Name() string { return "multiport" }

func (m *MultiportMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	dir := ""
	switch opt {
	case "--sports", "--source-ports":
		dir = "sports"
	case "--dports", "--destination-ports":
		dir = "dports"
	case "--ports":
		dir = "ports"
	default:
		return false, nil
	}
	if m.Dir != "" {
		return true, p.errf(opt, "multiport can only have one option")
	}
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	m.Dir, m.Invert = dir, inv
	n := 0
	for _, s := range strings.Split(v, ",") {
		r, err := parsePortRange(s)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		if strings.Contains(s, ":") && (strings.HasPrefix(s, ":") || strings.HasSuffix(s, ":")) {
			return true, p.errf(opt, "invalid port range %q", s)
		}
		n++
		if r.Min != r.Max {
			n++
		}
		m.Ports = append(m.Ports, r)
	}
	if n > 15 {
		return true, p.errf(opt, "too many ports specified (max 15, a range counts 2)")
	}
	return true, nil
}

func (m *MultiportMatch) finish(p *ruleParser) error {
	if m.Dir == "" {
		return p.errf("-m multiport", "multiport expects an option")
	}
	switch p.rule.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP, 33, 136:
		if !p.rule.ProtoInvert {
			return nil
		}
	}
	return p.errf("-m multiport", "multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'")
}

func (m *MultiportMatch) appendSave(b []byte) []byte {
	b = append(b, " -m multiport"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, " --"...)
	b = append(b, m.Dir...)
	b = append(b, ' ')
	for i, r := range m.Ports {
		if i > 0 {
			b = append(b, ',')
		}
		b = r.appendText(b)
	}
	return b
}

func (m *MultiportMatch) appendList(b []byte, numeric bool) []byte {
	b = append(b, " multiport "...)
	b = append(b, m.Dir...)
	b = append(b, ' ')
	if m.Invert {
		b = append(b, " !"...)
	}
	for i, r := range m.Ports {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendService(b, r.Min, numeric)
		if r.Min != r.Max {
			b = append(b, ':')
			b = appendService(b, r.Max, numeric)
		}
	}
	return b
}

func (m *MultiportMatch) match(p *Packet, _ *evalPacket) bool {
	if p.Fragment {
		return false
	}
	hit := false
	for _, r := range m.Ports {
		switch m.Dir {
		case "sports":
			hit = r.contains(p.SrcPort)
		case "dports":
			hit = r.contains(p.DstPort)
		default:
			hit = r.contains(p.SrcPort) || r.contains(p.DstPort)
		}
		if hit {
			break
		}
	}
	return hit != m.Invert
}

// StateMatch is -m state --state or -m conntrack --ctstate.
type StateMatch struct {
	// Conntrack is true for -m conntrack.
	Conntrack bool
	States    CTState
	Invert    bool
	seen      bool
}

// Name implements Match.
func (m *StateMatch) Name() string {
	if m.Conntrack {
		return "conntrack"
	}
	return "state"
}

var stateNames = []struct {
	name string
	bit  CTState
}{
	{"INVALID", CTInvalid}, {"NEW", CTNew}, {"RELATED", CTRelated}, {"ESTABLISHED", CTEstablished},
	{"UNTRACKED", CTUntracked}, {"SNAT", CTSNAT}, {"DNAT", CTDNAT},
}

func (m *StateMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if !(opt == "--ctstate" && m.Conntrack || opt == "--state" && !m.Conntrack) {
		return false, nil
	}
	if m.seen {
		return true, p.errf(opt, "only one %s allowed", opt)
	}
	m.seen = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	m.Invert = inv
	for _, s := range strings.Split(v, ",") {
		found := false
		for i, sn := range stateNames {
			if !m.Conntrack && i >= 5 {
				break
			}
			if strings.EqualFold(sn.name, s) {
				m.States |= sn.bit
				found = true
			}
		}
		if !found {
			return true, p.errf(opt, "bad state %q", s)
		}
	}
	return true, nil
}

func (m *StateMatch) finish(p *ruleParser) error {
	if !m.seen {
		if m.Conntrack {
			return p.errf("-m conntrack", "only --ctstate is supported and it is required")
		}
		return p.errf("-m state", "you must specify --state")
	}
	return nil
}

func (m *StateMatch) appendStates(b []byte) []byte {
	first := true
	for _, sn := range stateNames {
		if m.States&sn.bit != 0 {
			if !first {
				b = append(b, ',')
			}
			b = append(b, sn.name...)
			first = false
		}
	}
	return b
}

func (m *StateMatch) appendSave(b []byte) []byte {
	b = append(b, " -m "...)
	b = append(b, m.Name()...)
	if m.Invert {
		b = append(b, " !"...)
	}
	if m.Conntrack {
		b = append(b, " --ctstate "...)
	} else {
		b = append(b, " --state "...)
	}
	return m.appendStates(b)
}

func (m *StateMatch) appendList(b []byte, _ bool) []byte {
	if m.Invert {
		b = append(b, " !"...)
	}
	if m.Conntrack {
		b = append(b, " ctstate "...)
	} else {
		b = append(b, " state "...)
	}
	return m.appendStates(b)
}

func (m *StateMatch) match(p *Packet, _ *evalPacket) bool {
	return (p.CTState&m.States != 0) != m.Invert
}

// IPRangeMatch is -m iprange --src-range/--dst-range.
type IPRangeMatch struct {
	SrcMin, SrcMax, DstMin, DstMax netip.Addr
	SrcInvert, DstInvert           bool
}

// Name implements Match.
func (m *IPRangeMatch) Name() string { return "iprange" }

func (m *IPRangeMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if opt != "--src-range" && opt != "--dst-range" {
		return false, nil
	}
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	lo, hi, isRange := strings.Cut(v, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := netip.ParseAddr(lo)
	z, err2 := netip.ParseAddr(hi)
	if err1 != nil || err2 != nil || a.Zone() != "" || z.Zone() != "" {
		return true, p.errf(opt, "bad IP range %q", v)
	}
	if p.fam == IPv4 && (!a.Is4() || !z.Is4()) || p.fam == IPv6 && (!a.Is6() || !z.Is6()) {
		return true, p.errf(opt, "IP range %q is not %s", v, p.fam)
	}
	if opt == "--src-range" {
		if m.SrcMin.IsValid() {
			return true, p.errf(opt, "only one --src-range allowed")
		}
		m.SrcMin, m.SrcMax, m.SrcInvert = a, z, inv
	} else {
		if m.DstMin.IsValid() {
			return true, p.errf(opt, "only one --dst-range allowed")
		}
		m.DstMin, m.DstMax, m.DstInvert = a, z, inv
	}
	return true, nil
}

func (m *IPRangeMatch) finish(p *ruleParser) error {
	if !m.SrcMin.IsValid() && !m.DstMin.IsValid() {
		return p.errf("-m iprange", "iprange match: you must specify --src-range or --dst-range")
	}
	return nil
}

func (m *IPRangeMatch) appendSave(b []byte) []byte {
	b = append(b, " -m iprange"...)
	if m.SrcMin.IsValid() {
		if m.SrcInvert {
			b = append(b, " !"...)
		}
		b = fmt.Appendf(b, " --src-range %s-%s", m.SrcMin, m.SrcMax)
	}
	if m.DstMin.IsValid() {
		if m.DstInvert {
			b = append(b, " !"...)
		}
		b = fmt.Appendf(b, " --dst-range %s-%s", m.DstMin, m.DstMax)
	}
	return b
}

func (m *IPRangeMatch) appendList(b []byte, _ bool) []byte {
	if m.SrcMin.IsValid() {
		b = append(b, " source IP range"...)
		if m.SrcInvert {
			b = append(b, " !"...)
		}
		b = fmt.Appendf(b, " %s-%s", m.SrcMin, m.SrcMax)
	}
	if m.DstMin.IsValid() {
		b = append(b, " destination IP range"...)
		if m.DstInvert {
			b = append(b, " !"...)
		}
		b = fmt.Appendf(b, " %s-%s", m.DstMin, m.DstMax)
	}
	return b
}

func (m *IPRangeMatch) match(p *Packet, _ *evalPacket) bool {
	if m.SrcMin.IsValid() {
		in := p.Src.Compare(m.SrcMin) >= 0 && p.Src.Compare(m.SrcMax) <= 0
		if in == m.SrcInvert {
			return false
		}
	}
	if m.DstMin.IsValid() {
		in := p.Dst.Compare(m.DstMin) >= 0 && p.Dst.Compare(m.DstMax) <= 0
		if in == m.DstInvert {
			return false
		}
	}
	return true
}

// MarkMatch is -m mark --mark VALUE[/MASK].
type MarkMatch struct {
	Value, Mask uint32
	Invert      bool
	seen        bool
}

// Name implements Match.
func (m *MarkMatch) Name() string { return "mark" }

// parseMarkMask parses VALUE[/MASK] (decimal, 0x hex or 0 octal).
func parseMarkMask(s string) (v, mask uint32, hasMask bool, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	x, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, false, fmt.Errorf("bad mark value %q", vs)
	}
	mask = 0xffffffff
	if hasMask {
		y, err := strconv.ParseUint(ms, 0, 32)
		if err != nil {
			return 0, 0, false, fmt.Errorf("bad mark mask %q", ms)
		}
		mask = uint32(y)
	}
	return uint32(x), mask, hasMask, nil
}

func (m *MarkMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if opt != "--mark" {
		return false, nil
	}
	if m.seen {
		return true, p.errf(opt, "only one --mark allowed")
	}
	m.seen = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	val, mask, _, err := parseMarkMask(v)
	if err != nil {
		return true, p.errf(opt, "%v", err)
	}
	m.Value, m.Mask, m.Invert = val, mask, inv
	return true, nil
}

func (m *MarkMatch) finish(p *ruleParser) error {
	if !m.seen {
		return p.errf("-m mark", "mark match: you must specify --mark")
	}
	return nil
}

func (m *MarkMatch) appendMark(b []byte) []byte {
	b = fmt.Appendf(b, "0x%x", m.Value)
	if m.Mask != 0xffffffff {
		b = fmt.Appendf(b, "/0x%x", m.Mask)
	}
	return b
}

func (m *MarkMatch) appendSave(b []byte) []byte {
	b = append(b, " -m mark"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, " --mark "...)
	return m.appendMark(b)
}

func (m *MarkMatch) appendList(b []byte, _ bool) []byte {
	b = append(b, " mark match"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, ' ')
	return m.appendMark(b)
}

func (m *MarkMatch) match(p *Packet, _ *evalPacket) bool {
	return (p.Mark&m.Mask == m.Value) != m.Invert
}

// CommentMatch is -m comment --comment TEXT (always matches).
type CommentMatch struct {
	Comment string
	seen    bool
}

// Name implements Match.
func (m *CommentMatch) Name() string { return "comment" }

func (m *CommentMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if opt != "--comment" {
		return false, nil
	}
	if inv {
		return true, p.errf(opt, "--comment cannot be inverted")
	}
	if m.seen {
		return true, p.errf(opt, "only one --comment allowed")
	}
	m.seen = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	if len(v) > 255 {
		return true, p.errf(opt, "comment longer than 255 characters")
	}
	for i := 0; i < len(v); i++ {
		if v[i] == 0 || v[i] == '\n' || v[i] == '\r' {
			return true, p.errf(opt, "comment contains a control character")
		}
	}
	m.Comment = v
	return true, nil
}

func (m *CommentMatch) finish(p *ruleParser) error {
	if !m.seen {
		return p.errf("-m comment", "comment match: you must specify --comment")
	}
	return nil
}

func (m *CommentMatch) appendSave(b []byte) []byte {
	b = append(b, " -m comment --comment"...)
	return appendSaveString(b, m.Comment)
}

func (m *CommentMatch) appendList(b []byte, _ bool) []byte {
	b = append(b, " /* "...)
	b = append(b, m.Comment...)
	return append(b, " */"...)
}

func (m *CommentMatch) match(*Packet, *evalPacket) bool { return true }

// LengthMatch is -m length --length MIN[:MAX].
type LengthMatch struct {
	Min, Max uint16
	Invert   bool
	seen     bool
}

// Name implements Match.
func (m *LengthMatch) Name() string { return "length" }

func (m *LengthMatch) parse(p *ruleParser, opt string, inv bool) (bool, error) {
	if opt != "--length" {
		return false, nil
	}
	if m.seen {
		return true, p.errf(opt, "only one --length allowed")
	}
	m.seen = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	lo, hi, isRange := strings.Cut(v, ":")
	a, err1 := strconv.ParseUint(lo, 10, 16)
	z := a
	var err2 error
	if isRange {
		if hi == "" {
			z = 0xffff
		} else {
			z, err2 = strconv.ParseUint(hi, 10, 16)
		}
		if lo == "" {
			a, err1 = 0, nil
		}
	}
	if err1 != nil || err2 != nil || a > z {
		return true, p.errf(opt, "bad length %q", v)
	}
	m.Min, m.Max, m.Invert = uint16(a), uint16(z), inv
	return true, nil
}

func (m *LengthMatch) finish(p *ruleParser) error {
	if !m.seen {
		return p.errf("-m length", "length match: you must specify --length")
	}
	return nil
}

func (m *LengthMatch) appendSave(b []byte) []byte {
	b = append(b, " -m length"...)
	if m.Invert {
		b = append(b, " !"...)
	}
	b = append(b, " --length "...)
	return m.appendRange(b)
}

func (m *LengthMatch) appendRange(b []byte) []byte {
	b = strconv.AppendUint(b, uint64(m.Min), 10)
	if m.Min != m.Max {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(m.Max), 10)
	}
	return b
}

func (m *LengthMatch) appendList(b []byte, _ bool) []byte {
	b = append(b, " length "...)
	if m.Invert {
		b = append(b, '!')
	}
	return m.appendRange(b)
}

func (m *LengthMatch) match(p *Packet, _ *evalPacket) bool {
	in := p.Length >= int(m.Min) && p.Length <= int(m.Max)
	return in != m.Invert
}

// services are the port names -L prints without -n and the parser accepts
// (a subset of /etc/services).
var services = []struct {
	name string
	port uint16
}{
	{"ftp-data", 20}, {"ftp", 21}, {"ssh", 22}, {"telnet", 23}, {"smtp", 25},
	{"domain", 53}, {"bootps", 67}, {"bootpc", 68}, {"tftp", 69}, {"http", 80},
	{"pop3", 110}, {"ntp", 123}, {"imap2", 143}, {"snmp", 161}, {"ldap", 389},
	{"https", 443}, {"submissions", 465}, {"syslog", 514}, {"submission", 587},
	{"imaps", 993}, {"pop3s", 995}, {"openvpn", 1194}, {"mysql", 3306},
	{"postgresql", 5432}, {"http-alt", 8080},
}

func appendService(b []byte, port uint16, numeric bool) []byte {
	if !numeric {
		for _, s := range services {
			if s.port == port {
				return append(b, s.name...)
			}
		}
	}
	return strconv.AppendUint(b, uint64(port), 10)
}

// appendSaveString appends " " and s, quoted as xtables_save_string does
// when it contains anything but letters, digits, '_' and '-'.
func appendSaveString(b []byte, s string) []byte {
	b = append(b, ' ')
	plain := s != ""
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			plain = false
			break
		}
	}
	if plain {
		return append(b, s...)
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' || c == '\'' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}
