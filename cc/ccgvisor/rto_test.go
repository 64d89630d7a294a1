package ccgvisor_test

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// TestRTOAsLinux: the retransmission timeout is the smoothed RTT plus
// at least the minimum RTO, as Linux computes it (tcp_rtt_estimator
// keeps rttvar >= tcp_rto_min, __tcp_set_rto adds it to srtt; patch
// 0025), not RFC 6298's max(SRTT + 4*RTTVAR, 200 ms), which per-ACK RTT
// samples on a long flight keep barely above the RTT once a queue has
// built. On this 10 ms path the latter is 200 ms, the former over 210.
func TestRTOAsLinux(t *testing.T) {
	p := fixedPair(t, nil, 0)
	var info tcpip.TCPInfoOption
	p.beforeClose = func(ep tcpip.Endpoint) {
		if err := ep.GetSockOpt(&info); err != nil {
			t.Errorf("GetSockOpt(TCPInfoOption): %v", err)
		}
	}
	p.transfer(t, 2<<20, 0, nil)
	t.Logf("srtt %v rttvar %v rto %v", info.RTT, info.RTTVar, info.RTO)
	if info.RTT <= 0 {
		t.Fatalf("no RTT measured: %+v", info)
	}
	if want := info.RTT + 200*time.Millisecond; info.RTO < want {
		t.Errorf("RTO %v with srtt %v, want at least srtt + the 200 ms minimum RTO = %v", info.RTO, info.RTT, want)
	}
}
