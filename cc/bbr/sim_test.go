package bbr_test

import (
	"math/rand/v2"
	"time"

	"github.com/nsappliance/appliance/cc"
	"github.com/nsappliance/appliance/cc/cctest"
)

// This file is a small packet-level model of one TCP flow across a
// bottleneck, for driving a controller through the cc interface with a
// manual clock. The sender side follows Linux's tcp_rate.c for rate
// samples (tcp_rate_skb_sent, tcp_rate_skb_delivered, tcp_rate_gen) and
// its ACK processing order (tcp_ack: deliveries, loss marking, recovery
// state, then cong_control). The network is a FIFO bottleneck with a rate,
// a packet limit and a fixed two-way propagation delay; optional random
// loss, a token-bucket policer and ACK batching sit in front of it. There
// is no reordering, so a packet is known lost once a later one is acked
// (SACK plus RACK with a zero reordering window).

// path describes the network.
type path struct {
	rate    float64       // bottleneck, packets per second
	rtprop  time.Duration // two-way propagation delay
	limit   int           // bottleneck queue limit, packets
	loss    float64       // random loss probability per packet
	policer float64       // token-bucket policer rate, packets/s; 0 = none
	bucket  float64       // policer bucket depth, packets
	ackEach time.Duration // if >0, ACKs are released in batches at multiples of this
	// A route change: from switchAt on, the propagation delay is rtprop2.
	switchAt time.Duration
	rtprop2  time.Duration
}

type simPkt struct {
	seq        uint64
	sendTime   time.Duration
	firstTx    time.Duration // tx.first_tx_mstamp
	delivMst   time.Duration // tx.delivered_mstamp
	delivered  uint64        // tx.delivered
	appLimited bool
	retrans    bool
	dropped    bool
	ackAt      time.Duration
}

// simSender is the fake sender plus the two optional abilities BBR probes.
type simSender struct {
	cctest.Sender
	appLimited uint64        // tp->app_limited
	edt        time.Duration // tp->tcp_wstamp_ns
	marked     int           // MarkAppLimited calls
}

func (s *simSender) MarkAppLimited() {
	s.marked++
	s.appLimited = max(s.DeliveredV+uint64(s.InFlightV), 1)
}

func (s *simSender) EarliestDeparture() time.Duration { return s.edt }

// sim is one flow.
type sim struct {
	p   path
	s   *simSender
	alg cc.Algorithm
	ctl cc.CongController
	rng *rand.Rand

	seq         uint64
	out         []*simPkt // sent, not yet acked or marked lost, in send order
	lostOut     uint32    // marked lost, not yet retransmitted
	busyUntil   time.Duration
	tokens      float64
	tokensAt    time.Duration
	firstTx     time.Duration // tp->first_tx_mstamp
	delivMst    time.Duration // tp->delivered_mstamp
	state       cc.State
	recoverySeq uint64        // recovery ends when everything up to here is delivered
	lastAck     time.Duration // for the RTO

	// Observations.
	sent     uint64
	drops    uint64
	rttSum   time.Duration // sum of RTT samples
	rttN     int
	maxQueue int
	onAck    func(now time.Duration)
}

func newSim(p path, alg cc.Algorithm, seed uint64) *sim {
	s := &simSender{Sender: *cctest.NewSender()}
	m := &sim{p: p, s: s, alg: alg, rng: rand.New(rand.NewPCG(seed, 1)), tokens: p.bucket}
	if c, ok := alg.(cc.CongController); ok {
		m.ctl = c
	}
	alg.Init(s)
	return m
}

func (m *sim) now() time.Duration { return m.s.Clock }

func (m *sim) serTime() time.Duration { return time.Duration(float64(time.Second) / m.p.rate) }

// run advances the model until the clock reaches end.
func (m *sim) run(end time.Duration) {
	for m.now() < end {
		m.sendAll()
		next := end
		if len(m.out) > 0 {
			// The earliest ACK still to come (dropped packets never ack).
			for _, p := range m.out {
				if !p.dropped {
					next = min(next, p.ackAt)
					break
				}
			}
		}
		if m.s.InFlightV < m.s.CwndV && m.s.edt > m.now() {
			next = min(next, m.s.edt)
		}
		rto := m.rto()
		if len(m.out) > 0 {
			next = min(next, m.lastAck+rto)
		}
		if next <= m.now() {
			next = m.now() + time.Microsecond
		}
		m.s.Clock = next
		m.ackAll()
		if len(m.out) > 0 && m.now() >= m.lastAck+rto {
			m.fireRTO()
		}
	}
}

func (m *sim) rto() time.Duration {
	return max(200*time.Millisecond, 2*m.s.SRTTV+4*time.Millisecond)
}

// sendAll sends while cwnd and pacing allow.
func (m *sim) sendAll() {
	for m.s.InFlightV < m.s.CwndV && m.now() >= m.s.edt {
		m.send()
	}
}

func (m *sim) send() {
	now := m.now()
	if len(m.out) == 0 { // tcp_rate_skb_sent: nothing in flight
		m.firstTx, m.delivMst = now, now
		if m.s.InFlightV == 0 && m.s.DeliveredV > 0 {
			m.alg.CwndEvent(cc.EventTxStart)
		}
	}
	p := &simPkt{
		seq: m.seq, sendTime: now, firstTx: m.firstTx, delivMst: m.delivMst,
		delivered: m.s.DeliveredV, appLimited: m.s.appLimited != 0,
	}
	m.seq++
	m.sent++
	if m.lostOut > 0 {
		p.retrans = true
		m.lostOut--
		m.s.LostV--
	}
	m.s.InFlightV++
	// Pacing: the next segment leaves no earlier than len/rate from now.
	if r := m.s.PacingV; r > 0 {
		m.s.edt = now + time.Duration(float64(m.s.MSSV)/float64(r)*float64(time.Second))
	}
	m.network(p)
	m.out = append(m.out, p)
}

// network decides the packet's fate and ACK time.
func (m *sim) network(p *simPkt) {
	now := p.sendTime
	if m.p.policer > 0 {
		m.tokens = min(m.p.bucket, m.tokens+(now-m.tokensAt).Seconds()*m.p.policer)
		m.tokensAt = now
		if m.tokens < 1 {
			p.dropped = true
			m.drops++
			return
		}
		m.tokens--
	}
	if m.p.loss > 0 && m.rng.Float64() < m.p.loss {
		p.dropped = true
		m.drops++
		return
	}
	ser := m.serTime()
	q := 0
	if m.busyUntil > now {
		q = int((m.busyUntil - now + ser - 1) / ser)
	}
	if m.p.limit > 0 && q >= m.p.limit {
		p.dropped = true
		m.drops++
		return
	}
	m.maxQueue = max(m.maxQueue, q)
	m.busyUntil = max(m.busyUntil, now) + ser
	p.ackAt = m.busyUntil + m.p.rtprop
	if m.p.switchAt > 0 && now >= m.p.switchAt {
		p.ackAt = m.busyUntil + m.p.rtprop2
	}
	if e := m.p.ackEach; e > 0 { // ACKs held and released in batches
		p.ackAt = (p.ackAt + e - 1) / e * e
	}
}

// ackAll processes every ACK due now as one ACK (tcp_ack).
func (m *sim) ackAll() {
	now := m.now()
	var rs cc.RateSample
	havePrior := false
	var priorMst time.Duration
	var acked, lost uint32
	priorInFlight := m.s.InFlightV
	rtt := time.Duration(-1)
	for len(m.out) > 0 {
		p := m.out[0]
		if !p.dropped && p.ackAt > now {
			break
		}
		if p.dropped {
			// Lost if a later packet is acked now; else wait (or RTO).
			later := false
			for _, q := range m.out[1:] {
				if !q.dropped {
					later = q.ackAt <= now
					break
				}
			}
			if !later {
				break
			}
			m.out = m.out[1:]
			lost++
			m.lostOut++
			m.s.LostV++
			m.s.LostTotalV++
			m.s.InFlightV--
			continue
		}
		m.out = m.out[1:]
		m.s.InFlightV--
		m.s.DeliveredV++
		acked++
		// tcp_rate_skb_delivered: keep the most recently sent packet.
		if !havePrior || p.delivered > rs.PriorDelivered {
			havePrior = true
			rs.PriorDelivered = p.delivered
			priorMst = p.delivMst
			rs.IsAppLimited = p.appLimited
			rs.IsRetrans = p.retrans
			m.firstTx = p.sendTime
			rs.Interval = p.sendTime - p.firstTx
		}
		if !p.retrans {
			rtt = now - p.sendTime
		}
	}
	if acked == 0 && lost == 0 {
		return
	}
	m.lastAck = now
	if rtt >= 0 {
		m.rttSum += rtt
		m.rttN++
		if m.s.MinRTTV == 0 || rtt < m.s.MinRTTV {
			m.s.MinRTTV = rtt
		}
		if m.s.SRTTV == 0 {
			m.s.SRTTV = rtt
		} else {
			m.s.SRTTV = (7*m.s.SRTTV + rtt) / 8
		}
	}
	// Recovery state (tcp_fastretrans_alert) before cong_control.
	if lost > 0 && m.state < cc.StateRecovery {
		m.alg.SSThresh()
		m.setState(cc.StateRecovery)
		m.recoverySeq = m.seq
	} else if m.state >= cc.StateRecovery && m.lostOut == 0 && (len(m.out) == 0 || m.out[0].seq >= m.recoverySeq) {
		m.setState(cc.StateOpen)
	}
	// tcp_rate_gen.
	if m.s.appLimited != 0 && m.s.DeliveredV > m.s.appLimited {
		m.s.appLimited = 0
	}
	m.s.AppLimitedV = m.s.appLimited != 0
	if acked > 0 {
		m.delivMst = now
	}
	rs.AckedSacked = acked
	rs.Losses = lost
	rs.PriorInFlight = priorInFlight
	rs.RTT = rtt
	if !havePrior {
		rs.Delivered, rs.Interval = -1, -1
	} else {
		rs.Delivered = int64(m.s.DeliveredV - rs.PriorDelivered)
		rs.Interval = max(rs.Interval, now-priorMst)
		if rs.Interval < m.s.MinRTTV {
			rs.Interval = -1
		}
	}
	if m.ctl != nil {
		m.ctl.CongControl(&rs)
	} else if m.state == cc.StateOpen {
		m.alg.CongAvoid(acked)
	}
	if m.onAck != nil {
		m.onAck(now)
	}
}

func (m *sim) setState(st cc.State) {
	m.alg.SetState(st)
	m.state = st
}

// fireRTO marks everything in flight lost (tcp_enter_loss).
func (m *sim) fireRTO() {
	m.alg.SSThresh()
	m.setState(cc.StateLoss)
	m.alg.CwndEvent(cc.EventLoss)
	n := uint32(len(m.out))
	m.out = m.out[:0]
	m.lostOut += n
	m.s.LostV += n
	m.s.LostTotalV += uint64(n)
	m.s.InFlightV = 0
	m.s.SetCwnd(1)
	m.recoverySeq = m.seq
	m.lastAck = m.now()
}

// goodput is delivered packets per second since a mark.
type mark struct {
	at        time.Duration
	delivered uint64
	rttSum    time.Duration
	rttN      int
}

func (m *sim) mark() mark {
	return mark{at: m.now(), delivered: m.s.DeliveredV, rttSum: m.rttSum, rttN: m.rttN}
}

func (m *sim) rateSince(k mark) float64 {
	return float64(m.s.DeliveredV-k.delivered) / (m.now() - k.at).Seconds()
}

func (m *sim) meanRTTSince(k mark) time.Duration {
	if m.rttN == k.rttN {
		return 0
	}
	return (m.rttSum - k.rttSum) / time.Duration(m.rttN-k.rttN)
}
