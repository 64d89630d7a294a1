package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return false
		}
		conns[c] = struct{}{}
		return true
	}
	untrack := func(c net.Conn) {
		mu.Lock()
		delete(conns, c)
		mu.Unlock()
		c.Close()
	}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	d := net.Dialer{Timeout: 5 * time.Second}
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if !track(c) {
			c.Close()
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer untrack(c)
			s, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				return
			}
			if !track(s) {
				s.Close()
				return
			}
			defer untrack(s)
			up := make(chan struct{})
			go func() {
				defer close(up)
				pipeHalf(s, c)
			}()
			pipeHalf(c, s)
			<-up
		}()
	}
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
