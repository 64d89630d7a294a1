package emulate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultLimit is the queue length in packets when a Spec leaves Limit
// zero, as netem's.
const DefaultLimit = 1000

// TraceMTU is the bytes one trace delivery opportunity carries (mahimahi's
// MTU-sized packet).
const TraceMTU = 1500

// maxDelay bounds delay and jitter so time arithmetic cannot overflow.
const maxDelay = time.Hour

// maxTraceBytes bounds how much of a trace file is read.
const maxTraceBytes = 64 << 20

// GE is the Gilbert-Elliott loss model with netem's meaning
// (`tc qdisc ... netem loss gemodel p r 1-h 1-k`); all values are
// percentages.
type GE struct {
	// P is the chance per packet of moving from the good to the bad state.
	P float64
	// R is the chance per packet of moving from the bad to the good state;
	// a burst of bad-state packets lasts 1/R packets on average.
	R float64
	// H is netem's 1-h: the chance a packet is lost in the bad state
	// (default 100%).
	H float64
	// K is netem's 1-k: the chance a packet is lost in the good state
	// (default 0%).
	K float64
}

// Spec is a link emulation, netem's meanings, applied to each direction of
// a link independently. The zero Spec emulates nothing. Percentages are in
// 0..100. Build one with ParseSpec; String prints it back.
type Spec struct {
	// Delay is added to every packet; Jitter varies it uniformly within
	// ±Jitter, each draw correlated with the last by Correlation percent
	// (netem's delay TIME JITTER CORRELATION). Jitter reorders packets, as
	// in netem.
	Delay, Jitter time.Duration
	Correlation   float64
	// Loss is the random loss percentage; GE, when set, replaces it with
	// bursts.
	Loss float64
	GE   *GE
	// Rate is the bottleneck in bit/s (0: none): a packet leaves after its
	// wire bytes have been serialised at Rate.
	Rate uint64
	// Limit is the most packets held per direction (queued and delayed;
	// tail drop beyond it). Zero means DefaultLimit.
	Limit int
	// CoDel manages the Rate or Trace queue with CoDel (RFC 8289, target
	// 5 ms, interval 100 ms) in addition to the Limit tail drop.
	CoDel bool
	// Reorder is the share of packets sent without Delay (needs Delay).
	Reorder float64
	// Duplicate is the share of packets sent twice.
	Duplicate float64
	// Corrupt is the share of packets with one random bit flipped after
	// the IP header, so the receiver's L4 checksum fails.
	Corrupt float64
	// Trace is a mahimahi trace file; TraceTimes its offsets, read by
	// ParseSpec: at each, one TraceMTU's worth of bytes may leave. The
	// trace repeats with the period of its last offset. Excludes Rate.
	Trace      string
	TraceTimes []time.Duration
	// Seed makes the randomness repeatable (0: random).
	Seed uint64
}

// Active tells whether the spec changes packets at all. An inactive spec
// (only Limit, CoDel, Seed or Correlation set) passes packets straight
// through.
func (s Spec) Active() bool {
	return s.Delay > 0 || s.Jitter > 0 || s.Loss > 0 || s.GE != nil || s.Rate > 0 ||
		len(s.TraceTimes) > 0 || s.Duplicate > 0 || s.Corrupt > 0
}

func (s Spec) limit() int {
	if s.Limit == 0 {
		return DefaultLimit
	}
	return s.Limit
}

// ParseSpec parses a comma-separated list of key=value settings, e.g.
// "delay=20ms,jitter=2ms,loss=1%,rate=100mbit,limit=1000":
//
//	delay=DURATION  jitter=DURATION  correlation=PCT
//	loss=PCT | loss=ge:P%,R%[,H%[,K%]]  (netem's loss gemodel p r 1-h 1-k)
//	rate=N{bit,kbit,mbit,gbit,tbit,bps,kbps,mbps,gbps,tbps} (bps: bytes/s, as tc)
//	limit=PACKETS  codel  reorder=PCT  duplicate=PCT  corrupt=PCT
//	trace=FILE (mahimahi; excludes rate)  seed=N
//
// The empty string and "none" mean no emulation. A trace file is read
// here. Errors name the field and value: `emulate: loss="12x": ...`.
func ParseSpec(str string) (Spec, error) {
	var s Spec
	if t := strings.TrimSpace(str); t == "" || t == "none" {
		return s, nil
	}
	seen := map[string]bool{}
	fields := strings.Split(str, ",")
	for i := 0; i < len(fields); i++ {
		f := strings.TrimSpace(fields[i])
		if strings.HasPrefix(f, "loss=ge:") {
			// ge's own commas: take the following fields that are not
			// key=value or codel.
			for i+1 < len(fields) && !strings.Contains(fields[i+1], "=") && strings.TrimSpace(fields[i+1]) != "codel" {
				i++
				f += "," + strings.TrimSpace(fields[i])
			}
		}
		if f == "" {
			return Spec{}, fmt.Errorf("emulate: %q: empty field", str)
		}
		k, v, hasV := strings.Cut(f, "=")
		if seen[k] {
			return Spec{}, fmt.Errorf("emulate: %s: given twice", k)
		}
		seen[k] = true
		if k == "codel" {
			if hasV {
				return Spec{}, fmt.Errorf("emulate: codel=%q: codel takes no value", v)
			}
			s.CoDel = true
			continue
		}
		if k == "loss" && strings.HasPrefix(v, "ge:") {
			ge, err := parseGE(strings.TrimPrefix(v, "ge:"))
			if err != nil {
				return Spec{}, fmt.Errorf("emulate: loss=%q: %v", v, err)
			}
			s.GE = ge
			continue
		}
		if !hasV {
			return Spec{}, fmt.Errorf("emulate: %q: want key=value", f)
		}
		if err := s.set(k, v); err != nil {
			return Spec{}, fmt.Errorf("emulate: %s=%q: %v", k, v, err)
		}
	}
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

func (s *Spec) set(k, v string) error {
	var err error
	switch k {
	case "delay":
		s.Delay, err = parseDelay(v)
	case "jitter":
		s.Jitter, err = parseDelay(v)
	case "correlation":
		s.Correlation, err = parsePercent(v)
	case "loss":
		s.Loss, err = parsePercent(v)
		if err != nil {
			err = fmt.Errorf("%v (or ge:P%%,R%%[,H%%[,K%%]])", err)
		}
	case "reorder":
		s.Reorder, err = parsePercent(v)
	case "duplicate":
		s.Duplicate, err = parsePercent(v)
	case "corrupt":
		s.Corrupt, err = parsePercent(v)
	case "rate":
		s.Rate, err = parseRate(v)
	case "limit":
		n, perr := strconv.Atoi(v)
		if perr != nil || n < 1 || n > 10_000_000 {
			return errors.New("want a packet count 1..10000000")
		}
		s.Limit = n
	case "seed":
		n, perr := strconv.ParseUint(v, 10, 64)
		if perr != nil || n == 0 {
			return errors.New("want an integer 1..2^64-1")
		}
		s.Seed = n
	case "trace":
		if v == "" {
			return errors.New("want a file name")
		}
		s.Trace = v
		s.TraceTimes, err = readTrace(v)
	default:
		return errors.New("unknown field (want delay, jitter, correlation, loss, rate, limit, codel, reorder, duplicate, corrupt, trace, seed)")
	}
	return err
}

// Validate checks the combinations ParseSpec checks, for a Spec built by
// hand.
func (s Spec) Validate() error {
	for _, d := range []struct {
		k string
		v time.Duration
	}{{"delay", s.Delay}, {"jitter", s.Jitter}} {
		if d.v < 0 || d.v > maxDelay {
			return fmt.Errorf("emulate: %s=%v: want 0..%v", d.k, d.v, maxDelay)
		}
	}
	for _, p := range []struct {
		k string
		v float64
	}{{"correlation", s.Correlation}, {"loss", s.Loss}, {"reorder", s.Reorder}, {"duplicate", s.Duplicate}, {"corrupt", s.Corrupt}} {
		if !(p.v >= 0 && p.v <= 100) {
			return fmt.Errorf("emulate: %s=%v%%: want 0%%..100%%", p.k, p.v)
		}
	}
	if s.GE != nil {
		if s.Loss != 0 {
			return fmt.Errorf("emulate: loss=%v%%: give random or ge: loss, not both", s.Loss)
		}
		for _, v := range []float64{s.GE.P, s.GE.R, s.GE.H, s.GE.K} {
			if !(v >= 0 && v <= 100) {
				return fmt.Errorf("emulate: loss=%q: want percentages 0%%..100%%", "ge:"+s.GE.String())
			}
		}
	}
	if s.Limit < 0 || s.Limit > 10_000_000 {
		return fmt.Errorf("emulate: limit=%d: want a packet count 1..10000000", s.Limit)
	}
	if s.Reorder > 0 && s.Delay == 0 {
		return fmt.Errorf("emulate: reorder=%v%%: needs delay (reordered packets skip it)", s.Reorder)
	}
	if s.Trace != "" && s.Rate != 0 {
		return fmt.Errorf("emulate: trace=%q: give rate or trace, not both", s.Trace)
	}
	if (s.Trace == "") != (len(s.TraceTimes) == 0) {
		return fmt.Errorf("emulate: trace=%q: no trace times", s.Trace)
	}
	if n := len(s.TraceTimes); n > 0 && s.TraceTimes[n-1] <= 0 {
		return fmt.Errorf("emulate: trace=%q: the last offset must be positive", s.Trace)
	}
	if s.CoDel && s.Rate == 0 && s.Trace == "" {
		return errors.New("emulate: codel: needs rate or trace (it manages their queue)")
	}
	return nil
}

// String prints s canonically; ParseSpec(s.String()) gives s back. The
// zero Spec prints as "".
func (s Spec) String() string {
	var f []string
	pct := func(k string, v float64) {
		if v != 0 {
			f = append(f, k+"="+fmtPercent(v))
		}
	}
	if s.Delay != 0 {
		f = append(f, "delay="+s.Delay.String())
	}
	if s.Jitter != 0 {
		f = append(f, "jitter="+s.Jitter.String())
	}
	pct("correlation", s.Correlation)
	pct("loss", s.Loss)
	if s.GE != nil {
		f = append(f, "loss=ge:"+s.GE.String())
	}
	if s.Rate != 0 {
		f = append(f, "rate="+fmtRate(s.Rate))
	}
	if s.Trace != "" {
		f = append(f, "trace="+s.Trace)
	}
	if s.Limit != 0 {
		f = append(f, "limit="+strconv.Itoa(s.Limit))
	}
	if s.CoDel {
		f = append(f, "codel")
	}
	pct("reorder", s.Reorder)
	pct("duplicate", s.Duplicate)
	pct("corrupt", s.Corrupt)
	if s.Seed != 0 {
		f = append(f, "seed="+strconv.FormatUint(s.Seed, 10))
	}
	return strings.Join(f, ",")
}

// String prints g as ParseSpec reads it after "loss=ge:".
func (g GE) String() string {
	return fmtPercent(g.P) + "," + fmtPercent(g.R) + "," + fmtPercent(g.H) + "," + fmtPercent(g.K)
}

func fmtPercent(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) + "%" }

func parseDelay(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > maxDelay {
		return 0, fmt.Errorf("want a duration 0..%v like 20ms", maxDelay)
	}
	return d, nil
}

func parsePercent(v string) (float64, error) {
	n, ok := strings.CutSuffix(v, "%")
	if !ok {
		return 0, errors.New("want a percentage like 1%")
	}
	p, err := strconv.ParseFloat(n, 64)
	if err != nil || !(p >= 0 && p <= 100) {
		return 0, errors.New("want a percentage 0%..100%")
	}
	return p, nil
}

func parseGE(v string) (*GE, error) {
	parts := strings.Split(v, ",")
	if len(parts) < 2 || len(parts) > 4 {
		return nil, errors.New("want ge:P%,R%[,H%[,K%]] (netem's gemodel p r 1-h 1-k)")
	}
	g := &GE{H: 100}
	for i, dst := range []*float64{&g.P, &g.R, &g.H, &g.K}[:len(parts)] {
		p, err := parsePercent(parts[i])
		if err != nil {
			return nil, fmt.Errorf("%q: %v", parts[i], err)
		}
		*dst = p
	}
	return g, nil
}

var rateUnits = []struct {
	name string
	mult float64
}{
	// Longest suffixes first, so "kbit" is not read as "bit".
	{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3},
	{"tbps", 8e12}, {"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3},
	{"bit", 1}, {"bps", 8},
}

func parseRate(v string) (uint64, error) {
	for _, u := range rateUnits {
		n, ok := strings.CutSuffix(strings.ToLower(v), u.name)
		if !ok {
			continue
		}
		x, err := strconv.ParseFloat(n, 64)
		bits := x * u.mult
		if err != nil || !(bits >= 1 && bits <= 1e15) {
			return 0, errors.New("want a rate 1bit..1000tbit like 100mbit")
		}
		return uint64(math.Round(bits)), nil
	}
	return 0, errors.New("want a rate with a unit: bit, kbit, mbit, gbit, tbit, or bps, kbps, mbps, gbps, tbps (bytes/s)")
}

func fmtRate(r uint64) string {
	for _, u := range []struct {
		name string
		div  uint64
	}{{"tbit", 1e12}, {"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}} {
		if r%u.div == 0 {
			return strconv.FormatUint(r/u.div, 10) + u.name
		}
	}
	return strconv.FormatUint(r, 10) + "bit"
}

// readTrace reads a mahimahi trace: one non-decreasing integer millisecond
// offset per line.
func readTrace(path string) ([]time.Duration, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ts []time.Duration
	sc := bufio.NewScanner(io.LimitReader(f, maxTraceBytes))
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" {
			continue
		}
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms < 0 || ms > int64(maxDelay/time.Millisecond)*24 {
			return nil, fmt.Errorf("line %d: %q: want a millisecond offset", line, t)
		}
		d := time.Duration(ms) * time.Millisecond
		if len(ts) > 0 && d < ts[len(ts)-1] {
			return nil, fmt.Errorf("line %d: %d: offsets must not decrease", line, ms)
		}
		ts = append(ts, d)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(ts) == 0 || ts[len(ts)-1] == 0 {
		return nil, errors.New("want at least one offset and a positive last offset")
	}
	return ts, nil
}
