package appliance

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPolicyResolve(t *testing.T) {
	deny := policy{v4: testV4, v6: testV6}
	allow := policy{v4: testV4, v6: testV6, allowLoopback: true}
	no6 := policy{v4: testV4}
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name    string
		p       policy
		dst     string
		proto   proto
		want    string // "" with wantErr
		wantErr error
	}{
		{"remote v4", deny, "93.184.216.34:443", protoTCP, "93.184.216.34:443", nil},
		{"remote v6", deny, "[2001:db8::1]:443", protoUDP, "[2001:db8::1]:443", nil},
		{"v4-mapped remote unmapped", deny, "[::ffff:93.184.216.34]:80", protoTCP, "93.184.216.34:80", nil},
		{"icmp drops port", deny, "8.8.8.8:0", protoICMP, "8.8.8.8:0", nil},
		{"gateway denied", deny, "10.0.2.2:80", protoTCP, "", errDenied},
		{"gateway6 denied", deny, "[fd00:0:0:2::2]:80", protoTCP, "", errDenied},
		{"gateway ping denied", deny, "10.0.2.2:0", protoICMP, "", errDenied},
		{"gateway allowed", allow, "10.0.2.2:80", protoTCP, "127.0.0.1:80", nil},
		{"gateway6 allowed", allow, "[fd00:0:0:2::2]:80", protoUDP, "[::1]:80", nil},
		{"gateway ping allowed", allow, "10.0.2.2:0", protoICMP, "127.0.0.1:0", nil},
		{"loopback denied", deny, "127.0.0.1:22", protoTCP, "", errDenied},
		{"loopback net denied", deny, "127.1.2.3:22", protoUDP, "", errDenied},
		{"loopback ping denied", deny, "127.0.0.1:0", protoICMP, "", errDenied},
		{"::1 denied", deny, "[::1]:22", protoTCP, "", errDenied},
		{"mapped loopback denied", deny, "[::ffff:127.0.0.1]:22", protoTCP, "", errDenied},
		{"mapped loopback hex denied", deny, "[::ffff:7f00:1]:22", protoTCP, "", errDenied},
		{"v4-compatible loopback denied", deny, "[::127.0.0.1]:22", protoTCP, "", errDenied},
		{"v4-compatible denied with flag", allow, "[::7f00:1]:22", protoTCP, "", errDenied},
		{"nat64 loopback denied", deny, "[64:ff9b::127.0.0.1]:22", protoTCP, "", errDenied},
		{"nat64 remote ok", deny, "[64:ff9b::8.8.8.8]:53", protoUDP, "[64:ff9b::808:808]:53", nil},
		{"unspecified v4 denied", allow, "0.0.0.0:22", protoTCP, "", errDenied},
		{"this-network denied", allow, "0.1.2.3:22", protoTCP, "", errDenied},
		{"unspecified v6 denied", allow, "[::]:22", protoTCP, "", errDenied},
		{"mapped unspecified denied", allow, "[::ffff:0.0.0.0]:22", protoTCP, "", errDenied},
		{"multicast denied", deny, "224.0.0.251:5353", protoUDP, "", errDenied},
		{"multicast6 denied", deny, "[ff02::fb]:5353", protoUDP, "", errDenied},
		{"broadcast denied", deny, "255.255.255.255:67", protoUDP, "", errDenied},
		{"link peer denied", deny, "10.0.2.50:80", protoTCP, "", errDenied},
		{"container self denied", allow, "10.0.2.100:80", protoTCP, "", errDenied},
		{"link-local v6 denied", deny, "[fe80::1]:80", protoTCP, "", errDenied},
		{"port 0 denied", deny, "8.8.8.8:0", protoTCP, "", errDenied},
		{"loopback allowed with flag", allow, "127.0.0.1:22", protoTCP, "127.0.0.1:22", nil},
		{"::1 allowed with flag", allow, "[::1]:22", protoTCP, "[::1]:22", nil},
		{"mapped loopback allowed with flag", allow, "[::ffff:127.0.0.1]:22", protoTCP, "127.0.0.1:22", nil},
		{"dns udp", deny, "10.0.2.3:53", protoUDP, "", errDNS},
		{"dns tcp", allow, "10.0.2.3:53", protoTCP, "", errDNS},
		{"dns6", deny, "[fd00:0:0:2::3]:53", protoUDP, "", errDNS},
		{"dns other port", allow, "10.0.2.3:80", protoTCP, "", errDenied},
		{"dns ping", allow, "10.0.2.3:0", protoICMP, "", errDenied},
		{"mapped dns denied", allow, "[::ffff:10.0.2.3]:53", protoUDP, "", errDenied},
		{"no ipv6: v6 dns address is just remote", no6, "[fd00:0:0:2::3]:53", protoUDP, "[fd00:0:0:2::3]:53", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.p.resolve(ap(tc.dst), tc.proto)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("resolve(%s, %v) = %v, %v; want error %v", tc.dst, tc.proto, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != ap(tc.want) {
				t.Fatalf("resolve(%s, %v) = %v, %v; want %s", tc.dst, tc.proto, got, err, tc.want)
			}
		})
	}
}
