package sink

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// state is where a volume's stream stands after some prefix of it: the
// same walk serves the receiver (live and after a restart), the folding of
// old segments into the base image and restore.
type state struct {
	Epoch [16]byte
	Size  uint64
	// Last is the id of the last journal record applied (or, during a
	// baseline, the id the copy starts from).
	Last uint64
	// The image is the volume's at every id from From to Last, when
	// Consistent: a baseline copy makes it consistent from its end on.
	From       uint64
	Consistent bool
	InBaseline bool
}

// Segment header payload, stream StreamSegment, its transid the state's Last:
//
//	0  16 epoch
//	16  8 volume size
//	24  8 last
//	32  8 from
//	40  8 flags: bit 0 consistent, bit 1 in a baseline
//	48  8 segment sequence number
const segHeaderSize = 56

func (s *state) encode(seq uint64) []byte {
	b := make([]byte, segHeaderSize)
	copy(b, s.Epoch[:])
	binary.LittleEndian.PutUint64(b[16:], s.Size)
	binary.LittleEndian.PutUint64(b[24:], s.Last)
	binary.LittleEndian.PutUint64(b[32:], s.From)
	var flags uint64
	if s.Consistent {
		flags |= 1
	}
	if s.InBaseline {
		flags |= 2
	}
	binary.LittleEndian.PutUint64(b[40:], flags)
	binary.LittleEndian.PutUint64(b[48:], seq)
	return b
}

func decodeState(r journal.Record) (state, uint64, error) {
	b := r.Payload
	if r.ID() != StreamSegment || len(b) != segHeaderSize {
		return state{}, 0, fmt.Errorf("not a segment header (stream %#x, %d bytes)", r.ID(), len(b))
	}
	var s state
	copy(s.Epoch[:], b)
	s.Size = binary.LittleEndian.Uint64(b[16:])
	s.Last = binary.LittleEndian.Uint64(b[24:])
	s.From = binary.LittleEndian.Uint64(b[32:])
	flags := binary.LittleEndian.Uint64(b[40:])
	s.Consistent, s.InBaseline = flags&1 != 0, flags&2 != 0
	if flags&^3 != 0 || s.Last != r.Transid {
		return state{}, 0, fmt.Errorf("segment header: flags %#x, last %d, transid %d", flags, s.Last, r.Transid)
	}
	return s, binary.LittleEndian.Uint64(b[48:]), nil
}

// Interval is a range of ids at each of which the image is known.
type Interval struct{ From, To uint64 }

func (iv Interval) String() string {
	return fmt.Sprintf("%d (%s) to %d (%s)", iv.From, TransidTime(iv.From).Format(time.RFC3339Nano), iv.To, TransidTime(iv.To).Format(time.RFC3339Nano))
}

// TransidTime is the time a clock transaction id was handed out.
func TransidTime(id uint64) time.Time {
	return time.Unix(int64(id>>30), int64(id&(1<<30-1))).UTC()
}

// interval returns the ids the state answers for, if any.
func (s *state) interval() (Interval, bool) {
	if !s.Consistent || s.InBaseline || s.Last < s.From {
		return Interval{}, false
	}
	return Interval{s.From, s.Last}, true
}

// step moves the state over record r (not a segment header) and returns
// whether r changes the image. A record that does not fit where it comes
// is refused: its sender is broken or hostile.
func (s *state) step(r journal.Record) (bool, error) {
	switch r.ID() {
	case StreamBaselineBegin:
		b, err := DecodeBaselineBegin(r.Payload)
		if err != nil {
			return false, err
		}
		*s = state{Epoch: b.Epoch, Size: b.Size, Last: r.Transid, InBaseline: true}
		return true, nil
	case StreamBaselineData:
		if !s.InBaseline || r.Transid != s.Last {
			return false, fmt.Errorf("%w: baseline data outside a baseline", ErrProto)
		}
		return true, nil
	case StreamBaselineEnd:
		if !s.InBaseline || r.Transid < s.Last || len(r.Payload) != 0 {
			return false, fmt.Errorf("%w: baseline end at %d outside a baseline from %d", ErrProto, r.Transid, s.Last)
		}
		s.InBaseline, s.Consistent, s.From = false, true, r.Transid
		return false, nil
	}
	if r.ID() < journal.StreamFirstTx {
		return false, fmt.Errorf("%w: unexpected record of stream %#x", ErrProto, r.ID())
	}
	switch {
	case s.InBaseline:
		return false, fmt.Errorf("%w: journal record %d inside a baseline", ErrProto, r.Transid)
	case s.Size == 0:
		return false, fmt.Errorf("%w: journal record %d before any baseline", ErrProto, r.Transid)
	case r.Transid <= s.Last:
		return false, fmt.Errorf("%w: transaction id %d goes backwards (last %d)", ErrProto, r.Transid, s.Last)
	}
	s.Last = r.Transid
	return true, nil
}

// image is a volume image the stream is applied to: the mirror, the base
// or a restore's output.
type image struct {
	f    vfs.RWFile
	size int64
}

// openImage opens the image file path, with create set creating it
// empty if it is missing.
func openImage(fsys vfs.FS, path string, create bool) (*image, error) {
	f, err := fsys.Open(path)
	if create && errors.Is(err, os.ErrNotExist) {
		f, err = fsys.Create(path)
	}
	if err != nil {
		return nil, err
	}
	size, err := f.Size()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &image{f: f, size: size}, nil
}

// check returns an error if record r would not apply cleanly: every
// write and discard inside the image (as resizes in r grow it), every
// block record well formed (blockrec.Decode). A record it refuses changes
// nothing.
func (m *image) check(r journal.Record) error {
	if r.ID() < journal.StreamFirstTx && r.ID() != StreamBaselineData || r.Stream&journal.FlagAborted != 0 {
		return nil
	}
	if _, err := blockrec.Decode(r.Payload, uint64(m.size), nil); err != nil {
		return fmt.Errorf("%w: %v", ErrProto, err)
	}
	return nil
}

// apply applies record r, which the state s (after stepping over r)
// accepted and check passed, to the image.
func (m *image) apply(r journal.Record, s *state) error {
	switch r.ID() {
	case StreamBaselineBegin:
		return m.resize(int64(s.Size), true)
	case StreamBaselineEnd:
		return nil
	}
	if r.Stream&journal.FlagAborted != 0 {
		return nil
	}
	if err := m.check(r); err != nil {
		return err
	}
	_, err := blockrec.Decode(r.Payload, uint64(m.size), func(op blockrec.Op) error {
		switch op.Kind {
		case blockrec.Write:
			_, err := m.f.WriteAt(op.Data, int64(op.Off))
			return err
		case blockrec.Discard:
			return m.f.Punch(int64(op.Off), int64(op.Len))
		case blockrec.Resize:
			if err := m.resize(int64(op.Size), false); err != nil {
				return err
			}
			s.Size = max(s.Size, op.Size)
		}
		return nil
	})
	return err
}

// trackResize moves the state's size over the resizes in record r, which
// was checked when it was received.
func trackResize(r journal.Record, s *state) {
	if r.ID() < journal.StreamFirstTx || r.Stream&journal.FlagAborted != 0 {
		return
	}
	s.Size, _ = blockrec.Decode(r.Payload, s.Size, nil)
}

// resize grows the image to size, or sets it exactly when exact is set.
func (m *image) resize(size int64, exact bool) error {
	if size == m.size || !exact && size < m.size {
		return nil
	}
	if err := m.f.Truncate(size); err != nil {
		return err
	}
	m.size = size
	return nil
}

func (m *image) sync() error  { return m.f.Sync() }
func (m *image) close() error { return m.f.Close() }

func newSegReader(f vfs.File) (*segReader, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	return &segReader{f: f, size: size}, nil
}

// segReader walks the records of a segment file. A record that does not
// decode ends it: the tail a crash left behind, never acknowledged.
type segReader struct {
	f    vfs.File
	off  int64
	size int64 // of the file when the walk began: appends after it are not seen
	buf  []byte
	hdr  [journal.HeaderSize]byte
	// headersOnly skips the payload of journal records.
	headersOnly bool
}

// header reads the segment's header record: the state at its start and
// its sequence number.
func (sr *segReader) header() (state, uint64, error) {
	r, ok, err := sr.next()
	if err != nil {
		return state{}, 0, err
	}
	if !ok {
		return state{}, 0, errors.New("no segment header")
	}
	return decodeState(r)
}

// next returns the record at the reader's offset, or ok false at the end.
func (sr *segReader) next() (r journal.Record, ok bool, err error) {
	if sr.off+journal.HeaderSize > sr.size {
		return journal.Record{}, false, nil
	}
	if _, err := sr.f.ReadAt(sr.hdr[:], sr.off); err != nil {
		return journal.Record{}, false, err
	}
	size := binary.LittleEndian.Uint32(sr.hdr[4:])
	if binary.LittleEndian.Uint16(sr.hdr[:]) != journal.BeginMagic || size < journal.Overhead || size > MaxWireRecord {
		return journal.Record{}, false, nil
	}
	n := journal.Align(int(size))
	if sr.off+int64(n) > sr.size {
		return journal.Record{}, false, nil
	}
	stream := binary.LittleEndian.Uint16(sr.hdr[2:]) & journal.StreamMask
	if sr.headersOnly && (stream >= journal.StreamFirstTx || stream == StreamBaselineData) {
		// Trust the header: the receiver checked the record before it
		// stored it; a torn tail is caught by the pass that applies.
		sr.off += int64(n)
		return journal.Record{Header: journal.Header{Magic: journal.BeginMagic, Stream: binary.LittleEndian.Uint16(sr.hdr[2:]), Size: size, Transid: binary.LittleEndian.Uint64(sr.hdr[8:])}}, true, nil
	}
	if cap(sr.buf) < n {
		sr.buf = make([]byte, n)
	}
	b := sr.buf[:n]
	if _, err := sr.f.ReadAt(b, sr.off); err != nil {
		return journal.Record{}, false, err
	}
	r, err = journal.DecodeRecord(b)
	if err != nil {
		return journal.Record{}, false, nil
	}
	sr.off += int64(n)
	return r, true, nil
}
