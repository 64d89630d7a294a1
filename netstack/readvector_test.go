package netstack

import (
	"bytes"
	"errors"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/seqnum"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// vecWriter is a tcpip.VectorWriter that takes up to limit bytes per
// WriteVec (all when limit is 0) and records what it was offered.
type vecWriter struct {
	limit   int
	fail    bool
	vecs    int // WriteVec calls
	writes  int // Write calls
	offered int // slices in the last WriteVec
	got     bytes.Buffer
}

var errVecFull = errors.New("vecWriter full")

func (w *vecWriter) WriteVec(bufs [][]byte) (int, error) {
	w.vecs++
	w.offered = len(bufs)
	if w.fail {
		return 0, errVecFull
	}
	n := 0
	for _, b := range bufs {
		if w.limit > 0 && n+len(b) > w.limit {
			b = b[:w.limit-n]
		}
		w.got.Write(b)
		n += len(b)
	}
	return n, nil
}

func (w *vecWriter) Write(p []byte) (int, error) {
	w.writes++
	w.got.Write(p)
	return len(p), nil
}

// TestReadVectorWriter covers gVisor patch 0044: Endpoint.Read hands a
// tcpip.VectorWriter every queued segment's data in one WriteVec and
// consumes exactly what WriteVec reports taken, the rest staying queued
// for the next Read; a WriteVec that takes nothing and fails consumes
// nothing and makes Read report ErrBadBuffer.
func TestReadVectorWriter(t *testing.T) {
	s, link := rawStack(t)
	var wq waiter.Queue
	ln, terr := s.Stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	t.Cleanup(ln.Close)
	if terr := ln.Bind(tcpip.FullAddress{Port: localPort}); terr != nil {
		t.Fatal(terr)
	}
	if terr := ln.Listen(10); terr != nil {
		t.Fatal(terr)
	}
	p := &rawPeer{t: t, ep: link, sndNxt: 1000}
	p.send(header.TCPFlagSyn, p.sndNxt, nil)
	p.sndNxt++
	synAck := p.read()
	p.rcvNxt = seqnum.Value(synAck.SequenceNumber()) + 1
	p.send(header.TCPFlagAck, p.sndNxt, nil)
	var c tcpip.Endpoint
	waitFor(t, "the accepted endpoint", func() bool {
		c, _, terr = ln.Accept(nil)
		return terr == nil
	})
	t.Cleanup(c.Close)

	// Three segments: three views, one WriteVec.
	var sent []byte
	for i := range 3 {
		seg := bytes.Repeat([]byte{byte('a' + i)}, 1000)
		p.send(header.TCPFlagAck|header.TCPFlagPsh, p.sndNxt, seg)
		p.sndNxt += seqnum.Value(len(seg))
		sent = append(sent, seg...)
	}
	queued := func() int {
		n, terr := c.GetSockOptInt(tcpip.ReceiveQueueSizeOption)
		if terr != nil {
			t.Fatal(terr)
		}
		return n
	}
	waitFor(t, "3000 bytes queued", func() bool { return queued() == 3000 })

	// A WriteVec that fails with nothing taken: nothing is consumed.
	failing := &vecWriter{fail: true}
	if _, terr := c.Read(failing, tcpip.ReadOptions{}); terr == nil {
		t.Fatal("Read with a failing WriteVec: no error, want ErrBadBuffer")
	} else if _, ok := terr.(*tcpip.ErrBadBuffer); !ok {
		t.Fatalf("Read with a failing WriteVec: %v, want ErrBadBuffer", terr)
	}

	// A short WriteVec: exactly what it took is consumed.
	short := &vecWriter{limit: 1500}
	res, terr := c.Read(short, tcpip.ReadOptions{})
	if terr != nil {
		t.Fatal(terr)
	}
	if short.vecs != 1 || short.writes != 0 || short.offered != 3 {
		t.Fatalf("%d WriteVec (offered %d slices) and %d Write calls; want one WriteVec of the 3 segments' views (gVisor patch 0044 missing?)", short.vecs, short.offered, short.writes)
	}
	if res.Count != 1500 || !bytes.Equal(short.got.Bytes(), sent[:1500]) {
		t.Fatalf("Read counted %d, writer took %d bytes; want the first 1500", res.Count, short.got.Len())
	}

	// The rest comes with the next Read, in order.
	rest := &vecWriter{}
	if res, terr = c.Read(rest, tcpip.ReadOptions{}); terr != nil {
		t.Fatal(terr)
	}
	if rest.vecs != 1 || rest.offered != 2 || res.Count != 1500 || !bytes.Equal(rest.got.Bytes(), sent[1500:]) {
		t.Fatalf("second Read: %d WriteVec of %d slices, count %d, got %d bytes; want one WriteVec of 2 slices with the last 1500 bytes", rest.vecs, rest.offered, res.Count, rest.got.Len())
	}
	if n := queued(); n != 0 {
		t.Fatalf("%d bytes still queued after reading all", n)
	}
}
