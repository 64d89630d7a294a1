package bench

import (
	"context"
	"io"
	"net"
	"time"
)

// Proxy relays every TCP connection accepted on ln to target through kernel
// sockets: it dials target, copies both ways (io.Copy, which Linux does
// with splice between two TCP sockets) and passes a half-close on (EOF one
// way shuts down the writing side of the other connection, the reverse
// keeps flowing). A refused dial closes the accepted connection.
//
// It is the bench's "proxy" path: the least work any relay that
// terminates TCP in userspace (the appliance, pasta, slirp4netns) does per
// connection and per exchange, with no TUN and no user-space TCP. It runs
// until ctx is done or ln fails, then closes ln and every connection and
// waits for its goroutines.
func Proxy(ctx context.Context, ln net.Listener, target string) error {
	d := net.Dialer{Timeout: 5 * time.Second}
	return serveConns(ctx, ln, func(set *connSet, c net.Conn) {
		s, err := d.DialContext(ctx, "tcp", target)
		if err != nil {
			return
		}
		if !set.add(s) {
			s.Close()
			return
		}
		defer set.close(s)
		up := make(chan struct{})
		go func() {
			defer close(up)
			pipeHalf(s, c)
		}()
		pipeHalf(c, s)
		<-up
	})
}

// pipeHalf copies src to dst until EOF or an error, then shuts down dst's
// writing side (a FIN). After an error it closes both, which resets them
// and ends the other direction's copy too.
func pipeHalf(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// ProxyPair is one relay of ProxyServe: connections to Listen go to
// Target.
type ProxyPair struct{ Listen, Target string }

// ProxyServe listens on every pair's Listen address (closing those it
// opened if one fails) and relays each with Proxy until ctx is done or a
// listener fails, which ends the others too. It returns the first error.
func ProxyServe(ctx context.Context, pairs []ProxyPair) error {
	lns := make([]net.Listener, 0, len(pairs))
	for _, p := range pairs {
		ln, err := net.Listen("tcp", p.Listen)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return err
		}
		lns = append(lns, ln)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(pairs))
	for i, p := range pairs {
		go func() { errs <- Proxy(ctx, lns[i], p.Target) }()
	}
	var first error
	for range pairs {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}
