package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrTimeout is returned when a process did not do what was awaited in time.
var ErrTimeout = errors.New("timed out")

// Proc is a started process whose stdout and stderr are captured. It runs in
// its own process group; Kill ends the group.
type Proc struct {
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{}
	// waitErr is written once before done is closed.
	waitErr error
}

// StartCmd starts cmd, capturing its output. cmd must not have Stdout or
// Stderr set. Commands built by Netns.Command are already prepared; others
// get their own process group and die with this process.
func StartCmd(cmd *exec.Cmd) (*Proc, error) {
	if cmd.SysProcAttr == nil {
		prepareAttrs(cmd)
	}
	// A child that outlives the process (or a grandchild holding the
	// output pipes) must not keep Wait, and so Done, from returning.
	cmd.WaitDelay = time.Second
	p := &Proc{cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.stdout
	cmd.Stderr = &p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// String names the process by its command line.
func (p *Proc) String() string { return strings.Join(p.cmd.Args, " ") }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Stdout is what the process wrote to stdout so far.
func (p *Proc) Stdout() string { return p.stdout.String() }

// Stderr is what the process wrote to stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// Signal sends sig to the process (not its group).
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if a signal ended it). It returns ErrTimeout if the process is
// still running.
func (p *Proc) Wait(timeout time.Duration) (int, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-t.C:
		return 0, fmt.Errorf("%s: still running after %v: %w", p, timeout, ErrTimeout)
	}
}

// Stop sends SIGTERM to the process and waits up to timeout for it to exit.
// If it does not, Stop sends SIGQUIT (a Go program then writes every
// goroutine's stack to stderr, which says where the shutdown hung), waits
// up to two seconds for that, kills the process group and returns
// ErrTimeout. Otherwise it returns the exit code; other members of the
// group are left alone so callers can check for leftovers (Kill ends
// them).
func (p *Proc) Stop(timeout time.Duration) (int, error) {
	_ = p.Signal(syscall.SIGTERM)
	code, err := p.Wait(timeout)
	if err != nil {
		_ = p.Signal(syscall.SIGQUIT)
		_, _ = p.Wait(2 * time.Second)
		p.Kill()
		return -1, err
	}
	return code, nil
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// WaitOutput waits up to timeout until stdout contains s.
func (p *Proc) WaitOutput(s string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if strings.Contains(p.Stdout(), s) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Stdout(), s) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before printing %q\nstdout: %s\nstderr: %s", p, p.waitErr, s, p.Stdout(), p.Stderr())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %q on stdout after %v: %w\nstderr: %s", p, s, timeout, ErrTimeout, p.Stderr())
		}
	}
}

// PidsWithArgs returns the ids of processes whose command line contains the
// consecutive arguments args (e.g. "--name", "x"). It is how tests look for
// leftovers of a product they started.
func PidsWithArgs(args ...string) []int {
	want := []byte(strings.Join(args, "\x00") + "\x00")
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(b, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	// +checklocks:mu
	b bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Keep memory bounded for chatty processes: 4 MiB is plenty to debug.
	if s.b.Len() > 4<<20 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
