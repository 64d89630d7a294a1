package iptables

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Errors of editing commands, with the text iptables prints for them.
var (
	ErrNoChain       = errors.New("no chain/target/match by that name")
	ErrChainExists   = errors.New("chain already exists")
	ErrChainNotEmpty = errors.New("chain is not empty (directory not empty)")
	ErrChainInUse    = errors.New("chain is referenced (too many links)")
	ErrNoRule        = errors.New("bad rule (does a matching rule exist in that chain?)")
	ErrIndex         = errors.New("index of insertion too big")
	ErrDeleteIndex   = errors.New("index of deletion too big")
	ErrReplaceIndex  = errors.New("index of replacement too big")
	ErrBuiltinChain  = errors.New("bad built-in chain name")
	ErrBuiltinDelete = errors.New("can't delete built-in chain")
	ErrBadChainName  = errors.New("invalid chain name")
)

// Op is an iptables command.
type Op uint8

// Commands, with their iptables option.
const (
	OpAppend      Op = iota // -A CHAIN RULE
	OpInsert                // -I CHAIN [NUM] RULE
	OpDelete                // -D CHAIN RULE | NUM
	OpReplace               // -R CHAIN NUM RULE
	OpFlush                 // -F [CHAIN]
	OpZero                  // -Z [CHAIN]
	OpNewChain              // -N CHAIN
	OpDeleteChain           // -X [CHAIN]
	OpPolicy                // -P CHAIN POLICY
	OpRename                // -E OLD NEW
	OpList                  // -L [CHAIN]
	OpListRules             // -S [CHAIN [NUM]]
	OpCheck                 // -C CHAIN RULE
)

// Command is one parsed iptables command line.
type Command struct {
	Op    Op
	Table string
	// Chain is the chain operated on ("" for all, where allowed).
	Chain string
	// Num is the 1-based rule number of -I (0: 1), -D NUM, -R and -S
	// CHAIN NUM.
	Num int
	// Rules are the rule specs of -A, -I, -D and -R (several when -s/-d
	// lists expand).
	Rules []*Rule
	// Policy is -P's policy; NewName is -E's new name.
	Policy  Policy
	NewName string
	// List options (-L, -S, and -Z together with -L).
	List ListOptions
	// ZeroToo is -Z given together with -L (list, then zero).
	ZeroToo bool
	line    int
}

// ParseCommand parses an iptables command line (without the program name),
// e.g. ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", ...].
func ParseCommand(f Family, argv []string) (*Command, error) {
	table := TableFilter
	var rest []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if a == "-t" || a == "--table" {
			if i+1 >= len(argv) {
				return nil, &ParseError{Option: a, Err: errors.New("option requires an argument")}
			}
			table = argv[i+1]
			i++
			continue
		}
		rest = append(rest, a)
	}
	if tableIndex(table) < 0 {
		return nil, &ParseError{Option: "-t", Err: fmt.Errorf("table %q does not exist", table)}
	}
	return parseCommand(f, table, rest, 0, false)
}

// parseCommand parses a command inside table; inRestore restricts it to
// what iptables-restore accepts (no -L).
func parseCommand(f Family, table string, args []string, line int, inRestore bool) (*Command, error) {
	perr := func(opt, format string, a ...any) error {
		return &ParseError{Line: line, Option: opt, Err: fmt.Errorf(format, a...)}
	}
	c := &Command{Table: table, line: line}
	// Pull out the command option and its positional arguments, and the
	// list flags; everything else is the rule spec.
	var spec []string
	found := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		op, isCmd := Op(0), true
		switch a {
		case "-A", "--append":
			op = OpAppend
		case "-I", "--insert":
			op = OpInsert
		case "-D", "--delete":
			op = OpDelete
		case "-R", "--replace":
			op = OpReplace
		case "-F", "--flush":
			op = OpFlush
		case "-Z", "--zero":
			op = OpZero
		case "-N", "--new-chain", "--new":
			op = OpNewChain
		case "-X", "--delete-chain":
			op = OpDeleteChain
		case "-P", "--policy":
			op = OpPolicy
		case "-E", "--rename-chain":
			op = OpRename
		case "-L", "--list":
			op = OpList
		case "-S", "--list-rules":
			op = OpListRules
		case "-C", "--check":
			op = OpCheck
		default:
			isCmd = false
		}
		if !isCmd {
			switch a {
			case "-v", "--verbose":
				c.List.Verbose = true
				continue
			case "-n", "--numeric":
				c.List.Numeric = true
				continue
			case "-x", "--exact":
				c.List.Exact = true
				continue
			case "--line-numbers":
				c.List.LineNumbers = true
				continue
			}
			spec = append(spec, a)
			continue
		}
		if found {
			if (op == OpZero && c.Op == OpList) || (op == OpList && c.Op == OpZero) {
				c.Op = OpList
				c.ZeroToo = true
				if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") && c.Chain == "" {
					c.Chain = args[i+1]
					i++
				}
				continue
			}
			return nil, perr(a, "cannot use %s with another command", a)
		}
		found = true
		c.Op = op
		if inRestore && (op == OpList || op == OpListRules) {
			return nil, perr(a, "%s is not allowed in iptables-restore input", a)
		}
		next := func() (string, bool) {
			if i+1 < len(args) && (args[i+1] == "" || args[i+1][0] != '-' && args[i+1] != "!") {
				i++
				return args[i], true
			}
			return "", false
		}
		switch op {
		case OpAppend, OpInsert, OpDelete, OpReplace, OpNewChain, OpPolicy, OpRename, OpCheck:
			ch, ok := next()
			if !ok {
				return nil, perr(a, "option requires a chain name")
			}
			c.Chain = ch
		default:
			if ch, ok := next(); ok {
				c.Chain = ch
			}
		}
		switch op {
		case OpInsert:
			if i+1 < len(args) {
				if n, err := parseRuleNum(args[i+1]); err == nil {
					c.Num = n
					i++
				}
			}
		case OpDelete, OpListRules:
			if (op == OpDelete || c.Chain != "") && i+1 < len(args) {
				if n, err := parseRuleNum(args[i+1]); err == nil {
					c.Num = n
					i++
				}
			}
		case OpReplace:
			v, ok := next()
			if !ok {
				return nil, perr(a, "option requires a rule number")
			}
			n, err := parseRuleNum(v)
			if err != nil {
				return nil, perr(a, "%v", err)
			}
			c.Num = n
		case OpPolicy:
			v, ok := next()
			if !ok {
				return nil, perr(a, "option requires a policy")
			}
			pol, err := ParsePolicy(v)
			if err != nil {
				return nil, perr(a, "%v", err)
			}
			c.Policy = pol
		case OpRename:
			v, ok := next()
			if !ok {
				return nil, perr(a, "option requires a new chain name")
			}
			c.NewName = v
		}
	}
	if !found {
		return nil, perr("", "no command specified")
	}
	needsSpec := c.Op == OpAppend || c.Op == OpInsert || c.Op == OpReplace || c.Op == OpCheck || (c.Op == OpDelete && c.Num == 0)
	if needsSpec {
		if c.Op == OpInsert && c.Num == 0 {
			c.Num = 1
		}
		rules, err := parseRuleSpec(f, table, spec, line)
		if err != nil {
			return nil, err
		}
		if c.Op == OpReplace && len(rules) != 1 {
			return nil, perr("-R", "-R takes exactly one source and one destination")
		}
		if err := checkChainIfaces(c.Chain, rules); err != nil {
			return nil, &ParseError{Line: line, Err: err}
		}
		c.Rules = rules
	} else if len(spec) > 0 {
		return nil, perr(spec[0], "unexpected argument %q", spec[0])
	}
	if c.Op == OpNewChain || c.Op == OpRename {
		name := c.Chain
		if c.Op == OpRename {
			name = c.NewName
		}
		if err := checkChainName(name); err != nil {
			return nil, &ParseError{Line: line, Err: err}
		}
	}
	return c, nil
}

func parseRuleNum(s string) (int, error) {
	n := 0
	if s == "" || len(s) > 9 {
		return 0, fmt.Errorf("invalid rule number %q", s)
	}
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			return 0, fmt.Errorf("invalid rule number %q", s)
		}
		n = n*10 + int(ch-'0')
	}
	if n < 1 {
		return 0, fmt.Errorf("invalid rule number %q", s)
	}
	return n, nil
}

// checkChainIfaces applies iptables' checks of -i/-o against the built-in
// chain a rule is added to.
func checkChainIfaces(chain string, rules []*Rule) error {
	for _, r := range rules {
		switch chain {
		case "OUTPUT", "POSTROUTING":
			if r.InIface != "" {
				return fmt.Errorf("can't use -i with %s", chain)
			}
		case "PREROUTING", "INPUT":
			if r.OutIface != "" {
				return fmt.Errorf("can't use -o with %s", chain)
			}
		}
	}
	return nil
}

func checkChainName(name string) error {
	if name == "" || len(name) > 28 {
		return fmt.Errorf("%w %q (1 to 28 characters)", ErrBadChainName, name)
	}
	if name[0] == '-' || name[0] == '!' {
		return fmt.Errorf("%w %q (cannot start with - or !)", ErrBadChainName, name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] == 0x7f || name[i] == '"' || name[i] == '\\' {
			return fmt.Errorf("%w %q (no blanks, quotes or backslashes)", ErrBadChainName, name)
		}
	}
	if _, ok := targetTypes[name]; ok || name == "ACCEPT" || name == "DROP" || name == "RETURN" || name == "QUEUE" {
		return fmt.Errorf("%w %q (a target has that name)", ErrBadChainName, name)
	}
	return nil
}

// Exec applies an editing command and returns the new rule set; rs is not
// modified. OpList and OpListRules are not edits: use List and ListRules.
// OpCheck returns rs itself if the rule exists and ErrNoRule if not.
func (rs *Ruleset) Exec(c *Command) (*Ruleset, error) {
	ti := tableIndex(c.Table)
	if ti < 0 {
		return nil, fmt.Errorf("table %q does not exist", c.Table)
	}
	if c.Op == OpList || c.Op == OpListRules {
		return nil, errors.New("list commands do not edit; use List or ListRules")
	}
	if c.Op == OpZero {
		if err := rs.Zero(c.Table, c.Chain); err != nil {
			return nil, err
		}
		return rs, nil
	}
	if c.Op == OpCheck {
		if err := rs.check(c); err != nil {
			return nil, err
		}
		return rs, nil
	}
	if rs.tables[ti] == nil && c.Chain == "" && (c.Op == OpFlush || c.Op == OpDeleteChain) {
		// Flushing or deleting all chains of a table that is not loaded
		// does not load it (nf_tables).
		return rs, nil
	}
	out := rs.clone()
	te := out.edit(ti)
	if err := te.exec(c); err != nil {
		return nil, err
	}
	if err := te.commit(); err != nil {
		return nil, err
	}
	if err := out.build(); err != nil {
		return nil, err
	}
	return out, nil
}

// Append appends rules to chain (iptables -A).
func (rs *Ruleset) Append(table, chain string, rules ...*Rule) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpAppend, Table: table, Chain: chain, Rules: rules})
}

// Insert inserts rules before rule number num (1-based; iptables -I).
func (rs *Ruleset) Insert(table, chain string, num int, rules ...*Rule) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpInsert, Table: table, Chain: chain, Num: num, Rules: rules})
}

// Delete deletes the first rule equal to each of rules (iptables -D CHAIN
// RULE).
func (rs *Ruleset) Delete(table, chain string, rules ...*Rule) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpDelete, Table: table, Chain: chain, Rules: rules})
}

// DeleteNum deletes rule number num (1-based; iptables -D CHAIN NUM).
func (rs *Ruleset) DeleteNum(table, chain string, num int) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpDelete, Table: table, Chain: chain, Num: num})
}

// Replace replaces rule number num (iptables -R).
func (rs *Ruleset) Replace(table, chain string, num int, rule *Rule) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpReplace, Table: table, Chain: chain, Num: num, Rules: []*Rule{rule}})
}

// Flush removes the rules of chain, or of every chain if chain is ""
// (iptables -F).
func (rs *Ruleset) Flush(table, chain string) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpFlush, Table: table, Chain: chain})
}

// NewChain creates a user-defined chain (iptables -N).
func (rs *Ruleset) NewChain(table, chain string) (*Ruleset, error) {
	if err := checkChainName(chain); err != nil {
		return nil, err
	}
	return rs.Exec(&Command{Op: OpNewChain, Table: table, Chain: chain})
}

// DeleteChain deletes an empty, unreferenced user-defined chain, or all
// such chains if chain is "" (iptables -X).
func (rs *Ruleset) DeleteChain(table, chain string) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpDeleteChain, Table: table, Chain: chain})
}

// RenameChain renames a user-defined chain (iptables -E).
func (rs *Ruleset) RenameChain(table, chain, newName string) (*Ruleset, error) {
	if err := checkChainName(newName); err != nil {
		return nil, err
	}
	return rs.Exec(&Command{Op: OpRename, Table: table, Chain: chain, NewName: newName})
}

// SetPolicy sets a built-in chain's policy (iptables -P).
func (rs *Ruleset) SetPolicy(table, chain string, p Policy) (*Ruleset, error) {
	return rs.Exec(&Command{Op: OpPolicy, Table: table, Chain: chain, Policy: p})
}

// Zero zeroes the counters of chain's rules and policy, or of every chain
// if chain is "" (iptables -Z). Counters are shared, so this zeroes them in
// place, in every rule set that shares the rules.
func (rs *Ruleset) Zero(table, chain string) error {
	t := rs.Table(table)
	if t == nil {
		if chain == "" && tableIndex(table) >= 0 {
			return nil
		}
		return ErrNoChain
	}
	found := false
	for _, c := range t.Chains {
		if chain != "" && c.Name != chain {
			continue
		}
		found = true
		if c.Counters != nil {
			c.Counters.Set(0, 0)
		}
		for _, r := range c.Rules {
			r.Counters.Set(0, 0)
		}
	}
	if !found {
		return ErrNoChain
	}
	return nil
}

// clone returns a shallow copy of rs sharing all tables.
func (rs *Ruleset) clone() *Ruleset {
	out := &Ruleset{family: rs.family, tables: rs.tables, shared: rs.shared}
	return out
}

// tableEdit is a table being edited.
type tableEdit struct {
	rs     *Ruleset
	name   string
	index  int
	chains []*Chain // copies, free to modify
	// counters applies counters of chain declarations (restore -c).
	counters bool
}

func (rs *Ruleset) edit(ti int) *tableEdit {
	te := &tableEdit{rs: rs, name: tableInfos[ti].name, index: ti}
	if t := rs.tables[ti]; t != nil {
		for _, c := range t.Chains {
			cc := *c
			cc.Rules = slices.Clone(c.Rules)
			te.chains = append(te.chains, &cc)
		}
		return te
	}
	for h := Hook(0); h < NumHooks; h++ {
		if tableInfos[ti].hooks&(1<<h) != 0 {
			te.chains = append(te.chains, &Chain{Name: h.String(), Policy: PolicyAccept, Counters: new(Counters), builtin: true, hook: h})
		}
	}
	return te
}

func (te *tableEdit) chain(name string) *Chain {
	for _, c := range te.chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// flushTable empties every chain, deletes the user chains and resets
// built-in policies to ACCEPT, as iptables-restore (nf_tables) does for
// each table it loads; counters start at zero. (iptables-legacy-restore
// keeps the policies of chains the text does not declare.)
func (te *tableEdit) flushTable() {
	var keep []*Chain
	for _, c := range te.chains {
		if c.builtin {
			c.Rules = nil
			c.Policy = PolicyAccept
			c.Counters = new(Counters)
			keep = append(keep, c)
		}
	}
	te.chains = keep
}

// declare handles a ":CHAIN POLICY [p:b]" line.
func (te *tableEdit) declare(s string) error {
	f := strings.Fields(s)
	if len(f) < 2 || len(f) > 3 {
		return fmt.Errorf("bad chain declaration %q (want :CHAIN POLICY [packets:bytes])", ":"+s)
	}
	name, pol := f[0], f[1]
	var counters *[2]uint64
	if len(f) == 3 {
		c, err := parseCounterPair(f[2])
		if err != nil {
			return err
		}
		counters = &c
	}
	c := te.chain(name)
	if c != nil && c.builtin {
		p, err := ParsePolicy(pol)
		if err != nil {
			return fmt.Errorf("chain %s: %w", name, err)
		}
		c.Policy = p
		c.Counters = new(Counters)
		if counters != nil && te.counters {
			c.Counters.Set(counters[0], counters[1])
		}
		return nil
	}
	if _, isHook := HookByName(name); isHook {
		return fmt.Errorf("chain %s is not a built-in chain of table %s", name, te.name)
	}
	if pol != "-" {
		return fmt.Errorf("chain %s: %w (a user-defined chain has no policy, want -)", name, ErrBuiltinChain)
	}
	if c != nil {
		// iptables-restore --noflush: declaring an existing chain flushes it.
		c.Rules = nil
		return nil
	}
	if err := checkChainName(name); err != nil {
		return err
	}
	te.chains = append(te.chains, &Chain{Name: name})
	return nil
}

func (te *tableEdit) userChain(name string) (*Chain, error) {
	c := te.chain(name)
	if c == nil {
		return nil, fmt.Errorf("chain %q: %w", name, ErrNoChain)
	}
	return c, nil
}

// exec applies one command to the table being edited.
func (te *tableEdit) exec(cmd *Command) error {
	switch cmd.Op {
	case OpAppend, OpInsert, OpDelete, OpReplace, OpPolicy, OpRename:
		if cmd.Chain == "" {
			return fmt.Errorf("%w: no chain given", ErrNoChain)
		}
	}
	switch cmd.Op {
	case OpAppend:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		c.Rules = append(c.Rules, cmd.Rules...)
	case OpInsert:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		n := max(cmd.Num, 1)
		if n > len(c.Rules)+1 {
			return fmt.Errorf("chain %s rule %d: %w", cmd.Chain, n, ErrIndex)
		}
		c.Rules = slices.Insert(c.Rules, n-1, cmd.Rules...)
	case OpDelete:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		if len(cmd.Rules) == 0 {
			if cmd.Num < 1 || cmd.Num > len(c.Rules) {
				return fmt.Errorf("chain %s rule %d: %w", cmd.Chain, cmd.Num, ErrDeleteIndex)
			}
			c.Rules = slices.Delete(c.Rules, cmd.Num-1, cmd.Num)
			return nil
		}
		for _, r := range cmd.Rules {
			want := string(r.appendSpec(nil))
			i := slices.IndexFunc(c.Rules, func(x *Rule) bool { return string(x.appendSpec(nil)) == want })
			if i < 0 {
				return fmt.Errorf("chain %s: %w", cmd.Chain, ErrNoRule)
			}
			c.Rules = slices.Delete(c.Rules, i, i+1)
		}
	case OpReplace:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		if cmd.Num < 1 || cmd.Num > len(c.Rules) {
			return fmt.Errorf("chain %s rule %d: %w", cmd.Chain, cmd.Num, ErrReplaceIndex)
		}
		c.Rules[cmd.Num-1] = cmd.Rules[0]
	case OpFlush:
		if cmd.Chain == "" {
			for _, c := range te.chains {
				c.Rules = nil
			}
			return nil
		}
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		c.Rules = nil
	case OpZero:
		for _, c := range te.chains {
			if cmd.Chain != "" && c.Name != cmd.Chain {
				continue
			}
			if c.builtin {
				c.Counters = new(Counters)
			}
			for i, r := range c.Rules {
				nr := *r
				nr.Counters = new(Counters)
				c.Rules[i] = &nr
			}
		}
	case OpNewChain:
		if te.chain(cmd.Chain) != nil {
			return fmt.Errorf("chain %s: %w", cmd.Chain, ErrChainExists)
		}
		if err := checkChainName(cmd.Chain); err != nil {
			return err
		}
		te.chains = append(te.chains, &Chain{Name: cmd.Chain})
	case OpDeleteChain:
		refs := te.references()
		if cmd.Chain == "" {
			var keep []*Chain
			for _, c := range te.chains {
				if c.builtin {
					keep = append(keep, c)
				} else if len(c.Rules) > 0 {
					return fmt.Errorf("chain %s: %w", c.Name, ErrChainNotEmpty)
				} else if refs[c.Name] > 0 {
					return fmt.Errorf("chain %s: %w", c.Name, ErrChainInUse)
				}
			}
			te.chains = keep
			return nil
		}
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		if c.builtin {
			return fmt.Errorf("chain %s: %w", c.Name, ErrBuiltinDelete)
		}
		if refs[c.Name] > 0 {
			return fmt.Errorf("chain %s: %w", c.Name, ErrChainInUse)
		}
		if len(c.Rules) > 0 {
			return fmt.Errorf("chain %s: %w", c.Name, ErrChainNotEmpty)
		}
		te.chains = slices.DeleteFunc(te.chains, func(x *Chain) bool { return x == c })
	case OpPolicy:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		if !c.builtin {
			return fmt.Errorf("chain %s: %w", c.Name, ErrBuiltinChain)
		}
		c.Policy = cmd.Policy
	case OpRename:
		c, err := te.userChain(cmd.Chain)
		if err != nil {
			return err
		}
		if c.builtin {
			return fmt.Errorf("chain %s: %w", c.Name, ErrBuiltinChain)
		}
		if te.chain(cmd.NewName) != nil {
			return fmt.Errorf("chain %s: %w", cmd.NewName, ErrChainExists)
		}
		old := c.Name
		c.Name = cmd.NewName
		// Jumps follow the chain.
		for _, x := range te.chains {
			for i, r := range x.Rules {
				if j, ok := r.Target.(*JumpTarget); ok && j.Chain == old {
					nr := *r
					nr.Target = &JumpTarget{Chain: cmd.NewName, Goto: j.Goto}
					x.Rules[i] = &nr
				}
			}
		}
	default:
		return fmt.Errorf("command %d cannot edit", cmd.Op)
	}
	return nil
}

// references counts jumps to each chain.
func (te *tableEdit) references() map[string]int {
	refs := map[string]int{}
	for _, c := range te.chains {
		for _, r := range c.Rules {
			if j, ok := r.Target.(*JumpTarget); ok {
				refs[j.Chain]++
			}
		}
	}
	return refs
}

// commit validates the edited table (jump targets exist, no loops, targets
// used only from hooks they support) and stores it in the rule set.
func (te *tableEdit) commit() error {
	sortChains(te.chains)
	t := &Table{Name: te.name, Chains: te.chains, index: te.index}
	if err := t.validate(); err != nil {
		return fmt.Errorf("table %s: %w", te.name, err)
	}
	// Hashlimit matches with the same name share one table, as in the
	// kernel; a rule already bound (shared with an older rule set) keeps
	// its table.
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			for _, m := range r.Matches {
				if hl, ok := m.(*HashlimitMatch); ok && hl.tbl.Load() == nil {
					hl.tbl.CompareAndSwap(nil, te.rs.shared.hashTable(hl.HashName))
				}
			}
		}
	}
	te.rs.tables[te.index] = t
	return nil
}

// check is iptables -C: every rule of c must be in its chain.
func (rs *Ruleset) check(c *Command) error {
	t := rs.Table(c.Table)
	if t == nil {
		return fmt.Errorf("chain %s: %w", c.Chain, ErrNoChain)
	}
	ch := t.Chain(c.Chain)
	if ch == nil {
		return fmt.Errorf("chain %s: %w", c.Chain, ErrNoChain)
	}
	for _, r := range c.Rules {
		want := string(r.appendSpec(nil))
		if !slices.ContainsFunc(ch.Rules, func(x *Rule) bool { return string(x.appendSpec(nil)) == want }) {
			return fmt.Errorf("chain %s: %w", c.Chain, ErrNoRule)
		}
	}
	return nil
}
