package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/emulate"
)

// emulateState is GET /v1/emulate's answer and PUT's request ({"spec"}).
type emulateState struct {
	Spec  string            `json:"spec"`
	Stats map[string]uint64 `json:"stats,omitempty"`
}

// parseEmulate validates --emulate before anything changes (exit 2).
func parseEmulate(s string) (emulate.Spec, error) {
	spec, err := emulate.ParseSpec(s)
	if err != nil {
		return spec, usagef("--emulate: %v", err)
	}
	return spec, nil
}

// handleEmulate serves GET and PUT /v1/emulate for l.
func handleEmulate(mux *http.ServeMux, l *emulate.Link) {
	mux.HandleFunc("GET /v1/emulate", func(w http.ResponseWriter, _ *http.Request) {
		control.WriteJSON(w, http.StatusOK, emulateState{Spec: l.Spec().String(), Stats: l.Stats()})
	})
	mux.HandleFunc("PUT /v1/emulate", func(w http.ResponseWriter, r *http.Request) {
		var req emulateState
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			control.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %v", err))
			return
		}
		spec, err := emulate.ParseSpec(req.Spec)
		if err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		if err := l.SetSpec(spec); err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, emulateState{Spec: spec.String(), Stats: l.Stats()})
	})
}

func newEmulateCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "emulate [--name NAME] [SPEC]",
		Short: "Show or change a running appliance's link emulation, like tc qdisc change ... netem",
		Long: `With SPEC, replaces the link emulation of a running appliance without
dropping queued packets or connections, as tc qdisc change does for netem.
SPEC is --emulate's: comma-separated key=value settings, each applied to
both directions of the link independently:

  delay=20ms jitter=2ms correlation=25%   delay, uniform jitter, correlation
  loss=1%                                 random loss
  loss=ge:P%,R%[,H%[,K%]]                 Gilbert-Elliott bursts (netem's
                                          loss gemodel p r 1-h 1-k)
  rate=100mbit                            bottleneck (bit, kbit, mbit, gbit;
                                          kbps etc. are bytes/s, as tc)
  limit=1000                              packets held per direction (tail drop)
  codel                                   CoDel (RFC 8289) on the rate queue
  reorder=25%                             share sent at once, skipping delay
  duplicate=1% corrupt=0.1%               duplicate; flip one bit
  trace=FILE                              mahimahi trace instead of rate
  seed=N                                  repeatable randomness

"" or none turns emulation off. Without SPEC, prints the current spec and
the per-direction counters (out_*: toward the namespace's link, in_*: from
it).`,
		Example: `  appliance emulate --name r1 delay=20ms,rate=100mbit
  appliance emulate --name r1 none
  appliance emulate --name r1`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var st emulateState
			if len(args) == 1 {
				spec, err := emulate.ParseSpec(args[0])
				if err != nil {
					return usageError{err}
				}
				if spec.Trace != "" {
					// The appliance reads the file; give it a path that
					// does not depend on its working directory.
					if spec.Trace, err = filepath.Abs(spec.Trace); err != nil {
						return usageError{err}
					}
				}
				return c.Do(cmd.Context(), http.MethodPut, "/v1/emulate", emulateState{Spec: spec.String()}, &st)
			}
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/emulate", nil, &st); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if st.Spec == "" {
				st.Spec = "none"
			}
			fmt.Fprintf(w, "spec %s\n", st.Spec)
			keys := make([]string, 0, len(st.Stats))
			for k := range st.Stats {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(w, "%-24s %d\n", k, st.Stats[k])
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}
