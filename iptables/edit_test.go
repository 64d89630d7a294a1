package iptables

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func rule(t *testing.T, table string, spec string) *Rule {
	t.Helper()
	args, err := tokenize(spec)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := ParseRuleArgs(IPv4, table, args)
	if err != nil || len(rs) != 1 {
		t.Fatalf("ParseRuleArgs(%q) = %v, %v", spec, rs, err)
	}
	return rs[0]
}

func TestEditKeepsCountersAndState(t *testing.T) {
	old := mustParse(t, `*filter
:INPUT ACCEPT [10:1000]
[5:500] -A INPUT -p tcp --dport 22 -j ACCEPT
[7:700] -A INPUT -m limit --limit 1/hour --limit-burst 1 -j ACCEPT
COMMIT
`, IPv4)
	next, err := old.Append(TableFilter, "INPUT", rule(t, TableFilter, "-p udp -j DROP"))
	if err != nil {
		t.Fatal(err)
	}
	got := saveString(t, next, SaveOptions{Counters: true})
	want := `*filter
:INPUT ACCEPT [10:1000]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[5:500] -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
[7:700] -A INPUT -m limit --limit 1/hour --limit-burst 1 -j ACCEPT
[0:0] -A INPUT -p udp -j DROP
COMMIT
`
	if got != want {
		t.Fatalf("after Append (-want +got):\n%s", lineDiff(want, got))
	}
	// A packet counted by the old rule set (still in use by a reader)
	// shows in the new one; the limit bucket spent by the old one stays
	// spent in the new one.
	p := tcpPacket("192.0.2.1", "10.0.0.1", 1, 23, TCPSyn)
	if v := old.Eval(TableFilter, p); v.Kind != Accept || v.Rule == nil {
		t.Fatalf("old Eval = %+v, want ACCEPT by the limit rule", v)
	}
	if pk, _ := next.Table(TableFilter).Chain("INPUT").Rules[1].Counters.Load(); pk != 8 {
		t.Errorf("limit rule packets in new rule set = %d, want 8", pk)
	}
	if v := next.Eval(TableFilter, p); v.Rule != nil {
		t.Errorf("new rule set: limit rule matched again (%v); its bucket should be shared and empty", v.Rule)
	}
	// The old rule set is unchanged.
	if n := len(old.Table(TableFilter).Chain("INPUT").Rules); n != 2 {
		t.Errorf("old rule set has %d rules after Append, want 2", n)
	}
	// Zero clears counters, policy included.
	if err := next.Zero(TableFilter, ""); err != nil {
		t.Fatal(err)
	}
	if pk, _ := next.Table(TableFilter).Chain("INPUT").Counters.Load(); pk != 0 {
		t.Errorf("policy packets after Zero = %d", pk)
	}
}

func TestEditErrors(t *testing.T) {
	rs := New(IPv4)
	rs, err := rs.NewChain(TableFilter, "user")
	if err != nil {
		t.Fatal(err)
	}
	rs, err = rs.Append(TableFilter, "INPUT", rule(t, TableFilter, "-j user"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		do   func() (*Ruleset, error)
		want error
	}{
		{"policy on user chain", func() (*Ruleset, error) { return rs.SetPolicy(TableFilter, "user", PolicyDrop) }, ErrBuiltinChain},
		{"delete referenced chain", func() (*Ruleset, error) { return rs.DeleteChain(TableFilter, "user") }, ErrChainInUse},
		{"delete built-in chain", func() (*Ruleset, error) { return rs.DeleteChain(TableFilter, "INPUT") }, ErrBuiltinDelete},
		{"new chain exists", func() (*Ruleset, error) { return rs.NewChain(TableFilter, "user") }, ErrChainExists},
		{"append to missing chain", func() (*Ruleset, error) { return rs.Append(TableFilter, "nope", rule(t, TableFilter, "-j DROP")) }, ErrNoChain},
		{"delete missing rule", func() (*Ruleset, error) { return rs.Delete(TableFilter, "INPUT", rule(t, TableFilter, "-j DROP")) }, ErrNoRule},
		{"delete number too big", func() (*Ruleset, error) { return rs.DeleteNum(TableFilter, "INPUT", 2) }, ErrDeleteIndex},
		{"insert too far", func() (*Ruleset, error) { return rs.Insert(TableFilter, "INPUT", 3, rule(t, TableFilter, "-j DROP")) }, ErrIndex},
		{"bad chain name", func() (*Ruleset, error) { return rs.NewChain(TableFilter, "DROP") }, ErrBadChainName},
		{"jump to missing chain", func() (*Ruleset, error) { return rs.Append(TableFilter, "INPUT", rule(t, TableFilter, "-j ghost")) }, ErrNoChain},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.do()
			if !errors.Is(err, tc.want) || got != nil {
				t.Fatalf("error = %v, want %v", err, tc.want)
			}
		})
	}
	// Non-empty chain.
	rs2, err := rs.Append(TableFilter, "user", rule(t, TableFilter, "-j RETURN"))
	if err != nil {
		t.Fatal(err)
	}
	rs2, err = rs2.DeleteNum(TableFilter, "INPUT", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rs2.DeleteChain(TableFilter, "user"); !errors.Is(err, ErrChainNotEmpty) {
		t.Fatalf("deleting a non-empty chain: %v, want %v", err, ErrChainNotEmpty)
	}
}

func TestParseCommand(t *testing.T) {
	cmd, err := ParseCommand(IPv4, strings.Fields("-t nat -L PREROUTING -v -n -x --line-numbers"))
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Op != OpList || cmd.Table != TableNAT || cmd.Chain != "PREROUTING" || cmd.List != (ListOptions{true, true, true, true}) {
		t.Fatalf("ParseCommand = %+v", cmd)
	}
	cmd, err = ParseCommand(IPv4, strings.Fields("-I INPUT 3 -p tcp --dport 22 -j ACCEPT"))
	if err != nil || cmd.Op != OpInsert || cmd.Num != 3 || len(cmd.Rules) != 1 {
		t.Fatalf("ParseCommand -I = %+v, %v", cmd, err)
	}
	cmd, err = ParseCommand(IPv4, strings.Fields("-L -Z"))
	if err != nil || cmd.Op != OpList || !cmd.ZeroToo {
		t.Fatalf("ParseCommand -L -Z = %+v, %v", cmd, err)
	}
	for _, bad := range []string{"", "-t bogus -L", "-A", "-A INPUT -L", "-P INPUT MAYBE", "-R INPUT x -j DROP", "-N -x", "-A INPUT -p tcp --dport x"} {
		if _, err := ParseCommand(IPv4, strings.Fields(bad)); err == nil {
			t.Errorf("ParseCommand(%q) succeeded, want an error", bad)
		}
	}
}

func TestListChainAndSaveTable(t *testing.T) {
	rs := mustParse(t, "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n*filter\n:INPUT DROP [0:0]\nCOMMIT\n", IPv4)
	var b bytes.Buffer
	if err := rs.List(&b, TableNAT, "PREROUTING", ListOptions{Numeric: true}); err != nil {
		t.Fatal(err)
	}
	want := "Chain PREROUTING (policy ACCEPT)\n" +
		"target     prot opt source               destination         \n" +
		"REDIRECT   6    --  0.0.0.0/0            0.0.0.0/0            tcp dpt:80 redir ports 8080\n"
	if b.String() != want {
		t.Errorf("List = %q, want %q", b.String(), want)
	}
	if err := rs.List(&b, TableNAT, "nope", ListOptions{}); !errors.Is(err, ErrNoChain) {
		t.Errorf("List missing chain: %v, want %v", err, ErrNoChain)
	}
	// A table not loaded lists its built-in chains.
	b.Reset()
	if err := rs.List(&b, TableRaw, "", ListOptions{}); err != nil || !strings.HasPrefix(b.String(), "Chain PREROUTING (policy ACCEPT)\n") {
		t.Errorf("List raw = %q, %v", b.String(), err)
	}
	got := saveString(t, rs, SaveOptions{Table: TableFilter})
	if got != "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n" {
		t.Errorf("Save -t filter = %q", got)
	}
	got = saveString(t, rs, SaveOptions{Header: true})
	if !strings.HasPrefix(got, "# Generated by iptables-save v1.8.9 on ") || !strings.Contains(got, "# Completed on ") {
		t.Errorf("Save with header = %q", got)
	}
}

func TestRestoreNoFlushAndOtherTables(t *testing.T) {
	base := mustParse(t, "*filter\n:INPUT DROP [0:0]\n:keep - [0:0]\n-A INPUT -j keep\n-A keep -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n", IPv4)
	// A plain restore of filter replaces filter only.
	rs, err := Restore(base, strings.NewReader("*filter\n-A INPUT -p udp -j DROP\nCOMMIT\n"), RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := saveString(t, rs, SaveOptions{})
	// Undeclared built-in policies reset to ACCEPT (nf_tables backend).
	want := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p udp -j DROP\nCOMMIT\n" +
		"*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
	if got != want {
		t.Errorf("restore (-want +got):\n%s", lineDiff(want, got))
	}
	// --noflush appends; declaring an existing user chain flushes it.
	rs, err = Restore(base, strings.NewReader("*filter\n:keep - [0:0]\n-A keep -j RETURN\n-A INPUT -p udp -j DROP\nCOMMIT\n"), RestoreOptions{NoFlush: true})
	if err != nil {
		t.Fatal(err)
	}
	got = saveString(t, rs, SaveOptions{Table: TableFilter})
	want = "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:keep - [0:0]\n-A INPUT -j keep\n-A INPUT -p udp -j DROP\n-A keep -j RETURN\nCOMMIT\n"
	if got != want {
		t.Errorf("restore --noflush (-want +got):\n%s", lineDiff(want, got))
	}
	// An error anywhere leaves nothing applied.
	if _, err := Restore(base, strings.NewReader("*filter\n-A INPUT -j DROP\nCOMMIT\n*nat\n-A BOGUS -j ACCEPT\nCOMMIT\n"), RestoreOptions{}); err == nil {
		t.Fatal("Restore with an error in the second table succeeded")
	}
	if n := len(base.Table(TableFilter).Chain("INPUT").Rules); n != 1 {
		t.Errorf("base changed by a failed restore: %d INPUT rules", n)
	}
}

func TestListRulesAndCheck(t *testing.T) {
	rs := mustParse(t, "*filter\n:INPUT DROP [3:4]\n:web - [0:0]\n[1:2] -A INPUT -p tcp --dport 80 -j web\n-A web -j RETURN\nCOMMIT\n", IPv4)
	// Outputs of the real iptables 1.8.9 for the same rules.
	cases := []struct {
		argv string
		want string
	}{
		{"-S", "-P INPUT DROP\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n-N web\n-A INPUT -p tcp -m tcp --dport 80 -j web\n-A web -j RETURN\n"},
		{"-S -v", "-P INPUT DROP -c 3 4\n-P FORWARD ACCEPT -c 0 0\n-P OUTPUT ACCEPT -c 0 0\n-N web\n-A INPUT -p tcp -m tcp --dport 80 -c 1 2 -j web\n-A web -c 0 0 -j RETURN\n"},
		{"-S web", "-N web\n-A web -j RETURN\n"},
		{"-S INPUT -v", "-P INPUT DROP -c 3 4\n-A INPUT -p tcp -m tcp --dport 80 -c 1 2 -j web\n"},
		{"-S INPUT 1", "-A INPUT -p tcp -m tcp --dport 80 -j web\n"},
	}
	for _, tc := range cases {
		t.Run(tc.argv, func(t *testing.T) {
			cmd, err := ParseCommand(IPv4, strings.Fields(tc.argv))
			if err != nil || cmd.Op != OpListRules {
				t.Fatalf("ParseCommand = %+v, %v", cmd, err)
			}
			var b bytes.Buffer
			if err := rs.ListRules(&b, cmd.Table, cmd.Chain, cmd.Num, cmd.List.Verbose); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("iptables %s:\n%s\nwant\n%s", tc.argv, b.String(), tc.want)
			}
		})
	}
	cmd, err := ParseCommand(IPv4, strings.Fields("-C INPUT -p tcp --dport 80 -j web"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := rs.Exec(cmd); err != nil || got != rs {
		t.Errorf("-C of an existing rule = %v, %v", got, err)
	}
	cmd, _ = ParseCommand(IPv4, strings.Fields("-C INPUT -j DROP"))
	if _, err := rs.Exec(cmd); !errors.Is(err, ErrNoRule) {
		t.Errorf("-C of a missing rule: %v, want %v", err, ErrNoRule)
	}
}

func TestRestoreCounters(t *testing.T) {
	text := "*filter\n:INPUT ACCEPT [7:8]\n[1:2] -A INPUT -j ACCEPT\n-A INPUT -c 3 4 -j DROP\nCOMMIT\n"
	for _, tc := range []struct {
		counters bool
		want     string
	}{
		{false, ":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[0:0] -A INPUT -j ACCEPT\n[3:4] -A INPUT -j DROP\n"},
		{true, ":INPUT ACCEPT [7:8]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[1:2] -A INPUT -j ACCEPT\n[3:4] -A INPUT -j DROP\n"},
	} {
		rs, err := Restore(New(IPv4), strings.NewReader(text), RestoreOptions{Counters: tc.counters})
		if err != nil {
			t.Fatal(err)
		}
		want := "*filter\n" + tc.want + "COMMIT\n"
		if got := saveString(t, rs, SaveOptions{Counters: true}); got != want {
			t.Errorf("Restore(Counters: %v) (-want +got):\n%s", tc.counters, lineDiff(want, got))
		}
	}
}
