package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nsappliance/appliance/appliance"
	"github.com/nsappliance/appliance/control"
)

type ssFlags struct {
	tcp, udp, all, numeric, mem, info, ext bool
	name                                   string
}

func newSSCmd() *cobra.Command {
	var f ssFlags
	cmd := &cobra.Command{
		Use:   "ss [-t] [-u] [-a] [-n] [-m] [-i] [-e]",
		Short: "List a running appliance's netstack sockets, like ss",
		Long: `Lists netstack's TCP and UDP sockets of a running appliance as ss(8)
lists the kernel's. Addresses are seen from netstack: "Local" is where the
container connected to, "Peer" is the container. "Host" is the relay's host
socket for that connection (local -> peer). Without -a, listening and
closed sockets are left out. Addresses are always numeric (-n is accepted).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.NewClient(f.name)
			if err != nil {
				return usageError{err}
			}
			var socks []appliance.Socket
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/sockets", nil, &socks); err != nil {
				return err
			}
			printSS(cmd.OutOrStdout(), socks, f)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.tcp, "tcp", "t", false, "TCP sockets")
	fl.BoolVarP(&f.udp, "udp", "u", false, "UDP sockets")
	fl.BoolVarP(&f.all, "all", "a", false, "listening and closed sockets too")
	fl.BoolVarP(&f.numeric, "numeric", "n", false, "numeric addresses (always)")
	fl.BoolVarP(&f.mem, "memory", "m", false, "socket memory: skmem:(r receive+out-of-order truesize, rb receive buffer, t send truesize, tb send buffer, f charged but unused receive memory, w queued send truesize, o option memory (always 0), bl backlog truesize, d drops) as in Linux")
	fl.BoolVarP(&f.info, "info", "i", false, "TCP internals: congestion control, rto, rtt/rttvar, cwnd, ssthresh")
	fl.BoolVarP(&f.ext, "extended", "e", false, "accepted for compatibility; the host socket is always shown")
	fl.StringVar(&f.name, "name", "default", "instance name")
	return cmd
}

func printSS(w io.Writer, socks []appliance.Socket, f ssFlags) {
	rows := [][]string{{"Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Host (local -> peer)"}}
	var details [][]string // lines printed under each row
	details = append(details, nil)
	for _, s := range socks {
		if f.tcp != f.udp && (s.Proto == "tcp") != f.tcp {
			continue
		}
		if !f.all && (s.State == "LISTEN" || s.State == "CLOSE" || (s.Proto == "udp" && s.State == "UNCONN")) {
			continue
		}
		host := ""
		if s.HostLocal != "" {
			host = s.HostLocal + " -> " + s.HostPeer
		}
		rows = append(rows, []string{s.Proto, s.State, fmt.Sprint(s.RecvQ), fmt.Sprint(s.SendQ), s.Local, s.Peer, host})
		var d []string
		if f.mem {
			d = append(d, skmemString(s))
		}
		if f.info && s.Proto == "tcp" {
			d = append(d, ssInfo(s))
		}
		details = append(details, d)
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for n, r := range rows {
		line := ""
		for i, c := range r {
			if i == len(r)-1 {
				line += c
			} else {
				line += fmt.Sprintf("%-*s ", width[i], c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(line, " "))
		for _, d := range details[n] {
			fmt.Fprintf(w, "\t %s\n", d)
		}
	}
}

func newSockstatCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "sockstat",
		Short: "Print a running appliance's socket counts, like /proc/net/sockstat",
		Long: `Prints netstack's socket counts in /proc/net/sockstat's format. mem is in
pages of queued data (payload bytes; per-socket truesize accounting is not
there yet, so it reads lower than Linux would).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := control.NewClient(name)
			if err != nil {
				return usageError{err}
			}
			var st appliance.SockStat
			if err := c.Do(cmd.Context(), http.MethodGet, "/v1/sockstat", nil, &st); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "sockets: used %d\n", st.Used)
			fmt.Fprintf(w, "TCP: inuse %d orphan %d tw %d alloc %d mem %d\n", st.TCPInUse, st.TCPOrphan, st.TCPTW, st.TCPAlloc, st.TCPMem)
			fmt.Fprintf(w, "UDP: inuse %d mem %d\n", st.UDPInUse, st.UDPMem)
			if m := st.Memory; m != nil {
				// Not in Linux's sockstat: tcp_mem and the pressure state
				// (/proc/net/protocols' "memory pressure" column).
				p := 0
				if m.UnderPressure {
					p = 1
				}
				fmt.Fprintf(w, "TCP_MEM: pages %d min %d pressure %d max %d under_pressure %d pressures %d refused %d\n",
					m.Pages, m.Min, m.Pressure, m.Max, p, m.PressureEntered, m.Refused)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "default", "instance name")
	return cmd
}

// skmemString formats s's memory as ss -m's skmem:(r,rb,t,tb,f,w,o,bl,d).
// t and w are both the write list's truesize (netstack does not track
// what the link still holds after a write); o is always 0: netstack
// keeps no per-socket option memory.
func skmemString(s appliance.Socket) string {
	return fmt.Sprintf("skmem:(r%d,rb%d,t%d,tb%d,f%d,w%d,o0,bl%d,d%d)",
		s.RMem, s.RcvBuf, s.TMem, s.SndBuf, s.FwdAlloc, s.TMem, s.Backlog, s.Drops)
}
