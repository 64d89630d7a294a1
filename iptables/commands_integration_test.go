//go:build integration

package iptables

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCommandsAgainstKernel runs each commands golden through the real
// iptables in a throwaway namespace: every line must succeed or fail as
// marked, and the final iptables-save -c must equal ours (-update rewrites
// the .save goldens).
func TestCommandsAgainstKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	requireIptables(t)
	for _, path := range cmdGoldens(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			ns := fmt.Sprintf("ipt-cmds-%d-%s", os.Getpid(), strings.TrimSuffix(filepath.Base(path), ".cmds"))
			if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
				t.Fatalf("ip netns add: %v: %s", err, out)
			}
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
			cmds := readCmds(t, path)
			for _, c := range cmds {
				out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "iptables-nft"}, c.args...)...).CombinedOutput()
				if c.mustFail && err == nil {
					t.Errorf("kernel: %q succeeded, want an error", c.text)
				}
				if !c.mustFail && err != nil {
					t.Errorf("kernel: %q: %v: %s", c.text, err, out)
				}
			}
			out, err := exec.Command("ip", "netns", "exec", ns, "iptables-nft-save", "-c").Output()
			if err != nil {
				t.Fatalf("iptables-save: %v", err)
			}
			var real strings.Builder
			for _, line := range strings.SplitAfter(string(out), "\n") {
				if !strings.HasPrefix(line, "#") {
					real.WriteString(line)
				}
			}
			if *update {
				if err := os.WriteFile(strings.TrimSuffix(path, ".cmds")+".save", []byte(real.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			rs := runCmds(t, cmds, IPv4)
			if got := saveString(t, rs, SaveOptions{Counters: true}); got != real.String() {
				t.Errorf("after %s, ours differs from the kernel's (-want +got):\n%s", path, lineDiff(real.String(), got))
			}
		})
	}
}
