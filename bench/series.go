package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsappliance/appliance/control"
)

// Interval is the iperf3 report interval when a run's time series is
// collected (Config.Series, or any run with Config.Emulate).
const Interval = 500 * time.Millisecond

// Point is one sample of a time series: T seconds since the run started
// and a value (Mbit/s or ms).
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Transfer is one iperf3 transfer in detail: the receiver's throughput and the
// sender's RTT per interval, retransmits, RTT summary, and what the link
// emulation dropped meanwhile.
type Transfer struct {
	// Name is path/MTU/direction/cc, the run's name in plots.
	Name string `json:"name"`
	// Mbps is the receiver's throughput per interval (Mbit/s).
	Mbps []Point `json:"mbps,omitempty"`
	// RTTms is the sender's smoothed RTT per interval (TCP_INFO srtt, ms);
	// empty when iperf3 did not report it.
	RTTms []Point `json:"rtt_ms,omitempty"`
	// Retransmits is the sender's total (sum_sent.retransmits).
	Retransmits int `json:"retransmits"`
	// RTTMeanMs and RTTP95Ms summarize RTTms, or ping's RTTs during the
	// run when RTTms is empty; RTTSource says which ("tcp_info", "ping").
	RTTMeanMs float64 `json:"rtt_mean_ms,omitempty"`
	RTTP95Ms  float64 `json:"rtt_p95_ms,omitempty"`
	RTTSource string  `json:"rtt_source,omitempty"`
	// PingMeanMs and PingP95Ms summarize ping's RTTs during the run
	// (through the same queues as the transfer), whatever RTTSource is.
	PingMeanMs float64 `json:"ping_mean_ms,omitempty"`
	PingP95Ms  float64 `json:"ping_p95_ms,omitempty"`
	// Emulated says whether the path had link emulation whose counters
	// were read; QueueDrops (tail drop + CoDel) and Lost (random or
	// Gilbert-Elliott loss) are the emulation's drops during the run, both
	// directions.
	Emulated   bool   `json:"emulated,omitempty"`
	QueueDrops uint64 `json:"queue_drops"`
	Lost       uint64 `json:"lost"`
	// Netstack says whether the appliance's netstack counters were read;
	// the rest are their increase during the run: retransmission
	// timeouts (and those found spurious by Eifel detection, RFC 3522),
	// retransmitted segments and retransmissions found lost and sent
	// again in SACK recovery (gVisor patch 0009). In gateway mode
	// netstack is the download's sender.
	Netstack                bool   `json:"netstack,omitempty"`
	NetstackTimeouts        uint64 `json:"netstack_timeouts"`
	NetstackSpuriousRTOs    uint64 `json:"netstack_spurious_rtos"`
	NetstackRetransmits     uint64 `json:"netstack_retransmits"`
	NetstackLostRetransmits uint64 `json:"netstack_lost_retransmits"`
}

// iperfDetail is the part of `iperf3 -J --get-server-output` a Transfer reads.
type iperfDetail struct {
	Start struct {
		TestStart struct {
			Reverse int `json:"reverse"`
		} `json:"test_start"`
	} `json:"start"`
	Intervals []iperfInterval `json:"intervals"`
	End       struct {
		SumSent struct {
			Retransmits int `json:"retransmits"`
		} `json:"sum_sent"`
	} `json:"end"`
	Server *struct {
		Intervals []iperfInterval `json:"intervals"`
	} `json:"server_output_json"`
}

type iperfInterval struct {
	Streams []struct {
		RTT *int64 `json:"rtt"` // µs, the sender's TCP_INFO srtt
	} `json:"streams"`
	Sum struct {
		End           float64 `json:"end"`
		Seconds       float64 `json:"seconds"`
		BitsPerSecond float64 `json:"bits_per_second"`
		Omitted       bool    `json:"omitted"`
	} `json:"sum"`
}

// parseIperfDetail reads the per-interval series from iperf3 -J output
// made with --get-server-output against a server that runs with -J. The
// receiver's intervals give the throughput, the sender's the RTT: for an
// upload the client sends, for a download (-R) the server does. Without
// the server's output, the client's own intervals stand in.
func parseIperfDetail(out []byte) (Transfer, error) {
	var j iperfDetail
	if err := json.Unmarshal(out, &j); err != nil {
		return Transfer{}, fmt.Errorf("iperf3 output is not JSON: %w", err)
	}
	client := j.Intervals
	var server []iperfInterval
	if j.Server != nil {
		server = j.Server.Intervals
	}
	sender, receiver := client, server
	if j.Start.TestStart.Reverse != 0 {
		sender, receiver = server, client
	}
	if len(receiver) == 0 {
		receiver = client
	}
	r := Transfer{Retransmits: j.End.SumSent.Retransmits}
	for _, iv := range receiver {
		if !iv.countable() {
			continue
		}
		r.Mbps = append(r.Mbps, Point{T: iv.Sum.End, V: iv.Sum.BitsPerSecond / 1e6})
	}
	for _, iv := range sender {
		if !iv.countable() || len(iv.Streams) == 0 || iv.Streams[0].RTT == nil || *iv.Streams[0].RTT <= 0 {
			continue
		}
		r.RTTms = append(r.RTTms, Point{T: iv.Sum.End, V: float64(*iv.Streams[0].RTT) / 1e3})
	}
	return r, nil
}

// countable leaves out omitted intervals and the sliver iperf3 reports
// after the last full interval (a few ms, with a meaningless rate).
func (iv iperfInterval) countable() bool {
	return !iv.Sum.Omitted && iv.Sum.Seconds >= 0.1
}

var pingTimeRE = regexp.MustCompile(`time[=<]([0-9.]+) ?ms`)

// parsePing returns the RTTs of ping's reply lines.
func parsePing(out []byte) []time.Duration {
	var rtts []time.Duration
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := pingTimeRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		rtts = append(rtts, time.Duration(ms*float64(time.Millisecond)))
	}
	return rtts
}

// rttStats returns the mean and the 95th percentile (nearest rank) of
// samples, which it sorts.
func rttStats(samples []time.Duration) (mean, p95 time.Duration) {
	if len(samples) == 0 {
		return 0, 0
	}
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	slices.Sort(samples)
	return sum / time.Duration(len(samples)), Percentile(samples, 95)
}

// summarizeRTT fills the RTT summary from the TCP_INFO series or, when
// that is empty, from ping's samples.
func (r *Transfer) summarizeRTT(ping []time.Duration) {
	if len(ping) > 0 {
		mean, p95 := rttStats(ping)
		r.PingMeanMs, r.PingP95Ms = float64(mean)/float64(time.Millisecond), float64(p95)/float64(time.Millisecond)
	}
	var samples []time.Duration
	src := "tcp_info"
	for _, p := range r.RTTms {
		samples = append(samples, time.Duration(p.V*float64(time.Millisecond)))
	}
	if len(samples) == 0 {
		samples, src = ping, "ping"
	}
	if len(samples) == 0 {
		return
	}
	mean, p95 := rttStats(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	r.RTTMeanMs, r.RTTP95Ms, r.RTTSource = ms(mean), ms(p95), src
}

// emulationCounters reads the counters of a running appliance's link
// emulation (GET /v1/emulate).
func emulationCounters(ctx context.Context, name string) (map[string]uint64, error) {
	c, err := control.NewClient(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var st struct {
		Stats map[string]uint64 `json:"stats"`
	}
	if err := c.Do(ctx, http.MethodGet, "/v1/emulate", nil, &st); err != nil {
		return nil, fmt.Errorf("read emulation counters: %w", err)
	}
	return st.Stats, nil
}

// netstackCounters reads a running appliance's netstack counters
// (GET /v1/stats, the "netstack" group: tcp_timeouts, ...).
func netstackCounters(ctx context.Context, name string) (map[string]uint64, error) {
	c, err := control.NewClient(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var groups map[string]map[string]uint64
	if err := c.Do(ctx, http.MethodGet, "/v1/stats", nil, &groups); err != nil {
		return nil, fmt.Errorf("read netstack counters: %w", err)
	}
	return groups["netstack"], nil
}

// counterDelta is after[k] - before[k], 0 if the counter went back.
func counterDelta(before, after map[string]uint64, k string) uint64 {
	if after[k] < before[k] {
		return 0
	}
	return after[k] - before[k]
}

// emulationDrops returns what the emulation dropped between two counter
// snapshots, both directions: queue (tail drop and CoDel) and loss.
func emulationDrops(before, after map[string]uint64) (queue, lost uint64) {
	d := func(k string) uint64 {
		if after[k] < before[k] {
			return 0
		}
		return after[k] - before[k]
	}
	for _, dir := range []string{"out_", "in_"} {
		queue += d(dir+"dropped_queue") + d(dir+"dropped_codel")
		lost += d(dir + "dropped_loss")
	}
	return queue, lost
}

// KernelCC reports whether the kernel offers the congestion control name
// (net.ipv4.tcp_available_congestion_control, without loading modules) and
// lists what it offers.
func KernelCC(name string) (bool, []string) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		return false, nil
	}
	avail := strings.Fields(string(b))
	return slices.Contains(avail, name), avail
}
