//go:build integration

package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// helperFWServe serves the firewall probes until SIGTERM: on every TCP port
// given it answers each connection with one line "peer=IP:PORT
// local=IP:PORT" (what it saw, after any NAT) and waits for the client to
// go; on every UDP port it answers each datagram with the same line.
// Usage: fwserve PORT/tcp|PORT/udp...
func helperFWServe(args []string) error {
	var closers []func()
	for _, a := range args {
		port, proto, ok := strings.Cut(a, "/")
		if !ok {
			return fmt.Errorf("bad spec %q", a)
		}
		switch proto {
		case "tcp":
			ln, err := net.Listen("tcp", ":"+port)
			if err != nil {
				return err
			}
			closers = append(closers, func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						// Closed with a RST soon after, so a probe
						// whose packets a rule dropped leaves nothing
						// behind that a later rule set would count.
						defer func() {
							c.(*net.TCPConn).SetLinger(0)
							c.Close()
						}()
						fmt.Fprintf(c, "peer=%s local=%s\n", c.RemoteAddr(), c.LocalAddr())
						c.SetReadDeadline(time.Now().Add(800 * time.Millisecond))
						var b [64]byte
						for {
							if _, err := c.Read(b[:]); err != nil {
								return
							}
						}
					}()
				}
			}()
		case "udp":
			pc, err := net.ListenPacket("udp", ":"+port)
			if err != nil {
				return err
			}
			closers = append(closers, func() { pc.Close() })
			go func() {
				b := make([]byte, 2048)
				for {
					_, from, err := pc.ReadFrom(b)
					if err != nil {
						return
					}
					// The local address needs IP_PKTINFO; the port is
					// enough to see a DNAT.
					fmt.Fprintf(pcWriter{pc, from}, "peer=%s local=:%s\n", from, port)
				}
			}()
		default:
			return fmt.Errorf("bad proto in %q", a)
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	for _, c := range closers {
		c()
	}
	return nil
}

type pcWriter struct {
	pc net.PacketConn
	to net.Addr
}

func (w pcWriter) Write(b []byte) (int, error) { return w.pc.WriteTo(b, w.to) }

// helperFWProbe runs probes concurrently and prints one sorted line per
// probe: "NAME RESULT". A probe is NAME=tcp:[ADDR]:PORT, udp:..., or
// ping:ADDR. Results: "ok peer=IP port=same|N local=IP:PORT" (what the
// server saw), "ok" for a ping reply, an errno name (ECONNREFUSED,
// EHOSTUNREACH, ...), "icmp TYPE/CODE" for a ping answered with an error,
// or "timeout". TCP closes with a RST (linger 0) so every probe is the same
// few packets on every run; nothing is retried.
func helperFWProbe(args []string) error {
	var mu sync.Mutex
	var lines []string
	var wg sync.WaitGroup
	// "base=N" first: probe i uses local port (and ICMP echo id) N+i, so
	// both twins send the very same packets and no probe's tuple repeats
	// an earlier one still in conntrack.
	base := 0
	if len(args) > 0 && strings.HasPrefix(args[0], "base=") {
		b, err := strconv.Atoi(strings.TrimPrefix(args[0], "base="))
		if err != nil {
			return err
		}
		base, args = b, args[1:]
	}
	for i, a := range args {
		name, spec, ok := strings.Cut(a, "=")
		if !ok {
			return fmt.Errorf("bad probe %q", a)
		}
		wg.Add(1)
		lport := 0
		if base > 0 {
			lport = base + i
		}
		go func() {
			defer wg.Done()
			r := fwProbe(spec, lport)
			mu.Lock()
			lines = append(lines, name+" "+r)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	return nil
}

// probeWait is how long a probe waits for an answer: under the kernel's
// first SYN retransmission (1s), so a dropped probe is one packet.
const probeWait = 700 * time.Millisecond

func fwProbe(spec string, lport int) string {
	proto, addr, _ := strings.Cut(spec, ":")
	switch proto {
	case "tcp":
		d := net.Dialer{Timeout: probeWait}
		if lport > 0 {
			d.LocalAddr = &net.TCPAddr{Port: lport}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return errName(err)
		}
		tc := c.(*net.TCPConn)
		defer func() {
			tc.SetLinger(0)
			tc.Close()
		}()
		tc.SetReadDeadline(time.Now().Add(probeWait))
		b := make([]byte, 256)
		n, err := tc.Read(b)
		if err != nil {
			if e := errName(err); e == "ECONNRESET" {
				// Reset before or after connect returned is timing.
				return e
			}
			return "connected-" + errName(err)
		}
		return okLine(string(b[:n]), tc.LocalAddr())
	case "udp":
		d := net.Dialer{}
		if lport > 0 {
			d.LocalAddr = &net.UDPAddr{Port: lport}
		}
		c, err := d.Dial("udp", addr)
		if err != nil {
			return errName(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("probe")); err != nil {
			return errName(err)
		}
		c.SetReadDeadline(time.Now().Add(probeWait))
		b := make([]byte, 256)
		n, err := c.Read(b)
		if err != nil {
			return errName(err)
		}
		return okLine(string(b[:n]), c.LocalAddr())
	case "ping":
		return ping(addr, lport)
	}
	return "bad-probe"
}

// okLine turns the server's "peer=... local=..." into a line that is the
// same on every run: the peer port only as "same" when NAT kept it.
func okLine(s string, local net.Addr) string {
	s = strings.TrimSpace(s)
	var peer, loc string
	for _, f := range strings.Fields(s) {
		if v, ok := strings.CutPrefix(f, "peer="); ok {
			peer = v
		}
		if v, ok := strings.CutPrefix(f, "local="); ok {
			loc = v
		}
	}
	host, port, err := net.SplitHostPort(peer)
	if err != nil {
		return "ok garbled=" + s
	}
	_, myPort, _ := net.SplitHostPort(local.String())
	if port == myPort {
		port = "same"
	} else if n, err := strconv.Atoi(port); err != nil || n < 20000 || n > 20010 {
		// Linux picks a NAT port at random unless a rule names the range
		// (the tests use 20000-20010).
		port = "other"
	}
	return fmt.Sprintf("ok peer=%s port=%s local=%s", host, port, loc)
}

func errName(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.EHOSTUNREACH:
			return "EHOSTUNREACH"
		case syscall.ENETUNREACH:
			return "ENETUNREACH"
		case syscall.ECONNRESET:
			return "ECONNRESET"
		case syscall.EACCES:
			return "EACCES"
		case syscall.ENOPROTOOPT:
			return "ENOPROTOOPT"
		case syscall.EPROTO:
			return "EPROTO"
		}
		return "errno-" + strconv.Itoa(int(errno))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "error"
}

// ping sends one echo request and reports the answer.
func ping(addr string, id int) string {
	ip := net.ParseIP(addr)
	v6 := ip.To4() == nil
	network, proto := "ip4:icmp", 1
	if v6 {
		network, proto = "ip6:ipv6-icmp", 58
	}
	c, err := icmp.ListenPacket(network, "")
	if err != nil {
		return "error-listen"
	}
	defer c.Close()
	if id == 0 {
		id = os.Getpid()&0x7fff ^ int(time.Now().UnixNano()&0x7fff)
	}
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if v6 {
		typ = ipv6.ICMPTypeEchoRequest
	}
	m := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("fwprobe")}}
	b, _ := m.Marshal(nil)
	if _, err := c.WriteTo(b, &net.IPAddr{IP: ip}); err != nil {
		return errName(err)
	}
	deadline := time.Now().Add(probeWait)
	buf := make([]byte, 1500)
	for {
		c.SetReadDeadline(deadline)
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return "timeout"
		}
		rm, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		switch body := rm.Body.(type) {
		case *icmp.Echo:
			if body.ID == id && (rm.Type == ipv4.ICMPTypeEchoReply || rm.Type == ipv6.ICMPTypeEchoReply) {
				return "ok from=" + from.String()
			}
		case *icmp.DstUnreach:
			if quotesID(body.Data, v6, id) {
				return fmt.Sprintf("icmp %d/%d from=%s", icmpType(rm.Type), rm.Code, from)
			}
		}
	}
}

func icmpType(t icmp.Type) int {
	switch t := t.(type) {
	case ipv4.ICMPType:
		return int(t)
	case ipv6.ICMPType:
		return int(t)
	}
	return -1
}

// quotesID reports whether an ICMP error quotes our echo request.
func quotesID(q []byte, v6 bool, id int) bool {
	off := 20
	if v6 {
		off = 40
	} else if len(q) > 0 {
		off = int(q[0]&0xf) * 4
	}
	return len(q) >= off+6 && int(q[off+4])<<8|int(q[off+5]) == id
}

// helperUDPFlood sends small UDP datagrams to ADDR as fast as THREADS
// goroutines can until SIGTERM, then prints how many it sent.
// Usage: udpflood ADDR THREADS
func helperUDPFlood(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: udpflood ADDR THREADS")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	var sent atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		c, err := net.Dial("udp", args[0])
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			b := make([]byte, 18)
			for {
				select {
				case <-stop:
					return
				default:
				}
				for j := 0; j < 64; j++ {
					if _, err := c.Write(b); err == nil {
						sent.Add(1)
					}
				}
			}
		}()
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	close(stop)
	wg.Wait()
	fmt.Println("sent", sent.Load())
	return nil
}

// helperSYNFlood sends TCP SYNs to ADDR:PORT from a raw socket as fast as
// it can (sendmmsg, 64 per call), every one from a new source port and
// sequence number, as a SYN flood does, until SIGTERM; then it prints
// "sent N". Usage: synflood ADDR:PORT
func helperSYNFlood(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: synflood ADDR:PORT")
	}
	dst, err := net.ResolveUDPAddr("udp4", args[0])
	if err != nil {
		return err
	}
	// The source address the kernel will put in the IP header, for the
	// TCP checksum's pseudo-header.
	c, err := net.DialUDP("udp4", nil, dst)
	if err != nil {
		return err
	}
	src := c.LocalAddr().(*net.UDPAddr).IP.To4()
	c.Close()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer syscall.Close(fd)
	const batch = 64
	sa := syscall.RawSockaddrInet4{Family: syscall.AF_INET}
	copy(sa.Addr[:], dst.IP.To4())
	var pkts [batch][20]byte
	var iovs [batch]syscall.Iovec
	var msgs [batch]struct {
		hdr syscall.Msghdr
		len uint32
		_   [4]byte
	}
	for i := range msgs {
		iovs[i].Base = &pkts[i][0]
		iovs[i].SetLen(20)
		msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&sa))
		msgs[i].hdr.Namelen = syscall.SizeofSockaddrInet4
		msgs[i].hdr.Iov = &iovs[i]
		msgs[i].hdr.Iovlen = 1
	}
	var sent atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		sport, seq := uint16(1024), uint32(1)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := range pkts {
				if sport++; sport < 1024 {
					sport = 1024
				}
				seq += 7919
				synHeader(pkts[i][:], src, dst.IP.To4(), sport, uint16(dst.Port), seq)
			}
			n, _, errno := syscall.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), batch, 0, 0, 0)
			if errno == 0 {
				sent.Add(uint64(n))
			}
		}
	}()
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	close(stop)
	<-done
	fmt.Println("sent", sent.Load())
	return nil
}

// synHeader writes a 20-byte TCP SYN header with its checksum into b.
func synHeader(b []byte, src, dst net.IP, sport, dport uint16, seq uint32) {
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	binary.BigEndian.PutUint32(b[8:], 0)
	b[12] = 5 << 4
	b[13] = 0x02 // SYN
	binary.BigEndian.PutUint16(b[14:], 64240)
	binary.BigEndian.PutUint32(b[16:], 0) // checksum, urgent pointer
	sum := uint32(syscall.IPPROTO_TCP) + 20
	for i := 0; i < 4; i += 2 {
		sum += uint32(src[i])<<8 | uint32(src[i+1])
		sum += uint32(dst[i])<<8 | uint32(dst[i+1])
	}
	for i := 0; i < 20; i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(b[16:], ^uint16(sum))
}
