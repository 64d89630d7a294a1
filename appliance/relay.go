package appliance

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// relayBufSize is the TCP relay's copy buffer: 256 KiB measured fastest
// (docs: gvisor-prototype-findings Q1; 64 KiB and 1 MiB were both slower).
const relayBufSize = 256 << 10

// Keepalive settings for both sides of a relayed connection.
const (
	keepIdle     = 30 * time.Second
	keepInterval = 15 * time.Second
	keepCount    = 4
)

// relayBufs holds *[]byte of relayBufSize. A relay takes a buffer only when
// its source is readable, so idle connections pin none.
var relayBufs = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

// streamConn is one side of a relayed TCP connection.
type streamConn interface {
	io.ReadWriteCloser
	CloseWrite() error
	// readPooled waits for data, EOF or an error, and only then takes a
	// relay buffer and reads into it, so an idle connection holds none.
	// The caller puts a non-nil buffer back. EOF is io.EOF.
	readPooled() (*[]byte, int, error)
	// abort closes the connection with a RST.
	abort()
}

// nsConn is the netstack side: a gonet conn plus the endpoint and queue it
// wraps, which readPooled waits on.
type nsConn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
}

func newNSConn(wq *waiter.Queue, ep tcpip.Endpoint) *nsConn {
	return &nsConn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, wq: wq}
}

func (c *nsConn) readPooled() (*[]byte, int, error) {
	if err := waitEndpoint(c.ep, c.wq); err != nil {
		return nil, 0, err
	}
	bp := relayBufs.Get().(*[]byte)
	n, err := c.Read(*bp)
	return bp, n, err
}

func (c *nsConn) abort() { c.ep.Abort() }

// waitEndpoint blocks until ep is readable, hung up or failed.
func waitEndpoint(ep tcpip.Endpoint, wq *waiter.Queue) error {
	const mask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if ep.Readiness(mask) != 0 {
		return nil
	}
	e, ch := waiter.NewChannelEntry(mask)
	wq.EventRegister(&e)
	defer wq.EventUnregister(&e)
	for ep.Readiness(mask) == 0 {
		<-ch
	}
	return nil
}

// tuneEndpoint sets keepalive and turns Nagle off on a netstack TCP
// endpoint.
func tuneEndpoint(ep tcpip.Endpoint) {
	o := ep.SocketOptions()
	o.SetKeepAlive(true)
	o.SetDelayOption(false)
	idle := tcpip.KeepaliveIdleOption(keepIdle)
	ep.SetSockOpt(&idle)
	intvl := tcpip.KeepaliveIntervalOption(keepInterval)
	ep.SetSockOpt(&intvl)
	ep.SetSockOptInt(tcpip.KeepaliveCountOption, keepCount)
}

var hostKeepAlive = net.KeepAliveConfig{Enable: true, Idle: keepIdle, Interval: keepInterval, Count: keepCount}

// hostConn is the host side: an ordinary socket.
type hostConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

func newHostConn(c *net.TCPConn) (*hostConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	c.SetNoDelay(true)
	c.SetKeepAliveConfig(hostKeepAlive)
	return &hostConn{TCPConn: c, rc: rc}, nil
}

func (c *hostConn) readPooled() (*[]byte, int, error) {
	bp, n, err := readWhenReady(c.rc, &relayBufs, syscall.Read)
	if err == nil && n == 0 {
		relayBufs.Put(bp)
		return nil, 0, io.EOF
	}
	return bp, n, err
}

func (c *hostConn) abort() {
	c.SetLinger(0)
	c.Close()
}

// readWhenReady reads from the socket behind rc once it has data, EOF or an
// error: in the runtime poller's callback it takes a buffer from pool and
// tries read; on EAGAIN it puts the buffer back and waits. So a buffer is
// held only while there is something to read, at one syscall per read. On
// success (n may be 0 for EOF) the caller owns bp and puts it back; on error
// bp is nil.
func readWhenReady(rc syscall.RawConn, pool *sync.Pool, read func(fd int, b []byte) (int, error)) (bp *[]byte, n int, err error) {
	rerr := rc.Read(func(fd uintptr) bool {
		bp = pool.Get().(*[]byte)
		n, err = read(int(fd), *bp)
		if errors.Is(err, syscall.EAGAIN) {
			pool.Put(bp)
			bp = nil
			return false
		}
		return true
	})
	if rerr == nil && err != nil && bp != nil {
		pool.Put(bp)
		bp = nil
	}
	if rerr != nil {
		return nil, 0, rerr
	}
	if err != nil {
		return nil, 0, err
	}
	return bp, n, nil
}

// copyStream copies src to dst until EOF, then half-closes dst. It holds
// a relay buffer only while src has data.
func copyStream(dst, src streamConn) error {
	for {
		bp, n, rerr := src.readPooled()
		if n > 0 {
			_, werr := dst.Write((*bp)[:n])
			if werr != nil {
				relayBufs.Put(bp)
				return werr
			}
		}
		if bp != nil {
			relayBufs.Put(bp)
		}
		if rerr == io.EOF {
			return dst.CloseWrite()
		}
		if rerr != nil {
			return rerr
		}
	}
}

// relayTCP relays between the container side a and the host side b until
// both directions end, then closes both. Half-close passes through: EOF on
// one side half-closes the other and the reverse direction keeps flowing.
// An error either way aborts both with a RST. It runs on the caller's
// goroutine (which must be owned by g) and takes ownership of a and b.
func (g *Gateway) relayTCP(a, b streamConn) {
	f := &flow{proto: protoTCP, close: func() { a.Close(); b.Close() }}
	if nc, ok := a.(*nsConn); ok {
		f.ep = nc.ep
	}
	if hc, ok := b.(*hostConn); ok {
		f.host = hc.TCPConn
	}
	f, ok := g.addFlowWith(f)
	if !ok {
		a.abort()
		b.abort()
		return
	}
	defer g.removeFlow(f)
	run := func(dst, src streamConn) error {
		err := copyStream(dst, src)
		if err != nil {
			a.abort()
			b.abort()
		}
		return err
	}
	done := make(chan error, 1)
	if !g.spawn(func() { done <- run(b, a) }) {
		a.abort()
		b.abort()
		return
	}
	run(a, b)
	<-done
	a.Close()
	b.Close()
}
