// Package blockrec owns the block records of a journal: the sub-records
// that write, discard and resize a volume. It encodes them for the volume
// and the sink's sender, and decodes them, with every bounds check, for
// whoever applies them: the volume's replay, the sink's receiver, folding
// and restore, and the journal dumper. The journal package frames
// sub-records but gives them no meaning.
//
// A block record is a journal sub-record (see journal.PutSub) of one of
// three types; all integers are little-endian, offsets and lengths are in
// bytes. The encoders here write each as the last (journal.SubLast) of its
// list; a decoder takes a list of any number of them, among sub-records of
// other types, which it leaves alone.
//
// Write, type 1 (0x4001 with journal.SubLast): len bytes of data at off.
//
//	0       2       4               8                               16
//	+-------+-------+---------------+-------------------------------+
//	|   1   |   0   | size = 16+len |              off              |
//	+-------+-------+---------------+-------------------------------+
//	| data: len bytes, then zero fill to a multiple of 8            |
//	+---------------------------------------------------------------+
//
// Discard, type 2: [off, off+len) reads as zeros afterwards.
//
//	0       2       4               8                               16
//	+-------+-------+---------------+-------------------------------+
//	|   2   |   0   |   size = 24   |              off              |
//	+-------+-------+---------------+-------------------------------+
//	|              len              |                                 24
//	+-------------------------------+
//
// Resize, type 4: the volume grows to size bytes.
//
//	0       2       4               8                               16
//	+-------+-------+---------------+-------------------------------+
//	|   4   |   0   |   size = 16   |        new volume size        |
//	+-------+-------+---------------+-------------------------------+
//
// A decoder refuses (and applies nothing of a list holding one):
//   - a body of the wrong length: a write shorter than its offset, a discard
//     or resize body of other than 16 or 8 bytes (journal.ErrSubBody);
//   - a block record flagged journal.SubNested (ErrNested);
//   - an empty write or discard, which no writer makes (ErrEmpty);
//   - a write or discard whose end overflows 64 bits or lies past the
//     volume's size, as the resizes before it in the list grew it (ErrRange);
//   - a resize to other than a multiple of 4096 bytes, or above MaxSize
//     (ErrResize).
//
// Offsets and lengths of writes and discards need no alignment: a volume
// takes writes of any byte range. A resize below the current size is valid
// and changes nothing (volumes never shrink; a replay may meet a resize that
// the volume's recorded size has already passed).
package blockrec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/jvol-io/jvol/internal/journal"
)

// Kind is the sub-record type of a block record.
type Kind uint16

const (
	Write   Kind = 0x0001
	Discard Kind = 0x0002
	Resize  Kind = 0x0004
)

func (k Kind) String() string {
	switch k {
	case Write:
		return "write"
	case Discard:
		return "discard"
	case Resize:
		return "resize"
	}
	return fmt.Sprintf("type%#x", uint16(k))
}

const (
	// SizeAlign is what every volume size is a multiple of.
	SizeAlign = 4096
	// MaxSize is the largest size a resize may set: 1 PiB.
	MaxSize = 1 << 50
)

// Op is one decoded block record.
type Op struct {
	Kind Kind
	// Off and Len give the range [Off, Off+Len) of a write or a discard.
	Off, Len uint64
	// Data is a write's Len bytes; it aliases the decoded payload.
	Data []byte
	// Size is a resize's new size.
	Size uint64
}

var (
	ErrNested = errors.New("block record flagged nested")
	ErrEmpty  = errors.New("empty write or discard")
	ErrRange  = errors.New("block record out of range")
	ErrResize = errors.New("bad resize")
)

// WriteSize is the payload bytes of a record holding one write of n bytes.
func WriteSize(n int) int { return journal.SubSize(8 + n) }

// DiscardSize is the payload bytes of a record holding one discard.
const DiscardSize = journal.SubHeaderSize + 16

// ResizeSize is the payload bytes of a record holding one resize.
const ResizeSize = journal.SubHeaderSize + 8

// WriteDataOffset is where a write's data begins in what PutWrite fills.
const WriteDataOffset = journal.SubHeaderSize + 8

// PutWrite writes a write of data at off, as the last sub-record of its
// list, at dst, which must hold WriteSize(len(data)) bytes, and returns the
// bytes used.
func PutWrite(dst []byte, off uint64, data []byte) int {
	body, used := journal.PutSub(dst, uint16(Write)|journal.SubLast, 8+len(data))
	binary.LittleEndian.PutUint64(body, off)
	copy(body[8:], data)
	return used
}

// PutDiscard writes a discard of [off, off+n) (last of its list) at dst,
// which must hold DiscardSize bytes, and returns the bytes used.
func PutDiscard(dst []byte, off, n uint64) int {
	body, used := journal.PutSub(dst, uint16(Discard)|journal.SubLast, 16)
	binary.LittleEndian.PutUint64(body, off)
	binary.LittleEndian.PutUint64(body[8:], n)
	return used
}

// PutResize writes a resize to size (last of its list) at dst, which must
// hold ResizeSize bytes, and returns the bytes used.
func PutResize(dst []byte, size uint64) int {
	body, used := journal.PutSub(dst, uint16(Resize)|journal.SubLast, 8)
	binary.LittleEndian.PutUint64(body, size)
	return used
}

// Parse decodes sub-record s on its own, without a volume's size to check
// it against: ok is false if s is no block record. Every check but the
// volume's size is made.
func Parse(s journal.Sub) (op Op, ok bool, err error) {
	k := Kind(s.Kind())
	if k != Write && k != Discard && k != Resize {
		return Op{}, false, nil
	}
	if s.Type&journal.SubNested != 0 {
		return Op{}, true, fmt.Errorf("%w: %s", ErrNested, k)
	}
	switch b := s.Body; {
	case k == Write && len(b) >= 8:
		op = Op{Kind: k, Off: binary.LittleEndian.Uint64(b), Len: uint64(len(b) - 8), Data: b[8:]}
	case k == Discard && len(b) == 16:
		op = Op{Kind: k, Off: binary.LittleEndian.Uint64(b), Len: binary.LittleEndian.Uint64(b[8:])}
	case k == Resize && len(b) == 8:
		op = Op{Kind: k, Size: binary.LittleEndian.Uint64(b)}
	default:
		return Op{}, true, journal.ErrSubBody
	}
	switch {
	case k == Resize && (op.Size%SizeAlign != 0 || op.Size > MaxSize):
		return Op{}, true, fmt.Errorf("%w: to %d bytes, not a multiple of %d up to %d", ErrResize, op.Size, SizeAlign, uint64(MaxSize))
	case k == Resize:
	case op.Len == 0:
		return Op{}, true, fmt.Errorf("%w at %d", ErrEmpty, op.Off)
	case op.Off > math.MaxUint64-op.Len:
		return Op{}, true, fmt.Errorf("%w: %d bytes at %d overflow", ErrRange, op.Len, op.Off)
	}
	return op, true, nil
}

// Decode checks every block record in the sub-record list payload against
// a volume of size bytes, each resize growing it for the records after it,
// and only if all pass calls fn (if not nil) for each, in order. It returns
// the size after the list: the largest of size and its resizes. A list it
// refuses changes nothing (it returns size and why); an error of fn stops
// the walk and is returned as it is.
func Decode(payload []byte, size uint64, fn func(Op) error) (uint64, error) {
	end := size
	err := journal.ParseSubs(payload, func(s journal.Sub) error {
		op, ok, err := Parse(s)
		switch {
		case err != nil:
			return err
		case !ok:
		case op.Kind == Resize:
			end = max(end, op.Size)
		case op.Off+op.Len > end: // Parse made sure it does not overflow
			return fmt.Errorf("%w: %d bytes at %d beyond the size %d", ErrRange, op.Len, op.Off, end)
		}
		return nil
	})
	if err != nil {
		return size, err
	}
	if fn != nil {
		err = journal.ParseSubs(payload, func(s journal.Sub) error {
			if op, ok, _ := Parse(s); ok {
				return fn(op)
			}
			return nil
		})
	}
	return end, err
}
