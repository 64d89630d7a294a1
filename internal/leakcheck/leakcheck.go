// Package leakcheck runs a package's tests with gVisor's reference-count
// leak checking on: a packet buffer (or other refs-tracked object) left
// unreleased fails the run. Call Main from TestMain.
package leakcheck

import (
	"os"
	"testing"

	"gvisor.dev/gvisor/pkg/refs"
)

// Main runs m with leaks panicking, checks for leaks after the tests and
// exits with the tests' status.
func Main(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}
