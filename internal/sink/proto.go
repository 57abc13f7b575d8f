// Package sink streams a volume's journal to a receiver on another machine
// and keeps it there: the sender tails the journal ring, the receiver
// stores the stream in segment files and a mirror image, and restore
// rebuilds the volume's image at any point the receiver keeps.
//
// Everything on the wire is a record of the journal format (see
// docs/journal-format.md); docs/sink-protocol.md gives the messages byte by
// byte. This file encodes and decodes them.
package sink

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/jvol-io/jvol/internal/journal"
)

// Stream ids of the sink's own records. Journal records keep theirs (pads
// are never sent); these sit in the special range below StreamFirstTx.
const (
	StreamAck           = journal.StreamAck // receiver: everything up to transid is durable
	StreamHello         = 0x20              // sender: who it is and what it holds
	StreamWelcome       = 0x21              // receiver: resume after transid, or send a baseline
	StreamRefuse        = 0x22              // receiver: why it cuts the sender off (text)
	StreamBaselineBegin = 0x23              // sender: a baseline copy follows
	StreamBaselineData  = 0x24              // sender: a piece of the baseline copy
	StreamBaselineEnd   = 0x25              // sender: the copy is consistent once transid is applied
	StreamSegment       = 0x26              // receiver's disk only: a segment's header
)

// ProtoMagic and ProtoVersion open every hello and welcome.
const (
	ProtoMagic   = "JVSK"
	ProtoVersion = 1
	// MaxWireRecord bounds any record a peer may send: a volume's largest
	// write record (4 MiB of data) and its framing fit.
	MaxWireRecord = 8 << 20
	// MaxToken bounds the token in a hello.
	MaxToken = 4096
	// MaxVolumeID bounds a volume id.
	MaxVolumeID = 253
)

// Hello is the sender's first record.
//
//	0   4  magic "JVSK"
//	4   2  version (1)
//	6   2  flags: bit 0 full duplex; others 0
//	8   8  volume size in bytes
//	16 16  epoch: the UUID of the sender's journal image
//	32  8  oldest: the sender's journal holds every record after this id
//	40  8  newest: the id of the sender's last durable record
//	48  2  volume id length n (1..253)
//	50  2  token length m (0..4096)
//	52  n  volume id: lowercase letters, digits, '-' and '.'
//	52+n m token
type Hello struct {
	Full           bool
	Size           uint64
	Epoch          [16]byte
	Oldest, Newest uint64
	Volume         string
	Token          []byte
}

const helloFixed = 52

// FlagFull is Hello's full-duplex flag.
const FlagFull = 1

var volumeID = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

// ValidVolumeID reports whether id can name a volume at a receiver (it
// becomes a directory name there).
func ValidVolumeID(id string) bool {
	return len(id) <= MaxVolumeID && volumeID.MatchString(id) && id != "." && id != ".."
}

// Encode returns the hello's payload.
func (h *Hello) Encode() []byte {
	b := make([]byte, helloFixed+len(h.Volume)+len(h.Token))
	copy(b, ProtoMagic)
	binary.LittleEndian.PutUint16(b[4:], ProtoVersion)
	if h.Full {
		binary.LittleEndian.PutUint16(b[6:], FlagFull)
	}
	binary.LittleEndian.PutUint64(b[8:], h.Size)
	copy(b[16:32], h.Epoch[:])
	binary.LittleEndian.PutUint64(b[32:], h.Oldest)
	binary.LittleEndian.PutUint64(b[40:], h.Newest)
	binary.LittleEndian.PutUint16(b[48:], uint16(len(h.Volume)))
	binary.LittleEndian.PutUint16(b[50:], uint16(len(h.Token)))
	copy(b[helloFixed:], h.Volume)
	copy(b[helloFixed+len(h.Volume):], h.Token)
	return b
}

// Protocol errors: a peer that sends one is cut off.
var (
	ErrProto   = errors.New("sink: protocol violation")
	ErrVersion = errors.New("sink: unsupported protocol version")
)

func checkMagic(b []byte, fixed int) error {
	if len(b) < fixed {
		return fmt.Errorf("%w: %d-byte message, want at least %d", ErrProto, len(b), fixed)
	}
	if string(b[:4]) != ProtoMagic {
		return fmt.Errorf("%w: bad magic %q", ErrProto, b[:4])
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != ProtoVersion {
		return fmt.Errorf("%w %d (this jvol speaks %d)", ErrVersion, v, ProtoVersion)
	}
	return nil
}

// DecodeHello decodes and checks a hello's payload.
func DecodeHello(b []byte) (Hello, error) {
	if err := checkMagic(b, helloFixed); err != nil {
		return Hello{}, err
	}
	flags := binary.LittleEndian.Uint16(b[6:])
	n := int(binary.LittleEndian.Uint16(b[48:]))
	m := int(binary.LittleEndian.Uint16(b[50:]))
	h := Hello{
		Full:   flags&FlagFull != 0,
		Size:   binary.LittleEndian.Uint64(b[8:]),
		Oldest: binary.LittleEndian.Uint64(b[32:]),
		Newest: binary.LittleEndian.Uint64(b[40:]),
	}
	copy(h.Epoch[:], b[16:32])
	switch {
	case flags&^FlagFull != 0:
		return Hello{}, fmt.Errorf("%w: unknown flags %#x", ErrProto, flags)
	case n == 0 || n > MaxVolumeID || m > MaxToken || len(b) != helloFixed+n+m:
		return Hello{}, fmt.Errorf("%w: hello of %d bytes with a %d-byte volume id and a %d-byte token", ErrProto, len(b), n, m)
	case h.Size == 0 || h.Size%4096 != 0:
		return Hello{}, fmt.Errorf("%w: volume size %d", ErrProto, h.Size)
	case h.Oldest > h.Newest:
		return Hello{}, fmt.Errorf("%w: oldest id %d after newest %d", ErrProto, h.Oldest, h.Newest)
	}
	h.Volume = string(b[helloFixed : helloFixed+n])
	if !ValidVolumeID(h.Volume) {
		return Hello{}, fmt.Errorf("%w: volume id %q", ErrProto, h.Volume)
	}
	h.Token = b[helloFixed+n:]
	return h, nil
}

// Welcome modes.
const (
	ModeResume   = 1 // send the records after After
	ModeBaseline = 2 // send a baseline copy, then the records after it
)

// Welcome is the receiver's answer to a hello.
//
//	0  4  magic "JVSK"
//	4  2  version (1)
//	6  2  mode: 1 resume, 2 baseline
//	8  8  after: resume with the first record whose id is above it
//	16 4  the largest record the receiver takes, in bytes
//	20 4  zero
type Welcome struct {
	Mode      uint16
	After     uint64
	MaxRecord uint32
}

const welcomeSize = 24

// Encode returns the welcome's payload.
func (w *Welcome) Encode() []byte {
	b := make([]byte, welcomeSize)
	copy(b, ProtoMagic)
	binary.LittleEndian.PutUint16(b[4:], ProtoVersion)
	binary.LittleEndian.PutUint16(b[6:], w.Mode)
	binary.LittleEndian.PutUint64(b[8:], w.After)
	binary.LittleEndian.PutUint32(b[16:], w.MaxRecord)
	return b
}

// DecodeWelcome decodes and checks a welcome's payload.
func DecodeWelcome(b []byte) (Welcome, error) {
	if err := checkMagic(b, welcomeSize); err != nil {
		return Welcome{}, err
	}
	w := Welcome{
		Mode:      binary.LittleEndian.Uint16(b[6:]),
		After:     binary.LittleEndian.Uint64(b[8:]),
		MaxRecord: binary.LittleEndian.Uint32(b[16:]),
	}
	switch {
	case len(b) != welcomeSize || binary.LittleEndian.Uint32(b[20:]) != 0:
		return Welcome{}, fmt.Errorf("%w: welcome of %d bytes", ErrProto, len(b))
	case w.Mode != ModeResume && w.Mode != ModeBaseline:
		return Welcome{}, fmt.Errorf("%w: welcome mode %d", ErrProto, w.Mode)
	case w.MaxRecord < 1<<20 || w.MaxRecord > MaxWireRecord:
		return Welcome{}, fmt.Errorf("%w: receiver's record limit %d", ErrProto, w.MaxRecord)
	}
	return w, nil
}

// BaselineBegin's payload: the epoch (16 bytes) and the volume size (u64)
// at the start of the copy. Its record's transid is the id of the last
// record the copy includes for sure; the stream after the copy resumes
// above it.
type BaselineBegin struct {
	Epoch [16]byte
	Size  uint64
}

const baselineBeginSize = 24

// Encode returns the payload.
func (b *BaselineBegin) Encode() []byte {
	p := make([]byte, baselineBeginSize)
	copy(p, b.Epoch[:])
	binary.LittleEndian.PutUint64(p[16:], b.Size)
	return p
}

// DecodeBaselineBegin decodes a BaselineBegin payload.
func DecodeBaselineBegin(p []byte) (BaselineBegin, error) {
	if len(p) != baselineBeginSize {
		return BaselineBegin{}, fmt.Errorf("%w: baseline begin of %d bytes", ErrProto, len(p))
	}
	var b BaselineBegin
	copy(b.Epoch[:], p)
	b.Size = binary.LittleEndian.Uint64(p[16:])
	if b.Size == 0 || b.Size%4096 != 0 {
		return BaselineBegin{}, fmt.Errorf("%w: baseline of a %d-byte volume", ErrProto, b.Size)
	}
	return b, nil
}

// DecodeAck decodes an acknowledgement: a record of stream StreamAck,
// BEGIN|END, with no payload; its transid is the acknowledged id.
func DecodeAck(b []byte) (uint64, error) {
	r, err := journal.DecodeRecord(b)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrProto, err)
	}
	if r.Stream != StreamAck|journal.FlagBegin|journal.FlagEnd || len(r.Payload) != 0 || r.Aligned() != len(b) {
		return 0, fmt.Errorf("%w: not an acknowledgement (stream %#x, %d payload bytes)", ErrProto, r.Stream, len(r.Payload))
	}
	return r.Transid, nil
}

// AckSize is the bytes of an acknowledgement on the wire.
const AckSize = journal.Overhead

// appendRecord appends a whole control record to dst.
func appendRecord(dst []byte, stream uint16, transid uint64, payload []byte) []byte {
	n := journal.AlignedSize(len(payload))
	dst = append(dst, make([]byte, n)...)
	journal.EncodeRecord(dst[len(dst)-n:], stream|journal.FlagBegin|journal.FlagEnd, transid, payload)
	return dst
}

// readRecord reads one record from r into the spare capacity of *buf
// (grown as needed; its length stays) and decodes it, refusing anything
// larger than limit before reading it. The record's bytes are returned.
func readRecord(r *bufio.Reader, buf *[]byte, limit int) (journal.Record, []byte, error) {
	hdr, err := r.Peek(journal.HeaderSize)
	if err != nil {
		return journal.Record{}, nil, err
	}
	magic := binary.LittleEndian.Uint16(hdr)
	size := binary.LittleEndian.Uint32(hdr[4:])
	if magic != journal.BeginMagic {
		return journal.Record{}, nil, fmt.Errorf("%w: bad magic %#04x", ErrProto, magic)
	}
	if size < journal.Overhead || int64(size) > int64(limit) {
		return journal.Record{}, nil, fmt.Errorf("%w: record of %d bytes (limit %d)", ErrProto, size, limit)
	}
	n := journal.Align(int(size))
	if l := len(*buf); cap(*buf)-l < n {
		grown := make([]byte, l, max(2*cap(*buf), l+n))
		copy(grown, *buf)
		*buf = grown
	}
	b := (*buf)[len(*buf) : len(*buf)+n]
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return journal.Record{}, nil, err
	}
	rec, err := journal.DecodeRecord(b)
	if err != nil {
		return journal.Record{}, nil, fmt.Errorf("%w: %v", ErrProto, err)
	}
	if rec.IsPad() {
		return journal.Record{}, nil, fmt.Errorf("%w: a pad on the wire", ErrProto)
	}
	return rec, b, nil
}
