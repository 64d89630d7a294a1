//go:build integration

package integration

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIptablesGateway drives gateway mode's iptables from the command line:
// --rules at start, the built-in policy chain, -L -v -n -x, -D, -A,
// iptables-save -c, iptables-restore --test / --rollback / --confirm, and
// errors that name the line.
func TestIptablesGateway(t *testing.T) {
	dir := t.TempDir()
	reject := "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
		"-A INPUT -d 198.18.0.2/32 -p tcp -m tcp --dport 7 -j REJECT --reject-with tcp-reset\nCOMMIT\n"
	rules := filepath.Join(dir, "reject.rules")
	if err := os.WriteFile(rules, []byte(reject), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.rules")
	if err := os.WriteFile(empty, []byte("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.rules")
	if err := os.WriteFile(bad, []byte("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 7 -j DROP\n-A INPUT -m nosuchmatch -j DROP\nCOMMIT\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("bad-rules-flag", func(t *testing.T) {
		requireRoot(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, applianceBin, "run", "--rules", bad, "--", "true").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "line 4") {
			t.Fatalf("run --rules BAD: %v, output %q; want exit 2 naming line 4", err, out)
		}
	})

	tp := newTopo(t, topoOpts{args: []string{"--rules", rules}})
	ctl := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := tp.app.Ctl(ctx, args...)
		if err != nil {
			t.Fatalf("%v", err)
		}
		return string(out)
	}
	probeEcho := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := runHelper(ctx, tp.cont, "fwprobe", "echo=tcp:198.18.0.2:7", "meta=tcp:169.254.169.254:80", "gw=tcp:10.0.2.2:7")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	wantEcho := func(want string) {
		t.Helper()
		if out := probeEcho(); !strings.Contains(out, "echo "+want+"\n") {
			t.Fatalf("probes:\n%s\nwant echo %s", out, want)
		}
	}
	// The echo server sends nothing first: an open port reads as a
	// connection that then times out.
	const open, refused = "connected-timeout", "ECONNREFUSED"

	out := probeEcho()
	for _, want := range []string{"echo " + refused, "meta EHOSTUNREACH", "gw " + refused} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("probes:\n%s\nwant %q (rules from --rules, built-in policy)", out, want)
		}
	}
	list := ctl("iptables", "-L", "-v", "-n", "-x")
	for _, want := range []string{"Chain INPUT (policy ACCEPT", "reject-with tcp-reset", "Chain APPLIANCE-POLICY", "169.254.169.254", "cloud metadata"} {
		if !strings.Contains(list, want) {
			t.Errorf("iptables -L -v -n -x lacks %q:\n%s", want, list)
		}
	}
	save := ctl("iptables-save", "-c")
	if !strings.Contains(save, "[1:60] -A INPUT -d 198.18.0.2/32 -p tcp -m tcp --dport 7 -j REJECT --reject-with tcp-reset") {
		t.Errorf("iptables-save -c:\n%s\nwant the REJECT rule with counters [1:60]", save)
	}
	if strings.Contains(save, "APPLIANCE-POLICY") {
		t.Errorf("iptables-save shows the built-in policy chain (it must round-trip through restore):\n%s", save)
	}

	ctl("iptables", "-D", "INPUT", "1")
	wantEcho(open)
	ctl("iptables", "-I", "INPUT", "-p", "tcp", "--dport", "7", "-j", "REJECT", "--reject-with", "tcp-reset")
	wantEcho(refused)

	// Pings the gateway relays itself pass the hooks too.
	ping := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := runHelper(ctx, tp.cont, "fwprobe", "ping=ping:198.18.0.2")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if out := ping(); !strings.HasPrefix(out, "ping ok") {
		t.Errorf("ping before the rule: %q, want ok", out)
	}
	ctl("iptables", "-A", "INPUT", "-p", "icmp", "-m", "icmp", "--icmp-type", "echo-request", "-j", "REJECT", "--reject-with", "icmp-host-prohibited")
	if out := ping(); !strings.HasPrefix(out, "ping icmp 3/10") {
		t.Errorf("ping with REJECT icmp-host-prohibited at INPUT: %q, want icmp 3/10", out)
	}
	ctl("iptables", "-D", "INPUT", "-p", "icmp", "-m", "icmp", "--icmp-type", "echo-request", "-j", "REJECT", "--reject-with", "icmp-host-prohibited")
	if out := ping(); !strings.HasPrefix(out, "ping ok") {
		t.Errorf("ping after -D: %q, want ok", out)
	}

	// A bad file is refused naming its line, and nothing changes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	out2, err := tp.app.Ctl(ctx, "iptables-restore", bad)
	cancel()
	if err == nil || !strings.Contains(string(out2), "line 4") {
		t.Errorf("iptables-restore BAD: %v %s; want an error naming line 4", err, out2)
	}
	wantEcho(refused)
	// --test only parses.
	ctl("iptables-restore", "--test", empty)
	wantEcho(refused)

	// --rollback: the new rules hold until the deadline, then the old
	// ones are back.
	ctl("iptables-restore", "--rollback", "1500ms", empty)
	wantEcho(open)
	time.Sleep(2 * time.Second)
	wantEcho(refused)
	// Confirmed in time, they stay.
	ctl("iptables-restore", "--rollback", "1500ms", empty)
	ctl("iptables-restore", "--confirm")
	time.Sleep(2 * time.Second)
	wantEcho(open)
	if _, err := tp.app.Ctl(context.Background(), "iptables-restore", "--confirm"); err == nil {
		t.Error("a second --confirm succeeded with nothing pending")
	}
}
