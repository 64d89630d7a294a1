package iptables

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func mustParse(t testing.TB, text string, f Family) *Ruleset {
	t.Helper()
	rs, err := Parse(strings.NewReader(text), f)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return rs
}

func saveString(t testing.TB, rs *Ruleset, opts SaveOptions) string {
	t.Helper()
	var b bytes.Buffer
	if err := rs.Save(&b, opts); err != nil {
		t.Fatalf("Save: %v", err)
	}
	return b.String()
}

func TestParseSaveCanonical(t *testing.T) {
	in := `*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -s 10.0.0.1/8 --dport 80 -i eth0 -d 1.2.3.4 -j DROP
-A INPUT -p tcp --syn -j ACCEPT
COMMIT
`
	want := `*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s 10.0.0.0/8 -d 1.2.3.4/32 -i eth0 -p tcp -m tcp --dport 80 -j DROP
-A INPUT -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j ACCEPT
COMMIT
`
	got := saveString(t, mustParse(t, in, IPv4), SaveOptions{})
	if got != want {
		t.Errorf("Save = \n%s\nwant\n%s", got, want)
	}
}

func TestParseErrorsNameLine(t *testing.T) {
	cases := []struct {
		name, text, want string
	}{
		{"unknown match", "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m nosuch -j ACCEPT\nCOMMIT\n", "line 3"},
		{"unknown target", "*filter\n-A INPUT -j NFQUEUE\nCOMMIT\n", "line 2"},
		{"unknown option", "*filter\n\n-A INPUT -p tcp --bogus 1 -j ACCEPT\nCOMMIT\n", "line 3: --bogus"},
		{"no commit", "*filter\n-A INPUT -j ACCEPT\n", "COMMIT expected"},
		{"missing chain", "*filter\n-A NOPE -j ACCEPT\nCOMMIT\n", "line 2"},
		{"jump to missing chain", "*filter\n-A INPUT -j nope\nCOMMIT\n", "line 2"},
		{"bad table", "*bogus\nCOMMIT\n", "line 1"},
		{"dnat in filter", "*filter\n-A INPUT -p tcp -j DNAT --to-destination 1.2.3.4\nCOMMIT\n", "line 2"},
		{"port needs proto", "*filter\n-A INPUT --dport 80 -j DROP\nCOMMIT\n", "line 2: --dport"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tc.text), IPv4)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line == 0 {
				t.Fatalf("Parse error %v is not a *ParseError with a line", err)
			}
		})
	}
}
