package iptables

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Golden files in testdata/golden: NAME.rules (iptables) or NAME.rules6
// (ip6tables) is the input; NAME.save is what the real iptables-save -c
// printed after iptables-restore loaded it (comment lines removed), and
// NAME.list what iptables -L printed for each table with each flag set in
// listVariants. golden_integration_test.go regenerates them from the real
// binaries (-update) and re-checks them.

// listVariants are the -L flag sets the goldens cover.
var listVariants = []struct {
	args string
	opts ListOptions
}{
	{"-L -v -n -x --line-numbers", ListOptions{Verbose: true, Numeric: true, Exact: true, LineNumbers: true}},
	{"-L -v -n", ListOptions{Verbose: true, Numeric: true}},
	{"-L -n", ListOptions{Numeric: true}},
}

type goldenCase struct {
	name, path string
	family     Family
}

func goldenCases(t *testing.T) []goldenCase {
	t.Helper()
	var out []goldenCase
	for _, pat := range []string{"*.rules", "*.rules6"} {
		files, err := filepath.Glob(filepath.Join("testdata", "golden", pat))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			fam := IPv4
			if strings.HasSuffix(f, "6") {
				fam = IPv6
			}
			name := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(f), "6"), ".rules")
			out = append(out, goldenCase{name, f, fam})
		}
	}
	if len(out) == 0 {
		t.Fatal("no golden files")
	}
	return out
}

// listHeader separates the outputs in a .list golden.
func listHeader(table, args string) string {
	return "## -t " + table + " " + args + "\n"
}

// ourOutputs returns what this package prints for a golden input.
func ourOutputs(t *testing.T, gc goldenCase) (save, list string) {
	t.Helper()
	data, err := os.ReadFile(gc.path)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Parse(bytes.NewReader(data), gc.family)
	if err != nil {
		t.Fatalf("Parse(%s): %v", gc.path, err)
	}
	save = saveString(t, rs, SaveOptions{Counters: true})
	var b bytes.Buffer
	for _, tb := range rs.Tables() {
		for _, v := range listVariants {
			b.WriteString(listHeader(tb.Name, v.args))
			if err := rs.List(&b, tb.Name, "", v.opts); err != nil {
				t.Fatal(err)
			}
		}
	}
	return save, b.String()
}

func TestGolden(t *testing.T) {
	for _, gc := range goldenCases(t) {
		t.Run(gc.name, func(t *testing.T) {
			save, list := ourOutputs(t, gc)
			wantSave, err := os.ReadFile(strings.TrimSuffix(gc.path, filepath.Ext(gc.path)) + ".save")
			if err != nil {
				t.Fatal(err)
			}
			if save != string(wantSave) {
				t.Errorf("Save(%s) differs from iptables-save (-want +got):\n%s", gc.path, lineDiff(string(wantSave), save))
			}
			wantList, err := os.ReadFile(strings.TrimSuffix(gc.path, filepath.Ext(gc.path)) + ".list")
			if err != nil {
				t.Fatal(err)
			}
			if list != string(wantList) {
				t.Errorf("List(%s) differs from iptables -L (-want +got):\n%s", gc.path, lineDiff(string(wantList), list))
			}
			// The saved text parses back to the same rules.
			rs2, err := Parse(strings.NewReader(save), gc.family)
			if err != nil {
				t.Fatalf("Parse(Save(%s)): %v", gc.path, err)
			}
			if again := saveString(t, rs2, SaveOptions{Counters: true}); again != save {
				t.Errorf("Save(Parse(Save(%s))) changed (-first +second):\n%s", gc.path, lineDiff(save, again))
			}
		})
	}
}

// lineDiff is a small line diff: lines only in want (-) or got (+), in order.
func lineDiff(want, got string) string {
	w := strings.Split(want, "\n")
	g := strings.Split(got, "\n")
	var b strings.Builder
	n := max(len(w), len(g))
	for i := 0; i < n; i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			b.WriteString("- " + a + "\n+ " + c + "\n")
		}
	}
	return b.String()
}
