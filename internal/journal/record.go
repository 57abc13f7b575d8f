package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Raw record format, version 1. All integers are little-endian. A record
// occupies Align(size) bytes: the header, the payload, zero fill up to the
// alignment, and the trailer in the last 16 bytes. The same bytes are used in
// the memory FIFO, in the journal image and (later) on the wire to a sink.
//
//	 0       2       4               8                               16
//	 +-------+-------+---------------+-------------------------------+
//	 | begin | stream|     size      |            transid            |  header
//	 +-------+-------+---------------+-------------------------------+
//	 | payload: size-32 bytes of sub-records                          |
//	 | ... zero fill to a multiple of 16 bytes                        |
//	 +-------+---+---+---------------+---------------+---------------+
//	 |  end  |ver| 0 |    crc32c     |     size      |       0       |  trailer
//	 +-------+---+---+---------------+---------------+---------------+
//	 A-16    A-14    A-12            A-8             A-4             A = Align(size)
//
//	begin   u16  BeginMagic once the record is complete, IncompleteMagic while
//	             a writer still fills it (only ever seen in the FIFO).
//	stream  u16  stream id (low 13 bits) | FlagBegin | FlagEnd | FlagAborted.
//	size    u32  header + payload + trailer, without the zero fill: >= 32.
//	transid u64  transaction id; strictly increasing along the journal.
//	end     u16  EndMagic.
//	ver     u8   FormatVersion.
//	crc32c  u32  CRC-32C (Castagnoli) of the 16 header bytes (with BeginMagic)
//	             followed by the payload; zero fill and trailer not included.
//	size    u32  the header's size again, so that a scan can walk backwards.
//
// A pad record (stream StreamPad) fills dead space: at the wrap of the FIFO
// or of the journal ring, and after a reservation was committed short. Its
// payload is not covered by the CRC (its crc32c covers the header only) and
// its contents are undefined. A pad of exactly 16 bytes is a header alone,
// with no trailer and no CRC.
const (
	BeginMagic      = 0x4A76 // "vJ"
	EndMagic        = 0x764A // "Jv"
	IncompleteMagic = 0xFFFF
	FormatVersion   = 1

	HeaderSize  = 16
	TrailerSize = 16
	// Overhead is what a record adds to its payload (before alignment).
	Overhead = HeaderSize + TrailerSize
	// RecordAlign is the alignment of every record.
	RecordAlign = 16
	// MaxRecordSize bounds the size of any record read from anywhere: half
	// the largest FIFO.
	MaxRecordSize = MaxFIFOSize / 2
)

// Stream ids and their flags, as DragonFly BSD's journal defines them.
const (
	FlagBegin   = 0x8000 // first record of a transaction
	FlagEnd     = 0x4000 // last record of a transaction
	FlagAborted = 0x2000 // the transaction was aborted; drop all its records
	StreamMask  = 0x1FFF

	StreamSyncPoint = 0
	StreamPad       = 1
	StreamDiscont   = 2
	StreamAnnotate  = 3
	StreamAck       = 4
	StreamRestart   = 5
	// StreamFirstTx is the first stream id of an ordinary transaction;
	// ids from it up to StreamMask are free for the user.
	StreamFirstTx = 0x100
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Align rounds n up to RecordAlign.
func Align(n int) int { return (n + RecordAlign - 1) &^ (RecordAlign - 1) }

// AlignedSize returns the bytes a record with payload bytes of payload takes.
func AlignedSize(payload int) int { return Align(payload + Overhead) }

// Header is the decoded header of a record.
type Header struct {
	Magic   uint16
	Stream  uint16 // id and flags
	Size    uint32
	Transid uint64
}

// ID returns the stream id without flags.
func (h Header) ID() uint16 { return h.Stream & StreamMask }

// IsPad reports whether the record is a pad.
func (h Header) IsPad() bool { return h.ID() == StreamPad }

// Aligned returns the bytes the record occupies.
func (h Header) Aligned() int { return Align(int(h.Size)) }

func putHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint16(b[0:], h.Magic)
	binary.LittleEndian.PutUint16(b[2:], h.Stream)
	binary.LittleEndian.PutUint32(b[4:], h.Size)
	binary.LittleEndian.PutUint64(b[8:], h.Transid)
}

func getHeader(b []byte) Header {
	return Header{
		Magic:   binary.LittleEndian.Uint16(b[0:]),
		Stream:  binary.LittleEndian.Uint16(b[2:]),
		Size:    binary.LittleEndian.Uint32(b[4:]),
		Transid: binary.LittleEndian.Uint64(b[8:]),
	}
}

func putTrailer(b []byte, crc, size uint32) {
	binary.LittleEndian.PutUint16(b[0:], EndMagic)
	b[2] = FormatVersion
	b[3] = 0
	binary.LittleEndian.PutUint32(b[4:], crc)
	binary.LittleEndian.PutUint32(b[8:], size)
	binary.LittleEndian.PutUint32(b[12:], 0)
}

// recordCRC computes the checksum of a record whose header is in hdr and
// whose payload is payload. hdr must hold BeginMagic already.
func recordCRC(hdr, payload []byte) uint32 {
	c := crc32.Update(0, castagnoli, hdr[:HeaderSize])
	return crc32.Update(c, castagnoli, payload)
}

// EncodeRecord writes a complete record with the given payload into dst,
// which must hold AlignedSize(len(payload)) bytes, and returns that length.
func EncodeRecord(dst []byte, stream uint16, transid uint64, payload []byte) int {
	size := len(payload) + Overhead
	n := Align(size)
	h := Header{Magic: BeginMagic, Stream: stream, Size: uint32(size), Transid: transid}
	putHeader(dst, h)
	copy(dst[HeaderSize:], payload)
	clear(dst[HeaderSize+len(payload) : n-TrailerSize])
	putTrailer(dst[n-TrailerSize:], recordCRC(dst, payload), uint32(size))
	return n
}

// Errors a decoder reports; a scan uses them to tell the end of the journal
// from damage.
var (
	ErrShort      = errors.New("record runs past the available bytes")
	ErrMagic      = errors.New("bad begin magic")
	ErrSize       = errors.New("record size out of bounds")
	ErrTrailer    = errors.New("bad trailer")
	ErrChecksum   = errors.New("checksum mismatch")
	ErrIncomplete = errors.New("record is still being written")
)

// Record is a decoded record. Payload aliases the decoded bytes.
type Record struct {
	Header
	Payload []byte
}

// DecodeRecord decodes the record at the start of b, checking every field
// and the checksum, and bounding the size by len(b) and MaxRecordSize before
// it is used. It never returns a record whose checksum is wrong.
func DecodeRecord(b []byte) (Record, error) {
	if len(b) < HeaderSize {
		return Record{}, ErrShort
	}
	h := getHeader(b)
	switch h.Magic {
	case BeginMagic:
	case IncompleteMagic:
		return Record{}, ErrIncomplete
	default:
		return Record{}, ErrMagic
	}
	if h.Size < HeaderSize || h.Size > MaxRecordSize || (h.Size < Overhead && h.Size != HeaderSize) {
		return Record{}, fmt.Errorf("%w: %d", ErrSize, h.Size)
	}
	n := h.Aligned()
	if n > len(b) {
		return Record{}, ErrShort
	}
	if h.Size == HeaderSize {
		// The lone 16-byte pad: nothing else to check.
		if !h.IsPad() || h.Stream&FlagAborted != 0 {
			return Record{}, fmt.Errorf("%w: 16-byte record that is not a pad", ErrSize)
		}
		return Record{Header: h}, nil
	}
	t := b[n-TrailerSize : n]
	if binary.LittleEndian.Uint16(t[0:]) != EndMagic || t[2] != FormatVersion || t[3] != 0 ||
		binary.LittleEndian.Uint32(t[8:]) != h.Size || binary.LittleEndian.Uint32(t[12:]) != 0 {
		return Record{}, ErrTrailer
	}
	payload := b[HeaderSize : int(h.Size)-TrailerSize]
	covered := payload
	if h.IsPad() {
		covered = nil
	}
	if recordCRC(b, covered) != binary.LittleEndian.Uint32(t[4:]) {
		return Record{}, ErrChecksum
	}
	if h.IsPad() {
		payload = nil
	}
	return Record{Header: h, Payload: payload}, nil
}
