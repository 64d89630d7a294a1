package appliance

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// logCapture is a slog handler that keeps the err attribute of records
// with one message.
type logCapture struct {
	msg  string
	mu   *sync.Mutex
	errs *[]string
}

func (h logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h logCapture) Handle(_ context.Context, r slog.Record) error {
	if r.Message != h.msg {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			h.mu.Lock()
			*h.errs = append(*h.errs, a.Value.String())
			h.mu.Unlock()
		}
		return true
	})
	return nil
}
func (h logCapture) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logCapture) WithGroup(string) slog.Handler      { return h }

// TestRejectAtOutput: REJECT in the OUTPUT chain answers netstack's own
// packet back to netstack, as Linux answers a local socket through lo: a
// published port's dial into the container fails with the error the
// answer means (tcp-reset: connection refused; an ICMP host unreachable:
// host unreachable) instead of waiting out its timeout, and the container
// never sees the SYN.
func TestRejectAtOutput(t *testing.T) {
	for _, tc := range []struct {
		with, wantErr string
	}{
		{"tcp-reset", "connection was refused"},
		{"icmp-port-unreachable", "connection was refused"},
		{"icmp-host-unreachable", "no route to host"},
	} {
		t.Run(tc.with, func(t *testing.T) {
			var mu sync.Mutex
			var errs []string
			opts := testOptions()
			opts.Logger = slog.New(logCapture{msg: "publish dial failed", mu: &mu, errs: &errs})
			// Long enough that a dial failing by timeout cannot pass.
			opts.DialTimeout = time.Minute
			opts.Publish = []Publish{{Host: netip.MustParseAddrPort("127.0.0.1:0"), Port: 8080, Proto: "tcp"}}
			opts.Rules.IPv4 = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
				"-A OUTPUT -p tcp -m tcp --dport 8080 -j REJECT --reject-with " + tc.with + "\nCOMMIT\n"
			n := newTestNet(t, opts, true)
			accepts := 0
			containerListen(t, n, 8080, func(c net.Conn) {
				mu.Lock()
				accepts++
				mu.Unlock()
			})
			// The host side is reset as soon as the dial fails, which
			// may beat connect's completion check.
			if c, err := net.DialTimeout("tcp", n.gw.PublishAddrs()[0].String(), 5*time.Second); err == nil {
				defer c.Close()
			}
			// The failure is counted, then logged: wait for both (the
			// log record came after the check in 2 of about 35 race
			// runs of the package, session 12).
			waitFor(t, 30*time.Second, "publish failure counted and logged", func() bool {
				mu.Lock()
				logged := len(errs) > 0
				mu.Unlock()
				return logged && n.gw.Counters()["publish_failures"] == 1
			})
			mu.Lock()
			defer mu.Unlock()
			if len(errs) != 1 || !strings.Contains(errs[0], tc.wantErr) {
				t.Errorf("publish dial errors = %q, want one containing %q", errs, tc.wantErr)
			}
			if accepts != 0 {
				t.Errorf("container accepted %d connections, want 0", accepts)
			}
			if got := n.gw.fw.Counters()["reject_local"]; got != 1 {
				t.Errorf("reject_local = %d, want 1", got)
			}
		})
	}
}
