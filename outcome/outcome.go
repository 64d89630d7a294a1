// Package outcome accounts every packet that enters from or leaves to a
// link to exactly one outcome, as Linux's kfree_skb drop reasons do:
// delivered to a socket, forwarded, answered by the appliance, transmitted,
// or dropped with a reason (bad checksum, malformed header, no route, filter
// rule, early filter, queue full, emulation loss, TTL expired, no socket,
// memory pressure, ...). Counters are kept per link, per hook and per
// protocol, in packets and bytes.
//
// Start with NewTable (netstack.Stack owns one: Stack.Outcomes), get a
// link's counters with Table.Link(name), and count with Link.Count or
// Link.Drop. Counting takes no lock and does not allocate.
package outcome

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// Reason is an outcome: one of the non-drop outcomes (Delivered,
// Forwarded, Answered, Transmitted) or a drop reason. Built-in reasons are
// constants; Table.Register adds more.
type Reason uint8

// The built-in outcomes. Linux's equivalent skb drop reason
// (include/net/dropreason-core.h) is given where there is one.
const (
	Delivered   Reason = iota // accepted by a netstack socket or the relay (consume_skb)
	Forwarded                 // routed out of another link (router mode)
	Answered                  // answered by the appliance itself (ICMP echo relay)
	Transmitted               // written to the link

	NotSpecified    // dropped, no more specific reason (NOT_SPECIFIED)
	Malformed       // header truncated or invalid (PKT_TOO_SMALL, HDR_TRUNC, IP_INHDR)
	BadChecksum     // transport checksum wrong (TCP_CSUM, UDP_CSUM)
	InvalidAddress  // source or destination not acceptable (IP_INVALID_SOURCE, IP_INADDRERRORS)
	UnknownProtocol // no handler for the network or transport protocol (UNHANDLED_PROTO, IP_NOPROTO)
	NoRoute         // no route to the destination (IP_OUTNOROUTES)
	TTLExpired      // TTL / hop limit exhausted while forwarding
	PacketTooBig    // larger than the egress MTU with DF set (PKT_TOO_BIG)
	NoSocket        // no socket for the destination (NO_SOCKET)
	SocketFull      // socket receive buffer full (SOCKET_RCVBUFF)
	ListenOverflow  // too many pending connections (SOCKET_BACKLOG)
	FilterRule      // dropped by a filter rule at a hook (NETFILTER_DROP)
	EarlyFilter     // dropped by the early ingress filter before the stack (XDP)
	QueueFull       // a queue toward or from the link was full (QDISC_DROP, FULL_RING)
	EmulationLoss   // lost by link emulation (netem)
	MemoryPressure  // refused under tcp_mem pressure or above its max (PROTO_MEM)
	LinkError       // the link delivered something unusable, e.g. a bad virtio-net header
	NICDisabled     // the link's NIC was down (NETDEV_DOWN? DEV_READY)

	// Segments a TCP endpoint discarded after netstack delivered them to
	// it (gVisor patch 0015).
	TCPOldData       // all its data was received before (TCP_OLD_DATA)
	TCPOldSequence   // no data, sequence number before the window: keepalive probe, old ACK (TCP_OLD_SEQUENCE)
	TCPZeroWindow    // data while the advertised window is zero (TCP_ZEROWINDOW)
	TCPOverWindow    // data beyond the advertised window (TCP_OVERWINDOW)
	TCPOFODrop       // held out of order, then found already received (TCP_OFO_DROP)
	TCPOFOPrune      // out-of-order queue pruned under memory pressure (TCP_OFO_QUEUE_PRUNE)
	TCPAckUnsentData // acknowledges data never sent (TCP_ACK_UNSENT_DATA)
	TCPAbortOnData   // data after the receive side was shut down, answered with RST (TCP_ABORT_ON_DATA)
	TCPClose         // the connection was closing or closed (TCP_CLOSE)
	TCPInvalidSYN    // SYN on a synchronized connection, answered with a challenge ACK (TCP_INVALID_SYN)
	TCPReset         // RST not exactly at RCV.NXT (TCP_RESET)

	numBuiltin
)

// MaxReasons bounds built-in plus registered reasons.
const MaxReasons = 48

// Hook is where a packet's fate was decided.
type Hook uint8

// Hooks: the five netfilter hooks plus the link's edges.
const (
	HookNone    Hook = iota // not at a hook (transport, link, relay)
	HookIngress             // the early filter, before netstack
	HookPrerouting
	HookInput
	HookForward
	HookOutput
	HookPostrouting
	HookEgress
	numHooks
)

var hookNames = [numHooks]string{"", "ingress", "prerouting", "input", "forward", "output", "postrouting", "egress"}

func (h Hook) String() string {
	if h < numHooks {
		return hookNames[h]
	}
	return fmt.Sprintf("hook%d", uint8(h))
}

// Proto is the packet's transport protocol as far as it could be parsed.
type Proto uint8

// Protocols counted separately.
const (
	ProtoOther Proto = iota
	ProtoTCP
	ProtoUDP
	ProtoICMP // ICMPv4 and ICMPv6
	numProtos
)

var protoNames = [numProtos]string{"other", "tcp", "udp", "icmp"}

func (p Proto) String() string {
	if p < numProtos {
		return protoNames[p]
	}
	return fmt.Sprintf("proto%d", uint8(p))
}

type reasonInfo struct {
	name  string
	linux string
	drop  bool
}

var builtin = [numBuiltin]reasonInfo{
	Delivered:       {"delivered", "", false},
	Forwarded:       {"forwarded", "", false},
	Answered:        {"answered", "", false},
	Transmitted:     {"transmitted", "", false},
	NotSpecified:    {"not_specified", "NOT_SPECIFIED", true},
	Malformed:       {"malformed", "PKT_TOO_SMALL", true},
	BadChecksum:     {"bad_checksum", "TCP_CSUM", true},
	InvalidAddress:  {"invalid_address", "IP_INADDRERRORS", true},
	UnknownProtocol: {"unknown_protocol", "UNHANDLED_PROTO", true},
	NoRoute:         {"no_route", "IP_OUTNOROUTES", true},
	TTLExpired:      {"ttl_expired", "", true},
	PacketTooBig:    {"packet_too_big", "PKT_TOO_BIG", true},
	NoSocket:        {"no_socket", "NO_SOCKET", true},
	SocketFull:      {"socket_full", "SOCKET_RCVBUFF", true},
	ListenOverflow:  {"listen_overflow", "SOCKET_BACKLOG", true},
	FilterRule:      {"filter_rule", "NETFILTER_DROP", true},
	EarlyFilter:     {"early_filter", "XDP", true},
	QueueFull:       {"queue_full", "QDISC_DROP", true},
	EmulationLoss:   {"emulation_loss", "", true},
	MemoryPressure:  {"memory_pressure", "PROTO_MEM", true},
	LinkError:       {"link_error", "", true},
	NICDisabled:     {"nic_disabled", "DEV_READY", true},

	TCPOldData:       {"tcp_old_data", "TCP_OLD_DATA", true},
	TCPOldSequence:   {"tcp_old_sequence", "TCP_OLD_SEQUENCE", true},
	TCPZeroWindow:    {"tcp_zerowindow", "TCP_ZEROWINDOW", true},
	TCPOverWindow:    {"tcp_overwindow", "TCP_OVERWINDOW", true},
	TCPOFODrop:       {"tcp_ofo_drop", "TCP_OFO_DROP", true},
	TCPOFOPrune:      {"tcp_ofo_queue_prune", "TCP_OFO_QUEUE_PRUNE", true},
	TCPAckUnsentData: {"tcp_ack_unsent_data", "TCP_ACK_UNSENT_DATA", true},
	TCPAbortOnData:   {"tcp_abort_on_data", "TCP_ABORT_ON_DATA", true},
	TCPClose:         {"tcp_close", "TCP_CLOSE", true},
	TCPInvalidSYN:    {"tcp_invalid_syn", "TCP_INVALID_SYN", true},
	TCPReset:         {"tcp_reset", "TCP_RESET", true},
}

// cell is one (reason, hook, proto) counter pair.
type cell struct {
	pkts, bytes atomic.Uint64
}

// Link holds one link's counters. Its methods are safe for concurrent use
// and do not allocate.
type Link struct {
	name  string
	t     *Table
	cells [MaxReasons][numHooks][numProtos]cell
}

// Name is the link's name.
func (l *Link) Name() string { return l.name }

// Count accounts one packet of n bytes to outcome r, decided at hook h.
// Out-of-range values are counted as NotSpecified / HookNone / ProtoOther
// rather than panicking: counting sits on packet paths.
func (l *Link) Count(r Reason, h Hook, p Proto, n int) {
	if int(r) >= MaxReasons {
		r = NotSpecified
	}
	if h >= numHooks {
		h = HookNone
	}
	if p >= numProtos {
		p = ProtoOther
	}
	c := &l.cells[r][h][p]
	c.pkts.Add(1)
	if n > 0 {
		c.bytes.Add(uint64(n))
	}
}

// Drop accounts one dropped packet of n bytes to reason r at hook h. It is
// Count under the name callers look for; r should be a drop reason.
func (l *Link) Drop(r Reason, h Hook, p Proto, n int) { l.Count(r, h, p, n) }

// Packets returns how many packets were counted to r on this link, over
// all hooks and protocols.
func (l *Link) Packets(r Reason) uint64 {
	if int(r) >= MaxReasons {
		return 0
	}
	var sum uint64
	for h := range l.cells[r] {
		for p := range l.cells[r][h] {
			sum += l.cells[r][h][p].pkts.Load()
		}
	}
	return sum
}

// Table is the registry of reasons and the set of links. Create it with
// NewTable.
type Table struct {
	mu sync.Mutex
	// +checklocks:mu
	reasons []reasonInfo
	// +checklocks:mu
	links map[string]*Link
	// +checklocks:mu
	order []*Link
}

// NewTable returns a table with the built-in reasons and no links.
func NewTable() *Table {
	t := &Table{links: map[string]*Link{}}
	t.reasons = append(t.reasons, builtin[:]...)
	return t
}

// Register adds a drop reason named name (snake_case; linux is the Linux
// drop reason it corresponds to, or ""). Names are unique.
func (t *Table) Register(name, linux string) (Reason, error) {
	if name == "" {
		return 0, fmt.Errorf("outcome reason: empty name")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ri := range t.reasons {
		if ri.name == name {
			return 0, fmt.Errorf("outcome reason %q: already registered", name)
		}
	}
	if len(t.reasons) >= MaxReasons {
		return 0, fmt.Errorf("outcome reason %q: table full (%d reasons)", name, MaxReasons)
	}
	t.reasons = append(t.reasons, reasonInfo{name: name, linux: linux, drop: true})
	return Reason(len(t.reasons) - 1), nil
}

// Lookup returns the reason named name.
func (t *Table) Lookup(name string) (Reason, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, ri := range t.reasons {
		if ri.name == name {
			return Reason(i), true
		}
	}
	return 0, false
}

// Name returns r's name ("no_socket"), or "" if r is not registered.
func (t *Table) Name(r Reason) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if int(r) < len(t.reasons) {
		return t.reasons[r].name
	}
	return ""
}

// IsDrop reports whether r is a drop reason.
func (t *Table) IsDrop(r Reason) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int(r) < len(t.reasons) && t.reasons[r].drop
}

// Link returns the counters of the link named name, creating them on
// first use. Callers keep the result; the lookup takes a lock.
func (t *Table) Link(name string) *Link {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l, ok := t.links[name]; ok {
		return l
	}
	l := &Link{name: name, t: t}
	t.links[name] = l
	t.order = append(t.order, l)
	return l
}

// Row is one non-zero counter.
type Row struct {
	Link    string `json:"link"`
	Outcome string `json:"outcome"` // "drop" or the outcome's name
	Reason  string `json:"reason"`  // the outcome's or drop reason's name
	Linux   string `json:"linux,omitempty"`
	Hook    string `json:"hook,omitempty"`
	Proto   string `json:"proto"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Rows returns every non-zero counter, sorted by link, reason, hook,
// proto.
func (t *Table) Rows() []Row {
	t.mu.Lock()
	reasons := append([]reasonInfo(nil), t.reasons...)
	links := append([]*Link(nil), t.order...)
	t.mu.Unlock()
	var out []Row
	for _, l := range links {
		for r, ri := range reasons {
			for h := range numHooks {
				for p := range numProtos {
					c := &l.cells[r][h][p]
					n := c.pkts.Load()
					if n == 0 {
						continue
					}
					oc := ri.name
					if ri.drop {
						oc = "drop"
					}
					out = append(out, Row{Link: l.name, Outcome: oc, Reason: ri.name, Linux: ri.linux,
						Hook: h.String(), Proto: p.String(), Packets: n, Bytes: c.bytes.Load()})
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Link != b.Link {
			return a.Link < b.Link
		}
		if a.Reason != b.Reason {
			return a.Reason < b.Reason
		}
		if a.Hook != b.Hook {
			return a.Hook < b.Hook
		}
		return a.Proto < b.Proto
	})
	return out
}

// Counters flattens the table nstat-style: for each outcome X (drops are
// drop_REASON), "X" and "X_bytes" over everything, "LINK_X" per link,
// "PROTO_X" per protocol and "HOOK_X" per hook. Only non-zero counters
// appear.
func (t *Table) Counters() map[string]uint64 {
	m := map[string]uint64{}
	add := func(k string, r Row) {
		m[k] += r.Packets
		m[k+"_bytes"] += r.Bytes
	}
	for _, r := range t.Rows() {
		x := r.Reason
		if r.Outcome == "drop" {
			x = "drop_" + r.Reason
		}
		add(x, r)
		add(r.Link+"_"+x, r)
		add(r.Proto+"_"+x, r)
		if r.Hook != "" {
			add(r.Hook+"_"+x, r)
		}
	}
	return m
}
