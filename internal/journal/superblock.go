package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Journal image layout, version 1:
//
//	offset 0      superblock copy 0 (one 4 KiB block)
//	offset 4096   superblock copy 1 (one 4 KiB block)
//	offset 8192   the record ring, RingSize bytes, to the end of the file
//
// A superblock is written whole into the copy numbered Sequence%2 and synced,
// so a torn superblock write leaves the other copy, with the previous
// checkpoint, intact. Open takes the valid copy with the higher Sequence.
//
//	0                               8               12              16
//	+-------------------------------+---------------+---------------+
//	|  magic "JVOLJRNL"             |   version     |  block size   |
//	+-------------------------------+---------------+---------------+
//	|  uuid (16 bytes)                                               |  16
//	+-------------------------------+-------------------------------+
//	|  ring offset                  |  ring size                    |  32
//	+-------------------------------+-------------------------------+
//	|  sequence                     |  checkpoint position          |  48
//	+-------------------------------+---------------+---------------+
//	|  checkpoint transid           |  torn window  |  flags        |  64
//	+-------------------------------+---------------+---------------+
//	|  clean end                    |  zero ... up to byte 124      |  80
//	+-------------------------------+---------------+---------------+
//	|                       ...     |  crc32c of bytes 0..123       |  ..128
//	+---------------------------------------------------------------+
//	|  zero to the end of the block                                  |
//
// Positions are logical ring indices that only grow; the byte of position p
// is at file offset RingOffset + p%RingSize. Every record before the
// checkpoint position has been applied; records from it on have transaction
// ids above the checkpoint transid. The torn window is the most the writer
// ever had written but not synced: a valid record further than that past the
// first invalid one cannot come from a power cut, so it proves corruption.
// Flag FlagClean says the journal was closed cleanly with its records ending
// at the clean end position: a scan that ends exactly there need not search
// the rest of the ring for damage. Open clears it before appending.
const (
	superMagic     = "JVOLJRNL"
	SuperblockSize = 4096
	RingOffset     = 2 * SuperblockSize
	superCRCOffset = 124
)

// Superblock is the decoded superblock.
type Superblock struct {
	Version     uint32
	BlockSize   uint32
	UUID        [16]byte
	RingOffset  uint64
	RingSize    uint64
	Sequence    uint64
	CkptPos     uint64
	CkptTransid uint64
	TornWindow  uint32
	Flags       uint32
	CleanEnd    uint64
}

// FlagClean marks a journal closed cleanly at CleanEnd.
const FlagClean = 1

var ErrSuperblock = errors.New("journal: no valid superblock")

// Encode writes the superblock into a block of SuperblockSize bytes.
func (s *Superblock) Encode(b []byte) {
	clear(b[:SuperblockSize])
	copy(b[0:8], superMagic)
	binary.LittleEndian.PutUint32(b[8:], s.Version)
	binary.LittleEndian.PutUint32(b[12:], s.BlockSize)
	copy(b[16:32], s.UUID[:])
	binary.LittleEndian.PutUint64(b[32:], s.RingOffset)
	binary.LittleEndian.PutUint64(b[40:], s.RingSize)
	binary.LittleEndian.PutUint64(b[48:], s.Sequence)
	binary.LittleEndian.PutUint64(b[56:], s.CkptPos)
	binary.LittleEndian.PutUint64(b[64:], s.CkptTransid)
	binary.LittleEndian.PutUint32(b[72:], s.TornWindow)
	binary.LittleEndian.PutUint32(b[76:], s.Flags)
	binary.LittleEndian.PutUint64(b[80:], s.CleanEnd)
	binary.LittleEndian.PutUint32(b[superCRCOffset:], crc32.Checksum(b[:superCRCOffset], castagnoli))
}

// DecodeSuperblock decodes and checks one superblock copy.
func DecodeSuperblock(b []byte) (Superblock, error) {
	if len(b) < SuperblockSize {
		return Superblock{}, fmt.Errorf("%w: short block", ErrSuperblock)
	}
	if string(b[0:8]) != superMagic {
		return Superblock{}, fmt.Errorf("%w: bad magic", ErrSuperblock)
	}
	if crc32.Checksum(b[:superCRCOffset], castagnoli) != binary.LittleEndian.Uint32(b[superCRCOffset:]) {
		return Superblock{}, fmt.Errorf("%w: checksum mismatch", ErrSuperblock)
	}
	s := Superblock{
		Version:     binary.LittleEndian.Uint32(b[8:]),
		BlockSize:   binary.LittleEndian.Uint32(b[12:]),
		RingOffset:  binary.LittleEndian.Uint64(b[32:]),
		RingSize:    binary.LittleEndian.Uint64(b[40:]),
		Sequence:    binary.LittleEndian.Uint64(b[48:]),
		CkptPos:     binary.LittleEndian.Uint64(b[56:]),
		CkptTransid: binary.LittleEndian.Uint64(b[64:]),
		TornWindow:  binary.LittleEndian.Uint32(b[72:]),
		Flags:       binary.LittleEndian.Uint32(b[76:]),
		CleanEnd:    binary.LittleEndian.Uint64(b[80:]),
	}
	copy(s.UUID[:], b[16:32])
	switch {
	case s.Version != FormatVersion:
		return Superblock{}, fmt.Errorf("%w: version %d, this jvol reads %d", ErrSuperblock, s.Version, FormatVersion)
	case s.BlockSize != SuperblockSize, s.RingOffset != RingOffset, s.Flags&^FlagClean != 0:
		return Superblock{}, fmt.Errorf("%w: unknown geometry", ErrSuperblock)
	case s.RingSize < MinRingSize || s.RingSize > MaxRingSize || s.RingSize%SuperblockSize != 0:
		return Superblock{}, fmt.Errorf("%w: ring size %d out of bounds", ErrSuperblock, s.RingSize)
	case s.CkptPos > 1<<62:
		return Superblock{}, fmt.Errorf("%w: checkpoint position %d out of bounds", ErrSuperblock, s.CkptPos)
	case s.TornWindow == 0 || s.TornWindow%SuperblockSize != 0:
		return Superblock{}, fmt.Errorf("%w: torn window %d", ErrSuperblock, s.TornWindow)
	}
	return s, nil
}

// Ring size bounds: at least one largest FIFO record and its pad, at most
// what a u64 position never overflows in practice.
const (
	MinRingSize = 1 << 20
	MaxRingSize = 1 << 50
)
