package appliance

import "testing"

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
