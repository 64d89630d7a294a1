package appliance

import (
	"net/netip"
	"sort"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/nsappliance/appliance/netstack"
)

// Socket is one netstack socket as `ss` shows it, seen from netstack:
// Local is the address the container talked to, Peer the container's own.
// HostLocal/HostPeer are the relay's host socket, when it has one.
type Socket struct {
	Proto     string `json:"proto"` // "tcp" or "udp"
	State     string `json:"state"` // Linux ss names: ESTAB, SYN-RECV, TIME-WAIT, ...
	RecvQ     int    `json:"recv_q"`
	SendQ     int    `json:"send_q"`
	Local     string `json:"local"`
	Peer      string `json:"peer"`
	HostLocal string `json:"host_local,omitempty"`
	HostPeer  string `json:"host_peer,omitempty"`
	RcvBuf    int64  `json:"rcvbuf"`
	SndBuf    int64  `json:"sndbuf"`
	// Truesize, TCP only (ss -m skmem): RMem is the receive and
	// out-of-order queues' memory (rmem_alloc), OOOMem the out-of-order
	// part, TMem the write list's (wmem_alloc, wmem_queued). FwdAlloc is
	// receive memory charged to tcp_mem but not used (fwd_alloc), Backlog
	// the segments waiting to be processed (backlog), Drops the segments
	// the endpoint discarded (drops). See docs/design.md.
	RMem     int    `json:"rmem"`
	OOOMem   int    `json:"ooo_mem"`
	TMem     int    `json:"tmem"`
	FwdAlloc int    `json:"fwd_alloc"`
	Backlog  int    `json:"backlog"`
	Drops    uint64 `json:"drops"`
	// TCP only (ss -i).
	CC       string `json:"cc,omitempty"`
	RTTus    int64  `json:"rtt_us,omitempty"`
	RTTVarus int64  `json:"rttvar_us,omitempty"`
	RTOms    int64  `json:"rto_ms,omitempty"`
	Cwnd     uint32 `json:"cwnd,omitempty"`
	Ssthresh uint32 `json:"ssthresh,omitempty"`
	// Congestion control (ss -i, from gVisor patch 0005); rates in bytes/s.
	Wscale       string `json:"wscale,omitempty"` // "snd,rcv"
	MSS          uint32 `json:"mss,omitempty"`
	MinRTTus     int64  `json:"min_rtt_us,omitempty"`
	PacingRate   uint64 `json:"pacing_rate,omitempty"`
	DeliveryRate uint64 `json:"delivery_rate,omitempty"`
	Delivered    uint64 `json:"delivered,omitempty"`
	Lost         uint64 `json:"lost,omitempty"`
	Retrans      uint32 `json:"retrans,omitempty"`
	AppLimited   bool   `json:"app_limited,omitempty"`
	// Flight (tcp_info's unacked, sacked, lost: the ones outstanding now)
	// and the controller's own ss -i block, e.g. BBR's "bbr:(bw:...)".
	InFlight uint32 `json:"in_flight,omitempty"`
	Unacked  uint32 `json:"unacked,omitempty"`
	Sacked   uint32 `json:"sacked,omitempty"`
	LostNow  uint32 `json:"lost_now,omitempty"`
	CCExtra  string `json:"cc_extra,omitempty"`
}

// tcpStates maps netstack's TCP states to the names ss prints.
var tcpStates = map[tcp.EndpointState]string{
	tcp.StateEstablished: "ESTAB",
	tcp.StateSynSent:     "SYN-SENT",
	tcp.StateSynRecv:     "SYN-RECV",
	tcp.StateFinWait1:    "FIN-WAIT-1",
	tcp.StateFinWait2:    "FIN-WAIT-2",
	tcp.StateTimeWait:    "TIME-WAIT",
	tcp.StateClose:       "CLOSE",
	tcp.StateCloseWait:   "CLOSE-WAIT",
	tcp.StateLastAck:     "LAST-ACK",
	tcp.StateListen:      "LISTEN",
	tcp.StateClosing:     "CLOSING",
	tcp.StateInitial:     "UNCONN",
	tcp.StateBound:       "UNCONN",
	tcp.StateConnecting:  "SYN-SENT",
	tcp.StateError:       "CLOSE",
}

// Sockets lists netstack's TCP and UDP sockets with the host socket each
// relays to, sorted by protocol and address.
func (g *Gateway) Sockets() []Socket {
	hosts := map[tcpip.Endpoint]hostAddrs{}
	g.mu.Lock()
	for f := range g.flows {
		if f.ep != nil && f.host != nil {
			hosts[f.ep] = f.host
		}
	}
	g.mu.Unlock()

	var out []Socket
	for _, te := range g.stack.RegisteredEndpoints() {
		ep, ok := te.(tcpip.Endpoint)
		if !ok {
			continue
		}
		ti, ok := ep.Info().(*stack.TransportEndpointInfo)
		if !ok {
			continue
		}
		var s Socket
		switch ti.TransProto {
		case tcp.ProtocolNumber:
			s.Proto = "tcp"
			s.State = tcpStates[tcp.EndpointState(ep.State())]
			var info tcpip.TCPInfoOption
			if err := ep.GetSockOpt(&info); err == nil {
				s.RTTus, s.RTTVarus = info.RTT.Microseconds(), info.RTTVar.Microseconds()
				s.RTOms = info.RTO.Milliseconds()
				s.Cwnd, s.Ssthresh = info.SndCwnd, info.SndSsthresh
			}
			var cc tcpip.CongestionControlOption
			if err := ep.GetSockOpt(&cc); err == nil {
				s.CC = string(cc)
			}
			if te, ok := ep.(*tcp.Endpoint); ok {
				ccInfo(&s, te)
				skmem(&s, te.MemInfo())
			}
		case udp.ProtocolNumber:
			s.Proto = "udp"
			s.State = "UNCONN"
			if transport.DatagramEndpointState(ep.State()) == transport.DatagramEndpointStateConnected {
				s.State = "ESTAB"
			}
		default:
			continue
		}
		s.Local = addrPort(ti.ID.LocalAddress, ti.ID.LocalPort)
		s.Peer = addrPort(ti.ID.RemoteAddress, ti.ID.RemotePort)
		if v, err := ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption); err == nil {
			s.RecvQ = v
		}
		if v, err := ep.GetSockOptInt(tcpip.SendQueueSizeOption); err == nil {
			s.SendQ = v
		}
		s.RcvBuf = ep.SocketOptions().GetReceiveBufferSize()
		s.SndBuf = ep.SocketOptions().GetSendBufferSize()
		if h := hosts[ep]; h != nil {
			s.HostLocal, s.HostPeer = h.LocalAddr().String(), h.RemoteAddr().String()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		if out[i].Local != out[j].Local {
			return out[i].Local < out[j].Local
		}
		return out[i].Peer < out[j].Peer
	})
	return out
}

func addrPort(a tcpip.Address, port uint16) string {
	if a.Len() == 0 {
		return "*:" + portString(port)
	}
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return netip.AddrPortFrom(ip, port).String()
}

func portString(p uint16) string {
	if p == 0 {
		return "*"
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), p).String()[len("0.0.0.0:"):]
}

// SockStat is /proc/net/sockstat's view of netstack's sockets.
type SockStat struct {
	Used      int `json:"sockets_used"`
	TCPInUse  int `json:"tcp_inuse"`
	TCPOrphan int `json:"tcp_orphan"`
	TCPTW     int `json:"tcp_tw"`
	TCPAlloc  int `json:"tcp_alloc"`
	// TCPMem is in pages (4 KiB): the truesize of every TCP socket's
	// queues, as Linux's tcp_memory_allocated. UDPMem counts queued
	// payload.
	TCPMem   int `json:"tcp_mem"`
	UDPInUse int `json:"udp_inuse"`
	UDPMem   int `json:"udp_mem"`
	// Memory is the stack's TCP memory accounting (tcp_mem, pressure),
	// when known.
	Memory *netstack.MemState `json:"memory,omitempty"`
}

// skmem fills s's memory fields from an endpoint's MemInfo, as Linux's
// sk_meminfo.
func skmem(s *Socket, mi tcp.MemInfo) {
	s.RMem, s.OOOMem, s.TMem = mi.RcvMem+mi.OOOMem, mi.OOOMem, mi.SndMem
	// Send-Q as Linux's inet_diag gives it (write_seq - snd_una): bytes
	// written and not yet acknowledged. netstack's TCP does not answer
	// SendQueueSizeOption, so ss showed 0 for every TCP socket.
	s.SendQ = mi.SndQueued
	// Charged: every received segment but the backlog, rounded up to
	// pages (gVisor patch 0016). Readings race with packet processing:
	// never negative.
	s.FwdAlloc = max(0, mi.RcvCharged-(mi.RcvMemUsed-mi.Backlog))
	s.Backlog, s.Drops = mi.Backlog, mi.Drops
}

// pageSize is the unit of sockstat's mem columns.
const pageSize = netstack.PageSize

// SockStatOf counts socks as Linux counts sockets for /proc/net/sockstat:
// inuse excludes TIME-WAIT; orphans are closing sockets no relay holds any
// more (FIN-WAIT-1/2, CLOSING, LAST-ACK); alloc is every TCP socket but
// TIME-WAIT ones.
func SockStatOf(socks []Socket) SockStat {
	var st SockStat
	var tcpBytes, udpBytes int
	for _, s := range socks {
		switch s.Proto {
		case "tcp":
			tcpBytes += s.RMem + s.TMem
			if s.State == "TIME-WAIT" {
				st.TCPTW++
				continue
			}
			st.TCPAlloc++
			st.TCPInUse++
			switch s.State {
			case "FIN-WAIT-1", "FIN-WAIT-2", "CLOSING", "LAST-ACK":
				if s.HostLocal == "" {
					st.TCPOrphan++
				}
			}
		case "udp":
			udpBytes += s.RecvQ + s.SendQ
			st.UDPInUse++
		}
	}
	st.Used = st.TCPAlloc + st.UDPInUse
	st.TCPMem = (tcpBytes + pageSize - 1) / pageSize
	st.UDPMem = (udpBytes + pageSize - 1) / pageSize
	return st
}

// SockStat is SockStatOf the gateway's sockets with the stack's memory
// accounting; TCP mem is the stack's charged total (Linux's sockstat
// prints tcp_memory_allocated), as of the last accounting scan.
func (g *Gateway) SockStat() SockStat {
	st := SockStatOf(g.Sockets())
	ms := g.stack.MemState()
	st.Memory = &ms
	st.TCPMem = int(ms.Pages)
	return st
}
