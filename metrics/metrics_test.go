package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestServe(t *testing.T) {
	reg, err := New(
		Source{Name: "netstack", Help: "netstack counters", Read: func() map[string]uint64 { return map[string]uint64{"tcp_active_connection_openings": 7} }},
		Source{Name: "link", Help: "TUN link counters", Read: func() map[string]uint64 { return map[string]uint64{"rx_packets": 42} }},
		Source{Name: "flows", Help: "open flows", Kind: Gauge, Read: func() map[string]uint64 { return map[string]uint64{"tcp": 3} }},
	)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Serve("127.0.0.1:0", reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		"appliance_netstack_tcp_active_connection_openings_total 7",
		"appliance_link_rx_packets_total 42",
		"appliance_flows_tcp 3",
		"# TYPE appliance_flows_tcp gauge",
		"go_goroutines",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if _, err := New(Source{Name: "x"}); err == nil {
		t.Error("New with a source without Read: want error")
	}
}
