package journal

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"github.com/jvol-io/jvol/internal/vfs"
)

// DefaultTornWindow is the most the writer leaves written but unsynced
// unless the FIFO is larger (then the FIFO size, so one record always fits).
const DefaultTornWindow = 16 << 20

// Format writes a new, empty journal onto f, whose size fixes the ring
// (a multiple of 4 KiB, at least RingOffset+MinRingSize). The ring must read
// as zeros, as a freshly allocated file does. Format never overwrites a file
// that already holds a valid superblock.
func Format(f vfs.File) (Superblock, error) {
	size, err := f.Size()
	if err != nil {
		return Superblock{}, err
	}
	ring := uint64(size) - RingOffset
	if size < RingOffset+MinRingSize || size%SuperblockSize != 0 || ring > MaxRingSize {
		return Superblock{}, fmt.Errorf("journal: image of %d bytes: need a multiple of 4096 of at least %d", size, RingOffset+MinRingSize)
	}
	if _, err := readSuperblock(f); err == nil {
		return Superblock{}, errors.New("journal: image already formatted")
	}
	sb := Superblock{
		Version: FormatVersion, BlockSize: SuperblockSize, RingOffset: RingOffset, RingSize: ring,
		TornWindow: DefaultTornWindow,
	}
	if _, err := rand.Read(sb.UUID[:]); err != nil {
		return Superblock{}, err
	}
	// Both copies: a later torn write of either leaves a valid one.
	buf := vfs.AlignedBuffer(2 * SuperblockSize)
	sb.Encode(buf)
	sb.Sequence = 1
	sb.Encode(buf[SuperblockSize:])
	if _, err := f.WriteAt(buf, 0); err != nil {
		return Superblock{}, err
	}
	return sb, f.Sync()
}

// readSuperblock returns the valid copy with the higher sequence.
func readSuperblock(f vfs.File) (Superblock, error) {
	buf := vfs.AlignedBuffer(2 * SuperblockSize)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return Superblock{}, fmt.Errorf("journal: read superblock: %w", err)
	}
	a, errA := DecodeSuperblock(buf)
	b, errB := DecodeSuperblock(buf[SuperblockSize:])
	switch {
	case errA != nil && errB != nil:
		return Superblock{}, fmt.Errorf("copy 0: %v; copy 1: %w", errA, errB)
	case errA != nil:
		return b, nil
	case errB != nil:
		return a, nil
	case b.Sequence > a.Sequence:
		return b, nil
	}
	return a, nil
}

// superWriter writes superblocks in turn into the two copies.
type superWriter struct {
	mu  sync.Mutex
	f   vfs.File
	sb  Superblock
	buf []byte
}

func (w *superWriter) uuid() [16]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sb.UUID
}

func (w *superWriter) write(update func(*Superblock)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	next := w.sb
	update(&next)
	next.Sequence++
	next.Encode(w.buf)
	if _, err := w.f.WriteAt(w.buf, int64(next.Sequence%2)*SuperblockSize); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	w.sb = next
	return nil
}

// ringReader reads the ring in aligned chunks, so that it works on files
// opened for direct I/O.
type ringReader struct {
	f     vfs.File
	ring  uint64
	buf   []byte
	start uint64 // logical position of buf[0]
	n     int    // valid bytes in buf
}

const readChunk = 1 << 20

func newRingReader(f vfs.File, ring uint64) *ringReader {
	return &ringReader{f: f, ring: ring, buf: vfs.AlignedBuffer(readChunk)}
}

// get returns the n bytes at logical position pos, which must not run past
// the end of the ring.
func (r *ringReader) get(pos uint64, n int) ([]byte, error) {
	if pos >= r.start && pos+uint64(n) <= r.start+uint64(r.n) {
		return r.buf[pos-r.start : pos-r.start+uint64(n)], nil
	}
	phys := pos % r.ring
	if phys+uint64(n) > r.ring {
		return nil, ErrShort
	}
	from := phys &^ (SuperblockSize - 1)
	want := max(readChunk, int(alignUp(phys+uint64(n))-from))
	want = min(want, int(r.ring-from))
	if want > len(r.buf) {
		r.buf = vfs.AlignedBuffer(int(alignUp(uint64(want))))
	}
	r.n = 0
	if _, err := r.f.ReadAt(r.buf[:want], int64(RingOffset+from)); err != nil {
		return nil, fmt.Errorf("journal: read ring at %d: %w", from, err)
	}
	r.start, r.n = pos-(phys-from), want
	return r.buf[phys-from : phys-from+uint64(n)], nil
}

func alignUp(n uint64) uint64 { return (n + SuperblockSize - 1) &^ (SuperblockSize - 1) }

// Recovery describes what a scan of the ring found.
type Recovery struct {
	Start       uint64 // checkpoint position the scan began at
	End         uint64 // position after the last valid record: appending goes on here
	Records     int    // valid records from Start to End, pads included
	LastTransid uint64 // id of the last valid record, not a pad (the checkpoint's if none)
	MaxTransid  uint64 // highest id seen, pads and orphans of a torn tail included
	// Tail says why the scan stopped at End: "unwritten" (zeros), "stale"
	// (a record of an earlier lap), "full" (a whole ring of records) or
	// "torn: ..." (a record cut short by a crash).
	Tail string
}

// CorruptError reports damage in the middle of the journal: an invalid
// record followed by valid newer ones that a power cut could not explain.
type CorruptError struct {
	Pos    uint64 // logical position of the invalid record
	Offset int64  // its offset in the image file
	Next   uint64 // position of the valid newer record found after it
	Err    error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("journal: corrupt record at position %d (file offset %d): %v; valid newer records follow at %d", e.Pos, e.Offset, e.Err, e.Next)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// scan walks the ring from the checkpoint and calls fn for each valid record
// in order (pads included; fn may skip them). It stops at the first record
// that is not valid or not newer than its predecessor.
func scan(f vfs.File, sb Superblock, fn func(pos uint64, r Record) error) (Recovery, error) {
	rd := newRingReader(f, sb.RingSize)
	rec := Recovery{Start: sb.CkptPos, End: sb.CkptPos, LastTransid: sb.CkptTransid, MaxTransid: sb.CkptTransid}
	limit := sb.CkptPos + sb.RingSize
	for rec.End < limit {
		r, err := readRecord(rd, rec.End)
		// Ids never go down along the journal; a record's is above every
		// earlier one, a pad's may equal the one before it.
		stale := err == nil && (r.Transid < rec.MaxTransid || r.Transid == rec.MaxTransid && !r.IsPad())
		if stale || err != nil {
			switch {
			case stale:
				rec.Tail = "stale"
				err = errors.New("record of an earlier lap")
			case errors.Is(err, ErrMagic) && r.Magic == 0:
				rec.Tail = "unwritten"
			default:
				rec.Tail = "torn: " + err.Error()
			}
			if sb.Flags&FlagClean != 0 && rec.End == sb.CleanEnd {
				return rec, nil // closed cleanly right here: nothing to search for
			}
			// A crash can leave newer records behind an old one that a lost
			// write let show through, as well as behind a torn one.
			return rec, findNewer(rd, sb, &rec, err)
		}
		if err := fn(rec.End, r); err != nil {
			return rec, err
		}
		rec.Records++
		rec.MaxTransid = r.Transid
		if !r.IsPad() {
			rec.LastTransid = r.Transid
		}
		rec.End += uint64(r.Aligned())
	}
	rec.Tail = "full"
	return rec, nil
}

// readRecord decodes the record at pos, bounding its size by the ring end.
// On error the returned record holds the header as read, if any.
func readRecord(rd *ringReader, pos uint64) (Record, error) {
	hb, err := rd.get(pos, HeaderSize)
	if err != nil {
		return Record{}, err
	}
	h := getHeader(hb)
	if h.Magic != BeginMagic {
		if h.Magic == IncompleteMagic {
			return Record{Header: h}, ErrIncomplete
		}
		return Record{Header: h}, ErrMagic
	}
	n := uint64(h.Aligned())
	if h.Size < HeaderSize || h.Size > MaxRecordSize || n > rd.ring-pos%rd.ring {
		return Record{Header: h}, fmt.Errorf("%w: %d", ErrSize, h.Size)
	}
	b, err := rd.get(pos, int(n))
	if err != nil {
		return Record{Header: h}, err
	}
	r, err := DecodeRecord(b)
	if err != nil {
		return Record{Header: h}, err
	}
	return r, nil
}

// findNewer looks past an invalid record at rec.End for valid records newer
// than the last good one. Within the torn window they are orphans of the
// write that a crash cut short (their ids still count, so that new ids stay
// above them); beyond it they prove corruption in the middle.
func findNewer(rd *ringReader, sb Superblock, rec *Recovery, cause error) error {
	limit, last := sb.CkptPos+sb.RingSize, rec.MaxTransid
	for q := rec.End + RecordAlign; q < limit; {
		hb, err := rd.get(q, HeaderSize)
		if err != nil {
			return err
		}
		if getHeader(hb).Magic != BeginMagic {
			q += RecordAlign
			continue
		}
		r, err := readRecord(rd, q)
		if err != nil {
			q += RecordAlign
			continue
		}
		end := q + uint64(r.Aligned())
		if r.Transid <= last {
			// An older lap's record: skip it whole, but not a pad, whose
			// unchecked body may hide newer records.
			if r.IsPad() {
				end = q + RecordAlign
			}
			q = end
			continue
		}
		if end-rec.End > uint64(sb.TornWindow) {
			return &CorruptError{Pos: rec.End, Offset: int64(RingOffset + rec.End%sb.RingSize), Next: q, Err: cause}
		}
		rec.MaxTransid = max(rec.MaxTransid, r.Transid)
		q = end
	}
	return nil
}

// Dump calls fn for every valid record of the journal image in f, from its
// checkpoint on, and returns what the scan found.
func Dump(f vfs.File, fn func(pos uint64, r Record) error) (Superblock, Recovery, error) {
	sb, err := readSuperblock(f)
	if err != nil {
		return sb, Recovery{}, err
	}
	rec, err := scan(f, sb, fn)
	return sb, rec, err
}
