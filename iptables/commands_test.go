package iptables

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A commands golden (testdata/commands/NAME.cmds) is a list of iptables
// command lines applied in order to an empty rule set; "! " marks a line
// that must fail. NAME.save is what the real iptables-save -c printed
// afterwards (commands_integration_test.go regenerates it).

type cmdLine struct {
	args     []string
	mustFail bool
	text     string
}

func readCmds(t *testing.T, path string) []cmdLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []cmdLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		c := cmdLine{text: line}
		if strings.HasPrefix(line, "! ") {
			c.mustFail = true
			line = line[2:]
		}
		args, err := tokenize(line)
		if err != nil {
			t.Fatalf("%s: %q: %v", path, line, err)
		}
		c.args = args
		out = append(out, c)
	}
	return out
}

// runCmds applies the commands with ParseCommand and Exec.
func runCmds(t *testing.T, cmds []cmdLine, f Family) *Ruleset {
	t.Helper()
	rs := New(f)
	for _, c := range cmds {
		cmd, err := ParseCommand(f, c.args)
		if err == nil {
			var next *Ruleset
			next, err = rs.Exec(cmd)
			if err == nil {
				rs = next
			}
		}
		if c.mustFail && err == nil {
			t.Errorf("%q succeeded, want an error", c.text)
		}
		if !c.mustFail && err != nil {
			t.Errorf("%q: %v", c.text, err)
		}
	}
	return rs
}

func cmdGoldens(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("testdata", "commands", "*.cmds"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no command goldens: %v", err)
	}
	return files
}

func TestCommandsGolden(t *testing.T) {
	for _, path := range cmdGoldens(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			rs := runCmds(t, readCmds(t, path), IPv4)
			want, err := os.ReadFile(strings.TrimSuffix(path, ".cmds") + ".save")
			if err != nil {
				t.Fatal(err)
			}
			if got := saveString(t, rs, SaveOptions{Counters: true}); got != string(want) {
				t.Errorf("after %s (-want +got):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}
