// Package iptables is a pure-Go model of Linux iptables: the rule language
// of iptables-save/ip6tables-save text and of the iptables command line, the
// tables and chains it builds, iptables-save and iptables -L output, and an
// allocation-free evaluator that walks a table's chains for one packet.
//
// Start with Parse (iptables-save text) or New plus the editing methods
// (Append, Insert, Delete, ...); print with Save and List; evaluate with
// Eval, filling a Packet from the packet's parsed headers. A Ruleset is
// immutable once built: editing returns a new Ruleset that shares the
// unchanged rules (and so their counters and match state) with the old one,
// so callers publish rule sets through an atomic pointer.
//
// The package knows nothing about gVisor; the hooks package executes the
// verdicts (NAT, REJECT packets) and supplies conntrack state.
package iptables

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
)

// Family is the address family of a rule set: iptables (IPv4) or ip6tables.
type Family uint8

// Address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Hook is one of netfilter's five hook points.
type Hook uint8

// The netfilter hooks, in Linux's numbering (NF_INET_PRE_ROUTING = 0, ...).
const (
	Prerouting Hook = iota
	Input
	Forward
	Output
	Postrouting
	// NumHooks is the number of hooks.
	NumHooks
)

var hookNames = [NumHooks]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// String returns the built-in chain name of the hook ("PREROUTING", ...).
func (h Hook) String() string {
	if h < NumHooks {
		return hookNames[h]
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// HookByName returns the hook whose built-in chain is called name.
func HookByName(name string) (Hook, bool) {
	for i, n := range hookNames {
		if n == name {
			return Hook(i), true
		}
	}
	return 0, false
}

// Table names.
const (
	TableRaw    = "raw"
	TableMangle = "mangle"
	TableNAT    = "nat"
	TableFilter = "filter"
)

// tableInfo is what the kernel defines for each table: its built-in chains
// (valid_hooks) and its position in save order.
type tableInfo struct {
	name  string
	hooks uint8 // bit per Hook
}

const (
	tRaw = iota
	tMangle
	tNAT
	tFilter
	numTables
)

var tableInfos = [numTables]tableInfo{
	tRaw:    {TableRaw, 1<<Prerouting | 1<<Output},
	tMangle: {TableMangle, 1<<Prerouting | 1<<Input | 1<<Forward | 1<<Output | 1<<Postrouting},
	tNAT:    {TableNAT, 1<<Prerouting | 1<<Input | 1<<Output | 1<<Postrouting},
	tFilter: {TableFilter, 1<<Input | 1<<Forward | 1<<Output},
}

func tableIndex(name string) int {
	switch name {
	case TableRaw:
		return tRaw
	case TableMangle:
		return tMangle
	case TableNAT:
		return tNAT
	case TableFilter:
		return tFilter
	}
	return -1
}

// TableNames lists the tables this package knows, in the order the kernel
// traverses them at a hook (raw, mangle, nat, filter).
func TableNames() []string {
	return []string{TableRaw, TableMangle, TableNAT, TableFilter}
}

// BuiltinChains returns the built-in chains of table in hook order, or nil
// for an unknown table.
func BuiltinChains(table string) []string {
	ti := tableIndex(table)
	if ti < 0 {
		return nil
	}
	var out []string
	for h := Hook(0); h < NumHooks; h++ {
		if tableInfos[ti].hooks&(1<<h) != 0 {
			out = append(out, h.String())
		}
	}
	return out
}

// Policy is a built-in chain's policy.
type Policy uint8

// Policies. PolicyNone is a user-defined chain's (shown as "-").
const (
	PolicyNone Policy = iota
	PolicyAccept
	PolicyDrop
)

func (p Policy) String() string {
	switch p {
	case PolicyAccept:
		return "ACCEPT"
	case PolicyDrop:
		return "DROP"
	}
	return "-"
}

// ParsePolicy parses "ACCEPT" or "DROP".
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "ACCEPT":
		return PolicyAccept, nil
	case "DROP":
		return PolicyDrop, nil
	}
	return PolicyNone, fmt.Errorf("bad policy %q (want ACCEPT or DROP)", s)
}

// Counters is a packet and byte counter pair, updated atomically on the
// packet path. Rules shared between rule sets share their Counters.
type Counters struct {
	packets atomic.Uint64
	bytes   atomic.Uint64
}

// Add counts one packet of n bytes.
func (c *Counters) Add(n uint64) {
	c.packets.Add(1)
	c.bytes.Add(n)
}

// AddN counts packets packets of bytes bytes in all.
func (c *Counters) AddN(packets, bytes uint64) {
	c.packets.Add(packets)
	c.bytes.Add(bytes)
}

// Load returns the packet and byte counts.
func (c *Counters) Load() (packets, bytes uint64) {
	return c.packets.Load(), c.bytes.Load()
}

// Set sets both counts (iptables-restore -c, iptables -Z).
func (c *Counters) Set(packets, bytes uint64) {
	c.packets.Store(packets)
	c.bytes.Store(bytes)
}

// CTState is a set of conntrack states, as -m conntrack --ctstate and -m
// state --state match them.
type CTState uint16

// Conntrack state bits. The first five are what -m state knows; SNAT and
// DNAT are -m conntrack's "the connection was NATed" pseudo-states.
const (
	CTInvalid CTState = 1 << iota
	CTEstablished
	CTRelated
	CTNew
	CTUntracked
	CTSNAT
	CTDNAT
)

// TCP flag bits, as in the TCP header's flags byte.
const (
	TCPFin uint8 = 1 << iota
	TCPSyn
	TCPRst
	TCPPsh
	TCPAck
	TCPUrg
	TCPEce
	TCPCwr
)

// IP protocol numbers used by the matches.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoSCTP   uint8 = 132
	ProtoICMPv6 uint8 = 58
)

// Conns is what -m connlimit needs from connection tracking: whether a
// connection it counted is still alive (nf_conncount drops connections
// conntrack no longer has, or TCP connections that are closing).
type Conns interface {
	Alive(connID uint64) bool
}

// Packet is what a rule can look at, filled by the caller from the
// packet's parsed headers. Eval may change Mark (MARK target). A Packet is
// owned by one goroutine during Eval.
type Packet struct {
	Family Family
	Hook   Hook
	// InIface and OutIface are the input and output interface names; empty
	// where Linux has none (no input at OUTPUT/POSTROUTING, no output at
	// PREROUTING/INPUT).
	InIface, OutIface string
	Src, Dst          netip.Addr
	// Protocol is the transport protocol (the IPv6 upper-layer header after
	// extension headers).
	Protocol uint8
	// SrcPort and DstPort are the TCP/UDP/SCTP ports.
	SrcPort, DstPort uint16
	// TCPFlags is the TCP header's flags byte (TCPFin, TCPSyn, ...).
	TCPFlags uint8
	// ICMPType and ICMPCode are the ICMP or ICMPv6 type and code.
	ICMPType, ICMPCode uint8
	// Length is the IP packet's length: IPv4 total length, IPv6 payload
	// length plus 40, as -m length and the byte counters see it.
	Length int
	// Fragment is true for a fragment other than the first (IPv4, or
	// IPv6 with a fragment header at a non-zero offset): ports, TCP flags
	// and ICMP types are not known for those, so port, flag and ICMP
	// matches fail, as in the kernel. IPv4's -f matches it.
	Fragment bool
	// Mark is the packet mark (skb->mark); MARK rewrites it.
	Mark uint32
	// CTState is the packet's conntrack state: exactly one of CTInvalid,
	// CTEstablished, CTRelated, CTNew, CTUntracked, plus CTSNAT/CTDNAT when
	// the connection is NATed.
	CTState CTState
	// ConnID identifies the packet's conntrack entry (0: none) for connlimit.
	ConnID uint64
	// Conns answers connlimit's questions; nil makes every counted
	// connection count as alive.
	Conns Conns
	// Now is the packet's arrival time on the caller's clock (limit and
	// hashlimit refill their buckets from it). The zero time means time.Now,
	// read only if a rule needs it.
	Now time.Time

	// x is Eval's scratch space, kept here so that passing it to matches
	// does not move it to the heap.
	x evalPacket
}

// VerdictKind is what the caller must do with the packet.
type VerdictKind uint8

// Verdict kinds. Every one except Accept ends the packet's traversal of the
// hook (DNAT and friends accept it after rewriting).
const (
	Accept VerdictKind = iota
	Drop
	// Reject drops the packet and answers with Verdict.Reject.
	Reject
	// DNAT, SNAT, Masquerade and Redirect rewrite the connection as
	// Verdict.NAT says, then accept.
	DNAT
	SNAT
	Masquerade
	Redirect
)

var verdictNames = [...]string{"ACCEPT", "DROP", "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT"}

func (k VerdictKind) String() string {
	if int(k) < len(verdictNames) {
		return verdictNames[k]
	}
	return fmt.Sprintf("verdict(%d)", uint8(k))
}

// Verdict is the outcome of Eval.
type Verdict struct {
	Kind VerdictKind
	// Reject is the answer to send for Kind == Reject.
	Reject RejectWith
	// NAT is the rewrite for the NAT kinds; it points into the rule set
	// and must not be modified.
	NAT *NATRange
	// Rule is the rule whose target decided, nil when a chain policy did.
	Rule *Rule
}

// RejectWith is REJECT's --reject-with type.
type RejectWith uint8

// Reject types. The zero value is the family default
// (icmp-port-unreachable / icmp6-port-unreachable).
const (
	RejectDefault RejectWith = iota
	RejectICMPNetUnreachable
	RejectICMPHostUnreachable
	RejectICMPPortUnreachable
	RejectICMPProtoUnreachable
	RejectICMPNetProhibited
	RejectICMPHostProhibited
	RejectICMPAdminProhibited
	RejectTCPReset
	RejectICMP6NoRoute
	RejectICMP6AdmProhibited
	RejectICMP6AddrUnreachable
	RejectICMP6PortUnreachable
	RejectICMP6PolicyFail
	RejectICMP6RejectRoute
)

// NATRange is a NAT target's rewrite: an address range (invalid addresses:
// keep the address, as MASQUERADE and REDIRECT choose it from the
// interface) and a port range (0: keep the port).
type NATRange struct {
	MinAddr, MaxAddr netip.Addr
	MinPort, MaxPort uint16
	// Random and Persistent are --random and --persistent;
	// FullyRandom is --random-fully.
	Random, FullyRandom, Persistent bool
}
