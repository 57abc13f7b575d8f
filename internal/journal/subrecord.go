package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A record's payload is a list of typed sub-records, DragonFly style. Each
// starts 8-byte aligned relative to the payload; the last one of a list has
// SubLast set. A sub-record with SubNested holds a list of its own.
//
//	0       2       4               8
//	+-------+-------+---------------+
//	| type  |   0   |     size      |  size = 8 + body length (no fill)
//	+-------+-------+---------------+
//	| body ... zero fill to a multiple of 8 bytes
//
// Bodies (little-endian) of the types the journal knows:
//
//	SubFlush       empty: a flush barrier
//	SubSyncPoint   u64 transid (everything up to it is applied), u64 journal position
//	SubAnnotate    UTF-8 text
//
// Types 1 (write), 2 (discard) and 4 (resize) are block records: their
// bodies belong to package blockrec, which encodes and decodes them.
const (
	SubHeaderSize = 8
	SubNested     = 0x8000
	SubLast       = 0x4000
	SubTypeMask   = 0x3FFF

	SubFlush     = 0x0003
	SubSyncPoint = 0x0005
	SubAnnotate  = 0x0006
)

// SubSize returns the bytes a sub-record with a body of n bytes takes.
func SubSize(n int) int { return (SubHeaderSize + n + 7) &^ 7 }

// PutSub writes the header of a sub-record of type typ (flags included) with
// a body of n bytes at dst, zeroes its fill, and returns the body to fill in
// and the bytes used.
func PutSub(dst []byte, typ uint16, n int) (body []byte, used int) {
	used = SubSize(n)
	binary.LittleEndian.PutUint16(dst[0:], typ)
	binary.LittleEndian.PutUint16(dst[2:], 0)
	binary.LittleEndian.PutUint32(dst[4:], uint32(SubHeaderSize+n))
	clear(dst[SubHeaderSize+n : used])
	return dst[SubHeaderSize : SubHeaderSize+n], used
}

// Sub is one decoded sub-record. Body aliases the payload.
type Sub struct {
	Type  uint16 // with flags
	Body  []byte
	Start int // offset within the list it came from
}

// Kind returns the type without flags.
func (s Sub) Kind() uint16 { return s.Type & SubTypeMask }

var (
	ErrSubSize   = errors.New("sub-record size out of bounds")
	ErrSubNoLast = errors.New("sub-record list does not end with a last sub-record")
	ErrSubBody   = errors.New("sub-record body has the wrong length")
	ErrSubFill   = errors.New("bytes after the last sub-record")
)

// ParseSubs calls fn for each sub-record of the list in b, in order, and
// checks that the list is well formed: every size bounded by the list, the
// last one flagged SubLast and nothing but zero fill after it.
func ParseSubs(b []byte, fn func(Sub) error) error {
	for off := 0; ; {
		if len(b)-off < SubHeaderSize {
			return ErrSubNoLast
		}
		typ := binary.LittleEndian.Uint16(b[off:])
		size := int(binary.LittleEndian.Uint32(b[off+4:]))
		if binary.LittleEndian.Uint16(b[off+2:]) != 0 || size < SubHeaderSize || size > len(b)-off {
			return fmt.Errorf("%w at %d", ErrSubSize, off)
		}
		if err := fn(Sub{Type: typ, Body: b[off+SubHeaderSize : off+size], Start: off}); err != nil {
			return err
		}
		off += (size + 7) &^ 7
		if typ&SubLast != 0 {
			for _, c := range b[min(off, len(b)):] {
				if c != 0 {
					return ErrSubFill
				}
			}
			return nil
		}
	}
}

// Uint64s decodes a body of exactly n little-endian u64 values (a sync
// point's: 2).
func (s Sub) Uint64s(n int) ([]uint64, error) {
	if len(s.Body) != 8*n {
		return nil, ErrSubBody
	}
	v := make([]uint64, n)
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(s.Body[8*i:])
	}
	return v, nil
}
