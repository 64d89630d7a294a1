package outcome

import (
	"maps"
	"testing"
)

func TestCountAndCounters(t *testing.T) {
	tb := NewTable()
	l := tb.Link("tun0")
	l.Count(Delivered, HookNone, ProtoTCP, 100)
	l.Count(Delivered, HookNone, ProtoTCP, 50)
	l.Drop(FilterRule, HookInput, ProtoUDP, 30)
	l.Drop(Reason(200), Hook(99), Proto(99), 1) // out of range: not_specified, no panic
	if got := l.Packets(Delivered); got != 2 {
		t.Errorf("Packets(Delivered) = %d, want 2", got)
	}
	want := map[string]uint64{
		"delivered": 2, "delivered_bytes": 150,
		"tun0_delivered": 2, "tun0_delivered_bytes": 150,
		"tcp_delivered": 2, "tcp_delivered_bytes": 150,
		"drop_filter_rule": 1, "drop_filter_rule_bytes": 30,
		"tun0_drop_filter_rule": 1, "tun0_drop_filter_rule_bytes": 30,
		"udp_drop_filter_rule": 1, "udp_drop_filter_rule_bytes": 30,
		"input_drop_filter_rule": 1, "input_drop_filter_rule_bytes": 30,
		"drop_not_specified": 1, "drop_not_specified_bytes": 1,
		"tun0_drop_not_specified": 1, "tun0_drop_not_specified_bytes": 1,
		"other_drop_not_specified": 1, "other_drop_not_specified_bytes": 1,
	}
	if got := tb.Counters(); !maps.Equal(got, want) {
		t.Errorf("Counters = %v\nwant %v", got, want)
	}
	rows := tb.Rows()
	if len(rows) != 3 || rows[0].Reason != "delivered" || rows[1].Outcome != "drop" || rows[1].Linux != "NETFILTER_DROP" || rows[1].Hook != "input" {
		t.Errorf("Rows = %+v", rows)
	}
}

func TestRegister(t *testing.T) {
	tb := NewTable()
	r, err := tb.Register("rate_limited", "")
	if err != nil {
		t.Fatal(err)
	}
	if !tb.IsDrop(r) || tb.Name(r) != "rate_limited" {
		t.Errorf("registered reason %d: drop %v name %q", r, tb.IsDrop(r), tb.Name(r))
	}
	if got, ok := tb.Lookup("rate_limited"); !ok || got != r {
		t.Errorf("Lookup = %d, %v; want %d", got, ok, r)
	}
	for _, name := range []string{"rate_limited", "no_socket", ""} {
		if _, err := tb.Register(name, ""); err == nil {
			t.Errorf("Register(%q) succeeded, want error", name)
		}
	}
	if tb.IsDrop(Delivered) || !tb.IsDrop(NoSocket) {
		t.Error("IsDrop wrong for built-ins")
	}
	for i := 0; ; i++ {
		if _, err := tb.Register("x"+string(rune('a'+i)), ""); err != nil {
			break
		}
		if i > MaxReasons {
			t.Fatal("table never filled")
		}
	}
	tb.Link("l").Count(Reason(MaxReasons-1), HookNone, ProtoOther, 1)
	if tb.Counters()["drop_x"+string(rune('a'+MaxReasons-1-int(numBuiltin)-1))] != 1 {
		t.Errorf("last registered reason not counted: %v", tb.Counters())
	}
}

func BenchmarkCount(b *testing.B) {
	l := NewTable().Link("tun0")
	b.ReportAllocs()
	for b.Loop() {
		l.Count(Delivered, HookNone, ProtoTCP, 1500)
	}
}
