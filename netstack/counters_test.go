package netstack

import "testing"

func TestSnake(t *testing.T) {
	for in, want := range map[string]string{
		"PacketsReceived":             "packets_received",
		"ICMPv4":                      "icmpv4",
		"TCP":                         "tcp",
		"MalformedRcvdPackets":        "malformed_rcvd_packets",
		"IPStats":                     "ip_stats",
		"V4":                          "v4",
		"NICs":                        "nics",
		"PacketTooBig":                "packet_too_big",
		"ExhaustedTTL":                "exhausted_ttl",
		"Errors":                      "errors",
		"OutgoingDeviceNoBufferSpace": "outgoing_device_no_buffer_space",
		"UDPs":                        "udps",
	} {
		if got := snake(in); got != want {
			t.Errorf("snake(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCounters(t *testing.T) {
	s := newTestStack(t, Options{})
	s.Stats().TCP.ActiveConnectionOpenings.IncrementBy(3)
	c := s.Counters()
	if len(c) < 100 {
		t.Fatalf("Counters() has %d entries, want the whole tcpip.Stats (> 100)", len(c))
	}
	if got := c["tcp_active_connection_openings"]; got != 3 {
		t.Errorf("tcp_active_connection_openings = %d, want 3", got)
	}
	for _, k := range []string{"ip_packets_received", "icmp_v6_packets_sent_packet_too_big", "icmp_v4_packets_sent_time_exceeded"} {
		if _, ok := c[k]; !ok {
			t.Errorf("no %s (embedded structs must not add to the name)", k)
		}
	}
}
