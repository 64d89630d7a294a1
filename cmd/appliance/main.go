// Command appliance runs the sandboxed network appliance and talks to
// running instances. See README.md and `appliance --help`.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strings"

	"github.com/spf13/cobra"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/nsappliance/appliance/internal/leakcheck"
)

// usageError marks errors the user made on the command line (exit 2).
type usageError struct{ error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// exitError carries an exit status (from `run -- COMMAND`).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// Leak tracking must start before the first packet buffer exists.
	leaks := os.Getenv(leakcheck.Env) != "" && os.Getenv(leakcheck.Env) != "0"
	if leaks {
		leakcheck.Enable()
	}
	if os.Getenv("APPLIANCE_TEST_LEAK") != "" && len(os.Args) > 1 && (os.Args[1] == "run" || os.Args[1] == "router") {
		// Proves the check works end to end (integration TestLeakCheck):
		// one buffer that is never released.
		stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData([]byte("leak"))})
	}
	root := newRootCmd()
	err := root.Execute()
	code := exitCode(err)
	if leaks {
		// Every command has closed its stack and waited for its
		// goroutines by now: a live packet buffer is a leak.
		if lerr := leakcheck.Check(); lerr != nil {
			slog.Error("leak check failed", "err", lerr)
			if code == 0 {
				code = leakcheck.ExitCode
			}
		}
	}
	os.Exit(code)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(os.Stderr, "appliance: %s\n", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

func newRootCmd() *cobra.Command {
	var logLevel, cpuProfile, traceFile string
	root := &cobra.Command{
		Use:   "appliance",
		Short: "A sandboxed network appliance on gVisor's userspace TCP/IP stack",
		Long: `appliance puts a container's network namespace behind gVisor's userspace
TCP/IP stack (netstack): a TUN device in the namespace feeds every packet
to netstack, which terminates TCP, UDP and ICMP and relays them through
ordinary host sockets (gateway mode).

Environment: APPLIANCE_LEAK_CHECK=1 (0 or empty: off) tracks every reference-counted packet
buffer (gVisor's refs leak checking, slower) and, when the command ends,
logs any still alive and exits with status 3; the integration tests run
with it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return usagef("--log-level %q: want debug, info, warn or error", logLevel)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return usagef("--cpuprofile: %v", err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
			}
			if traceFile != "" {
				f, err := os.Create(traceFile)
				if err != nil {
					return usagef("--trace: %v", err)
				}
				if err := trace.Start(f); err != nil {
					return err
				}
			}
			return nil
		},
		PersistentPostRun: func(cmd *cobra.Command, args []string) {
			if cpuProfile != "" {
				pprof.StopCPUProfile()
			}
			if traceFile != "" {
				trace.Stop()
			}
		},
	}
	root.PersistentFlags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile to FILE (for developers)")
	root.PersistentFlags().StringVar(&traceFile, "trace", "", "write a Go execution trace to FILE (for developers)")
	_ = root.PersistentFlags().MarkHidden("cpuprofile")
	_ = root.PersistentFlags().MarkHidden("trace")
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error (logs go to stderr)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCmd(), newRouterCmd(), newSysctlCmd(), newStatusCmd(), newStatsCmd(), newSSCmd(), newSockstatCmd(), newBenchCmd(), newNetperfCmd(), newEmulateCmd())
	root.AddCommand(iptablesCmds()...)
	return root
}
