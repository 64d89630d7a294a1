package iptables

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
)

// targetTypes are the target extensions; any other -j name is a chain.
var targetTypes = map[string]bool{
	"REJECT": true, "LOG": true, "MARK": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "REDIRECT": true,
}

// unsupportedTargets are real iptables targets this package does not
// implement; naming them is an error rather than a jump to a chain.
var unsupportedTargets = map[string]bool{
	"QUEUE": true, "NFQUEUE": true, "TCPMSS": true, "CT": true, "NOTRACK": true, "TRACE": true,
	"CONNMARK": true, "TOS": true, "DSCP": true, "TTL": true, "HL": true, "NETMAP": true,
	"CLASSIFY": true, "TEE": true, "NFLOG": true, "ULOG": true, "AUDIT": true, "CHECKSUM": true,
	"SET": true, "SECMARK": true, "CONNSECMARK": true, "TPROXY": true, "IDLETIMER": true, "LED": true,
	"RATEEST": true, "SYNPROXY": true, "CLUSTERIP": true, "ECN": true, "MIRROR": true, "SAME": true,
}

func newTarget(f Family, name string, isGoto bool) (Target, error) {
	if isGoto {
		if targetTypes[name] || name == "ACCEPT" || name == "DROP" || name == "RETURN" {
			return nil, fmt.Errorf("goto %q: -g takes a user-defined chain", name)
		}
		if name == "" {
			return nil, fmt.Errorf("empty chain name")
		}
		return &JumpTarget{Chain: name, Goto: true}, nil
	}
	switch name {
	case "ACCEPT", "DROP", "RETURN":
		return &StandardTarget{Verdict: name}, nil
	case "REJECT":
		return &RejectTarget{fam: f}, nil
	case "LOG":
		return &LogTarget{Level: 4}, nil
	case "MARK":
		return &MarkTarget{}, nil
	case "DNAT":
		return &NATTarget{Kind: DNAT, fam: f}, nil
	case "SNAT":
		return &NATTarget{Kind: SNAT, fam: f}, nil
	case "MASQUERADE":
		return &NATTarget{Kind: Masquerade, fam: f}, nil
	case "REDIRECT":
		return &NATTarget{Kind: Redirect, fam: f}, nil
	}
	if unsupportedTargets[name] {
		return nil, fmt.Errorf("target %q is not supported: %w", name, ErrUnknownExtension)
	}
	if name == "" || name[0] == '-' {
		return nil, fmt.Errorf("bad target name %q", name)
	}
	return &JumpTarget{Chain: name}, nil
}

// StandardTarget is ACCEPT, DROP or RETURN.
type StandardTarget struct {
	Verdict string
}

// Name implements Target.
func (t *StandardTarget) Name() string                                  { return t.Verdict }
func (t *StandardTarget) parse(*ruleParser, string, bool) (bool, error) { return false, nil }
func (t *StandardTarget) finish(*ruleParser) error                      { return nil }
func (t *StandardTarget) appendSave(b []byte) []byte {
	return append(append(b, " -j "...), t.Verdict...)
}
func (t *StandardTarget) appendList(b []byte, _ bool) []byte { return b }

// JumpTarget is -j CHAIN or -g CHAIN.
type JumpTarget struct {
	Chain string
	Goto  bool
}

// Name implements Target.
func (t *JumpTarget) Name() string                                  { return t.Chain }
func (t *JumpTarget) parse(*ruleParser, string, bool) (bool, error) { return false, nil }
func (t *JumpTarget) finish(*ruleParser) error                      { return nil }
func (t *JumpTarget) appendSave(b []byte) []byte {
	if t.Goto {
		return append(append(b, " -g "...), t.Chain...)
	}
	return append(append(b, " -j "...), t.Chain...)
}
func (t *JumpTarget) appendList(b []byte, _ bool) []byte { return b }

// RejectTarget is REJECT --reject-with.
type RejectTarget struct {
	With RejectWith
	fam  Family
}

var rejectNames = []struct {
	name  string
	alias string
	with  RejectWith
	v6    bool
}{
	{"icmp-net-unreachable", "net-unreach", RejectICMPNetUnreachable, false},
	{"icmp-host-unreachable", "host-unreach", RejectICMPHostUnreachable, false},
	{"icmp-port-unreachable", "port-unreach", RejectICMPPortUnreachable, false},
	{"icmp-proto-unreachable", "proto-unreach", RejectICMPProtoUnreachable, false},
	{"icmp-net-prohibited", "net-prohib", RejectICMPNetProhibited, false},
	{"icmp-host-prohibited", "host-prohib", RejectICMPHostProhibited, false},
	{"icmp-admin-prohibited", "admin-prohib", RejectICMPAdminProhibited, false},
	{"tcp-reset", "tcp-rst", RejectTCPReset, false},
	{"icmp6-no-route", "no-route", RejectICMP6NoRoute, true},
	{"icmp6-adm-prohibited", "adm-prohibited", RejectICMP6AdmProhibited, true},
	{"icmp6-addr-unreachable", "addr-unreach", RejectICMP6AddrUnreachable, true},
	{"icmp6-port-unreachable", "port-unreach", RejectICMP6PortUnreachable, true},
	{"icmp6-policy-fail", "policy-fail", RejectICMP6PolicyFail, true},
	{"icmp6-reject-route", "reject-route", RejectICMP6RejectRoute, true},
	{"tcp-reset", "tcp-reset", RejectTCPReset, true},
}

// String returns the --reject-with name (the IPv4 name for the default).
func (w RejectWith) String() string {
	for _, n := range rejectNames {
		if n.with == w {
			return n.name
		}
	}
	return "icmp-port-unreachable"
}

// Resolve returns w with RejectDefault replaced by family f's default.
func (w RejectWith) Resolve(f Family) RejectWith {
	if w != RejectDefault {
		return w
	}
	if f == IPv6 {
		return RejectICMP6PortUnreachable
	}
	return RejectICMPPortUnreachable
}

// Name implements Target.
func (t *RejectTarget) Name() string { return "REJECT" }

func (t *RejectTarget) parse(p *ruleParser, opt string, _ bool) (bool, error) {
	if opt != "--reject-with" {
		return false, nil
	}
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	for _, n := range rejectNames {
		if n.v6 == (p.fam == IPv6) && (n.name == v || n.alias == v) {
			t.With = n.with
			return true, nil
		}
	}
	return true, p.errf(opt, "unknown reject type %q", v)
}

func (t *RejectTarget) finish(p *ruleParser) error {
	t.With = t.With.Resolve(p.fam)
	if t.With == RejectTCPReset && (p.rule.Proto != ProtoTCP || p.rule.ProtoInvert) {
		return p.errf("--reject-with", "tcp-reset is only valid with -p tcp")
	}
	return nil
}

// hookMask is ipt_REJECT's: table filter, hooks INPUT/FORWARD/OUTPUT.
func (t *RejectTarget) hookMask(table string) (uint8, string) {
	if table != TableFilter {
		return 0, "REJECT"
	}
	return 1<<Input | 1<<Forward | 1<<Output, "REJECT"
}

func (t *RejectTarget) appendSave(b []byte) []byte {
	b = append(b, " -j REJECT --reject-with "...)
	return append(b, t.With.String()...)
}

func (t *RejectTarget) appendList(b []byte, _ bool) []byte {
	b = append(b, " reject-with "...)
	return append(b, t.With.String()...)
}

// LogTarget is LOG: it logs the packet through slog and continues.
type LogTarget struct {
	Prefix string
	// Level is the syslog level 0-7 (default 4, warning).
	Level uint8
	// Flags are LOG's option bits (--log-tcp-sequence 1, --log-tcp-options
	// 2, --log-ip-options 4, --log-uid 8, --log-macdecode 0x20).
	Flags uint8
}

var logLevels = []string{"emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"}

var logFlags = []struct {
	opt  string
	flag uint8
}{
	{"--log-tcp-sequence", 0x01}, {"--log-tcp-options", 0x02}, {"--log-ip-options", 0x04},
	{"--log-uid", 0x08}, {"--log-macdecode", 0x20},
}

// Name implements Target.
func (t *LogTarget) Name() string { return "LOG" }

func (t *LogTarget) parse(p *ruleParser, opt string, _ bool) (bool, error) {
	switch opt {
	case "--log-prefix":
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		if len(v) > 29 {
			return true, p.errf(opt, "maximum prefix length is 29 characters")
		}
		if strings.ContainsAny(v, "\n\x00") {
			return true, p.errf(opt, "prefix contains a control character")
		}
		t.Prefix = v
		return true, nil
	case "--log-level":
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		if n, err := strconv.ParseUint(v, 10, 8); err == nil && n <= 7 {
			t.Level = uint8(n)
			return true, nil
		}
		// libxt_LOG's names ("panic" is emerg).
		for i, n := range logLevels {
			if n == v || v == "panic" && i == 0 {
				t.Level = uint8(i)
				return true, nil
			}
		}
		return true, p.errf(opt, "log level %q unknown", v)
	}
	for _, f := range logFlags {
		if f.opt == opt {
			t.Flags |= f.flag
			return true, nil
		}
	}
	return false, nil
}

func (t *LogTarget) finish(*ruleParser) error { return nil }

func (t *LogTarget) appendSave(b []byte) []byte {
	b = append(b, " -j LOG"...)
	if t.Prefix != "" {
		b = append(b, " --log-prefix"...)
		b = appendSaveString(b, t.Prefix)
	}
	if t.Level != 4 {
		b = fmt.Appendf(b, " --log-level %d", t.Level)
	}
	for _, f := range logFlags {
		if t.Flags&f.flag != 0 {
			b = append(b, ' ')
			b = append(b, f.opt...)
		}
	}
	return b
}

func (t *LogTarget) appendList(b []byte, numeric bool) []byte {
	b = append(b, " LOG"...)
	if numeric {
		b = fmt.Appendf(b, " flags %d level %d", t.Flags, t.Level)
	} else {
		lvl := logLevels[t.Level&7]
		if lvl == "warning" {
			lvl = "warn"
		}
		b = append(b, " level "...)
		b = append(b, lvl...)
		if t.Flags&0x01 != 0 {
			b = append(b, " tcp-sequence"...)
		}
		if t.Flags&0x02 != 0 {
			b = append(b, " tcp-options"...)
		}
		if t.Flags&0x04 != 0 {
			b = append(b, " ip-options"...)
		}
		if t.Flags&0x08 != 0 {
			b = append(b, " uid"...)
		}
		if t.Flags&0x20 != 0 {
			b = append(b, " macdecode"...)
		}
	}
	if t.Prefix != "" {
		b = fmt.Appendf(b, " prefix \"%s\"", t.Prefix)
	}
	return b
}

var slogLevels = [8]slog.Level{slog.LevelError + 4, slog.LevelError + 3, slog.LevelError + 2, slog.LevelError,
	slog.LevelWarn, slog.LevelInfo + 2, slog.LevelInfo, slog.LevelDebug}

// log writes the packet in the kernel's LOG fields (nf_log_ip_packet).
func (t *LogTarget) log(l *slog.Logger, p *Packet) {
	lvl := slogLevels[t.Level&7]
	ctx := context.Background()
	if !l.Enabled(ctx, lvl) {
		return
	}
	attrs := []slog.Attr{
		slog.String("prefix", t.Prefix),
		slog.String("IN", p.InIface),
		slog.String("OUT", p.OutIface),
		slog.String("SRC", p.Src.String()),
		slog.String("DST", p.Dst.String()),
		slog.Int("LEN", p.Length),
		slog.String("PROTO", protoLogName(p.Protocol)),
	}
	switch p.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP, 136:
		attrs = append(attrs, slog.Int("SPT", int(p.SrcPort)), slog.Int("DPT", int(p.DstPort)))
		if p.Protocol == ProtoTCP {
			attrs = append(attrs, slog.String("FLAGS", string(appendTCPFlags(nil, p.TCPFlags&0x3f))))
		}
	case ProtoICMP, ProtoICMPv6:
		attrs = append(attrs, slog.Int("TYPE", int(p.ICMPType)), slog.Int("CODE", int(p.ICMPCode)))
	}
	if p.Mark != 0 {
		attrs = append(attrs, slog.String("MARK", fmt.Sprintf("0x%x", p.Mark)))
	}
	l.LogAttrs(ctx, lvl, "iptables log", attrs...)
}

func protoLogName(n uint8) string {
	switch n {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMP:
		return "ICMP"
	case ProtoICMPv6:
		return "ICMPv6"
	case 136:
		return "UDPLITE"
	case ProtoSCTP:
		return "SCTP"
	}
	return strconv.Itoa(int(n))
}

// MarkTarget is MARK: packet mark = (mark &^ Mask) ^ Value (xt_MARK
// revision 2; --set-mark, --and-mark, --or-mark and --xor-mark are
// expressed in that form, as the kernel stores them).
type MarkTarget struct {
	Value, Mask uint32
	set         bool
}

// Name implements Target.
func (t *MarkTarget) Name() string { return "MARK" }

func (t *MarkTarget) parse(p *ruleParser, opt string, _ bool) (bool, error) {
	switch opt {
	case "--set-mark", "--set-xmark", "--and-mark", "--or-mark", "--xor-mark":
	default:
		return false, nil
	}
	if t.set {
		return true, p.errf(opt, "MARK target: only one action allowed")
	}
	t.set = true
	v, err := p.arg(opt)
	if err != nil {
		return true, err
	}
	val, mask, hasMask, err := parseMarkMask(v)
	if err != nil {
		return true, p.errf(opt, "%v", err)
	}
	if hasMask && (opt == "--and-mark" || opt == "--or-mark" || opt == "--xor-mark") {
		return true, p.errf(opt, "takes no mask")
	}
	switch opt {
	case "--set-xmark":
		t.Value, t.Mask = val, mask
	case "--set-mark":
		t.Value, t.Mask = val, val|mask
	case "--and-mark":
		t.Value, t.Mask = 0, ^val
	case "--or-mark":
		t.Value, t.Mask = val, val
	case "--xor-mark":
		t.Value, t.Mask = val, 0
	}
	return true, nil
}

func (t *MarkTarget) finish(p *ruleParser) error {
	if !t.set {
		return p.errf("-j MARK", "MARK target: parameter required")
	}
	return nil
}

func (t *MarkTarget) appendSave(b []byte) []byte {
	return fmt.Appendf(b, " -j MARK --set-xmark 0x%x/0x%x", t.Value, t.Mask)
}

func (t *MarkTarget) appendList(b []byte, _ bool) []byte {
	switch {
	case t.Value == 0:
		return fmt.Appendf(b, " MARK and 0x%x", ^t.Mask)
	case t.Value == t.Mask:
		return fmt.Appendf(b, " MARK or 0x%x", t.Value)
	case t.Mask == 0:
		return fmt.Appendf(b, " MARK xor 0x%x", t.Value)
	case t.Mask == 0xffffffff:
		return fmt.Appendf(b, " MARK set 0x%x", t.Value)
	}
	return fmt.Appendf(b, " MARK xset 0x%x/0x%x", t.Value, t.Mask)
}

// NATTarget is DNAT, SNAT, MASQUERADE or REDIRECT.
type NATTarget struct {
	Kind  VerdictKind
	Range NATRange
	fam   Family
	set   bool
}

// Name implements Target.
func (t *NATTarget) Name() string { return t.Kind.String() }

func (t *NATTarget) parse(p *ruleParser, opt string, _ bool) (bool, error) {
	switch {
	case opt == "--to-destination" && t.Kind == DNAT, opt == "--to-source" && t.Kind == SNAT:
		if t.set {
			return true, p.errf(opt, "multiple %s not supported", opt)
		}
		t.set = true
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		if err := t.parseAddrPorts(v); err != nil {
			return true, p.errf(opt, "%v", err)
		}
	case opt == "--to-ports" && (t.Kind == Masquerade || t.Kind == Redirect):
		if t.set {
			return true, p.errf(opt, "multiple --to-ports not supported")
		}
		t.set = true
		v, err := p.arg(opt)
		if err != nil {
			return true, err
		}
		lo, hi, err := parseNATPorts(v)
		if err != nil {
			return true, p.errf(opt, "%v", err)
		}
		t.Range.MinPort, t.Range.MaxPort = lo, hi
	case opt == "--random":
		t.Range.Random = true
	case opt == "--random-fully" && t.Kind != DNAT && t.Kind != Redirect:
		t.Range.FullyRandom = true
	case opt == "--persistent" && (t.Kind == DNAT || t.Kind == SNAT):
		t.Range.Persistent = true
	default:
		return false, nil
	}
	return true, nil
}

func parseNATPorts(s string) (uint16, uint16, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	a, err := strconv.ParseUint(lo, 10, 16)
	if err != nil || a == 0 {
		return 0, 0, fmt.Errorf("port %q not valid", lo)
	}
	z := a
	if isRange {
		z, err = strconv.ParseUint(hi, 10, 16)
		if err != nil || z == 0 {
			return 0, 0, fmt.Errorf("port %q not valid", hi)
		}
		if z < a {
			return 0, 0, fmt.Errorf("port range %q: min > max", s)
		}
	}
	return uint16(a), uint16(z), nil
}

// parseAddrPorts parses ADDR[-ADDR][:PORT[-PORT]] (IPv6: [ADDR[-ADDR]]:PORT).
func (t *NATTarget) parseAddrPorts(s string) error {
	addrs, ports := s, ""
	if t.fam == IPv6 {
		if strings.HasPrefix(s, "[") {
			end := strings.Index(s, "]")
			if end < 0 {
				return fmt.Errorf("invalid address %q (missing ])", s)
			}
			addrs = s[1:end]
			rest := s[end+1:]
			if rest != "" {
				if rest[0] != ':' {
					return fmt.Errorf("invalid address %q", s)
				}
				ports = rest[1:]
			}
		}
	} else if i := strings.IndexByte(s, ':'); i >= 0 {
		addrs, ports = s[:i], s[i+1:]
	}
	if addrs != "" {
		lo, hi, isRange := strings.Cut(addrs, "-")
		a, err := netip.ParseAddr(lo)
		if err != nil || a.Zone() != "" || (t.fam == IPv4) != a.Is4() {
			return fmt.Errorf("bad IP address %q", lo)
		}
		z := a
		if isRange {
			z, err = netip.ParseAddr(hi)
			if err != nil || z.Zone() != "" || (t.fam == IPv4) != z.Is4() {
				return fmt.Errorf("bad IP address %q", hi)
			}
			if z.Less(a) {
				return fmt.Errorf("bad IP range %q (min > max)", addrs)
			}
		}
		t.Range.MinAddr, t.Range.MaxAddr = a, z
	}
	if ports != "" {
		lo, hi, err := parseNATPorts(ports)
		if err != nil {
			return err
		}
		t.Range.MinPort, t.Range.MaxPort = lo, hi
	} else if strings.HasSuffix(s, ":") {
		return fmt.Errorf("port missing after ':' in %q", s)
	}
	if !t.Range.MinAddr.IsValid() && t.Range.MinPort == 0 {
		return fmt.Errorf("bad address %q", s)
	}
	return nil
}

func (t *NATTarget) finish(p *ruleParser) error {
	if (t.Kind == DNAT || t.Kind == SNAT) && !t.set {
		opt := "--to-destination"
		if t.Kind == SNAT {
			opt = "--to-source"
		}
		return p.errf("-j "+t.Name(), "%s needs %s", t.Name(), opt)
	}
	if t.Range.MinPort != 0 && (!hasPorts(p.rule.Proto) || p.rule.ProtoInvert) {
		return p.errf("-j "+t.Name(), "Need TCP, UDP, SCTP or DCCP with port specification")
	}
	return nil
}

func (t *NATTarget) hookMask(table string) (uint8, string) {
	if table != TableNAT {
		return 0, t.Name()
	}
	switch t.Kind {
	case DNAT, Redirect:
		return 1<<Prerouting | 1<<Output, t.Name()
	case SNAT:
		return 1<<Postrouting | 1<<Input, t.Name()
	}
	return 1 << Postrouting, t.Name()
}

func (t *NATTarget) appendRange(b []byte) []byte {
	r := &t.Range
	bracket := t.fam == IPv6 && r.MinPort != 0
	if r.MinAddr.IsValid() {
		if bracket {
			b = append(b, '[')
		}
		b = r.MinAddr.AppendTo(b)
		if r.MaxAddr != r.MinAddr {
			b = append(b, '-')
			b = r.MaxAddr.AppendTo(b)
		}
		if bracket {
			b = append(b, ']')
		}
	}
	if r.MinPort != 0 {
		b = append(b, ':')
		b = appendPortDash(b, r.MinPort, r.MaxPort)
	}
	return b
}

func appendPortDash(b []byte, lo, hi uint16) []byte {
	b = strconv.AppendUint(b, uint64(lo), 10)
	if hi != lo {
		b = append(b, '-')
		b = strconv.AppendUint(b, uint64(hi), 10)
	}
	return b
}

func (t *NATTarget) appendFlags(b []byte, fully bool) []byte {
	if t.Range.Random {
		b = append(b, " --random"...)
	}
	if fully && t.Range.FullyRandom {
		b = append(b, " --random-fully"...)
	}
	if t.Range.Persistent {
		b = append(b, " --persistent"...)
	}
	return b
}

func (t *NATTarget) appendSave(b []byte) []byte {
	b = append(b, " -j "...)
	b = append(b, t.Name()...)
	switch t.Kind {
	case DNAT, SNAT:
		if t.Kind == DNAT {
			b = append(b, " --to-destination "...)
		} else {
			b = append(b, " --to-source "...)
		}
		b = t.appendRange(b)
		return t.appendFlags(b, true)
	}
	if t.Range.MinPort != 0 {
		b = append(b, " --to-ports "...)
		b = appendPortDash(b, t.Range.MinPort, t.Range.MaxPort)
	}
	return t.appendFlags(b, true)
}

func (t *NATTarget) appendList(b []byte, _ bool) []byte {
	switch t.Kind {
	case DNAT, SNAT:
		b = append(b, " to:"...)
		b = t.appendRange(b)
	case Masquerade:
		if t.Range.MinPort != 0 {
			b = append(b, " masq ports: "...)
			b = appendPortDash(b, t.Range.MinPort, t.Range.MaxPort)
		}
	case Redirect:
		if t.Range.MinPort != 0 {
			b = append(b, " redir ports "...)
			b = appendPortDash(b, t.Range.MinPort, t.Range.MaxPort)
		}
	}
	if t.Range.Random {
		b = append(b, " random"...)
	}
	if t.Range.FullyRandom {
		b = append(b, " random-fully"...)
	}
	if t.Range.Persistent {
		b = append(b, " persistent"...)
	}
	return b
}
