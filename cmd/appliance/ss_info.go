package main

import (
	"fmt"
	"strings"

	"github.com/nsappliance/appliance/appliance"
)

// ssInfo is the -i line of a TCP socket in Linux ss's format and order:
// "cubic wscale:7,7 rto:204 rtt:40.5/2.1 mss:1448 cwnd:10 ssthresh:20 pacing_rate
// 1.2Gbps delivery_rate 900Mbps delivered:123 lost:2 app_limited
// minrtt:40.1" (ssthresh is left out while infinite, as ss does). A
// controller's own block (BBR's "bbr:(bw:...)") follows ssthresh, as
// Linux's ss prints INET_DIAG_BBRINFO.
func ssInfo(s appliance.Socket) string {
	var b strings.Builder
	b.WriteString(s.CC)
	if s.Wscale != "" {
		fmt.Fprintf(&b, " wscale:%s", s.Wscale)
	}
	fmt.Fprintf(&b, " rto:%d rtt:%s/%s", s.RTOms, msec(s.RTTus), msec(s.RTTVarus))
	if s.MSS > 0 {
		fmt.Fprintf(&b, " mss:%d", s.MSS)
	}
	fmt.Fprintf(&b, " cwnd:%d", s.Cwnd)
	if s.Ssthresh > 0 {
		fmt.Fprintf(&b, " ssthresh:%d", s.Ssthresh)
	}
	if s.CCExtra != "" {
		b.WriteString(" " + s.CCExtra) // e.g. bbr:(bw:97.1Mbps,mrtt:40.385,pacing_gain:1.25,cwnd_gain:2)
	}
	if s.PacingRate > 0 {
		fmt.Fprintf(&b, " pacing_rate %s", bps(s.PacingRate))
	}
	if s.DeliveryRate > 0 {
		fmt.Fprintf(&b, " delivery_rate %s", bps(s.DeliveryRate))
	}
	if s.Delivered > 0 {
		fmt.Fprintf(&b, " delivered:%d", s.Delivered)
	}
	if s.AppLimited {
		b.WriteString(" app_limited")
	}
	if s.Unacked > 0 {
		fmt.Fprintf(&b, " unacked:%d", s.Unacked)
	}
	if s.Lost > 0 {
		fmt.Fprintf(&b, " lost:%d", s.Lost)
	}
	if s.Retrans > 0 {
		fmt.Fprintf(&b, " retrans:%d", s.Retrans)
	}
	if s.Sacked > 0 {
		fmt.Fprintf(&b, " sacked:%d", s.Sacked)
	}
	if s.MinRTTus > 0 {
		fmt.Fprintf(&b, " minrtt:%s", msec(s.MinRTTus))
	}
	return b.String()
}

// msec prints microseconds as ss prints milliseconds (%g of ms, 3 decimals).
func msec(us int64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", float64(us)/1000), "0"), ".")
}

// bps formats bytes/s as ss's sprint_bw formats bits/s.
func bps(bytesPerSec uint64) string {
	b := float64(bytesPerSec) * 8
	switch {
	case b > 1e9:
		return fmt.Sprintf("%.1fGbps", b/1e9)
	case b > 1e6:
		return fmt.Sprintf("%.1fMbps", b/1e6)
	case b > 1e3:
		return fmt.Sprintf("%.1fKbps", b/1e3)
	}
	return fmt.Sprintf("%gbps", b)
}
