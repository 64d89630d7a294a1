//go:build integration

package iptables

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireIptables fails the test if the reference binaries are missing:
// the goldens are iptables 1.8's nf_tables backend (the default on Debian
// 12); the legacy backend orders tables and resets policies differently.
func requireIptables(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"iptables-nft", "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (scripts/install-deps.sh installs iptables): %v", bin, err)
		}
	}
}

var update = flag.Bool("update", false, "rewrite testdata/golden from the real iptables binaries")

// realOutputs loads a golden input into a throwaway network namespace with
// the real iptables-restore and returns iptables-save -c and iptables -L
// outputs. The namespace is removed even on failure.
func realOutputs(t *testing.T, gc goldenCase, tables []string) (save, list string) {
	t.Helper()
	restore, saveBin, bin := "iptables-nft-restore", "iptables-nft-save", "iptables-nft"
	if gc.family == IPv6 {
		restore, saveBin, bin = "ip6tables-nft-restore", "ip6tables-nft-save", "ip6tables-nft"
	}
	ns := fmt.Sprintf("ipt-golden-%d-%s", os.Getpid(), gc.name)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	data, err := os.ReadFile(gc.path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, restore, "-c")
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", restore, gc.path, err, out)
	}
	run := func(args ...string) string {
		c := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Run(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, stderr.String())
		}
		return stdout.String()
	}
	var sb strings.Builder
	for _, line := range strings.SplitAfter(run(saveBin, "-c"), "\n") {
		if !strings.HasPrefix(line, "#") {
			sb.WriteString(line)
		}
	}
	var lb strings.Builder
	for _, tb := range tables {
		for _, v := range listVariants {
			lb.WriteString(listHeader(tb, v.args))
			lb.WriteString(run(append([]string{bin, "-t", tb}, strings.Fields(v.args)...)...))
		}
	}
	return sb.String(), lb.String()
}

// TestGoldenAgainstKernel checks (or with -update rewrites) the goldens
// against the real iptables binaries, and this package against them.
func TestGoldenAgainstKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	requireIptables(t)
	ver, _ := exec.Command("iptables-nft", "-V").Output()
	t.Logf("reference: %s", strings.TrimSpace(string(ver)))
	for _, gc := range goldenCases(t) {
		t.Run(gc.name, func(t *testing.T) {
			data, _ := os.ReadFile(gc.path)
			rs, err := Parse(bytes.NewReader(data), gc.family)
			if err != nil {
				t.Fatalf("Parse(%s): %v", gc.path, err)
			}
			var tables []string
			for _, tb := range rs.Tables() {
				tables = append(tables, tb.Name)
			}
			realSave, realList := realOutputs(t, gc, tables)
			base := strings.TrimSuffix(gc.path, filepath.Ext(gc.path))
			if *update {
				if err := os.WriteFile(base+".save", []byte(realSave), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(base+".list", []byte(realList), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			save, list := ourOutputs(t, gc)
			if save != realSave {
				t.Errorf("Save(%s) differs from %s (-want +got):\n%s", gc.path, strings.TrimSpace(string(ver)), lineDiff(realSave, save))
			}
			if list != realList {
				t.Errorf("List(%s) differs from iptables -L (-want +got):\n%s", gc.path, lineDiff(realList, list))
			}
		})
	}
}
