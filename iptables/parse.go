package iptables

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// ParseError is an error in rule text: the line (0 for a command line) and,
// when known, the option at fault.
type ParseError struct {
	Line   int
	Option string
	Err    error
}

func (e *ParseError) Error() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Option != "" {
		fmt.Fprintf(&b, "%s: ", e.Option)
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ParseError) Unwrap() error { return e.Err }

// ErrUnknownExtension is wrapped by errors about an unknown match or target.
var ErrUnknownExtension = errors.New("unknown extension")

// maxLineLen bounds a line of rule text.
const maxLineLen = 1 << 20

// Parse reads iptables-save (f == IPv4) or ip6tables-save (f == IPv6) text,
// as iptables-restore -c does: "*table" sections of ":CHAIN POLICY [p:b]"
// declarations and commands (-A, -I, -N, -P, ...), each ended by COMMIT;
// "[p:b]" prefixes and declarations set counters; '#' lines are comments.
// On any error nothing is returned and the *ParseError names the line.
func Parse(r io.Reader, f Family) (*Ruleset, error) {
	return Restore(New(f), r, RestoreOptions{Counters: true})
}

// RestoreOptions modify Restore.
type RestoreOptions struct {
	// NoFlush keeps the rules of the tables the text names and adds to
	// them (iptables-restore --noflush); otherwise each named table is
	// replaced as a whole.
	NoFlush bool
	// Counters sets counters from "[packets:bytes]" prefixes and chain
	// declarations (iptables-restore -c); without it they are ignored
	// and counters start at zero. A rule's own "-c P B" always applies.
	Counters bool
}

// Restore applies iptables-save text to base as iptables-restore does and
// returns the result: tables named in the text are replaced (or, with
// NoFlush, edited), the others are kept (sharing rules and counters with
// base). base is not modified. On any error nothing is applied.
func Restore(base *Ruleset, r io.Reader, opts RestoreOptions) (*Ruleset, error) {
	rs := base.clone()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), maxLineLen)
	lineNo := 0
	var cur *tableEdit
	curLine := 0
	// touched records whether the current table section declared a chain
	// or ran a command: iptables-restore (nf_tables) leaves a section
	// with neither without the table (deleting it if it existed).
	touched := false
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		perr := func(opt string, err error) error {
			return &ParseError{Line: lineNo, Option: opt, Err: err}
		}
		switch {
		case line[0] == '*':
			if cur != nil {
				return nil, perr("", fmt.Errorf("table %q started before COMMIT of table %q (line %d)", line[1:], cur.name, curLine))
			}
			name := line[1:]
			ti := tableIndex(name)
			if ti < 0 {
				return nil, perr("", fmt.Errorf("table %q does not exist", name))
			}
			cur = rs.edit(ti)
			cur.counters = opts.Counters
			curLine = lineNo
			touched = false
			if !opts.NoFlush {
				cur.flushTable()
			}
		case line == "COMMIT":
			if cur == nil {
				return nil, perr("", errors.New("COMMIT without a table"))
			}
			if !touched {
				if !opts.NoFlush {
					rs.tables[cur.index] = nil
				}
				cur = nil
				continue
			}
			if err := cur.commit(); err != nil {
				var pe *ParseError
				if errors.As(err, &pe) {
					return nil, pe
				}
				return nil, perr("", err)
			}
			cur = nil
		case line[0] == ':':
			if cur == nil {
				return nil, perr("", errors.New("chain declaration outside a table"))
			}
			touched = true
			if err := cur.declare(line[1:]); err != nil {
				return nil, perr("", err)
			}
		default:
			if cur == nil {
				return nil, perr("", errors.New("command outside a table"))
			}
			args, err := tokenize(line)
			if err != nil {
				return nil, perr("", err)
			}
			var counters *[2]uint64
			if len(args) > 0 && strings.HasPrefix(args[0], "[") {
				c, err := parseCounterPair(args[0])
				if err != nil {
					return nil, perr("", err)
				}
				counters = &c
				args = args[1:]
			}
			cmd, err := parseCommand(rs.family, cur.name, args, lineNo, true)
			if err != nil {
				return nil, err
			}
			if counters != nil && opts.Counters {
				for _, r := range cmd.Rules {
					r.Counters.Set(counters[0], counters[1])
				}
			}
			touched = true
			if err := cur.exec(cmd); err != nil {
				return nil, perr("", err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, &ParseError{Line: lineNo + 1, Err: err}
	}
	if cur != nil {
		return nil, &ParseError{Line: lineNo, Err: fmt.Errorf("COMMIT expected for table %q started at line %d", cur.name, curLine)}
	}
	if err := rs.build(); err != nil {
		return nil, &ParseError{Line: lineNo, Err: err}
	}
	return rs, nil
}

// parseCounterPair parses "[packets:bytes]".
func parseCounterPair(s string) ([2]uint64, error) {
	var c [2]uint64
	if len(s) < 5 || s[0] != '[' || s[len(s)-1] != ']' {
		return c, fmt.Errorf("bad counters %q (want [packets:bytes])", s)
	}
	p, b, ok := strings.Cut(s[1:len(s)-1], ":")
	if !ok {
		return c, fmt.Errorf("bad counters %q (want [packets:bytes])", s)
	}
	var err1, err2 error
	c[0], err1 = strconv.ParseUint(p, 10, 64)
	c[1], err2 = strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return c, fmt.Errorf("bad counters %q (want [packets:bytes])", s)
	}
	return c, nil
}

// tokenize splits a line as iptables-restore does: on blanks, with double
// quotes grouping and backslash escaping the next character.
func tokenize(line string) ([]string, error) {
	var out []string
	var cur []byte
	inTok, quoted, escaped := false, false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case escaped:
			cur = append(cur, ch)
			escaped = false
		case ch == '\\':
			escaped = true
			inTok = true
		case ch == '"':
			quoted = !quoted
			inTok = true
		case !quoted && (ch == ' ' || ch == '\t'):
			if inTok {
				out = append(out, string(cur))
				cur = cur[:0]
				inTok = false
			}
		default:
			cur = append(cur, ch)
			inTok = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quoted string")
	}
	if escaped {
		return nil, errors.New("line ends in a backslash")
	}
	if inTok {
		out = append(out, string(cur))
	}
	return out, nil
}

// ruleParser parses one rule specification.
type ruleParser struct {
	fam   Family
	table string
	args  []string
	pos   int
	line  int
	rule  *Rule
	// seen records the core options given, to reject repeats.
	seen map[string]bool
	// target options are offered to the target once it is set.
	target Target
	goto_  bool
	// protoMatch is the implicit protocol match, once loaded.
	protoLoaded bool
	// counters from -c.
	counters *[2]uint64
	// srcs and dsts are the -s/-d lists, expanded into one rule each.
	srcs, dsts []netip.Prefix
}

func (p *ruleParser) errf(opt, format string, a ...any) error {
	return &ParseError{Line: p.line, Option: opt, Err: fmt.Errorf(format, a...)}
}

// arg returns the option's next argument.
func (p *ruleParser) arg(opt string) (string, error) {
	if p.pos >= len(p.args) {
		return "", p.errf(opt, "option requires an argument")
	}
	a := p.args[p.pos]
	p.pos++
	return a, nil
}

// ParseRuleArgs parses a rule specification as the iptables command line
// takes it after "-A CHAIN" (e.g. ["-p", "tcp", "--dport", "80", "-j",
// "DROP"]) for table. Several -s or -d addresses expand into one rule per
// combination, as iptables does.
func ParseRuleArgs(f Family, table string, argv []string) ([]*Rule, error) {
	if tableIndex(table) < 0 {
		return nil, &ParseError{Err: fmt.Errorf("table %q does not exist", table)}
	}
	return parseRuleSpec(f, table, argv, 0)
}

func parseRuleSpec(f Family, table string, argv []string, line int) ([]*Rule, error) {
	p := &ruleParser{fam: f, table: table, args: argv, line: line, rule: &Rule{Line: line}, seen: map[string]bool{}}
	if err := p.parse(); err != nil {
		return nil, err
	}
	return p.expand(), nil
}

func (p *ruleParser) once(name string) error {
	if p.seen[name] {
		return p.errf(name, "multiple %s flags not allowed", name)
	}
	p.seen[name] = true
	return nil
}

func (p *ruleParser) parse() error {
	r := p.rule
	invert := false
	for p.pos < len(p.args) {
		opt := p.args[p.pos]
		p.pos++
		if opt == "!" {
			if invert {
				return p.errf(opt, "multiple consecutive ! not allowed")
			}
			invert = true
			continue
		}
		inv := invert
		invert = false
		canon := opt
		switch opt {
		case "--protocol":
			canon = "-p"
		case "--source", "--src":
			canon = "-s"
		case "--destination", "--dst":
			canon = "-d"
		case "--in-interface":
			canon = "-i"
		case "--out-interface":
			canon = "-o"
		case "--fragment":
			canon = "-f"
		case "--match":
			canon = "-m"
		case "--jump":
			canon = "-j"
		case "--goto":
			canon = "-g"
		case "--set-counters":
			canon = "-c"
		}
		switch canon {
		case "-p":
			if err := p.once("-p"); err != nil {
				return err
			}
			v, err := p.arg(opt)
			if err != nil {
				return err
			}
			n, err := parseProto(v)
			if err != nil {
				return p.errf(opt, "%v", err)
			}
			if n == 0 && inv {
				return p.errf(opt, "rule would never match protocol")
			}
			r.Proto, r.ProtoInvert = n, inv
		case "-s", "-d":
			if err := p.once(canon); err != nil {
				return err
			}
			v, err := p.arg(opt)
			if err != nil {
				return err
			}
			list, err := parseAddrList(p.fam, v)
			if err != nil {
				return p.errf(opt, "%v", err)
			}
			if canon == "-s" {
				p.srcs, r.SrcInvert = list, inv
			} else {
				p.dsts, r.DstInvert = list, inv
			}
		case "-i", "-o":
			if err := p.once(canon); err != nil {
				return err
			}
			v, err := p.arg(opt)
			if err != nil {
				return err
			}
			if err := checkIface(v); err != nil {
				return p.errf(opt, "%v", err)
			}
			if v == "+" && !inv {
				v = "" // any interface, as the kernel stores it
			}
			if canon == "-i" {
				r.InIface, r.InInvert = v, inv
			} else {
				r.OutIface, r.OutInvert = v, inv
			}
		case "-f":
			if p.fam != IPv4 {
				return p.errf(opt, "-f is not supported by ip6tables")
			}
			if err := p.once("-f"); err != nil {
				return err
			}
			r.Fragment, r.FragmentInvert = true, inv
		case "-m":
			if inv {
				return p.errf(opt, "unexpected ! before -m")
			}
			v, err := p.arg(opt)
			if err != nil {
				return err
			}
			m, err := newMatch(p.fam, v)
			if err != nil {
				return p.errf(opt, "%v", err)
			}
			if v == protoName(p.rule.Proto) || (v == "icmp6" && p.rule.Proto == ProtoICMPv6) {
				p.protoLoaded = true
			}
			r.Matches = append(r.Matches, m)
		case "-j", "-g":
			if p.target != nil {
				return p.errf(opt, "multiple -j/-g flags not allowed")
			}
			if inv {
				return p.errf(opt, "unexpected ! before %s", opt)
			}
			v, err := p.arg(opt)
			if err != nil {
				return err
			}
			t, err := newTarget(p.fam, v, canon == "-g")
			if err != nil {
				return p.errf(opt, "%v", err)
			}
			p.target = t
			p.goto_ = canon == "-g"
		case "-c":
			if err := p.once("-c"); err != nil {
				return err
			}
			a, err := p.arg(opt)
			if err != nil {
				return err
			}
			b, err := p.arg(opt)
			if err != nil {
				return err
			}
			pk, err1 := strconv.ParseUint(a, 10, 64)
			by, err2 := strconv.ParseUint(b, 10, 64)
			if err1 != nil || err2 != nil {
				return p.errf(opt, "bad counters %q %q", a, b)
			}
			p.counters = &[2]uint64{pk, by}
		default:
			if !strings.HasPrefix(opt, "-") {
				return p.errf(opt, "bad argument %q", opt)
			}
			ok, err := p.extensionOption(opt, inv)
			if err != nil {
				return err
			}
			if !ok {
				return p.errf(opt, "unknown option %q", opt)
			}
		}
	}
	if invert {
		return p.errf("!", "! at the end of the rule")
	}
	for _, m := range r.Matches {
		if err := m.finish(p); err != nil {
			return err
		}
	}
	if p.target != nil {
		if err := p.target.finish(p); err != nil {
			return err
		}
	}
	r.Target = p.target
	return nil
}

// extensionOption offers opt to the loaded matches (last loaded first, as
// iptables does), then the target, then to the protocol's implicit match.
func (p *ruleParser) extensionOption(opt string, inv bool) (bool, error) {
	r := p.rule
	for i := len(r.Matches) - 1; i >= 0; i-- {
		ok, err := r.Matches[i].parse(p, opt, inv)
		if err != nil || ok {
			return ok, err
		}
	}
	if p.target != nil {
		ok, err := p.target.parse(p, opt, inv)
		if err != nil || ok {
			return ok, err
		}
	}
	if !p.protoLoaded && !r.ProtoInvert {
		name := ""
		switch r.Proto {
		case ProtoTCP:
			name = "tcp"
		case ProtoUDP:
			name = "udp"
		case ProtoICMP:
			if p.fam == IPv4 {
				name = "icmp"
			}
		case ProtoICMPv6:
			if p.fam == IPv6 {
				name = "icmp6"
			}
		}
		if name != "" {
			p.protoLoaded = true
			m, err := newMatch(p.fam, name)
			if err != nil {
				return false, p.errf(opt, "%v", err)
			}
			r.Matches = append(r.Matches, m)
			return m.parse(p, opt, inv)
		}
	}
	return false, nil
}

// expand makes one rule per -s/-d combination.
func (p *ruleParser) expand() []*Rule {
	srcs, dsts := p.srcs, p.dsts
	if len(srcs) == 0 {
		srcs = []netip.Prefix{{}}
	}
	if len(dsts) == 0 {
		dsts = []netip.Prefix{{}}
	}
	out := make([]*Rule, 0, len(srcs)*len(dsts))
	for _, s := range srcs {
		for _, d := range dsts {
			r := *p.rule
			r.Src, r.Dst = s, d
			r.Counters = new(Counters)
			if p.counters != nil {
				r.Counters.Set(p.counters[0], p.counters[1])
			}
			r.compileIP()
			out = append(out, &r)
		}
	}
	if len(out) > 1 {
		// Stateful matches must not be shared between the copies.
		for i := 1; i < len(out); i++ {
			out[i].Matches = cloneMatches(out[i].Matches)
		}
	}
	return out
}

func checkIface(v string) error {
	if v == "" {
		return errors.New("empty interface name")
	}
	if len(v) > 15 {
		return fmt.Errorf("interface name %q must be shorter than IFNAMSIZ (16)", v)
	}
	for i := 0; i < len(v); i++ {
		if v[i] == '/' || v[i] <= ' ' || v[i] == 0x7f || v[i] == '"' || v[i] == '\\' {
			return fmt.Errorf("invalid interface name %q", v)
		}
	}
	return nil
}

// protocols are the names iptables knows without /etc/protocols.
var protocols = []struct {
	name string
	num  uint8
}{
	{"all", 0}, {"tcp", 6}, {"udp", 17}, {"udplite", 136}, {"icmp", 1},
	{"ipv6-icmp", 58}, {"icmpv6", 58}, {"esp", 50}, {"ah", 51}, {"sctp", 132},
	{"mh", 135}, {"dccp", 33}, {"gre", 47}, {"igmp", 2}, {"ipv6-mh", 135},
}

func parseProto(v string) (uint8, error) {
	if n, err := strconv.ParseUint(v, 10, 8); err == nil {
		return uint8(n), nil
	}
	lv := strings.ToLower(v)
	for _, p := range protocols {
		if p.name == lv {
			return p.num, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q specified", v)
}

// protoName is the name iptables-save prints for a protocol number ("" for
// numbers it prints numerically).
func protoName(n uint8) string {
	switch n {
	case 0:
		return "all"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 136:
		return "udplite"
	case 1:
		return "icmp"
	case 58:
		return "ipv6-icmp"
	case 50:
		return "esp"
	case 51:
		return "ah"
	case 132:
		return "sctp"
	case 135:
		return "mh"
	case 33:
		return "dccp"
	case 47:
		return "gre"
	case 2:
		return "igmp"
	}
	return ""
}

// parseAddrList parses -s/-d's comma-separated ADDR[/MASK] list.
func parseAddrList(f Family, v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(v, ",") {
		p, err := parsePrefix(f, s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// parsePrefix parses ADDR[/MASK] with MASK a prefix length or (IPv4) a
// dotted contiguous mask, and masks the address as the kernel stores it.
func parsePrefix(f Family, s string) (netip.Prefix, error) {
	addrS, maskS, hasMask := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addrS)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("host/network %q not found (names are not resolved)", addrS)
	}
	if f == IPv4 && !a.Is4() || f == IPv6 && (!a.Is6() || a.Is4In6() && strings.Contains(addrS, ".")) {
		return netip.Prefix{}, fmt.Errorf("address %q is not an %s address", addrS, f)
	}
	bits := a.BitLen()
	if hasMask {
		if n, err := strconv.Atoi(maskS); err == nil && strings.TrimLeft(maskS, "0123456789") == "" {
			if n < 0 || n > a.BitLen() {
				return netip.Prefix{}, fmt.Errorf("invalid mask %q specified", maskS)
			}
			bits = n
		} else {
			m, err := netip.ParseAddr(maskS)
			if err != nil || m.BitLen() != a.BitLen() {
				return netip.Prefix{}, fmt.Errorf("invalid mask %q specified", maskS)
			}
			n, ok := contiguousBits(m.AsSlice())
			if !ok {
				return netip.Prefix{}, fmt.Errorf("non-contiguous mask %q is not supported", maskS)
			}
			bits = n
		}
	}
	return netip.PrefixFrom(a, bits).Masked(), nil
}

func contiguousBits(b []byte) (int, bool) {
	n := 0
	zero := false
	for _, x := range b {
		for i := 7; i >= 0; i-- {
			if x&(1<<i) != 0 {
				if zero {
					return 0, false
				}
				n++
			} else {
				zero = true
			}
		}
	}
	return n, true
}
