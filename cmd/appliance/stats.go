package main

import (
	"fmt"
	"io"
	"net/http"
	"path"
	"sort"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/metrics"
	"github.com/nsappliance/appliance/netstack"
	"github.com/nsappliance/appliance/outcome"
)

func newStatsCmd() *cobra.Command {
	var name string
	var zeros bool
	cmd := &cobra.Command{
		Use:   "stats [-z] [PATTERN...]",
		Short: "Print a running appliance's packet counters, like nstat",
		Long: `Prints the counters of a running appliance, one per line, as nstat(8)
does: netstack's own statistics (netstack_*: IP, ICMP, TCP, UDP, NIC,
forwarding), the container link's (link_*: packets, bytes, GSO, errors),
the relay's (gateway_*: flows, dial failures, policy denials, pings) and
packet outcomes like Linux's kfree_skb drop reasons (skb_*: every packet
entering or leaving a link is delivered, forwarded, answered, transmitted
or dropped with a reason; skb_OUTCOME, skb_LINK_OUTCOME, skb_PROTO_OUTCOME
and skb_HOOK_OUTCOME, each with _bytes; drops are drop_REASON, e.g.
skb_drop_no_socket, skb_tcp_drop_malformed, skb_input_drop_filter_rule).
Counters that are zero are left out unless -z. PATTERNs are shell globs
matched against the names (e.g. 'netstack_tcp_*').`,
		Example: `  appliance stats
  appliance stats -z 'link_*'
  appliance stats 'netstack_tcp_*' 'gateway_*'
  appliance stats 'skb_drop_*'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, p := range args {
				if _, err := path.Match(p, ""); err != nil {
					return usagef("pattern %q: %v", p, err)
				}
			}
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var groups map[string]map[string]uint64
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/stats", nil, &groups); err != nil {
				return err
			}
			printStats(cmd.OutOrStdout(), groups, zeros, args)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&zeros, "zeros", "z", false, "print counters that are zero too")
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}

func printStats(w io.Writer, groups map[string]map[string]uint64, zeros bool, patterns []string) {
	type kv struct {
		k string
		v uint64
	}
	var rows []kv
	for g, m := range groups {
		for k, v := range m {
			name := g + "_" + k
			if (v == 0 && !zeros) || !matchAny(patterns, name) {
				continue
			}
			rows = append(rows, kv{name, v})
		}
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].k < rows[j].k })
	fmt.Fprintln(w, "#appliance")
	for _, r := range rows {
		fmt.Fprintf(w, "%-56s %d\n", r.k, r.v)
	}
}

func matchAny(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// outcomeSource exports the packet-outcome table as
// appliance_skb_{packets,bytes}_total{link,outcome,reason,hook,proto}.
func outcomeSource(t *outcome.Table) metrics.Source {
	return metrics.Source{
		Name:   "skb",
		Help:   "packets and bytes per link, outcome, drop reason, hook and protocol (kfree_skb reasons)",
		Labels: []string{"link", "outcome", "reason", "hook", "proto"},
		ReadLabeled: func() []metrics.Sample {
			var out []metrics.Sample
			for _, r := range t.Rows() {
				v := []string{r.Link, r.Outcome, r.Reason, r.Hook, r.Proto}
				out = append(out, metrics.Sample{Key: "packets", Values: v, Value: r.Packets},
					metrics.Sample{Key: "bytes", Values: v, Value: r.Bytes})
			}
			return out
		},
	}
}

// memStateMap flattens the TCP memory accounting for metrics.
func memStateMap(m netstack.MemState) map[string]uint64 {
	b := func(v bool) uint64 {
		if v {
			return 1
		}
		return 0
	}
	return map[string]uint64{
		"pages": uint64(m.Pages), "min": uint64(m.Min), "pressure": uint64(m.Pressure), "max": uint64(m.Max),
		"under_pressure": b(m.UnderPressure), "over_max": b(m.OverMax), "pressures_entered": m.PressureEntered,
		"pressure_ms": m.PressureMillis, "refused": m.Refused, "clamped": uint64(m.Clamped),
	}
}
