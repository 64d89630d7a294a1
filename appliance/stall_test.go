package appliance

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestStalledDownloadBounded is a container that opens a download and never
// reads: the relay reads the host socket only into room in the gateway
// endpoint's send buffer (hostReader), so the endpoint holds at most its
// send buffer, the relay no buffer of its own, and the rest waits in the
// host socket, whose window closes. The send buffer grows with the
// congestion window from Linux's 16 KiB default (tcp_wmem; it was a fixed
// 4 MiB: 4.4 MiB of appliance memory per stalled download).
func TestStalledDownloadBounded(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNetMTU(t, opts, true, 1500)
	// A container whose receive window stays at 8 KiB: the download
	// stalls after a few segments, with the gateway's congestion window
	// still near its initial 10.
	for k, v := range map[string]string{"net.ipv4.tcp_rmem": "4096 8192 8192", "net.ipv4.tcp_moderate_rcvbuf": "0"} {
		if err := n.cs.Sysctl().Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	var sent atomic.Int64
	l := hostServer(t, func(c net.Conn) {
		b := make([]byte, 64<<10)
		for {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			k, err := c.Write(b)
			sent.Add(int64(k))
			if err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.dial(ctx, gwAddr(tcpPort(l)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()

	// Wait until the host server can write no more (bounded: 10 s).
	last, still := int64(-1), 0
	for i := 0; i < 200 && still < 6; i++ {
		time.Sleep(50 * time.Millisecond)
		if s := sent.Load(); s == last {
			still++
		} else {
			last, still = s, 0
		}
	}
	if still < 6 {
		t.Fatalf("the host server was still writing after 10 s (%d bytes): nothing stalls", last)
	}
	var sock *Socket
	for _, s := range n.gw.Sockets() {
		if s.Proto == "tcp" && s.State == "ESTAB" && s.HostLocal != "" {
			sock = &s
			break
		}
	}
	if sock == nil {
		t.Fatal("no relayed ESTAB socket in Sockets()")
	}
	// What the relay left unread in its host socket.
	hosts := relayedHostSocks(n.gw)
	if len(hosts) != 1 {
		t.Fatalf("%d relayed host sockets, want 1", len(hosts))
	}
	var unread int
	var ierr error
	if err := hosts[0].rc.Control(func(fd uintptr) { unread, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil || ierr != nil {
		t.Fatalf("SIOCINQ on the host socket: %v %v", err, ierr)
	}
	t.Logf("host wrote %d bytes; gateway endpoint: sndbuf %d, send-q %d, wmem %d; %d left unread in the host socket", last, sock.SndBuf, sock.SendQ, sock.TMem, unread)
	if sock.SendQ == 0 || sock.SendQ > int(sock.SndBuf) {
		t.Errorf("send-q %d with a %d-byte send buffer: want the buffer full, and no more", sock.SendQ, sock.SndBuf)
	}
	// The buffer follows the congestion window (Linux's
	// tcp_sndbuf_expand: 2 x max(10, cwnd) segments of 4.25 KiB each at
	// MTU 1500, gVisor patch 0041) from the 16 KiB default.
	if sock.SndBuf > 512<<10 {
		t.Errorf("a stalled download's send buffer is %d bytes (cwnd %d): want it auto-tuned from 16 KiB, under 512 KiB here (it was a fixed 4 MiB)", sock.SndBuf, sock.Cwnd)
	}
	if unread == 0 {
		t.Error("the relay drained its host socket although netstack had no room: it holds the data itself")
	}
}
