package iptables

import (
	"fmt"
	"io"
	"strconv"
)

// ListOptions are iptables -L's flags.
type ListOptions struct {
	Verbose     bool // -v: counters, interfaces, policy counters
	Numeric     bool // -n: numbers instead of names
	Exact       bool // -x: exact counters instead of K/M/G
	LineNumbers bool // --line-numbers
}

// List writes table's chains (or only chain, if not "") as iptables -L
// prints them. Without Numeric, addresses are still printed numerically
// (no DNS lookups) except "anywhere", and only well-known port numbers get
// service names. A table that is not loaded lists as freshly loaded.
func (rs *Ruleset) List(w io.Writer, table, chain string, opts ListOptions) error {
	t := rs.Table(table)
	if t == nil {
		ti := tableIndex(table)
		if ti < 0 {
			return fmt.Errorf("table %q does not exist", table)
		}
		te := rs.clone().edit(ti)
		t = &Table{Name: table, Chains: te.chains}
	}
	refs := map[string]int{}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if j, ok := r.Target.(*JumpTarget); ok {
				refs[j.Chain]++
			}
		}
	}
	var b []byte
	found := false
	for _, c := range t.Chains {
		if chain != "" && c.Name != chain {
			continue
		}
		if found {
			b = append(b, '\n')
		}
		found = true
		b = rs.appendListChain(b, c, refs[c.Name], opts)
	}
	if !found {
		return fmt.Errorf("chain %q: %w", chain, ErrNoChain)
	}
	_, err := w.Write(b)
	return err
}

// appendNum is xtables_print_num.
func appendNum(b []byte, n uint64, opts ListOptions, table bool) []byte {
	pad := func(s string, width int) []byte {
		if table {
			for i := len(s); i < width; i++ {
				b = append(b, ' ')
			}
		}
		b = append(b, s...)
		return append(b, ' ')
	}
	if opts.Exact {
		return pad(strconv.FormatUint(n, 10), 8)
	}
	if n <= 99999 {
		return pad(strconv.FormatUint(n, 10), 5)
	}
	for _, unit := range []string{"K", "M", "G"} {
		n = (n + 500) / 1000
		if n <= 9999 {
			return pad(strconv.FormatUint(n, 10)+unit, 5)
		}
	}
	n = (n + 500) / 1000
	return pad(strconv.FormatUint(n, 10)+"T", 5)
}

func padRight(b []byte, s string, width int) []byte {
	b = append(b, s...)
	for i := len(s); i < width; i++ {
		b = append(b, ' ')
	}
	return b
}

func padLeft(b []byte, s string, width int) []byte {
	for i := len(s); i < width; i++ {
		b = append(b, ' ')
	}
	return append(b, s...)
}

func (rs *Ruleset) appendListChain(b []byte, c *Chain, refs int, opts ListOptions) []byte {
	b = append(b, "Chain "...)
	b = append(b, c.Name...)
	if c.builtin {
		b = append(b, " (policy "...)
		b = append(b, c.Policy.String()...)
		if opts.Verbose {
			pk, by := c.Counters.Load()
			b = append(b, ' ')
			b = appendNum(b, pk, opts, false)
			b = append(b, "packets, "...)
			b = appendNum(b, by, opts, false)
			b = append(b, "bytes"...)
		}
		b = append(b, ")\n"...)
	} else {
		b = fmt.Appendf(b, " (%d references)\n", refs)
	}
	// Column header.
	if opts.LineNumbers {
		b = padRight(b, "num", 4)
		b = append(b, ' ')
	}
	if opts.Verbose {
		w := 5
		bw := 5
		if opts.Exact {
			w, bw = 8, 10
		}
		b = padLeft(b, "pkts", w)
		b = append(b, ' ')
		b = padLeft(b, "bytes", bw)
		b = append(b, ' ')
	}
	b = padRight(b, "target", 9)
	b = append(b, "  prot opt"...)
	if opts.Verbose {
		b = append(b, ' ')
		b = padRight(b, "in", 6)
		b = append(b, ' ')
		b = padRight(b, "out", 6)
		b = append(b, ' ')
	}
	b = append(b, ' ')
	b = padRight(b, "source", 19)
	b = append(b, "  "...)
	b = padRight(b, "destination", 19)
	b = append(b, " \n"...)
	for i, r := range c.Rules {
		b = rs.appendListRule(b, i+1, r, opts)
	}
	return b
}

func (rs *Ruleset) appendListRule(b []byte, num int, r *Rule, opts ListOptions) []byte {
	if opts.LineNumbers {
		b = padRight(b, strconv.Itoa(num), 4)
		b = append(b, ' ')
	}
	if opts.Verbose {
		pk, by := r.Counters.Load()
		b = appendNum(b, pk, opts, true)
		b = appendNum(b, by, opts, true)
	}
	tname := ""
	if r.Target != nil {
		tname = r.Target.Name()
	}
	b = padRight(b, tname, 9)
	b = append(b, ' ')
	if r.ProtoInvert {
		b = append(b, '!')
	} else {
		b = append(b, ' ')
	}
	pname := ""
	if !opts.Numeric {
		pname = protoName(r.Proto)
	}
	if pname == "" {
		pname = strconv.Itoa(int(r.Proto))
	}
	b = padRight(b, pname, 5)
	{
		if r.Fragment && r.FragmentInvert {
			b = append(b, '!')
		} else {
			b = append(b, '-')
		}
		if r.Fragment {
			b = append(b, 'f')
		} else {
			b = append(b, '-')
		}
		b = append(b, ' ')
	}
	if opts.Verbose {
		b = append(b, ' ')
		b = padRight(b, listIface(r.InIface, r.InInvert, opts.Numeric), 6)
		b = append(b, ' ')
		b = padRight(b, listIface(r.OutIface, r.OutInvert, opts.Numeric), 6)
		b = append(b, ' ')
	}
	b = rs.appendListAddr(b, r.Src, r.SrcInvert, opts.Numeric)
	b = rs.appendListAddr(b, r.Dst, r.DstInvert, opts.Numeric)
	if j, ok := r.Target.(*JumpTarget); ok && j.Goto {
		b = append(b, "[goto] "...)
	}
	for _, m := range r.Matches {
		b = m.appendList(b, opts.Numeric)
	}
	if r.Target != nil {
		b = r.Target.appendList(b, opts.Numeric)
	}
	return append(b, '\n')
}

func listIface(name string, inv, numeric bool) string {
	s := ""
	if inv {
		s = "!"
	}
	switch {
	case name != "":
		return s + name
	case numeric:
		return s + "*"
	}
	return s + "any"
}

func (rs *Ruleset) appendListAddr(b []byte, p interface {
	IsValid() bool
	Bits() int
	String() string
}, inv, numeric bool) []byte {
	if inv {
		b = append(b, '!')
	} else {
		b = append(b, ' ')
	}
	var s string
	switch {
	case !p.IsValid() || p.Bits() == 0:
		switch {
		case !numeric:
			s = "anywhere"
		case rs.family == IPv6:
			s = "::/0"
		default:
			s = "0.0.0.0/0"
		}
	default:
		full := 32
		if rs.family == IPv6 {
			full = 128
		}
		s = p.String()
		if p.Bits() == full {
			s = s[:len(s)-len("/"+strconv.Itoa(full))]
		}
	}
	b = padRight(b, s, 19)
	return append(b, ' ')
}
