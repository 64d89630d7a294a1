package appliance

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsappliance/appliance/internal/unpolled"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Keepalive settings for both sides of a relayed connection.
const (
	keepIdle     = 30 * time.Second
	keepInterval = 15 * time.Second
	keepCount    = 4
)

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

// readWhenReady reads from the socket behind rc once it has data, EOF or an
// error: in the runtime poller's callback it takes a buffer from pool and
// tries read; on EAGAIN it puts the buffer back and waits. So a buffer is
// held only while there is something to read, at one syscall per read. On
// success (n may be 0 for EOF) the caller owns bp and puts it back; on error
// bp is nil. (UDP flows; the TCP relay is event-driven, see tcpRelay.)
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

// Direction worker states (relayDir.state).
const (
	dirIdle    int32 = iota // no worker
	dirRunning              // a worker runs
	dirRerun                // a worker runs and must look again before it stops
)

// relayDir is one direction of a relay. At most one worker runs it at a
// time (state). A relay holds no buffer of its own: up writes netstack's
// receive queue to the host socket as it is (hostWriter), and down reads
// the host socket straight into netstack's send queue, only what fits
// (hostReader); what the destination cannot take stays in the source.
type relayDir struct {
	state atomic.Int32
	// full is set while the direction waits for its destination to take
	// more: only then do the destination's writable events kick it (they
	// come with every ACK that frees space).
	full atomic.Bool
	// ended is set once the source ended and the destination was
	// half-closed. An ended direction is not kicked again (kick,
	// downInline): a hang-up then concerns the other direction, or both
	// ended and the relay finished. Kicking it started a goroutine that
	// found it ended and stopped: one per connection, at its close.
	ended atomic.Bool
}

// tcpRelay relays one TCP connection between a netstack endpoint (the
// container side) and a host socket, without a goroutine or a buffer while
// the connection is idle. Readiness comes from netstack's waiter queue
// (NotifyEvent) and from the gateway's epoll instance for the host socket
// (hostPoller); either one kicks a direction, which starts a worker
// goroutine that moves data until its source is dry or its destination
// full, then ends. up is container to host, down host to container.
//
// Half-close passes through: EOF on one side half-closes the other and
// the reverse direction keeps flowing; when both have ended both sockets
// close. An error either way aborts both with a RST.
type tcpRelay struct {
	g    *Gateway
	f    *flow
	ep   tcpip.Endpoint
	wq   *waiter.Queue
	host *hostSock
	id   atomic.Uint64 // key in the host poller; 0 until hostPoller.add

	entry    waiter.Entry
	up, down relayDir
	ended    atomic.Int32 // directions that reached EOF
	closed   atomic.Bool
	once     sync.Once
}

// relayTCP starts relaying between the netstack endpoint ep (whose waiter
// queue is wq) and the host socket hs, and returns at once: the relay owns
// both from then on. If the gateway is draining or closing both are
// aborted. hs already has TCP_NODELAY and keepalive (dialHostSock sets
// them; for a net.TCPConn, Go and hostKeepAlive did, in dialHost's Dialer
// and publish's ListenConfig): setting them again cost five setsockopt
// calls per connection.
func (g *Gateway) relayTCP(ep tcpip.Endpoint, wq *waiter.Queue, hs *hostSock) {
	r := &tcpRelay{g: g, ep: ep, wq: wq, host: hs}
	r.f = &flow{proto: protoTCP, close: r.abort, ep: ep, host: hs}
	if _, ok := g.addFlowWith(r.f); !ok {
		ep.Abort()
		hs.abort()
		return
	}
	r.entry.Init(r, waiter.ReadableEvents|waiter.WritableEvents|waiter.EventHUp|waiter.EventErr)
	wq.EventRegister(&r.entry)
	if err := g.hostPoller().add(r); err != nil {
		g.debug("relay: host poller", "err", err)
		r.finish(err)
		return
	}
	// Data may have arrived before the registrations. Only the endpoint
	// needs a look: epoll reports a descriptor that is ready when it is
	// added. (Kicking both directions started two worker goroutines per
	// connection that mostly found nothing to do.) If it has data, the
	// calling goroutine (the SYN's handler, which ends here) relays it
	// rather than starting another, unless a kick got there first.
	if r.ep.Readiness(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) != 0 && r.up.state.CompareAndSwap(dirIdle, dirRunning) {
		r.work(&r.up)
	}
}

// NotifyEvent implements waiter.EventListener: netstack calls it with its
// queue's lock held, so it only kicks.
func (r *tcpRelay) NotifyEvent(m waiter.EventMask) {
	if m&(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr) != 0 {
		r.kick(&r.up)
	}
	if m&(waiter.EventHUp|waiter.EventErr) != 0 || (m&waiter.WritableEvents != 0 && r.down.full.Load()) {
		r.kick(&r.down)
	}
}

// hostEvent is called by the host poller with the socket's epoll events.
func (r *tcpRelay) hostEvent(ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		r.downInline(ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0)
	}
	if ev&(unix.EPOLLHUP|unix.EPOLLERR) != 0 || (ev&unix.EPOLLOUT != 0 && r.up.full.Load()) {
		r.kick(&r.up)
	}
}

// kick makes d's worker look at it: starts one if none runs, or tells the
// running one to look again. A direction that ended needs neither.
func (r *tcpRelay) kick(d *relayDir) {
	if d.ended.Load() {
		return
	}
	for {
		switch d.state.Load() {
		case dirIdle:
			if d.state.CompareAndSwap(dirIdle, dirRunning) {
				if d == &r.up && r.g.opts.Batch.runInline(r.upInline) {
					return
				}
				r.startWorker(d)
				return
			}
		case dirRunning:
			if d.state.CompareAndSwap(dirRunning, dirRerun) {
				return
			}
		default: // dirRerun: the worker will look again anyway
			return
		}
	}
}

// startWorker starts a worker goroutine for d, which the caller set
// running; if the gateway is closing, d goes idle instead.
func (r *tcpRelay) startWorker(d *relayDir) {
	if !r.g.spawn(func() { r.work(d) }) {
		d.state.Store(dirIdle)
		return
	}
	r.g.c.tcpRelayWorkers.Add(1)
}

// work runs d until it has nothing to do and no kick arrived meanwhile.
func (r *tcpRelay) work(d *relayDir) {
	for {
		d.state.Store(dirRunning)
		var err error
		if d == &r.up {
			err = r.pumpUp()
		} else {
			_, err = r.pumpDown(0, false)
		}
		if r.settle(d, err) {
			return
		}
	}
}

// settle ends a pass over d: on error the relay is aborted; it reports
// whether d went idle (no kick arrived during the pass).
func (r *tcpRelay) settle(d *relayDir, err error) bool {
	if err != nil {
		r.finish(err)
	}
	return d.state.CompareAndSwap(dirRunning, dirIdle)
}

// downInline handles host readiness on the host poller's goroutine when
// no worker runs: one write into netstack of what the socket holds (up to
// hostReadMax), which is all a request/response exchange needs, without
// starting a goroutine. If the write took all hostReadMax, the
// destination was full or a kick arrived meanwhile, a worker takes over.
// dataOnly is set when the event reported no hang-up or error: then a
// read shorter than asked means the socket is dry (see hostReader).
func (r *tcpRelay) downInline(dataOnly bool) {
	d := &r.down
	if d.ended.Load() {
		return
	}
	if !d.state.CompareAndSwap(dirIdle, dirRunning) {
		r.kick(d)
		return
	}
	more, err := r.pumpDown(1, dataOnly)
	if !more && r.settle(d, err) {
		return
	}
	if more && err != nil {
		r.settle(d, err) // aborts; a kick from finish may need a worker
	}
	// Still running (more to do, or kicked): a worker continues.
	r.startWorker(d)
}

// upInline runs the up direction on the link's reader at the end of the
// batch that made the endpoint readable (LinkBatch): the read and the host
// write happen at once, on the thread that holds the segments' endpoint
// anyway, without waking another. If it could not finish (a kick came
// during the pass), a worker takes over.
//
// Bulk data used to go to a worker from 16 KiB up, on the idea that
// another CPU would write to the host while the reader went on reading.
// Measured since the descriptors left Go's netpoller, the worker mostly
// spun in LockUser (runtime.Gosched) against the reader's segment
// processing, and a goroutine was started per batch: inline, an upload
// took 1.18-1.48 cpu-s/GB and moved 4.9-6.3 Gbit/s against 1.89-1.98 and
// 3.9-4.3 (three alternating pairs), and four streams were no slower.
func (r *tcpRelay) upInline() {
	d := &r.up
	// Kicks that came while the pass waited for the batch's end are what
	// it is for: they must not make it look again (work, too, stores
	// running before each pass). Two notifications in one batch (data,
	// then a FIN) used to start a worker that found nothing to do.
	d.state.Store(dirRunning)
	if r.settle(d, r.pumpUp()) {
		return
	}
	d.state.Store(dirRunning) // a kick came during the pass: look again
	r.startWorker(d)
}

// pumpUp moves container data to the host until the endpoint has none or
// the host socket is full. It returns nil when it must wait, an error when
// the relay must be aborted.
func (r *tcpRelay) pumpUp() error {
	d := &r.up
	for !r.closed.Load() {
		if d.ended.Load() {
			return nil
		}
		if r.ep.Readiness(waiter.ReadableEvents) == 0 {
			return nil
		}
		var w hostWriter
		var terr tcpip.Error
		if err := r.host.rc.Write(func(fd uintptr) bool {
			w.fd = int(fd)
			_, terr = r.ep.Read(&w, tcpip.ReadOptions{})
			return true
		}); err != nil {
			return err
		}
		if w.err != nil {
			return w.err
		}
		if w.blocked {
			// The host took less than netstack held (terr is nil, or
			// ErrBadBuffer when it took nothing): the rest stays queued.
			// Kicks from now on include EPOLLOUT; the socket may have
			// drained meanwhile, so try once more.
			if !d.full.Swap(true) {
				continue // the socket may have drained meanwhile
			}
			return nil
		}
		switch terr.(type) {
		case nil:
			d.full.Store(false)
		case *tcpip.ErrWouldBlock:
			return nil
		case *tcpip.ErrClosedForReceive:
			d.ended.Store(true)
			if err := r.host.CloseWrite(); err != nil {
				return err
			}
			r.directionEnded()
			return nil
		default:
			return errors.New(terr.String())
		}
	}
	return nil
}

// hostWriter is the tcpip.VectorWriter through which netstack's
// Endpoint.Read hands the up direction's data to the host socket: all the
// views queued in the receive queue (a GRO'd or GSO super-segment is one
// 64 KiB view; up to tcpip.MaxWriteVec of them) in one writev(2), straight
// from netstack's buffers, with no relay buffer and no copy (gVisor patch
// 0044). Read consumes exactly what the host took; what a full socket
// refuses (EAGAIN, or a short write) stays queued in netstack, whose
// window then closes. Before, each view was one write(2), and each write
// to a loopback socket ran the receiver's whole protocol path and woke it.
type hostWriter struct {
	fd      int
	blocked bool // the socket took less than offered, or nothing (EAGAIN)
	err     error
}

// Every slice Read hands WriteVec goes into the one writev.
const _ = uint(unpolled.MaxIovecs - tcpip.MaxWriteVec)

// errHostFull stops Endpoint.Read when the host socket takes no more.
var errHostFull = errors.New("host socket full")

// WriteVec implements tcpip.VectorWriter.
func (w *hostWriter) WriteVec(bufs [][]byte) (int, error) {
	if w.blocked || w.err != nil {
		return 0, errHostFull
	}
	n, err := unpolled.Writev(w.fd, bufs)
	switch {
	case err == unix.EAGAIN:
		w.blocked = true
		return 0, errHostFull
	case err != nil:
		w.err = err
		return 0, err
	case n < totalLen(bufs):
		w.blocked = true
	}
	return n, nil
}

// Write implements io.Writer (one slice): Endpoint.Read calls WriteVec.
func (w *hostWriter) Write(p []byte) (int, error) {
	n, err := w.WriteVec([][]byte{p})
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// pumpDown moves host data to the container until the host socket has
// none (EAGAIN: the edge-triggered poller reports the next arrival; EOF
// may come with the last data, so it always reads until then) or the
// endpoint's send buffer is full. The data goes from the socket straight
// into netstack's send queue (hostReader): nothing is read that netstack
// has no room for, so the direction holds no buffer of its own, and a
// full send buffer leaves the rest in the host socket, whose window then
// closes. With reads > 0 it stops after that many writes that took all
// hostReadMax and reports more (the socket may hold more). shortDry lets a
// short read stand for EAGAIN (hostReader.shortDry).
func (r *tcpRelay) pumpDown(reads int, shortDry bool) (more bool, err error) {
	d := &r.down
	nreads := 0
	for !r.closed.Load() {
		if d.ended.Load() {
			return false, nil
		}
		if reads > 0 && nreads >= reads {
			return true, nil
		}
		hr := hostReader{shortDry: shortDry}
		var terr tcpip.Error
		if err := r.host.rc.Read(func(fd uintptr) bool {
			hr.fd = int(fd)
			_, terr = r.ep.Write(&hr, tcpip.WriteOptions{})
			return true
		}); err != nil {
			return false, err
		}
		switch terr.(type) {
		case nil:
			d.full.Store(false)
		case *tcpip.ErrWouldBlock:
			// Nothing was read. As in pumpUp: from now on writable
			// events kick us; look once more in case space came
			// meanwhile.
			if !d.full.Swap(true) {
				continue
			}
			return false, nil
		default:
			return false, errors.New(terr.String())
		}
		switch {
		case hr.err != nil:
			return false, hr.err
		case hr.eof:
			d.ended.Store(true)
			r.ep.Shutdown(tcpip.ShutdownWrite)
			r.directionEnded()
			return false, nil
		case hr.drained:
			return false, nil
		}
		nreads++ // took all it asked for: the socket may hold more
	}
	return false, nil
}

// hostReadMax is the most one Endpoint.Write takes from the host socket
// (less when the send buffer has less room): 256 KiB, the size that
// measured fastest for the relay's copy buffer when it had one (docs:
// gvisor-prototype-findings Q1; 64 KiB and 1 MiB were both slower).
const hostReadMax = 256 << 10

// hostReader is the tcpip.Payloader through which Endpoint.Write reads the
// host socket straight into the views of netstack's send queue (64 KiB
// each), with no relay buffer between and no copy. Its length is only an
// upper bound: it reads until the socket has no more (EAGAIN), ends (EOF)
// or fails, and then reports io.EOF, which ends the Write with what was
// read (gVisor patch 0040 makes a short copy end it). Netstack reads it
// without the endpoint's locks held.
//
// With shortDry a read that returns less than asked counts as the socket
// running dry, without the read that would return EAGAIN (one system call
// per request/response exchange). That holds for an edge-triggered event
// that reported data only: TCP's recvmsg takes all the socket holds up to
// the length asked, and data or a FIN that comes after it wakes the epoll
// instance again. An event that reported a hang-up reads until EOF, which
// may come after the last data.
type hostReader struct {
	fd       int
	shortDry bool
	drained  bool  // the socket had no more (EAGAIN, or a short read with shortDry)
	eof      bool  // the peer closed its side
	err      error // the read failed: the relay aborts
}

func (h *hostReader) Len() int { return hostReadMax }

func (h *hostReader) Read(p []byte) (int, error) {
	if len(p) == 0 { // View.ReadFrom's check for the end
		if h.drained || h.eof || h.err != nil {
			return 0, io.EOF
		}
		return 0, nil
	}
	return h.ReadVec([][]byte{p})
}

// ReadVec is Read into several slices with one readv(2)
// (buffer.VectorReader): netstack's Write then fills all the 64 KiB views
// a large write needs with one system call, and the host socket's ACK
// that opens the sender's window goes once per call, not per view.
func (h *hostReader) ReadVec(bufs [][]byte) (int, error) {
	if h.drained || h.eof || h.err != nil {
		return 0, io.EOF
	}
	for {
		n, err := unpolled.Readv(h.fd, bufs)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			h.drained = true
			return 0, io.EOF
		case err != nil:
			h.err = err
			return 0, io.EOF
		case n == 0:
			h.eof = true
			return 0, io.EOF
		}
		if h.shortDry && n < totalLen(bufs) {
			h.drained = true
		}
		return n, nil
	}
}

// totalLen is the summed length of bufs.
func totalLen(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	return n
}

// directionEnded notes an EOF passed through; the second one closes the
// relay gracefully.
func (r *tcpRelay) directionEnded() {
	if r.ended.Add(1) == 2 {
		r.finish(nil)
	}
}

// abort is the flow's close: both sides get a RST. Gateway.Close uses it.
func (r *tcpRelay) abort() { r.finish(errors.New("relay aborted")) }

// finish ends the relay once: with err nil both sockets close normally,
// otherwise both are aborted. Workers still running see closed and stop.
func (r *tcpRelay) finish(err error) {
	r.once.Do(func() {
		r.closed.Store(true)
		r.wq.EventUnregister(&r.entry)
		r.g.hostPoller().remove(r)
		if err != nil {
			r.ep.Abort()
			r.host.abort()
		} else {
			r.ep.Close()
			r.host.Close()
		}
		r.g.removeFlow(r.f)
		// An up direction parked on a full host socket may hold a
		// buffer: let its worker run once more to put it back. A running
		// worker sees closed and stops by itself; the down direction
		// holds no buffer. (Kicking both always started a goroutine per
		// direction at every close.)
		if r.up.full.Load() {
			r.kick(&r.up)
		}
	})
}

func abortHost(h *net.TCPConn) {
	h.SetLinger(0)
	h.Close()
}

// waitEndpoint blocks until ep is readable, hung up or failed (UDP flows).
func waitEndpoint(ep tcpip.Endpoint, wq *waiter.Queue) {
	const mask = waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	if ep.Readiness(mask) != 0 {
		return
	}
	e, ch := waiter.NewChannelEntry(mask)
	wq.EventRegister(&e)
	defer wq.EventUnregister(&e)
	for ep.Readiness(mask) == 0 {
		<-ch
	}
}
