// Package leakcheck runs a package's tests, or the appliance binary, with
// gVisor's reference-count leak checking on: a packet buffer (or other
// refs-tracked object) left unreleased fails the run. Tests call Main from
// TestMain; the binary calls Enable first thing and Check last.
package leakcheck

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/refs"
)

// Env is the environment variable that turns leak checking on in the
// appliance binary (any non-empty value); the integration tests set it.
const Env = "APPLIANCE_LEAK_CHECK"

// ExitCode is the appliance's exit status when Check finds a leak.
const ExitCode = 3

// Main runs m with leaks panicking, checks for leaks after the tests and
// exits with the tests' status.
func Main(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// Enable turns leak tracking on. Call it before any packet buffer exists:
// objects created earlier are not tracked.
func Enable() { refs.SetLeakMode(refs.LeaksPanic) }

// Enabled reports whether leak tracking is on.
func Enabled() bool { return refs.LeakCheckEnabled() }

// ErrLeak is wrapped by Check's error.
var ErrLeak = errors.New("reference-counted objects leaked")

// Check reports the tracked objects still alive, one per line after the
// first, as an error wrapping ErrLeak; nil if none (or tracking is off).
// Call it when nothing should hold a buffer any more: after the stack is
// destroyed and every goroutine that touched packets has returned. It may
// be called more than once.
func Check() (err error) {
	defer func() {
		if r := recover(); r != nil {
			msg := strings.TrimSpace(fmt.Sprint(r))
			err = fmt.Errorf("%w: %s", ErrLeak, msg)
		}
	}()
	refs.DoRepeatedLeakCheck()
	return nil
}
