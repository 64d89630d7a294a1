package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// SocketDir holds the appliance's control sockets (NAME.sock).
const SocketDir = "/run/appliance"

// ReadyTimeout bounds how long StartAppliance waits for `appliance status`.
const ReadyTimeout = 15 * time.Second

// StopTimeout bounds how long Appliance.Stop waits after SIGTERM.
const StopTimeout = 15 * time.Second

// ModuleRoot returns the directory of the main module that holds the
// current directory (as `go env GOMOD` reports it).
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// Build runs `go build -o out pkg` in the module root, without the race
// detector even if GOFLAGS asks for it.
func Build(ctx context.Context, pkg, out string) error {
	return build(ctx, pkg, out, false)
}

// BuildRace is Build with the race detector (-race, which needs cgo).
func BuildRace(ctx context.Context, pkg, out string) error {
	return build(ctx, pkg, out, true)
}

func build(ctx context.Context, pkg, out string, race bool) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	args := []string{"build", "-o", out}
	cgo := "CGO_ENABLED=0"
	if race {
		args, cgo = append(args, "-race"), "CGO_ENABLED=1"
	}
	args = append(args, pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	var flags []string
	for _, f := range strings.Fields(os.Getenv("GOFLAGS")) {
		if f != "-race" && f != "-race=true" {
			flags = append(flags, f)
		}
	}
	cmd.Env = append(os.Environ(), "GOFLAGS="+strings.Join(flags, " "), cgo)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(args[1:], " "), err, b)
	}
	return nil
}

// BuildAppliance builds ./cmd/appliance into dir and returns the binary's
// path. Callers build once (TestMain) and share the path.
func BuildAppliance(dir string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := filepath.Join(dir, "appliance")
	if err := Build(ctx, "./cmd/appliance", out); err != nil {
		return "", err
	}
	return out, nil
}

// Appliance is a running `appliance run` process started by StartAppliance.
type Appliance struct {
	// Bin is the appliance binary.
	Bin string
	// Name is the instance name (--name).
	Name string
	// Host is the namespace the appliance runs in.
	Host *Netns
	*Proc
}

// Status is the part of `appliance status` the tests read.
type Status struct {
	PID        int `json:"pid"`
	Goroutines int `json:"goroutines"`
	// Flows is a number or an object of per-protocol numbers; FlowCount
	// reads either.
	Flows json.RawMessage `json:"flows"`
	// Offloads names the TUN offloads in force ("none" without).
	Offloads string `json:"offloads"`
}

// FlowCount is the number of open flows: Flows itself or the sum of its
// per-protocol numbers.
func (s Status) FlowCount() int {
	var n int
	if json.Unmarshal(s.Flows, &n) == nil {
		return n
	}
	var m map[string]int
	if json.Unmarshal(s.Flows, &m) == nil {
		for _, v := range m {
			n += v
		}
	}
	return n
}

// StartAppliance runs `ip netns exec HOST BIN run --name NAME ARGS...` and
// waits up to ReadyTimeout until `BIN status --name NAME` succeeds. If args
// hold no --name, a unique one is added. On failure the process is killed
// and the error carries its stderr. host.Close kills the appliance at the
// latest; Stop ends it gracefully.
func StartAppliance(bin string, host *Netns, args ...string) (*Appliance, error) {
	return StartMode(bin, host, "run", args...)
}

// StartMode is StartAppliance for another mode: `BIN MODE --name NAME
// ARGS...` (router mode takes its namespaces as the last ARGS).
func StartMode(bin string, host *Netns, mode string, args ...string) (*Appliance, error) {
	name := ""
	for i, a := range args {
		if a == "--name" && i+1 < len(args) {
			name = args[i+1]
		} else if v, ok := strings.CutPrefix(a, "--name="); ok {
			name = v
		}
	}
	full := []string{mode}
	if name == "" {
		name = UniqueName("tb")
		full = append(full, "--name", name)
	}
	full = append(full, args...)
	p, err := host.Start(bin, full...)
	if err != nil {
		return nil, err
	}
	a := &Appliance{Bin: bin, Name: name, Host: host, Proc: p}
	deadline := time.Now().Add(ReadyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-p.Done():
			a.removeSocket()
			return nil, fmt.Errorf("appliance %s exited with %d before it was ready\nstderr: %s", name, p.cmd.ProcessState.ExitCode(), p.Stderr())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lastErr = a.Ctl(ctx, "status")
		cancel()
		if lastErr == nil {
			return a, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.Kill()
	a.removeSocket()
	return nil, fmt.Errorf("appliance %s not ready after %v: %v\nstderr: %s", name, ReadyTimeout, lastErr, p.Stderr())
}

// Ctl runs `BIN ARGS... --name NAME` (a command talking to the running
// instance) and returns its combined output. The control socket is a file,
// so this runs in the caller's namespace.
func (a *Appliance) Ctl(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, a.Bin, append(args, "--name", a.Name)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("appliance %s --name %s: %w\n%s", strings.Join(args, " "), a.Name, err, out)
	}
	return out, nil
}

// Status runs `appliance status` and decodes its JSON.
func (a *Appliance) Status(ctx context.Context) (Status, error) {
	out, err := a.Ctl(ctx, "status")
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(out, &s); err != nil {
		return s, fmt.Errorf("appliance status: %w\n%s", err, out)
	}
	return s, nil
}

// Stop sends SIGTERM, waits up to StopTimeout and returns the exit code.
func (a *Appliance) Stop() (int, error) {
	code, err := a.Proc.Stop(StopTimeout)
	if err != nil {
		return code, fmt.Errorf("appliance %s: %w\nstderr: %s", a.Name, err, a.Stderr())
	}
	return code, nil
}

// SocketPath is the instance's control socket.
func (a *Appliance) SocketPath() string { return filepath.Join(SocketDir, a.Name+".sock") }

// removeSocket removes a socket a killed instance left behind.
func (a *Appliance) removeSocket() { _ = os.Remove(a.SocketPath()) }

// Kill kills the appliance's process group and removes the control socket
// it may have left.
func (a *Appliance) Kill() {
	a.Proc.Kill()
	a.removeSocket()
}
