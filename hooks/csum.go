package hooks

// Incremental Internet checksum update (RFC 1624, eqn. 3):
//
//	HC' = ~(~HC + ~m + m')
//
// computed in one's complement arithmetic, so it never produces the
// "negative zero" RFC 1071's eqn. 2 could.

// fold reduces a 32-bit one's complement sum to 16 bits.
func fold(s uint32) uint16 {
	s = (s & 0xffff) + (s >> 16)
	s = (s & 0xffff) + (s >> 16)
	return uint16(s)
}

// UpdateChecksum16 returns checksum field c after one 16-bit word of the
// data it covers changed from old to new.
func UpdateChecksum16(c, old, new uint16) uint16 {
	return ^fold(uint32(^c) + uint32(^old) + uint32(new))
}

// UpdateChecksum returns checksum field c after the bytes old (at an even
// offset of the covered data) changed to new; old and new have the same
// even length (an address).
func UpdateChecksum(c uint16, old, new []byte) uint16 {
	s := uint32(^c)
	for i := 0; i+1 < len(old) && i+1 < len(new); i += 2 {
		s += uint32(^(uint16(old[i])<<8 | uint16(old[i+1])) & 0xffff)
		s += uint32(uint16(new[i])<<8 | uint16(new[i+1]))
	}
	return ^fold(s)
}

// UpdatePartial16 and UpdatePartial are the same for a partial checksum
// (CHECKSUM_PARTIAL, virtio NEEDS_CSUM): the field holds the uncomplemented
// sum of the pseudo-header, which the device completes.
func UpdatePartial16(p, old, new uint16) uint16 { return ^UpdateChecksum16(^p, old, new) }

// UpdatePartial is UpdateChecksum for a partial checksum field.
func UpdatePartial(p uint16, old, new []byte) uint16 { return ^UpdateChecksum(^p, old, new) }
