package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/netstack"
)

func newSysctlCmd() *cobra.Command {
	var all, write, valuesOnly bool
	var name string
	cmd := &cobra.Command{
		Use:   "sysctl [-a] [-n] [-w] KEY[=VALUE]...",
		Short: "Read or write a running appliance's netstack tunables, like sysctl(8)",
		Long: `Reads and writes the netstack tunables of a running appliance under their
Linux names, printed as sysctl(8) prints them ("key = value"). Keys:
net.ipv4.tcp_congestion_control, net.ipv4.tcp_available_congestion_control,
net.ipv4.tcp_rmem, net.ipv4.tcp_wmem, net.ipv4.tcp_sack,
net.ipv4.tcp_moderate_rcvbuf, net.ipv4.tcp_recovery, net.ipv4.ip_default_ttl,
net.ipv6.conf.all.hop_limit. KEY=VALUE writes (with or without -w).`,
		Example: `  appliance sysctl -a
  appliance sysctl net.ipv4.tcp_congestion_control
  appliance sysctl -w net.ipv4.tcp_congestion_control=reno
  appliance sysctl -w net.ipv4.tcp_rmem="4096 131072 6291456"`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !all && len(args) == 0 {
				return usagef("give KEY[=VALUE] or -a")
			}
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			return sysctl(cmd.Context(), c, cmd.OutOrStdout(), all, write, valuesOnly, args)
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "print every key")
	cmd.Flags().BoolVarP(&write, "write", "w", false, "write KEY=VALUE arguments")
	cmd.Flags().BoolVarP(&valuesOnly, "values", "n", false, "print values only")
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}

func sysctl(ctx context.Context, c *control.Client, out io.Writer, all, write, valuesOnly bool, args []string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	print := func(kv netstack.KV) {
		if valuesOnly {
			fmt.Fprintln(out, kv.Value)
		} else {
			fmt.Fprintf(out, "%s = %s\n", kv.Key, kv.Value)
		}
	}
	if all {
		var kvs []netstack.KV
		if err := c.Do(ctx, http.MethodGet, "/v1/sysctl", nil, &kvs); err != nil {
			return err
		}
		for _, kv := range kvs {
			print(kv)
		}
	}
	var failed error
	for _, a := range args {
		key, val, isWrite := strings.Cut(a, "=")
		key = strings.TrimSpace(strings.ReplaceAll(key, "/", "."))
		if write && !isWrite {
			return usagef("-w %q: want KEY=VALUE", a)
		}
		var kv netstack.KV
		var err error
		if isWrite {
			err = c.Do(ctx, http.MethodPut, "/v1/sysctl/"+url.PathEscape(key), control.SysctlValue{Value: val}, &kv)
		} else {
			err = c.Do(ctx, http.MethodGet, "/v1/sysctl/"+url.PathEscape(key), nil, &kv)
		}
		if err != nil {
			var api *control.APIError
			if !errors.As(err, &api) {
				return err
			}
			fmt.Fprintf(os.Stderr, "appliance sysctl: %s\n", api.Message)
			failed = exitError{1}
			continue
		}
		print(kv)
	}
	return failed
}

func newStatusCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print a running appliance's status as JSON (pid, goroutines, flows, link counters)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var st json.RawMessage
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/status", nil, &st); err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			var v any
			_ = json.Unmarshal(st, &v)
			return enc.Encode(v)
		},
	}
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}
