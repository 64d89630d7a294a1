package bpffilter

import (
	"encoding/binary"
	"fmt"
)

// The few eBPF instructions the compiler emits (linux/bpf.h,
// Documentation/bpf/standardization/instruction-set.rst).
const (
	clsLD    = 0x00
	clsLDX   = 0x01
	clsST    = 0x02
	clsSTX   = 0x03
	clsALU   = 0x04
	clsJMP   = 0x05
	clsJMP32 = 0x06
	clsALU64 = 0x07

	szW  = 0x00
	szH  = 0x08
	szB  = 0x10
	szDW = 0x18

	modeIMM    = 0x00
	modeABS    = 0x20
	modeIND    = 0x40
	modeMEM    = 0x60
	modeATOMIC = 0xc0

	srcK = 0x00
	srcX = 0x08

	aluADD = 0x00
	aluAND = 0x50
	aluLSH = 0x60
	aluRSH = 0x70
	aluMOV = 0xb0

	jmpJA   = 0x00
	jmpJEQ  = 0x10
	jmpJGT  = 0x20
	jmpJNE  = 0x50
	jmpCALL = 0x80
	jmpEXIT = 0x90
	jmpJLT  = 0xa0

	pseudoMapFD         = 1
	helperMapLookupElem = 1
)

// Registers. r1-r5 are clobbered by calls and by LD_ABS/LD_IND, which
// also need the context in r6.
const (
	r0 = iota
	r1
	r2
	r3
	r4
	r5
	r6
	r7
	r8
	r9
	r10
)

type insn struct {
	op       uint8
	dst, src uint8
	off      int16
	imm      int32
	// target, if not empty, is the label a jump goes to; off is filled
	// in by assemble.
	target string
	// labels name this instruction's position.
	labels []string
}

// asm collects instructions and labels.
type asm struct {
	insns  []insn
	labels []string // labels for the next instruction
	nlabel int
}

func (a *asm) emit(i insn) {
	i.labels, a.labels = a.labels, nil
	a.insns = append(a.insns, i)
}

// newLabel returns a fresh label name.
func (a *asm) newLabel() string {
	a.nlabel++
	return fmt.Sprintf("L%d", a.nlabel)
}

// referenced reports whether a jump goes to label l.
func (a *asm) referenced(l string) bool {
	for _, in := range a.insns {
		if in.target == l {
			return true
		}
	}
	return false
}

// mark puts label l on the next instruction.
func (a *asm) mark(l string) { a.labels = append(a.labels, l) }

func (a *asm) movX(dst, src uint8) { a.emit(insn{op: clsALU64 | aluMOV | srcX, dst: dst, src: src}) }
func (a *asm) movK(dst uint8, imm int32) {
	a.emit(insn{op: clsALU64 | aluMOV | srcK, dst: dst, imm: imm})
}
func (a *asm) alu64K(op, dst uint8, imm int32) {
	a.emit(insn{op: clsALU64 | op | srcK, dst: dst, imm: imm})
}
func (a *asm) alu32K(op, dst uint8, imm int32) {
	a.emit(insn{op: clsALU | op | srcK, dst: dst, imm: imm})
}

// ldAbs loads the packet's byte/half/word at off into r0, in host order.
func (a *asm) ldAbs(size uint8, off int32) { a.emit(insn{op: clsLD | modeABS | size, imm: off}) }

// ldInd loads the packet's byte/half/word at src+off into r0.
func (a *asm) ldInd(size uint8, src uint8, off int32) {
	a.emit(insn{op: clsLD | modeIND | size, src: src, imm: off})
}

// ldxMem loads dst = *(size *)(src + off).
func (a *asm) ldxMem(size, dst, src uint8, off int16) {
	a.emit(insn{op: clsLDX | modeMEM | size, dst: dst, src: src, off: off})
}

// stxMem stores *(size *)(dst + off) = src.
func (a *asm) stxMem(size, dst, src uint8, off int16) {
	a.emit(insn{op: clsSTX | modeMEM | size, dst: dst, src: src, off: off})
}

// stMem stores *(size *)(dst + off) = imm.
func (a *asm) stMem(size, dst uint8, off int16, imm int32) {
	a.emit(insn{op: clsST | modeMEM | size, dst: dst, off: off, imm: imm})
}

// atomicAdd64 does *(u64 *)(dst + off) += src atomically.
func (a *asm) atomicAdd64(dst, src uint8, off int16) {
	a.emit(insn{op: clsSTX | modeATOMIC | szDW, dst: dst, src: src, off: off, imm: aluADD})
}

// jmpK jumps to target if dst OP imm (64-bit compare; imm is sign-extended).
func (a *asm) jmpK(op, dst uint8, imm int32, target string) {
	a.emit(insn{op: clsJMP | op | srcK, dst: dst, imm: imm, target: target})
}

// jmp32K jumps to target if the low 32 bits of dst OP imm.
func (a *asm) jmp32K(op, dst uint8, imm uint32, target string) {
	a.emit(insn{op: clsJMP32 | op | srcK, dst: dst, imm: int32(imm), target: target})
}

// jmpX jumps to target if dst OP src.
func (a *asm) jmpX(op, dst, src uint8, target string) {
	a.emit(insn{op: clsJMP | op | srcX, dst: dst, src: src, target: target})
}

func (a *asm) ja(target string) { a.emit(insn{op: clsJMP | jmpJA, target: target}) }

// ldMapFD loads a map's address into dst (two instruction slots).
func (a *asm) ldMapFD(dst uint8, fd int) {
	a.emit(insn{op: clsLD | modeIMM | szDW, dst: dst, src: pseudoMapFD, imm: int32(fd)})
	a.emit(insn{})
}

func (a *asm) call(helper int32) { a.emit(insn{op: clsJMP | jmpCALL, imm: helper}) }
func (a *asm) exit()             { a.emit(insn{op: clsJMP | jmpEXIT}) }

// assemble resolves labels and encodes the program.
func (a *asm) assemble() ([]byte, error) {
	if len(a.labels) > 0 {
		return nil, fmt.Errorf("bpffilter: label %s at the end of the program", a.labels[0])
	}
	pos := map[string]int{}
	for i, in := range a.insns {
		for _, l := range in.labels {
			pos[l] = i
		}
	}
	out := make([]byte, 8*len(a.insns))
	for i, in := range a.insns {
		if in.target != "" {
			t, ok := pos[in.target]
			if !ok {
				return nil, fmt.Errorf("bpffilter: no label %s", in.target)
			}
			d := t - (i + 1)
			if d < 0 || d > 0x7fff {
				return nil, fmt.Errorf("bpffilter: jump to %s out of range (%d)", in.target, d)
			}
			in.off = int16(d)
		}
		b := out[8*i:]
		b[0] = in.op
		b[1] = in.dst&0xf | in.src<<4
		binary.LittleEndian.PutUint16(b[2:], uint16(in.off))
		binary.LittleEndian.PutUint32(b[4:], uint32(in.imm))
	}
	return out, nil
}
