// Package cctest provides a fake cc.Sender with a manual clock, for
// driving congestion-control algorithms with synthetic ACK streams in unit
// tests. Start with NewSender.
package cctest

import (
	"time"

	"github.com/nsappliance/appliance/cc"
)

// Sender is a cc.Sender whose every field is set directly by the test.
type Sender struct {
	Clock       time.Duration
	CwndV       uint32
	ClampV      uint32
	SsthreshV   uint32
	InFlightV   uint32
	SackedV     uint32
	LostV       uint32
	RetransV    uint32
	MSSV        uint32
	SRTTV       time.Duration
	MinRTTV     time.Duration
	DeliveredV  uint64
	LostTotalV  uint64
	AppLimitedV bool
	PacingV     uint64
	MaxPacingV  uint64
}

var _ cc.Sender = (*Sender)(nil)

// NewSender returns a sender in Linux's initial state: cwnd 10 (RFC 6928),
// ssthresh "infinite", MSS 1448.
func NewSender() *Sender {
	return &Sender{CwndV: 10, ClampV: ^uint32(0), SsthreshV: 0x7fffffff, MSSV: 1448}
}

// Advance moves the manual clock forward.
func (s *Sender) Advance(d time.Duration) { s.Clock += d }

func (s *Sender) Now() time.Duration     { return s.Clock }
func (s *Sender) Cwnd() uint32           { return s.CwndV }
func (s *Sender) SetCwnd(v uint32)       { s.CwndV = min(v, s.ClampV) }
func (s *Sender) CwndClamp() uint32      { return s.ClampV }
func (s *Sender) Ssthresh() uint32       { return s.SsthreshV }
func (s *Sender) SetSsthresh(v uint32)   { s.SsthreshV = v }
func (s *Sender) InFlight() uint32       { return s.InFlightV }
func (s *Sender) Sacked() uint32         { return s.SackedV }
func (s *Sender) Lost() uint32           { return s.LostV }
func (s *Sender) Retransmitted() uint32  { return s.RetransV }
func (s *Sender) MSS() uint32            { return s.MSSV }
func (s *Sender) SRTT() time.Duration    { return s.SRTTV }
func (s *Sender) MinRTT() time.Duration  { return s.MinRTTV }
func (s *Sender) Delivered() uint64      { return s.DeliveredV }
func (s *Sender) LostTotal() uint64      { return s.LostTotalV }
func (s *Sender) AppLimited() bool       { return s.AppLimitedV }
func (s *Sender) PacingRate() uint64     { return s.PacingV }
func (s *Sender) SetPacingRate(v uint64) { s.PacingV = v }
func (s *Sender) MaxPacingRate() uint64  { return s.MaxPacingV }
