//go:build integration

package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// helperEnv makes the test binary act as a helper program instead of
// running tests: TestMain checks it before anything else. The tests run
// the helper inside namespaces via `ip netns exec NS TESTBINARY helper ...`.
const helperEnv = "APPLIANCE_IT_HELPER"

// The test resolver's answers.
const (
	dnsName = "test.example."
	dnsA    = "192.0.2.1"
	dnsAAAA = "2001:db8::1"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// helperMain runs one helper mode and returns the exit code.
func helperMain(args []string) int {
	if len(args) < 2 || args[0] != "helper" {
		fmt.Fprintln(os.Stderr, "usage: helper serve|tcpecho|udpecho|tcpconns|tcpbulk FLAGS")
		return 2
	}
	var err error
	switch args[1] {
	case "serve":
		err = helperServe(args[2:])
	case "tcpecho":
		err = helperTCPEcho(args[2:])
	case "udpecho":
		err = helperUDPEcho(args[2:])
	case "tcpconns":
		err = helperTCPConns(args[2:])
	case "tcpbulk":
		err = helperTCPBulk(args[2:])
	case "rawsend":
		err = helperRawSend(args[2:])
	case "fwserve":
		err = helperFWServe(args[2:])
	case "fwprobe":
		err = helperFWProbe(args[2:])
	case "udpflood":
		err = helperUDPFlood(args[2:])
	case "synflood":
		err = helperSYNFlood(args[2:])
	case "slowsink":
		err = helperSlowSink(args[2:])
	case "tcpsend":
		err = helperTCPSend(args[2:])
	default:
		err = fmt.Errorf("unknown helper mode %q", args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

// helperServe serves until SIGTERM/SIGINT: HTTP that answers
// "remote=ADDR", TCP and UDP echo, a UDP server that answers "remote=ADDR",
// and a DNS server (UDP and TCP) that knows dnsName. It prints "ready" once
// every socket is bound and "accept ADDR" for each echo connection.
func helperServe(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var httpAddrs, tcpEcho, udpEcho, udpWho, dnsAddrs listFlag
	fs.Var(&httpAddrs, "http", "HTTP `addr` answering remote=ADDR (repeatable)")
	fs.Var(&tcpEcho, "tcpecho", "TCP echo `addr` (repeatable)")
	fs.Var(&udpEcho, "udpecho", "UDP echo `addr` (repeatable)")
	fs.Var(&udpWho, "udpwho", "UDP `addr` answering remote=ADDR (repeatable)")
	fs.Var(&dnsAddrs, "dns", "DNS `addr`, UDP and TCP (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var out sync.Mutex
	say := func(format string, a ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format+"\n", a...)
	}
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for _, a := range httpAddrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "remote=%s\n", r.RemoteAddr)
		})}
		go func() { fail(srv.Serve(ln)) }()
	}
	for _, a := range tcpEcho {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					fail(err)
					return
				}
				say("accept %s", c.RemoteAddr())
				go func() {
					defer c.Close()
					_, _ = io.Copy(c, c)
				}()
			}
		}()
	}
	udp := func(a string, who bool) error {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					fail(err)
					return
				}
				reply := buf[:n]
				if who {
					reply = []byte("remote=" + from.String())
				}
				_, _ = pc.WriteTo(reply, from)
			}
		}()
		return nil
	}
	for _, a := range udpEcho {
		if err := udp(a, false); err != nil {
			return err
		}
	}
	for _, a := range udpWho {
		if err := udp(a, true); err != nil {
			return err
		}
	}
	for _, a := range dnsAddrs {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		h := dns.HandlerFunc(answerDNS)
		us := &dns.Server{PacketConn: pc, Handler: h}
		ts := &dns.Server{Listener: ln, Handler: h}
		go func() { fail(us.ActivateAndServe()) }()
		go func() { fail(ts.ActivateAndServe()) }()
	}
	say("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

func answerDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	for _, qq := range q.Question {
		if !strings.EqualFold(qq.Name, dnsName) {
			m.Rcode = dns.RcodeNameError
			continue
		}
		switch qq.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.ParseIP(dnsA),
			})
		case dns.TypeAAAA:
			m.Answer = append(m.Answer, &dns.AAAA{
				Hdr:  dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 60},
				AAAA: net.ParseIP(dnsAAAA),
			})
		}
	}
	_ = w.WriteMsg(m)
}

// helperTCPEcho dials addr, sends msg, reads the echo and prints it.
func helperTCPEcho(args []string) error {
	fs := flag.NewFlagSet("tcpecho", flag.ContinueOnError)
	addr := fs.String("addr", "", "`host:port` to dial")
	msg := fs.String("msg", "hello", "message")
	timeout := fs.Duration("timeout", 3*time.Second, "overall timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(*timeout))
	if _, err := io.WriteString(c, *msg); err != nil {
		return err
	}
	buf := make([]byte, len(*msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	fmt.Print(string(buf))
	return nil
}

// helperUDPEcho sends msg to addr up to tries times and prints the first
// answer.
func helperUDPEcho(args []string) error {
	fs := flag.NewFlagSet("udpecho", flag.ContinueOnError)
	addr := fs.String("addr", "", "`host:port` to send to")
	msg := fs.String("msg", "hello", "message")
	timeout := fs.Duration("timeout", 2*time.Second, "timeout per try")
	tries := fs.Int("tries", 3, "tries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.Dial("udp", *addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for i := 0; i < *tries; i++ {
		if _, err := io.WriteString(c, *msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(*timeout))
		n, err := c.Read(buf)
		if err == nil {
			fmt.Print(string(buf[:n]))
			return nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
	}
	return fmt.Errorf("no answer from %s after %d tries", *addr, *tries)
}

// churnResult is what tcpconns prints.
type churnResult struct {
	OK       int64  `json:"ok"`
	Failed   int64  `json:"failed"`
	FirstErr string `json:"first_err,omitempty"`
	Millis   int64  `json:"ms"`
}

// helperTCPConns opens n connections to a TCP echo server with par workers:
// each dials, sends one byte, reads it back and closes.
func helperTCPConns(args []string) error {
	fs := flag.NewFlagSet("tcpconns", flag.ContinueOnError)
	addr := fs.String("addr", "", "`host:port` of a TCP echo server")
	n := fs.Int("n", 1000, "connections")
	par := fs.Int("par", 20, "parallel workers")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout per connection")
	total := fs.Duration("total", 60*time.Second, "overall time limit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), *total)
	defer cancel()
	start := time.Now()
	var next, ok, failed atomic.Int64
	var firstErr atomic.Value
	one := func() error {
		d := net.Dialer{Timeout: *timeout}
		c, err := d.DialContext(ctx, "tcp", *addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(*timeout))
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return err
		}
		return nil
	}
	var wg sync.WaitGroup
	for w := 0; w < *par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*n) && ctx.Err() == nil {
				if err := one(); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	r := churnResult{OK: ok.Load(), Failed: failed.Load(), Millis: time.Since(start).Milliseconds()}
	if s, _ := firstErr.Load().(string); s != "" {
		r.FirstErr = s
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// bulkResult is what tcpbulk prints.
type bulkResult struct {
	Bytes  int64 `json:"bytes"`
	Match  bool  `json:"match"`
	Millis int64 `json:"ms"`
}

// helperTCPBulk streams size pseudo-random bytes to a TCP echo server while
// reading the echo back, then compares SHA-256 of both directions.
func helperTCPBulk(args []string) error {
	fs := flag.NewFlagSet("tcpbulk", flag.ContinueOnError)
	addr := fs.String("addr", "", "`host:port` of a TCP echo server")
	size := fs.Int64("bytes", 32<<20, "bytes to send")
	timeout := fs.Duration("timeout", 60*time.Second, "overall timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	start := time.Now()
	c, err := net.DialTimeout("tcp", *addr, *timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(*timeout))
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		rng := rand.NewChaCha8([32]byte{1, 2, 3})
		buf := make([]byte, 64<<10)
		left := *size
		for left > 0 {
			n := min(int64(len(buf)), left)
			_, _ = rng.Read(buf[:n])
			sent.Write(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				werr <- err
				return
			}
			left -= n
		}
		werr <- c.(*net.TCPConn).CloseWrite()
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	r := bulkResult{Bytes: n, Match: n == *size && bytes.Equal(sent.Sum(nil), got.Sum(nil)), Millis: time.Since(start).Milliseconds()}
	return json.NewEncoder(os.Stdout).Encode(r)
}
