package appliance

import (
	"net/netip"
	"testing"
)

func TestNewLayout(t *testing.T) {
	tests := []struct {
		cidr                    string
		container, gateway, dns string
	}{
		{"10.0.2.0/24", "10.0.2.100", "10.0.2.2", "10.0.2.3"},
		{"10.0.2.77/24", "10.0.2.100", "10.0.2.2", "10.0.2.3"},
		{"192.168.8.0/25", "192.168.8.100", "192.168.8.2", "192.168.8.3"},
		{"fd00:0:0:2::/64", "fd00:0:0:2::100", "fd00:0:0:2::2", "fd00:0:0:2::3"},
		{"fd00::/119", "fd00::100", "fd00::2", "fd00::3"},
	}
	for _, tc := range tests {
		l, err := NewLayout(netip.MustParsePrefix(tc.cidr))
		if err != nil {
			t.Errorf("NewLayout(%s): %v", tc.cidr, err)
			continue
		}
		if l.Container.String() != tc.container || l.Gateway.String() != tc.gateway || l.DNS.String() != tc.dns {
			t.Errorf("NewLayout(%s) = %v %v %v, want %s %s %s", tc.cidr, l.Container, l.Gateway, l.DNS, tc.container, tc.gateway, tc.dns)
		}
	}
	for _, bad := range []string{"10.0.2.0/26", "fd00::/120", "fd00::/124"} {
		if _, err := NewLayout(netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("NewLayout(%s): want error (no room for .100 / ::100)", bad)
		}
	}
	if _, err := NewLayout(netip.Prefix{}); err == nil {
		t.Error("NewLayout(zero prefix): want error")
	}
}
