package appliance

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestStalledDownloadBounded is a container that opens a download and never
// reads: the gateway must hold little of it. The send buffer of the
// gateway's endpoint grows with the congestion window from Linux's 16 KiB
// default (tcp_wmem; it was a fixed 4 MiB: 4.4 MiB of appliance memory per
// stalled download), and the relay reads the host socket only into room in
// that buffer (hostReader), so the rest waits in the host's kernel, whose
// window closes.
func TestStalledDownloadBounded(t *testing.T) {
	opts := testOptions()
	opts.AllowHostLoopback = true
	n := newTestNet(t, opts, true)
	// A container whose receive window stays at 64 KiB, as a Linux one
	// does for a socket that is never read.
	for k, v := range map[string]string{"net.ipv4.tcp_rmem": "4096 65536 65536", "net.ipv4.tcp_moderate_rcvbuf": "0"} {
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
	t.Logf("host wrote %d bytes; gateway endpoint: sndbuf %d, send-q %d, wmem %d", last, sock.SndBuf, sock.SendQ, sock.TMem)
	// The window the endpoint filled is 64 KiB; its congestion window
	// grew to a few hundred segments meanwhile (netstack grows it even
	// when the receive window is the limit), and the buffer with it.
	if sock.SndBuf >= 2<<20 {
		t.Errorf("a stalled download's send buffer is %d bytes: want it auto-tuned from 16 KiB (under 2 MiB here; it was a fixed 4 MiB)", sock.SndBuf)
	}
	if sock.SendQ == 0 || sock.SendQ > int(sock.SndBuf) {
		t.Errorf("send-q %d with a %d-byte send buffer: want the buffer full, and no more", sock.SendQ, sock.SndBuf)
	}
}
