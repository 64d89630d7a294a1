package appliance

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// TestTCPTimeWaitReuse: when the host closes first (as a CRR server does),
// netstack is the active closer and keeps the 4-tuple in TIME-WAIT. A
// container client that reuses its port must still connect at once, as with
// Linux (tcp_timewait_state_process hands the SYN on as TCP_TW_SYN), instead
// of having every SYN dropped until the TIME-WAIT ends (patch 0020).
func TestTCPTimeWaitReuse(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	defer n.close()
	l := hostServer(t, func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			c.Write(b[:])
		}
	})
	const clientPort = 40123
	local := toFull(0, netip.AddrPortFrom(testV4.Container, clientPort))
	remote := toFull(0, gwAddr(tcpPort(l)))
	exchange := func(round int) {
		t.Helper()
		// The SYN's first retransmission comes after 1 s; an answer to it
		// would hide the bug, so the connect must succeed before.
		var c *gonet.TCPConn
		var err error
		for try := 0; try < 100; try++ {
			ctx, cancel := context.WithTimeout(context.Background(), 900*time.Millisecond)
			c, err = gonet.DialTCPWithBind(ctx, n.cs.Stack, local, remote, netProto(testV4.Container))
			cancel()
			// The fake container's own side of the last round may still be
			// in LAST-ACK for a moment.
			if err == nil || !strings.Contains(err.Error(), "port is in use") {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("round %d: dial from port %d: %v", round, clientPort, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'c'}); err != nil {
			t.Fatalf("round %d: write: %v", round, err)
		}
		b, err := io.ReadAll(c) // the byte, then EOF: the host closed first
		if err != nil || string(b) != "c" {
			t.Fatalf("round %d: read = %q, %v; want \"c\" then EOF", round, b, err)
		}
	}
	peer := netip.AddrPortFrom(testV4.Container, clientPort).String()
	for round := 1; round <= 3; round++ {
		exchange(round)
		waitFor(t, 10*time.Second, "the gateway's side of the connection in TIME-WAIT", func() bool {
			for _, s := range n.gw.Sockets() {
				if s.Proto == "tcp" && s.State == "TIME-WAIT" && s.Peer == peer {
					return true
				}
			}
			return false
		})
	}
}

// TestTCPMaxTimeWait: with net.ipv4.tcp_max_tw_buckets = N, netstack keeps
// at most N endpoints in TIME-WAIT; the others close at once and are
// counted as overflow, as Linux's tcp_time_wait does (patch 0022).
func TestTCPMaxTimeWait(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	const max, conns = 3, 8
	opts.Stack.Sysctl = map[string]string{"net.ipv4.tcp_max_tw_buckets": fmt.Sprint(max)}
	n := newTestNet(t, opts, true)
	defer n.close()
	l := hostServer(t, func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err == nil {
			c.Write(b[:])
		}
	})
	timeWait := func() int {
		k := 0
		for _, s := range n.gw.Sockets() {
			if s.Proto == "tcp" && s.State == "TIME-WAIT" {
				k++
			}
		}
		return k
	}
	stats := n.gw.stack.Stats().TCP
	for i := 0; i < conns; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := n.dial(ctx, gwAddr(tcpPort(l)))
		cancel()
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte{'c'})
		if b, err := io.ReadAll(c); err != nil || string(b) != "c" {
			t.Fatalf("conn %d: read %q, %v", i, b, err)
		}
		c.Close()
		// The host closed first: netstack ends in TIME-WAIT or, past
		// the cap, closed.
		waitFor(t, 10*time.Second, "the connection to leave the relay", func() bool {
			return stats.CurrentTimeWait.Value()+stats.TimeWaitOverflow.Value() == uint64(i+1)
		})
		if tw := timeWait(); tw > max {
			t.Fatalf("after %d connections %d endpoints in TIME-WAIT, want at most %d", i+1, tw, max)
		}
	}
	if tw, of := stats.CurrentTimeWait.Value(), stats.TimeWaitOverflow.Value(); tw != max || of != conns-max {
		t.Fatalf("TIME-WAIT %d, overflow %d; want %d and %d", tw, of, max, conns-max)
	}
	if tw := timeWait(); tw != max {
		t.Fatalf("ss lists %d endpoints in TIME-WAIT, want %d", tw, max)
	}
}
