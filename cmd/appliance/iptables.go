package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/appliance"
	"github.com/nsappliance/appliance/control"
	"github.com/nsappliance/appliance/iptables"
)

// iptablesRequest is the body of POST /v1/iptables/{exec,restore,save}.
type iptablesRequest struct {
	IPv6 bool `json:"ipv6,omitempty"`
	// Args is an iptables command line (exec).
	Args []string `json:"args,omitempty"`
	// Text is iptables-save text (restore).
	Text     string `json:"text,omitempty"`
	Test     bool   `json:"test,omitempty"`
	NoFlush  bool   `json:"noflush,omitempty"`
	Rollback string `json:"rollback,omitempty"`
	// Counters and Table are iptables-save's -c and -t.
	Counters bool   `json:"counters,omitempty"`
	Table    string `json:"table,omitempty"`
}

// iptablesAnswer carries printed output (-L, -S, save).
type iptablesAnswer struct {
	Output string `json:"output"`
}

// handleIptables serves the iptables routes for fw:
//
//	POST /v1/iptables/exec     {"args": [...], "ipv6"}      one iptables command (-A -I -D -R -F -Z -N -X -P -E -L -S)
//	POST /v1/iptables/save     {"counters", "table", "ipv6"} iptables-save text
//	POST /v1/iptables/restore  {"text", "test", "noflush", "rollback", "ipv6"}
//	POST /v1/iptables/confirm                                keep a --rollback apply
//	GET  /v1/iptables/stats                                  hook, conntrack and REJECT counters
func handleIptables(mux *http.ServeMux, fw *appliance.Firewall) {
	decode := func(w http.ResponseWriter, r *http.Request) (iptablesRequest, bool) {
		var req iptablesRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&req); err != nil {
			control.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %v", err))
			return req, false
		}
		return req, true
	}
	mux.HandleFunc("POST /v1/iptables/exec", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		out, err := iptablesExec(fw, req.IPv6, req.Args)
		if err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, iptablesAnswer{Output: out})
	})
	mux.HandleFunc("POST /v1/iptables/save", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		if req.Table != "" && iptables.BuiltinChains(req.Table) == nil {
			control.WriteError(w, http.StatusBadRequest, fmt.Errorf("table %q does not exist", req.Table))
			return
		}
		v4, v6 := fw.Rules()
		rs := v4
		if req.IPv6 {
			rs = v6
		}
		var b bytes.Buffer
		if err := rs.Save(&b, iptables.SaveOptions{Counters: req.Counters, Table: req.Table, Header: true}); err != nil {
			control.WriteError(w, http.StatusInternalServerError, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, iptablesAnswer{Output: b.String()})
	})
	mux.HandleFunc("POST /v1/iptables/restore", func(w http.ResponseWriter, r *http.Request) {
		req, ok := decode(w, r)
		if !ok {
			return
		}
		opts := appliance.RestoreOptions{IPv6: req.IPv6, Test: req.Test, NoFlush: req.NoFlush}
		if req.Rollback != "" {
			d, err := time.ParseDuration(req.Rollback)
			if err != nil || d <= 0 {
				control.WriteError(w, http.StatusBadRequest, fmt.Errorf("--rollback %q: want a positive duration such as 10s", req.Rollback))
				return
			}
			opts.Rollback = d
		}
		if err := fw.Restore(strings.NewReader(req.Text), opts); err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, iptablesAnswer{})
	})
	mux.HandleFunc("POST /v1/iptables/confirm", func(w http.ResponseWriter, _ *http.Request) {
		if err := fw.Confirm(); err != nil {
			control.WriteError(w, http.StatusConflict, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, iptablesAnswer{})
	})
	mux.HandleFunc("GET /v1/iptables/stats", func(w http.ResponseWriter, _ *http.Request) {
		control.WriteJSON(w, http.StatusOK, fw.Counters())
	})
}

// iptablesExec runs one iptables command line against fw.
func iptablesExec(fw *appliance.Firewall, ipv6 bool, args []string) (string, error) {
	fam := iptables.IPv4
	if ipv6 {
		fam = iptables.IPv6
	}
	cmd, err := iptables.ParseCommand(fam, args)
	if err != nil {
		return "", err
	}
	v4, v6 := fw.Rules()
	rs := v4
	if ipv6 {
		rs = v6
	}
	var b bytes.Buffer
	switch cmd.Op {
	case iptables.OpList:
		pv4, pv6 := fw.Policy()
		pol := pv4
		if ipv6 {
			pol = pv6
		}
		if cmd.Chain == appliance.PolicyChain && cmd.Table == iptables.TableFilter && pol != nil {
			// The built-in default policy (docs/hooks.md).
			if err := pol.List(&b, cmd.Table, cmd.Chain, cmd.List); err != nil {
				return "", err
			}
			return b.String(), nil
		}
		if err := rs.List(&b, cmd.Table, cmd.Chain, cmd.List); err != nil {
			return "", err
		}
		if cmd.Chain == "" && cmd.Table == iptables.TableFilter && pol != nil {
			b.WriteString("\n")
			if err := pol.List(&b, cmd.Table, appliance.PolicyChain, cmd.List); err != nil {
				return "", err
			}
		}
		if cmd.ZeroToo {
			if err := rs.Zero(cmd.Table, cmd.Chain); err != nil {
				return "", err
			}
		}
		return b.String(), nil
	case iptables.OpListRules:
		if err := rs.Save(&b, iptables.SaveOptions{Table: cmd.Table}); err != nil {
			return "", err
		}
		return listRules(b.String(), cmd.Chain), nil
	}
	return "", fw.Exec(ipv6, cmd)
}

// listRules turns iptables-save text of one table into iptables -S output.
func listRules(save, chain string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(save))
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, ":"):
			f := strings.Fields(l[1:])
			if len(f) < 2 || chain != "" && f[0] != chain {
				continue
			}
			if f[1] == "-" {
				fmt.Fprintf(&b, "-N %s\n", f[0])
			} else {
				fmt.Fprintf(&b, "-P %s %s\n", f[0], f[1])
			}
		case strings.HasPrefix(l, "-A "):
			if chain != "" && !strings.HasPrefix(l, "-A "+chain+" ") {
				continue
			}
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// splitInstance takes the appliance's own options (--name, -6) out of a
// command line that is otherwise iptables'.
func splitInstance(args []string) (name string, ipv6 bool, rest []string, err error) {
	name = "default"
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "--name":
			if i+1 >= len(args) {
				return "", false, nil, usagef("--name needs a value")
			}
			name = args[i+1]
			i++
		case strings.HasPrefix(a, "--name="):
			name = strings.TrimPrefix(a, "--name=")
		case a == "-6" || a == "--ipv6":
			ipv6 = true
		case a == "-4" || a == "--ipv4":
			ipv6 = false
		default:
			rest = append(rest, a)
		}
	}
	return name, ipv6, rest, nil
}

func newIptablesCmd(prog string, v6 bool) *cobra.Command {
	return &cobra.Command{
		Use:   prog + " [--name NAME] [-6] [-t TABLE] COMMAND [CHAIN] [RULE...]",
		Short: "Edit or list a running appliance's " + prog + " rules, like " + prog + "(8)",
		Long: `Runs one ` + prog + ` command against a running appliance: -L [-v] [-n] [-x]
[--line-numbers], -S, -A, -I, -D, -R, -F, -Z, -N, -X, -P, -E, with the rule
options iptables knows (see docs/hooks.md for the supported matches and
targets). The change is applied atomically. ` + "`appliance iptables -6`" + ` is
` + "`appliance ip6tables`" + `. --name NAME picks the instance.`,
		Example: `  appliance ` + prog + ` -L -v -n
  appliance ` + prog + ` -A INPUT -p tcp --dport 80 -j DROP
  appliance ` + prog + ` -t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80`,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
				return cmd.Help()
			}
			name, ipv6, rest, err := splitInstance(args)
			if err != nil {
				return err
			}
			if len(rest) == 0 {
				return usagef("no command given (try -L)")
			}
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var ans iptablesAnswer
			err = c.Do(cmdContext(cmd), http.MethodPost, "/v1/iptables/exec", iptablesRequest{IPv6: ipv6 || v6, Args: rest}, &ans)
			if err != nil {
				return iptablesErr(err)
			}
			fmt.Fprint(cmd.OutOrStdout(), ans.Output)
			return nil
		},
	}
}

// iptablesErr makes a rejected command a usage error (exit 2).
func iptablesErr(err error) error {
	var ae *control.APIError
	if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
		return usageError{err}
	}
	return err
}

func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func newIptablesSaveCmd(prog string, v6 bool) *cobra.Command {
	var counters bool
	var table, name string
	cmd := &cobra.Command{
		Use:   prog + "-save [-c] [-t TABLE] [--name NAME]",
		Short: "Print a running appliance's rules as " + prog + "-save does",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var ans iptablesAnswer
			if err := c.Do(cmdContext(cmd), http.MethodPost, "/v1/iptables/save", iptablesRequest{IPv6: v6, Counters: counters, Table: table}, &ans); err != nil {
				return iptablesErr(err)
			}
			fmt.Fprint(cmd.OutOrStdout(), ans.Output)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&counters, "counters", "c", false, "print packet and byte counters")
	cmd.Flags().StringVarP(&table, "table", "t", "", "print only this table")
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}

func newIptablesRestoreCmd(prog string, v6 bool) *cobra.Command {
	var test, noflush, confirm bool
	var rollback time.Duration
	var name string
	cmd := &cobra.Command{
		Use:   prog + "-restore [--test] [--noflush] [--rollback DURATION] [--confirm] [--name NAME] [FILE] < FILE",
		Short: "Replace a running appliance's rules with " + prog + "-save text, atomically",
		Long: `Reads ` + prog + `-save text (from FILE or standard input) and applies it as
` + prog + `-restore does: every table named in the text is replaced (--noflush:
added to), all at once; if any line is wrong nothing is applied and the
error names the line. --test only checks the text.

--rollback DURATION applies the rules and restores the previous ones after
DURATION unless ` + "`appliance " + prog + "-restore --confirm`" + ` runs first (what
iptables-apply does, without a terminal prompt: confirm from a connection
that still works). While an apply waits for confirmation other changes are
refused.`,
		Example: `  appliance ` + prog + `-restore < rules.v4
  appliance ` + prog + `-restore --rollback 10s < new.rules && appliance ` + prog + `-restore --confirm`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			if confirm {
				if len(args) > 0 || test || noflush || rollback != 0 {
					return usagef("--confirm takes no other option or file")
				}
				if err := c.Do(cmdContext(cmd), http.MethodPost, "/v1/iptables/confirm", nil, nil); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "rules confirmed")
				return nil
			}
			if rollback < 0 {
				return usagef("--rollback %v: want a positive duration", rollback)
			}
			var in io.Reader = cmd.InOrStdin()
			switch len(args) {
			case 0:
			case 1:
				f, err := os.Open(args[0])
				if err != nil {
					return usageError{err}
				}
				defer f.Close()
				in = f
			default:
				return usagef("at most one FILE")
			}
			text, err := io.ReadAll(io.LimitReader(in, 64<<20))
			if err != nil {
				return err
			}
			req := iptablesRequest{IPv6: v6, Text: string(text), Test: test, NoFlush: noflush}
			if rollback > 0 {
				req.Rollback = rollback.String()
			}
			if err := c.Do(cmdContext(cmd), http.MethodPost, "/v1/iptables/restore", req, nil); err != nil {
				return iptablesErr(err)
			}
			if rollback > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "rules applied; they roll back in %v unless `appliance %s-restore --confirm` runs first\n", rollback, prog)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&test, "test", "t", false, "only parse the text; apply nothing")
	cmd.Flags().BoolVarP(&noflush, "noflush", "n", false, "add to the tables instead of replacing them")
	cmd.Flags().DurationVar(&rollback, "rollback", 0, "restore the previous rules after DURATION unless confirmed")
	cmd.Flags().BoolVar(&confirm, "confirm", false, "keep the rules of a pending --rollback apply")
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}

// iptablesCmds are the iptables commands, IPv4 and IPv6.
func iptablesCmds() []*cobra.Command {
	return []*cobra.Command{
		newIptablesCmd("iptables", false), newIptablesCmd("ip6tables", true),
		newIptablesSaveCmd("iptables", false), newIptablesSaveCmd("ip6tables", true),
		newIptablesRestoreCmd("iptables", false), newIptablesRestoreCmd("ip6tables", true),
	}
}

// readRules reads and checks --rules / --rules6 files before anything
// starts: a bad file is a usage error naming the file and line.
func readRules(v4File, v6File string) (appliance.RuleText, error) {
	var rt appliance.RuleText
	for _, f := range []struct {
		flag, path string
		fam        iptables.Family
		dst        *string
	}{{"--rules", v4File, iptables.IPv4, &rt.IPv4}, {"--rules6", v6File, iptables.IPv6, &rt.IPv6}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		if err != nil {
			return rt, usagef("%s: %v", f.flag, err)
		}
		if _, err := iptables.Parse(bytes.NewReader(b), f.fam); err != nil {
			return rt, usagef("%s %s: %v", f.flag, f.path, err)
		}
		*f.dst = string(b)
	}
	return rt, nil
}
