// Package capture writes the packets of a link to a pcap file that tcpdump
// and Wireshark read, by wrapping the link endpoint in gVisor's sniffer.
// Start with Wrap.
package capture

import (
	"bufio"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// SnapLen is the largest packet saved whole: a 64 KiB GSO packet.
const SnapLen = 1 << 16

// File is a pcap file written from several goroutines. gVisor's sniffer
// writes each packet in one Write call without locking and panics on a
// write error, so File serialises writes and never returns an error: after
// the first failure (disk full, say) it logs once, stops writing and counts
// what it dropped.
type File struct {
	mu sync.Mutex
	// +checklocks:mu
	w *bufio.Writer
	// +checklocks:mu
	err error

	f       *os.File
	log     *slog.Logger
	dropped atomic.Uint64
	stop    chan struct{}
	wg      sync.WaitGroup
}

// Wrap opens path (truncating it) and returns ep wrapped so that every
// packet it receives or sends is written there, and the File to Close when
// the endpoint is gone.
func Wrap(ep stack.LinkEndpoint, path string, log *slog.Logger) (stack.LinkEndpoint, *File, error) {
	if log == nil {
		log = slog.Default()
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("pcap %s: %w", path, err)
	}
	pf := &File{f: f, w: bufio.NewWriterSize(f, 1<<20), log: log.With("component", "pcap", "file", path), stop: make(chan struct{})}
	// The sniffer also formats every packet into a line on stderr unless
	// told not to (a process-wide switch, on by default): with --pcap the
	// appliance logged each packet whatever its --log-level, a line per
	// packet and the CPU to format it. The pcap file is the record.
	sniffer.LogPackets.Store(0)
	snif, err := sniffer.NewWithWriter(ep, pf, SnapLen)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("pcap %s: %w", path, err)
	}
	// Flush now and then, so a reader of the live file sees packets.
	pf.wg.Add(1)
	go func() {
		defer pf.wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pf.stop:
				return
			case <-t.C:
				pf.mu.Lock()
				pf.flushLocked()
				pf.mu.Unlock()
			}
		}
	}()
	return snif, pf, nil
}

// Write implements io.Writer for the sniffer. It always reports success.
func (pf *File) Write(b []byte) (int, error) {
	pf.mu.Lock()
	defer pf.mu.Unlock()
	if pf.err != nil {
		pf.dropped.Add(1)
		return len(b), nil
	}
	if _, err := pf.w.Write(b); err != nil {
		pf.failLocked(err)
	}
	return len(b), nil
}

// +checklocks:pf.mu
func (pf *File) flushLocked() {
	if pf.err == nil {
		if err := pf.w.Flush(); err != nil {
			pf.failLocked(err)
		}
	}
}

// +checklocks:pf.mu
func (pf *File) failLocked(err error) {
	pf.err = err
	pf.dropped.Add(1)
	pf.log.Error("pcap write failed, capture stopped", "err", err)
}

// Dropped counts packets not written after a write error.
func (pf *File) Dropped() uint64 { return pf.dropped.Load() }

// Close flushes and closes the file.
func (pf *File) Close() error {
	close(pf.stop)
	pf.wg.Wait()
	pf.mu.Lock()
	defer pf.mu.Unlock()
	pf.flushLocked()
	err := pf.f.Close()
	if pf.err != nil {
		return pf.err
	}
	return err
}
