package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/nsappliance/appliance/netstack"
)

func TestSysctlOverSocket(t *testing.T) {
	Dir = t.TempDir()
	s, err := netstack.New(netstack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Destroy()
	mux := http.NewServeMux()
	HandleSysctl(mux, s.Sysctl())
	srv, err := Listen("t1", mux, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	st, err := os.Stat(filepath.Join(Dir, "t1.sock"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if _, err := Listen("t1", mux, nil); err == nil {
		t.Fatal("second Listen with the same name: want error")
	}
	c, err := NewClient("t1")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var kv netstack.KV
	if err := c.Do(ctx, http.MethodPut, "/v1/sysctl/net.ipv4.tcp_congestion_control", SysctlValue{"reno"}, &kv); err != nil || kv.Value != "reno" {
		t.Fatalf("PUT cc=reno: %+v, %v", kv, err)
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/sysctl/net.ipv4.tcp_congestion_control", nil, &kv); err != nil || kv.Value != "reno" {
		t.Fatalf("GET cc: %+v, %v", kv, err)
	}
	var api *APIError
	err = c.Do(ctx, http.MethodGet, "/v1/sysctl/net.ipv4.nope", nil, &kv)
	if !errors.As(err, &api) || api.Status != http.StatusNotFound {
		t.Fatalf("GET unknown key: %v, want 404", err)
	}
	err = c.Do(ctx, http.MethodPut, "/v1/sysctl/net.ipv4.tcp_sack", SysctlValue{"7"}, &kv)
	if !errors.As(err, &api) || api.Status != http.StatusBadRequest {
		t.Fatalf("PUT bad value: %v, want 400", err)
	}
	var all []netstack.KV
	if err := c.Do(ctx, http.MethodGet, "/v1/sysctl", nil, &all); err != nil || len(all) == 0 {
		t.Fatalf("GET all: %d keys, %v", len(all), err)
	}
}

func TestNotRunning(t *testing.T) {
	Dir = t.TempDir()
	c, err := NewClient("ghost")
	if err != nil {
		t.Fatal(err)
	}
	err = c.Do(context.Background(), http.MethodGet, "/v1/status", nil, nil)
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Do on missing instance = %v, want ErrNotRunning", err)
	}
}

func TestValidateName(t *testing.T) {
	for _, n := range []string{"", "../x", "a/b", ".hidden", string(make([]byte, 70))} {
		if ValidateName(n) == nil {
			t.Errorf("ValidateName(%q) = nil, want error", n)
		}
	}
	for _, n := range []string{"default", "ci-1", "a.b_c"} {
		if err := ValidateName(n); err != nil {
			t.Errorf("ValidateName(%q) = %v", n, err)
		}
	}
}
