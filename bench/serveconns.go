package bench

import (
	"context"
	"errors"
	"net"
	"sync"
)

// connSet is the connections a server (Serve, Proxy) has open, so that
// the end of its context closes them all.
type connSet struct {
	ctx   context.Context
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// add tracks c; false (c untracked) once the context is done.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// close stops tracking c and closes it.
func (s *connSet) close(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// serveConns accepts on ln until ctx is done (nil) or ln fails, and runs
// handle on a goroutine of its own for each connection, which it closes
// when handle returns. When ctx is done it closes ln and every connection
// in the set (handle adds any it opens itself), and it returns only after
// every handle did.
func serveConns(ctx context.Context, ln net.Listener, handle func(set *connSet, c net.Conn)) error {
	set := &connSet{ctx: ctx, conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		set.mu.Lock()
		defer set.mu.Unlock()
		for c := range set.conns {
			c.Close()
		}
	})
	defer stop()
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
		if !set.add(c) {
			c.Close()
			return nil
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer set.close(c)
			handle(set, c)
		}()
	}
}
