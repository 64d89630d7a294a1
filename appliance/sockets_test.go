package appliance

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

func TestSockStatOf(t *testing.T) {
	socks := []Socket{
		{Proto: "tcp", State: "ESTAB", RecvQ: 4000, RMem: 5000, HostLocal: "h"},
		{Proto: "tcp", State: "ESTAB", SendQ: 50, TMem: 100, HostLocal: "h"},
		{Proto: "tcp", State: "LAST-ACK"},                   // orphan
		{Proto: "tcp", State: "FIN-WAIT-2", HostLocal: "h"}, // still relayed
		{Proto: "tcp", State: "TIME-WAIT"},
		{Proto: "tcp", State: "TIME-WAIT"},
		{Proto: "tcp", State: "LISTEN"},
		{Proto: "udp", State: "ESTAB", RecvQ: 10},
	}
	got := SockStatOf(socks)
	want := SockStat{Used: 6, TCPInUse: 5, TCPOrphan: 1, TCPTW: 2, TCPAlloc: 5, TCPMem: 2, UDPInUse: 1, UDPMem: 1}
	if got != want {
		t.Fatalf("SockStatOf = %+v, want %+v", got, want)
	}
	if z := SockStatOf(nil); z != (SockStat{}) {
		t.Fatalf("SockStatOf(nil) = %+v, want zero", z)
	}
}

func TestSkmem(t *testing.T) {
	mi := tcp.MemInfo{RcvMem: 5000, OOOMem: 2000, SndQueued: 250, SndMem: 300, RcvMemUsed: 8100, Backlog: 1100, RcvCharged: 8192, Drops: 3}
	var s Socket
	skmem(&s, mi)
	want := Socket{SendQ: 250, RMem: 7000, OOOMem: 2000, TMem: 300, FwdAlloc: 8192 - 7000, Backlog: 1100, Drops: 3}
	if s != want {
		t.Errorf("skmem(%+v) = %+v, want %+v", mi, s, want)
	}
}
