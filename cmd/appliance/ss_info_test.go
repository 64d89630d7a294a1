package main

import (
	"testing"

	"github.com/nsappliance/appliance/appliance"
)

func TestSSInfo(t *testing.T) {
	for _, tc := range []struct {
		s    appliance.Socket
		want string
	}{
		{appliance.Socket{CC: "cubic", Wscale: "7,9", RTOms: 240, RTTus: 40512, RTTVarus: 2100, MSS: 1448, Cwnd: 10, Ssthresh: 20,
			PacingRate: 150e6, DeliveryRate: 112_500_000, Delivered: 123, Lost: 2, MinRTTus: 40100},
			"cubic wscale:7,9 rto:240 rtt:40.512/2.1 mss:1448 cwnd:10 ssthresh:20 pacing_rate 1.2Gbps delivery_rate 900.0Mbps delivered:123 lost:2 minrtt:40.1"},
		{appliance.Socket{CC: "bbr", Wscale: "7,9", RTOms: 240, RTTus: 60072, RTTVarus: 10466, MSS: 1448, Cwnd: 1038, Ssthresh: 428,
			CCExtra: "bbr:(bw:97.1Mbps,mrtt:40.385,pacing_gain:1.25,cwnd_gain:2)", PacingRate: 13_237_500, Delivered: 11888,
			Unacked: 700, Sacked: 12, Lost: 10, MinRTTus: 40486},
			"bbr wscale:7,9 rto:240 rtt:60.072/10.466 mss:1448 cwnd:1038 ssthresh:428 bbr:(bw:97.1Mbps,mrtt:40.385,pacing_gain:1.25,cwnd_gain:2) pacing_rate 105.9Mbps delivered:11888 unacked:700 lost:10 sacked:12 minrtt:40.486"},
		{appliance.Socket{CC: "reno", RTOms: 200, RTTus: 1000, Cwnd: 10, AppLimited: true, Delivered: 1},
			"reno rto:200 rtt:1/0 cwnd:10 delivered:1 app_limited"},
	} {
		if got := ssInfo(tc.s); got != tc.want {
			t.Errorf("ssInfo =\n %q, want\n %q", got, tc.want)
		}
	}
}

func TestSkmemString(t *testing.T) {
	s := appliance.Socket{RMem: 9000, RcvBuf: 131072, TMem: 2304, SndBuf: 16384, FwdAlloc: 3288, Backlog: 1100, Drops: 7}
	want := "skmem:(r9000,rb131072,t2304,tb16384,f3288,w2304,o0,bl1100,d7)"
	if got := skmemString(s); got != want {
		t.Errorf("skmemString = %q, want %q", got, want)
	}
}
