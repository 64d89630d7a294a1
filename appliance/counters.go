package appliance

import "sync/atomic"

// counters are the gateway's event counts; see Counters for their names.
type counters struct {
	opened, closed  [numProtos]atomic.Uint64
	tcpDialFailed   atomic.Uint64
	tcpDialWaited   atomic.Uint64 // connect did not end within connect(2)
	tcpHandshake    atomic.Uint64 // dial succeeded but the container side did not
	tcpRefusedDrain atomic.Uint64
	tcpRelayWorkers atomic.Uint64 // worker goroutines the TCP relays started
	udpSetupFailed  atomic.Uint64
	udpCapDropped   atomic.Uint64
	udpDrainDropped atomic.Uint64
	policyDenied    [numProtos]atomic.Uint64
	dnsNoUpstream   atomic.Uint64
	pingsSent       atomic.Uint64
	pingsReplied    atomic.Uint64
	pingsTimedOut   atomic.Uint64
	pingsFailed     atomic.Uint64
	pingsDropped    atomic.Uint64 // over the concurrency bound, fragmented, or while draining
	publishAccepted atomic.Uint64
	publishFailed   atomic.Uint64
}

// Counters returns a snapshot of the gateway's event counters under stable
// snake_case names:
//
//	{tcp,udp}_flows_{opened,closed}   relays started and finished (publish included)
//	tcp_dial_failures                 host dials that failed (SYN answered with RST)
//	tcp_dials_waited                  host dials whose connect went on after connect(2) returned
//	tcp_handshake_failures            host dial worked but the container handshake did not
//	tcp_refused_draining              SYNs refused during Shutdown
//	tcp_relay_workers                 goroutines the TCP relays started: passes the
//	                                  reader or the host poller could not run inline
//	udp_setup_failures                UDP flows that failed to set up
//	udp_flows_dropped_cap             new UDP flows dropped at MaxUDPFlows
//	udp_flows_dropped_draining        new UDP flows dropped during Shutdown
//	{tcp,udp,icmp}_policy_denied      flows and pings denied by the destination policy
//	dns_no_upstream                   DNS queries dropped for want of an upstream
//	pings_{sent,replied,timed_out,failed,dropped}
//	publish_accepted, publish_failures  publish connections and failed dials into the container
//	tcp_refused_memory                SYNs answered with RST above net.ipv4.tcp_mem's max
func (g *Gateway) Counters() map[string]uint64 {
	c := &g.c
	return map[string]uint64{
		"tcp_flows_opened":           c.opened[protoTCP].Load(),
		"tcp_flows_closed":           c.closed[protoTCP].Load(),
		"udp_flows_opened":           c.opened[protoUDP].Load(),
		"udp_flows_closed":           c.closed[protoUDP].Load(),
		"tcp_dial_failures":          c.tcpDialFailed.Load(),
		"tcp_dials_waited":           c.tcpDialWaited.Load(),
		"tcp_handshake_failures":     c.tcpHandshake.Load(),
		"tcp_refused_draining":       c.tcpRefusedDrain.Load(),
		"tcp_relay_workers":          c.tcpRelayWorkers.Load(),
		"udp_setup_failures":         c.udpSetupFailed.Load(),
		"udp_flows_dropped_cap":      c.udpCapDropped.Load(),
		"udp_flows_dropped_draining": c.udpDrainDropped.Load(),
		"tcp_policy_denied":          c.policyDenied[protoTCP].Load(),
		"udp_policy_denied":          c.policyDenied[protoUDP].Load(),
		"icmp_policy_denied":         c.policyDenied[protoICMP].Load(),
		"dns_no_upstream":            c.dnsNoUpstream.Load(),
		"pings_sent":                 c.pingsSent.Load(),
		"pings_replied":              c.pingsReplied.Load(),
		"pings_timed_out":            c.pingsTimedOut.Load(),
		"pings_failed":               c.pingsFailed.Load(),
		"pings_dropped":              c.pingsDropped.Load(),
		"publish_accepted":           c.publishAccepted.Load(),
		"publish_failures":           c.publishFailed.Load(),
		"tcp_refused_memory":         g.tcpMemRefused.Value(),
	}
}
