package testbed

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestUniqueName(t *testing.T) {
	re := regexp.MustCompile(`^itc-[0-9a-f]{8}$`)
	a, b := UniqueName("itc"), UniqueName("itc")
	if !re.MatchString(a) || a == b {
		t.Errorf("UniqueName(itc) = %q, %q; want distinct names matching %s", a, b, re)
	}
}

// TestProc runs a real (namespace-free) process: output capture, exit
// codes, Stop and PidsWithArgs.
func TestProc(t *testing.T) {
	p, err := StartCmd(exec.Command("sh", "-c", "echo ready; echo oops >&2; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitOutput("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(5 * time.Second)
	if err != nil || code != 3 {
		t.Errorf("Wait = %d, %v, want 3", code, err)
	}
	if got := strings.TrimSpace(p.Stderr()); got != "oops" {
		t.Errorf("Stderr = %q, want oops", got)
	}

	marker := UniqueName("marker")
	p, err = StartCmd(exec.Command("sh", "-c", "echo ready; sleep 30; true", marker))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitOutput("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// sh forks a child for sleep; until that child execs, it carries sh's
	// arguments too, so a scan right after "ready" may see two processes.
	var pids []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		pids = PidsWithArgs("echo ready; sleep 30; true", marker)
		if len(pids) == 1 && pids[0] == p.Pid() || time.Now().After(deadline) {
			break
		}
	}
	if len(pids) != 1 || pids[0] != p.Pid() {
		t.Errorf("PidsWithArgs(..., %s) = %v, want [%d]", marker, pids, p.Pid())
	}
	if _, err := p.Wait(10 * time.Millisecond); err == nil {
		t.Error("Wait on a sleeping process returned no error")
	}
	if code, err := p.Stop(5 * time.Second); err != nil || code != -1 {
		t.Errorf("Stop = %d, %v, want -1 (killed by SIGTERM)", code, err)
	}
	if pids := PidsWithArgs("echo ready; sleep 30; true", marker); len(pids) != 0 {
		t.Errorf("PidsWithArgs after Stop = %v", pids)
	}
}

// TestProcStopQuits: a process that ignores SIGTERM gets SIGQUIT before
// the kill, so a hung Go program leaves its goroutine dump in Stderr.
func TestProcStopQuits(t *testing.T) {
	p, err := StartCmd(exec.Command("sh", "-c", `trap "" TERM; trap "echo got SIGQUIT >&2; exit 3" QUIT; echo ready; while :; do sleep 0.05; done`))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if err := p.WaitOutput("ready", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Stop(300 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Stop of a process ignoring SIGTERM = %v, want ErrTimeout", err)
	}
	if !strings.Contains(p.Stderr(), "got SIGQUIT") {
		t.Errorf("stderr %q: want the SIGQUIT handler's output", p.Stderr())
	}
}
