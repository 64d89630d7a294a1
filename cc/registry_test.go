package cc_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/cubic"
	"github.com/nsappliance/appliance/cc/reno"
)

func TestRegistry(t *testing.T) {
	r, err := cc.NewRegistry("reno", reno.New)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Register("cubic", cubic.New); err != nil {
		t.Fatal(err)
	}
	if err := r.Register("cubic", cubic.New); !errors.Is(err, cc.ErrExists) {
		t.Errorf("second Register(cubic) = %v, want ErrExists", err)
	}
	for _, bad := range []string{"", "Cubic", "a b", "waytoolongname16"} {
		if err := r.Register(bad, reno.New); err == nil {
			t.Errorf("Register(%q) succeeded", bad)
		}
	}
	if err := r.Register("x", nil); err == nil {
		t.Errorf("Register with nil factory succeeded")
	}
	if got, want := r.Names(), []string{"reno", "cubic"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	if _, ok := r.Lookup("cubic"); !ok {
		t.Errorf("Lookup(cubic) failed")
	}
	a, err := r.New("cubic")
	if err != nil || a == nil {
		t.Fatalf("New(cubic) = %v, %v", a, err)
	}
	b, _ := r.New("cubic")
	if a == b {
		t.Errorf("New returned the same instance twice")
	}
	_, err = r.New("vegas")
	if !errors.Is(err, cc.ErrUnknown) || !strings.Contains(err.Error(), "reno cubic") {
		t.Errorf("New(vegas) = %v, want ErrUnknown listing the names", err)
	}
	if err := r.Unregister("reno"); err == nil {
		t.Errorf("Unregister(reno) succeeded: the fallback must stay")
	}
	if r.Fallback() != "reno" {
		t.Errorf("Fallback() = %q", r.Fallback())
	}
	if err := r.Unregister("cubic"); err != nil {
		t.Fatal(err)
	}
	if got := r.Names(); !reflect.DeepEqual(got, []string{"reno"}) {
		t.Errorf("Names() after Unregister = %v", got)
	}
}
