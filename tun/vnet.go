package tun

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// virtio-net header constants from linux/virtio_net.h and linux/if_tun.h.
// golang.org/x/sys/unix has the ioctls but not these flags.
const (
	vnetHdrLen = 10 // struct virtio_net_hdr, without num_buffers

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	vnetGSONone  = 0    // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOUDP   = 3    // VIRTIO_NET_HDR_GSO_UDP (UFO, never negotiated)
	vnetGSOTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	vnetGSOUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4 (USO)
	vnetGSOECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN

	tunFCsum = 0x01 // TUN_F_CSUM
	tunFTSO4 = 0x02 // TUN_F_TSO4
	tunFTSO6 = 0x04 // TUN_F_TSO6
	tunFUSO4 = 0x20 // TUN_F_USO4
	tunFUSO6 = 0x40 // TUN_F_USO6
)

// vnetHdr is struct virtio_net_hdr. Multi-byte fields are in host (little
// endian on every architecture we build for) byte order, as TUN uses them
// when TUNSETVNETLE is not set and the host is little endian.
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *vnetHdr) encode(b []byte) {
	_ = b[vnetHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.LittleEndian.PutUint16(b[2:], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:], h.csumOffset)
}

func (h *vnetHdr) decode(b []byte) error {
	if len(b) < vnetHdrLen {
		return errShortVnetHdr
	}
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.LittleEndian.Uint16(b[2:])
	h.gsoSize = binary.LittleEndian.Uint16(b[4:])
	h.csumStart = binary.LittleEndian.Uint16(b[6:])
	h.csumOffset = binary.LittleEndian.Uint16(b[8:])
	return nil
}

var errShortVnetHdr = errors.New("short virtio-net header")

// validate checks a received header against the packet it describes, so a
// bad header is dropped and counted instead of confusing netstack.
func (h *vnetHdr) validate(pktLen int) error {
	if h.flags&vnetFlagNeedsCsum != 0 {
		if int(h.csumStart)+int(h.csumOffset)+2 > pktLen {
			return fmt.Errorf("csum_start %d + csum_offset %d beyond packet of %d bytes", h.csumStart, h.csumOffset, pktLen)
		}
	}
	switch h.gsoType &^ vnetGSOECN {
	case vnetGSONone:
	case vnetGSOTCPv4, vnetGSOTCPv6, vnetGSOUDPL4:
		if h.gsoSize == 0 {
			return fmt.Errorf("gso type %d with gso_size 0", h.gsoType)
		}
	default:
		return fmt.Errorf("unsupported gso type %d", h.gsoType)
	}
	return nil
}
