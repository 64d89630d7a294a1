package appliance

import (
	"fmt"
	"math"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// ccInfo fills the congestion-control columns of s (ss -i) from ep.
func ccInfo(s *Socket, ep *tcp.Endpoint) {
	ci, ok := ep.CongestionControlInfo()
	if !ok {
		return
	}
	s.CC = ci.Name
	s.Cwnd = ci.Cwnd
	s.Ssthresh = ci.Ssthresh
	if ci.Ssthresh >= math.MaxInt32 {
		s.Ssthresh = 0 // infinite: ss leaves it out
	}
	if ci.SRTT > 0 {
		s.RTTus = ci.SRTT.Microseconds() // per-segment samples: finer than the 1 ms timestamp clock
	}
	s.Wscale = fmt.Sprintf("%d,%d", ci.SndWscale, ci.RcvWscale)
	s.MSS = ci.MSS
	s.MinRTTus = ci.MinRTT.Microseconds()
	s.PacingRate = ci.PacingRate
	s.DeliveryRate = ci.DeliveryRate
	s.Delivered = ci.Delivered
	s.Lost = ci.LostTotal
	s.Retrans = ci.Retrans
	s.AppLimited = ci.AppLimited
	s.InFlight = ci.InFlight
	s.Unacked = ci.Unacked
	s.Sacked = ci.Sacked
	s.LostNow = ci.Lost
	s.CCExtra = ci.Extra
}
