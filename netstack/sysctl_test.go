package netstack

import (
	"errors"
	"strings"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
)

func newTestStack(t *testing.T, opts Options) *Stack {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New(%+v): %v", opts, err)
	}
	t.Cleanup(s.Destroy)
	return s
}

func TestDefaults(t *testing.T) {
	s := newTestStack(t, Options{})
	want := map[string]string{
		"net.ipv4.tcp_congestion_control":           "cubic",
		"net.ipv4.tcp_sack":                         "1",
		"net.ipv4.tcp_moderate_rcvbuf":              "1",
		"net.ipv4.tcp_recovery":                     "0",
		"net.ipv4.tcp_rmem":                         "4096\t4194304\t8388608",
		"net.ipv4.tcp_wmem":                         "4096\t16384\t8388608",
		"net.ipv4.tcp_available_congestion_control": "reno cubic bbr",
		"net.ipv4.ip_default_ttl":                   "64",
		"net.ipv4.tcp_max_tw_buckets":               "16384",
	}
	for k, v := range want {
		got, err := s.Sysctl().Get(k)
		if err != nil || got != v {
			t.Errorf("Get(%q) = %q, %v; want %q", k, got, err, v)
		}
	}
}

func TestSetAndReject(t *testing.T) {
	s := newTestStack(t, Options{CongestionControl: "reno"})
	y := s.Sysctl()
	if v, _ := y.Get("net.ipv4.tcp_congestion_control"); v != "reno" {
		t.Fatalf("cc = %q after Options.CongestionControl=reno", v)
	}
	good := []struct{ k, v, want string }{
		{"net.ipv4.tcp_congestion_control", "cubic", "cubic"},
		{"net.ipv4.tcp_sack", "0", "0"},
		{"net.ipv4.tcp_rmem", "4096 131072 6291456", "4096\t131072\t6291456"},
		{"net.ipv4.tcp_wmem", " 8192\t65536  1048576 ", "8192\t65536\t1048576"},
		{"net.ipv4.ip_default_ttl", "32", "32"},
		{"net.ipv4.tcp_recovery", "1", "1"},
		{"net.ipv4.tcp_max_tw_buckets", "0", "0"},
		{"net.ipv4.tcp_max_tw_buckets", "262144", "262144"},
	}
	for _, tc := range good {
		if err := y.Set(tc.k, tc.v); err != nil {
			t.Errorf("Set(%q, %q): %v", tc.k, tc.v, err)
			continue
		}
		if got, _ := y.Get(tc.k); got != tc.want {
			t.Errorf("after Set(%q, %q): Get = %q, want %q", tc.k, tc.v, got, tc.want)
		}
	}
	bad := []struct {
		k, v    string
		wantErr error
		mention string
	}{
		{"net.ipv4.nope", "1", ErrUnknownSysctl, "net.ipv4.nope"},
		{"net.ipv4.tcp_available_congestion_control", "bbr", ErrReadOnly, ""},
		{"net.ipv4.tcp_congestion_control", "vegas", nil, "vegas"},
		{"net.ipv4.tcp_sack", "yes", nil, "yes"},
		{"net.ipv4.tcp_rmem", "1 2", nil, "3 integers"},
		{"net.ipv4.tcp_rmem", "100 50 200", nil, "min <= default"},
		{"net.ipv4.tcp_wmem", "a b c", nil, "not an integer"},
		{"net.ipv4.ip_default_ttl", "0", nil, "out of range"},
		{"net.ipv4.tcp_max_tw_buckets", "-1", nil, "negative"},
	}
	for _, tc := range bad {
		before, _ := y.Get(tc.k)
		err := y.Set(tc.k, tc.v)
		if err == nil {
			t.Errorf("Set(%q, %q) = nil, want error", tc.k, tc.v)
			continue
		}
		if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
			t.Errorf("Set(%q, %q) = %v, want %v", tc.k, tc.v, err, tc.wantErr)
		}
		if !strings.Contains(err.Error(), tc.k) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("Set(%q, %q) = %q: should name the key and %q", tc.k, tc.v, err, tc.mention)
		}
		if after, _ := y.Get(tc.k); after != before {
			t.Errorf("failed Set(%q, %q) changed the value %q -> %q", tc.k, tc.v, before, after)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{
		{CongestionControl: "bogus"},
		{Sysctl: map[string]string{"net.ipv4.tcp_sack": "2"}},
		{Sysctl: map[string]string{"kernel.hostname": "x"}},
	} {
		if s, err := New(o); err == nil {
			s.Destroy()
			t.Errorf("New(%+v) = nil error, want error", o)
		}
	}
}

func TestAll(t *testing.T) {
	s := newTestStack(t, Options{})
	all, err := s.Sysctl().All()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 8 {
		t.Fatalf("All() has %d keys, want >= 8", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].Key >= all[i].Key {
			t.Fatalf("All() not sorted at %q, %q", all[i-1].Key, all[i].Key)
		}
	}
}

// TestAttachNICID: a NIC gets the ID NICOptions.ID names (the gateway
// takes it beforehand, for code on the link's reader), or the stack's
// next one when it names none.
func TestAttachNICID(t *testing.T) {
	s := newTestStack(t, Options{})
	want := s.NextNICID()
	id, err := s.AttachNIC(channel.New(4, 1500, ""), NICOptions{ID: want, Name: "a"})
	if err != nil || id != want {
		t.Fatalf("AttachNIC(ID %d) = %d, %v", want, id, err)
	}
	if name := s.FindNICNameFromID(want); name != "a" {
		t.Errorf("NIC %d is named %q, want a", want, name)
	}
	next, err := s.AttachNIC(channel.New(4, 1500, ""), NICOptions{Name: "b"})
	if err != nil || next == want || next == 0 {
		t.Fatalf("AttachNIC(no ID) = %d, %v; want a new ID", next, err)
	}
	if _, err := s.AttachNIC(channel.New(4, 1500, ""), NICOptions{ID: want, Name: "c"}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("AttachNIC with an ID in use = %v, want an error saying so", err)
	}
	if name := s.FindNICNameFromID(want); name != "a" {
		t.Errorf("after the refused attach, NIC %d is named %q, want a", want, name)
	}
}
