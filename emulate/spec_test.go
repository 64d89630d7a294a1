package emulate

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	trace := filepath.Join(t.TempDir(), "link.trace")
	if err := os.WriteFile(trace, []byte("1\n1\n5\n\n12\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, in string
		want     Spec
	}{
		{"empty", "", Spec{}},
		{"none", "none", Spec{}},
		{"delay", "delay=20ms,jitter=2ms,correlation=25%", Spec{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Correlation: 25}},
		{"loss", "loss=1%", Spec{Loss: 1}},
		{"ge", "loss=ge:1%,30%", Spec{GE: &GE{P: 1, R: 30, H: 100}}},
		{"ge4", "loss=ge:1%,30%,80%,0.5%", Spec{GE: &GE{P: 1, R: 30, H: 80, K: 0.5}}},
		{"rate", "rate=100mbit,limit=1000", Spec{Rate: 100e6, Limit: 1000}},
		{"kbps", "rate=10kbps,codel", Spec{Rate: 80e3, CoDel: true}},
		{"all", "delay=1ms,reorder=25%,duplicate=1%,corrupt=0.1%,seed=7", Spec{Delay: time.Millisecond, Reorder: 25, Duplicate: 1, Corrupt: 0.1, Seed: 7}},
		{"trace", "trace=" + trace, Spec{Trace: trace, TraceTimes: []time.Duration{1e6, 1e6, 5e6, 12e6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSpec(tc.in)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseSpec(%q) = %+v, %v, want %+v", tc.in, got, err, tc.want)
			}
			back, err := ParseSpec(got.String())
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Errorf("ParseSpec(%q) = %+v, %v, want %+v", got.String(), back, err, got)
			}
		})
	}
}

func TestParseSpecErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"loss=12x", `emulate: loss="12x": `},
		{"loss=120%", `loss="120%"`},
		{"delay=-1ms", `delay="-1ms"`},
		{"delay=fast", `delay="fast"`},
		{"rate=100", `rate="100"`},
		{"rate=0mbit", `rate="0mbit"`},
		{"limit=0", `limit="0"`},
		{"bogus=1", `bogus="1"`},
		{"delay=1ms,delay=2ms", "delay: given twice"},
		{"reorder=5%", "reorder=5%: needs delay"},
		{"codel", "codel: needs rate"},
		{"loss=ge:1%", `loss="ge:1%"`},
		{"trace=/nonexistent/t", `trace="/nonexistent/t"`},
		{"delay=1ms,,loss=1%", "empty field"},
	} {
		_, err := ParseSpec(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSpec(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"", "none", "delay=20ms,jitter=2ms,correlation=25%,loss=1%,rate=100mbit,limit=1000",
		"loss=ge:1%,30%,80%,1%", "rate=1.5kbps,codel", "delay=1ms,reorder=25%,duplicate=1%,corrupt=0.1%,seed=3", "trace=x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSpec(in)
		if err != nil {
			return
		}
		back, err := ParseSpec(s.String())
		if err != nil || !reflect.DeepEqual(back, s) {
			t.Fatalf("ParseSpec(%q) = %+v, %v, want %+v (from %q)", s.String(), back, err, s, in)
		}
	})
}
