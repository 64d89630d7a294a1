package bench

import (
	"bytes"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// The testdata files are real `iperf3 -J -i 0.5 --get-server-output -b 100M`
// runs (iperf 3.12) between two namespaces on a veth pair, against
// `iperf3 -s -J -i 0.5`: an upload with -C reno and a download (-R).
func TestParseIperfDetail(t *testing.T) {
	for _, tc := range []struct {
		file          string
		wantRTTms     []float64 // the sender's srtt per interval
		wantRetrans   int
		wantIntervals int
	}{
		// Upload: the client sends (its intervals carry the RTT), the
		// server receives (its intervals give the throughput).
		{"iperf3-upload.json", []float64{0.065, 0.073, 0.126, 0.127}, 0, 4},
		// Download: the server sends.
		{"iperf3-download.json", []float64{0.059, 0.065, 0.068, 0.062}, 0, 4},
	} {
		t.Run(tc.file, func(t *testing.T) {
			b, err := os.ReadFile("testdata/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseIperfDetail(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Mbps) != tc.wantIntervals {
				t.Fatalf("Mbps = %v, want %d intervals", r.Mbps, tc.wantIntervals)
			}
			for i, p := range r.Mbps {
				if p.V < 90 || p.V > 110 {
					t.Errorf("Mbps[%d] = %v, want about 100 (-b 100M)", i, p)
				}
				if want := 0.5 * float64(i+1); math.Abs(p.T-want) > 0.01 {
					t.Errorf("Mbps[%d].T = %v, want %v", i, p.T, want)
				}
			}
			if len(r.RTTms) != len(tc.wantRTTms) {
				t.Fatalf("RTTms = %v, want %v", r.RTTms, tc.wantRTTms)
			}
			for i, p := range r.RTTms {
				if math.Abs(p.V-tc.wantRTTms[i]) > 1e-9 {
					t.Errorf("RTTms[%d] = %v, want %v", i, p.V, tc.wantRTTms[i])
				}
			}
			if r.Retransmits != tc.wantRetrans {
				t.Errorf("Retransmits = %d, want %d", r.Retransmits, tc.wantRetrans)
			}
			// The summary still reads as the plain parser does.
			g, err := parseIperf(b)
			if err != nil || g < 0.09 || g > 0.11 {
				t.Errorf("parseIperf = %v, %v; want about 0.1 Gbit/s", g, err)
			}
		})
	}
}

// TestParseIperfDetailNoServer: without --get-server-output the client's
// own intervals give the throughput, and a download has no RTT.
func TestParseIperfDetailNoServer(t *testing.T) {
	in := `{"start":{"test_start":{"reverse":1}},"intervals":[
		{"streams":[{}],"sum":{"end":0.5,"seconds":0.5,"bits_per_second":8e6}},
		{"streams":[{}],"sum":{"end":1.0,"seconds":0.5,"bits_per_second":9e6}},
		{"streams":[{}],"sum":{"end":1.002,"seconds":0.002,"bits_per_second":9e9}}],
		"end":{"sum_sent":{"retransmits":7}}}`
	r, err := parseIperfDetail([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Mbps) != 2 || r.Mbps[0] != (Point{0.5, 8}) || r.Mbps[1] != (Point{1, 9}) {
		t.Errorf("Mbps = %v, want [{0.5 8} {1 9}] (the 2 ms sliver left out)", r.Mbps)
	}
	if len(r.RTTms) != 0 || r.Retransmits != 7 {
		t.Errorf("RTTms = %v, Retransmits = %d; want none, 7", r.RTTms, r.Retransmits)
	}
	if _, err := parseIperfDetail([]byte("iperf3: error")); err == nil {
		t.Error("parseIperfDetail accepted text")
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 10.2.0.100 (10.2.0.100) 56(84) bytes of data.
64 bytes from 10.2.0.100: icmp_seq=1 ttl=63 time=40.3 ms
64 bytes from 10.2.0.100: icmp_seq=2 ttl=63 time=41 ms
64 bytes from 10.2.0.100: icmp_seq=3 ttl=63 time<1 ms

--- 10.2.0.100 ping statistics ---
3 packets transmitted, 3 received, 0% packet loss, time 102ms
rtt min/avg/max/mdev = 0.900/27.400/41.000/18.900 ms
`
	got := parsePing([]byte(out))
	want := []time.Duration{40300 * time.Microsecond, 41 * time.Millisecond, time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("parsePing = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("parsePing[%d] = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestRTTStats(t *testing.T) {
	var s []time.Duration
	for i := 20; i >= 1; i-- { // unsorted on purpose
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	mean, p95 := rttStats(s)
	if mean != 10500*time.Microsecond || p95 != 19*time.Millisecond {
		t.Errorf("rttStats(1..20 ms) = %v, %v; want 10.5ms, 19ms", mean, p95)
	}
	if m, p := rttStats(nil); m != 0 || p != 0 {
		t.Errorf("rttStats(nil) = %v, %v", m, p)
	}
}

func TestSummarizeRTT(t *testing.T) {
	ping := []time.Duration{30 * time.Millisecond, 50 * time.Millisecond}
	r := Transfer{RTTms: []Point{{0.5, 40}, {1, 42}}}
	r.summarizeRTT(ping)
	if r.RTTSource != "tcp_info" || r.RTTMeanMs != 41 || r.RTTP95Ms != 42 {
		t.Errorf("with TCP_INFO: %+v", r)
	}
	r = Transfer{}
	r.summarizeRTT(ping)
	if r.RTTSource != "ping" || r.RTTMeanMs != 40 || r.RTTP95Ms != 50 {
		t.Errorf("ping fallback: %+v", r)
	}
	r = Transfer{}
	r.summarizeRTT(nil)
	if r.RTTSource != "" || r.RTTMeanMs != 0 {
		t.Errorf("nothing: %+v", r)
	}
}

func TestEmulationDrops(t *testing.T) {
	before := map[string]uint64{"out_dropped_queue": 5, "in_dropped_codel": 1, "out_dropped_loss": 2}
	after := map[string]uint64{"out_dropped_queue": 9, "in_dropped_queue": 3, "in_dropped_codel": 2,
		"out_dropped_loss": 4, "in_dropped_loss": 1, "out_delivered": 1000}
	q, l := emulationDrops(before, after)
	if q != 4+3+1 || l != 2+1 {
		t.Errorf("emulationDrops = %d, %d; want 8, 3", q, l)
	}
	// A counter that went backwards (an appliance restart) counts 0.
	if q, _ := emulationDrops(after, before); q != 0 {
		t.Errorf("backwards: queue %d, want 0", q)
	}
}

func TestWriteTableEmulated(t *testing.T) {
	up := &Transfer{RTTMeanMs: 41.25, RTTP95Ms: 44, Retransmits: 12, Emulated: true, QueueDrops: 30, Lost: 0}
	down := &Transfer{RTTMeanMs: 40.5, RTTP95Ms: 43, Retransmits: 3, Emulated: true, QueueDrops: 7}
	kup := &Transfer{RTTMeanMs: 0.1, RTTP95Ms: 0.2}
	res := []Result{
		{Path: PathKernel, MTU: 1500, UpGbps: 10, DownGbps: 8, Up: kup},
		{Path: PathAppliance, MTU: 1500, UpGbps: 0.095, DownGbps: 0.094, Emulate: "rate=100mbit", Up: up, Down: down},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, res); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"RTT mean ms", "RTT p95 ms", "retrans", "qdrops", "41.2/40.5", "44.0/43.0", "12/3", "30/7", "0.1/-", "-/-"} {
		if !strings.Contains(out, want) {
			t.Errorf("WriteTable output lacks %q:\n%s", want, out)
		}
	}
	// Without emulation the table is as before: no extra columns.
	b.Reset()
	res[1].Emulate = ""
	if err := WriteTable(&b, res); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "RTT mean") {
		t.Errorf("un-emulated table has RTT columns:\n%s", b.String())
	}
}

func TestIperfCC(t *testing.T) {
	c := Config{Mode: "router", senderCC: "reno", CC: "reno"}
	if c.iperfCC(PathKernel) != "reno" || c.iperfCC(PathAppliance) != "reno" {
		t.Errorf("router: kernel %q appliance %q, want reno for both", c.iperfCC(PathKernel), c.iperfCC(PathAppliance))
	}
	c.Mode = "gateway"
	if c.iperfCC(PathKernel) != "reno" || c.iperfCC(PathAppliance) != "" {
		t.Errorf("gateway: kernel %q appliance %q, want reno and the default", c.iperfCC(PathKernel), c.iperfCC(PathAppliance))
	}
	c = Config{Mode: "gateway", CC: "nosuchcc"}
	if c.runCC(PathKernel) != "default" || c.runCC(PathAppliance) != "nosuchcc" {
		t.Errorf("runCC: kernel %q appliance %q", c.runCC(PathKernel), c.runCC(PathAppliance))
	}
}
