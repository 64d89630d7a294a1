package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// The netperf-style protocol: the client sends one byte, the server echoes
// it. After echoing crrByte the server closes the connection, so TIME_WAIT
// stays on the server side and a fast client does not run out of ports.
const (
	rrByte  = 'r'
	crrByte = 'c'
)

// Serve accepts connections on ln and answers the RR/CRR protocol until ctx
// is done or ln fails. It closes ln and waits for its connections.
func Serve(ctx context.Context, ln net.Listener) error {
	return serveConns(ctx, ln, func(_ *connSet, c net.Conn) {
		var b [1]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				return
			}
			if b[0] == crrByte {
				return
			}
		}
	})
}

// RRResult is one request/response run: like netperf TCP_RR, one
// connection, one byte each way, one transaction at a time.
type RRResult struct {
	Transactions int     `json:"transactions"`
	Seconds      float64 `json:"seconds"`
	PerSec       float64 `json:"per_sec"`
	P50us        float64 `json:"p50_us"`
	P99us        float64 `json:"p99_us"`
	MeanUs       float64 `json:"mean_us"`
}

// RR runs ping-pong transactions with addr for d.
func RR(ctx context.Context, addr string, d time.Duration) (RRResult, error) {
	var dl net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	c, err := dl.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return RRResult{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(d)
	// A stuck transaction must not outlive the run by much.
	_ = c.SetDeadline(end.Add(5 * time.Second))
	req := [1]byte{rrByte}
	var resp [1]byte
	for {
		t0 := time.Now()
		if !t0.Before(end) {
			break
		}
		if _, err := c.Write(req[:]); err != nil {
			return RRResult{}, fmt.Errorf("rr write after %d transactions: %w", len(lat), err)
		}
		if _, err := io.ReadFull(c, resp[:]); err != nil {
			return RRResult{}, fmt.Errorf("rr read after %d transactions: %w", len(lat), err)
		}
		lat = append(lat, time.Since(t0))
	}
	return summarizeRR(lat, time.Since(start)), nil
}

func summarizeRR(lat []time.Duration, elapsed time.Duration) RRResult {
	r := RRResult{Transactions: len(lat), Seconds: elapsed.Seconds()}
	if len(lat) == 0 {
		return r
	}
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	slices.Sort(lat)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	r.PerSec = float64(len(lat)) / elapsed.Seconds()
	r.P50us = us(Percentile(lat, 50))
	r.P99us = us(Percentile(lat, 99))
	r.MeanUs = us(sum / time.Duration(len(lat)))
	return r
}

// Percentile returns the p-th percentile (nearest rank) of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// Nearest rank: the smallest value with at least p% at or below it.
	rank := int(p/100*float64(len(sorted))+0.999999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

// CRRResult is one connect/request/response run: like netperf TCP_CRR, a new
// connection per one-byte transaction.
type CRRResult struct {
	Connections int     `json:"connections"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Seconds     float64 `json:"seconds"`
	PerSec      float64 `json:"conns_per_sec"`
}

// CRR dials addr, exchanges one byte and closes, one connection at a time,
// for d. It gives up after 100 failed connections.
func CRR(ctx context.Context, addr string, d time.Duration) (CRRResult, error) {
	var r CRRResult
	start := time.Now()
	end := start.Add(d)
	one := func() error {
		dl := net.Dialer{Deadline: end.Add(5 * time.Second)}
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(end.Add(5 * time.Second))
		if _, err := c.Write([]byte{crrByte}); err != nil {
			return err
		}
		var b [2]byte
		if _, err := io.ReadFull(c, b[:1]); err != nil {
			return err
		}
		// Wait for the server's FIN so it holds the TIME_WAIT.
		if n, err := c.Read(b[:]); n != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("want EOF after the answer, got %d bytes, %v", n, err)
		}
		return nil
	}
	for time.Now().Before(end) && ctx.Err() == nil {
		if err := one(); err != nil {
			r.Errors++
			if r.FirstError == "" {
				r.FirstError = err.Error()
			}
			if r.Errors >= 100 {
				break
			}
			continue
		}
		r.Connections++
	}
	el := time.Since(start)
	r.Seconds = el.Seconds()
	r.PerSec = float64(r.Connections) / el.Seconds()
	if r.Connections == 0 {
		return r, fmt.Errorf("crr %s: no connection succeeded: %s", addr, r.FirstError)
	}
	return r, ctx.Err()
}
