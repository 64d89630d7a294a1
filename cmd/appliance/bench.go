package main

import "github.com/spf13/cobra"

// Placeholder until the bench harness lands (owned by the bench work).
func newBenchCmd() *cobra.Command   { return &cobra.Command{Use: "bench", Hidden: true} }
func newNetperfCmd() *cobra.Command { return &cobra.Command{Use: "netperf", Hidden: true} }
