package appliance

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// dnsRetry is how long a UDP query waits for an answer before it is
	// sent to the next upstream.
	dnsRetry = 1500 * time.Millisecond
	// dnsMaxPending bounds the queries one DNS flow tracks.
	dnsMaxPending = 256
)

// resolvConfUpstreams returns the nameservers in path, at port 53. A missing
// or unreadable file gives none.
func resolvConfUpstreams(path string) []netip.AddrPort {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseResolvConf(bufio.NewScanner(f))
}

func parseResolvConf(sc *bufio.Scanner) []netip.AddrPort {
	var out []netip.AddrPort
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || a.IsUnspecified() {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}

// dnsRelay forwards one container UDP flow's queries to the upstreams over
// one unconnected host socket. Each query goes to the upstream that last
// answered; a query unanswered after dnsRetry moves on to the next
// upstream, once around the list.
type dnsRelay struct {
	ups  []netip.AddrPort
	conn *net.UDPConn
	pref atomic.Int32 // index into ups of the upstream that last answered

	mu sync.Mutex
	// +checklocks:mu
	pending map[uint16]*dnsQuery
	// +checklocks:mu
	closed bool
}

type dnsQuery struct {
	msg        []byte
	first, cur int
	timer      *time.Timer // nil with a single upstream
}

func (q *dnsQuery) stop() {
	if q.timer != nil {
		q.timer.Stop()
	}
}

func newDNSRelay(ups []netip.AddrPort, conn *net.UDPConn) *dnsRelay {
	return &dnsRelay{ups: ups, conn: conn, pending: make(map[uint16]*dnsQuery)}
}

// query sends one query from the container.
func (d *dnsRelay) query(b []byte) {
	if len(b) < 12 {
		return // not DNS
	}
	id := binary.BigEndian.Uint16(b)
	i := int(d.pref.Load())
	q := &dnsQuery{msg: append([]byte(nil), b...), first: i, cur: i}
	d.mu.Lock()
	if d.closed || len(d.pending) >= dnsMaxPending {
		d.mu.Unlock()
		return
	}
	if old := d.pending[id]; old != nil {
		old.stop() // the client retried: start over
	}
	d.pending[id] = q
	if len(d.ups) > 1 {
		q.timer = time.AfterFunc(dnsRetry, func() { d.retry(id, q) })
	}
	d.mu.Unlock()
	d.conn.WriteToUDPAddrPort(b, d.ups[i])
}

func (d *dnsRelay) retry(id uint16, q *dnsQuery) {
	d.mu.Lock()
	if d.closed || d.pending[id] != q {
		d.mu.Unlock()
		return
	}
	next := (q.cur + 1) % len(d.ups)
	if next == q.first {
		delete(d.pending, id)
		d.mu.Unlock()
		return
	}
	q.cur = next
	q.timer.Reset(dnsRetry)
	d.mu.Unlock()
	d.conn.WriteToUDPAddrPort(q.msg, d.ups[next])
}

// answers reads upstream replies until the socket closes and passes each
// answer to a pending query to out.
func (d *dnsRelay) answers(rc syscall.RawConn, out func([]byte)) {
	var from netip.AddrPort
	read := recvFrom(&from)
	for {
		bp, n, err := readWhenReady(rc, &udpBufs, read)
		if err != nil {
			if d.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if d.accept((*bp)[:n], from) {
			out((*bp)[:n])
		}
		udpBufs.Put(bp)
	}
}

// accept reports whether b from from answers a pending query, and if so
// retires the query and prefers from.
func (d *dnsRelay) accept(b []byte, from netip.AddrPort) bool {
	if len(b) < 12 {
		return false
	}
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	idx := -1
	for i, u := range d.ups {
		if u == from {
			idx = i
			break
		}
	}
	if idx < 0 {
		return false
	}
	id := binary.BigEndian.Uint16(b)
	d.mu.Lock()
	q := d.pending[id]
	if q != nil {
		q.stop()
		delete(d.pending, id)
	}
	d.mu.Unlock()
	if q == nil {
		return false
	}
	d.pref.Store(int32(idx))
	return true
}

func (d *dnsRelay) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

func (d *dnsRelay) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for id, q := range d.pending {
		q.stop()
		delete(d.pending, id)
	}
}
