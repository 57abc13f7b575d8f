package sink

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// store is a volume's directory at a receiver (volDir has its files).
// Records are appended and synced before they are acknowledged; the mirror
// is synced only when a segment is closed (as the journal's data image is
// at a commit): after a crash the records after mirror.json are applied
// again.
type store struct {
	d      volDir
	st     state // after the last record stored
	seq    uint64
	seg    vfs.RWFile
	segOff int64
	mirror *image
	retain time.Duration
	segMax int64

	// The mirror is synced beside the stream, not in its way: a rotation
	// hands the point to syncMirror, which syncs and records it.
	mirrorWant chan mirrorPoint
	mirrorDone chan error
}

// DefaultSegmentSize is when a segment is closed and the next begun.
const DefaultSegmentSize = 64 << 20

type mirrorPoint struct {
	Seq    uint64 `json:"seq"`
	Offset int64  `json:"offset"`
}

type baseState struct {
	// Through is the last segment folded into base.img.
	Through uint64 `json:"through"`
	Epoch   []byte `json:"epoch"`
	Size    uint64 `json:"size"`
	Last    uint64 `json:"last"`
	From    uint64 `json:"from"`
	// Consistent: base.img is the volume's image at Last.
	Consistent bool `json:"consistent"`
	InBaseline bool `json:"inBaseline"`
	// Folding, if not zero, is the segment being applied to base.img: the
	// base is somewhere inside it until the fold is completed.
	Folding uint64 `json:"folding,omitempty"`
}

func (b baseState) state() state {
	s := state{Size: b.Size, Last: b.Last, From: b.From, Consistent: b.Consistent, InBaseline: b.InBaseline}
	copy(s.Epoch[:], b.Epoch)
	return s
}

// openStore opens (creating if need be) the volume directory d: it cuts
// the last segment after its last whole record and brings the mirror up to
// date with the stored stream.
func openStore(d volDir, retain time.Duration, segMax int64) (*store, error) {
	if err := d.fs.MkdirAll(d.path); err != nil {
		return nil, err
	}
	s := &store{d: d, retain: retain, segMax: segMax}
	if err := s.open(); err != nil {
		s.close()
		return nil, err
	}
	s.mirrorWant, s.mirrorDone = make(chan mirrorPoint, 1), make(chan error, 1)
	go s.syncMirror()
	return s, nil
}

// syncMirror checkpoints the mirror at the points it is handed, until the
// channel closes; the first error ends it.
func (s *store) syncMirror() {
	var err error
	for mp := range s.mirrorWant {
		if err == nil {
			err = s.syncMirrorAt(mp)
		}
	}
	s.mirrorDone <- err
}

func (s *store) open() error {
	var base baseState
	if err := s.d.readJSON(s.d.baseMeta(), &base); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if base.Folding != 0 {
		if err := s.foldOne(&base, base.Folding); err != nil {
			return fmt.Errorf("completing the fold of segment %d: %w", base.Folding, err)
		}
	}
	seqs, err := s.d.segments()
	if err != nil {
		return err
	}
	// A crash or a full disk can leave the newest segment without its
	// header: nothing in it was acknowledged.
	if n := len(seqs); n > 0 {
		if _, err := readSegHeader(s.d.fs, s.d.seg(seqs[n-1])); err != nil {
			if err := s.d.fs.Remove(s.d.seg(seqs[n-1])); err != nil {
				return err
			}
			seqs = seqs[:n-1]
		}
	}
	if s.mirror, err = openImage(s.d.fs, s.d.mirrorImage(), true); err != nil {
		return err
	}
	if len(seqs) == 0 {
		s.st = base.state()
		// The mirror equals the base: start over from it.
		if err := s.mirrorFromBase(); err != nil {
			return err
		}
		if err := s.mirror.sync(); err != nil {
			return err
		}
		return s.newSegment(base.Through + 1)
	}
	var mp mirrorPoint
	if err := s.d.readJSON(s.d.mirrorMeta(), &mp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if mp.Seq < seqs[0] {
		// The mirror is older than every segment kept: it was never
		// synced. Rebuild it from the base.
		if err := s.mirrorFromBase(); err != nil {
			return err
		}
		mp = mirrorPoint{Seq: seqs[0]}
	}
	// Apply what the mirror lacks, and find where the stream ends.
	for i, seq := range seqs {
		if seq < mp.Seq {
			continue
		}
		last := i == len(seqs)-1
		f, err := s.d.fs.Open(s.d.seg(seq))
		if err != nil {
			return err
		}
		end, st, err := s.replay(f, seq, mp)
		if err != nil || !last {
			f.Close()
			if err != nil {
				return fmt.Errorf("segment %s: %w", segName(seq), err)
			}
			continue
		}
		// Cut the tail a crash left (never acknowledged), and make what
		// is left durable: the sender resumes after it.
		err = f.Truncate(end)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return err
		}
		s.seg, s.seq, s.segOff, s.st = f, seq, end, st
	}
	return s.checkpointMirror()
}

// replay applies the records of segment f after the mirror's point to the
// mirror and returns where the whole records end and the state there.
func (s *store) replay(f vfs.File, seq uint64, mp mirrorPoint) (int64, state, error) {
	sr, err := newSegReader(f)
	if err != nil {
		return 0, state{}, err
	}
	st, hseq, err := sr.header()
	if err != nil || hseq != seq {
		return 0, state{}, fmt.Errorf("bad segment header (sequence %d): %v", hseq, err)
	}
	for {
		r, ok, err := sr.next()
		if err != nil {
			return 0, state{}, err
		}
		if !ok {
			return sr.off, st, nil
		}
		before := sr.off - int64(r.Aligned())
		changes, err := st.step(r)
		if err != nil {
			return 0, state{}, fmt.Errorf("record at %d: %w", before, err)
		}
		if changes && (seq > mp.Seq || before >= mp.Offset) {
			if err := s.mirror.apply(r, &st); err != nil {
				return 0, state{}, err
			}
		} else if changes {
			trackResize(r, &st) // applied already; the size still counts
		}
	}
}

// copyImage makes dst a copy of the image file path, holes kept; dst is
// left empty if there is none.
func copyImage(fsys vfs.FS, path string, dst *image) error {
	if err := dst.resize(0, true); err != nil {
		return err
	}
	src, err := fsys.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	n, err := src.Size()
	if err != nil {
		return err
	}
	if err := dst.resize(n, true); err != nil {
		return err
	}
	return vfs.CopyData(dst.f, src, n)
}

// newSegment closes the current segment (synced) and begins segment seq
// with a header holding the state.
func (s *store) newSegment(seq uint64) error {
	if s.seg != nil {
		if err := s.seg.Sync(); err != nil {
			return err
		}
		s.seg.Close()
		s.seg = nil
	}
	f, err := s.d.fs.Create(s.d.seg(seq))
	if err != nil {
		return err
	}
	hdr := appendRecord(nil, StreamSegment, s.st.Last, s.st.encode(seq))
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	s.seg, s.seq, s.segOff = f, seq, int64(len(hdr))
	return s.d.fs.SyncDir(s.d.path)
}

// checkpointMirror syncs the mirror and records that it holds every record
// up to the current end of the stream.
func (s *store) checkpointMirror() error {
	return s.syncMirrorAt(mirrorPoint{Seq: s.seq, Offset: s.segOff})
}

// syncMirrorAt syncs the mirror and records that it holds every record up
// to mp.
func (s *store) syncMirrorAt(mp mirrorPoint) error {
	if err := s.mirror.sync(); err != nil {
		return err
	}
	return s.d.writeJSON(s.d.mirrorMeta(), mp)
}

// mirrorFromBase makes the mirror a copy of the base image (empty if
// there is none yet).
func (s *store) mirrorFromBase() error {
	if err := copyImage(s.d.fs, s.d.baseImage(), s.mirror); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// append stores the records in b (whole, checked, in order) at the end of
// the current segment. They are durable after sync.
func (s *store) append(b []byte) error {
	if _, err := s.seg.WriteAt(b, s.segOff); err != nil {
		return err
	}
	s.segOff += int64(len(b))
	return nil
}

// rotate closes a full segment: the mirror is checkpointed, the next
// segment begun, and segments past the retention folded into the base.
func (s *store) rotate() error {
	if s.segOff < s.segMax {
		return nil
	}
	mp := mirrorPoint{Seq: s.seq, Offset: s.segOff}
	if err := s.newSegment(s.seq + 1); err != nil {
		return err
	}
	select {
	case s.mirrorWant <- mp:
	default: // still syncing the last one: the next rotation's point will do
	}
	return s.fold(time.Now())
}

// fold applies the closed segments whose records are all older than the
// retention to the base image and removes them; never past a pinned id.
func (s *store) fold(now time.Time) error {
	if s.retain <= 0 {
		return nil
	}
	cutoff := journal.ClockTransid(now.Add(-s.retain))
	seqs, err := s.d.segments()
	if err != nil {
		return err
	}
	// A restore holds the lock shared; fold at a later rotation then,
	// rather than stop the stream for it.
	lock, err := s.d.fs.Lock(s.d.lock(), false, false)
	if errors.Is(err, vfs.ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	var base baseState
	if err := s.d.readJSON(s.d.baseMeta(), &base); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	low, pinned, err := s.d.lowestPin()
	if err != nil {
		return err
	}
	for i, seq := range seqs {
		if seq >= s.seq || i+1 >= len(seqs) {
			break
		}
		// The next segment's header holds the state at this one's end.
		next, err := readSegHeader(s.d.fs, s.d.seg(seqs[i+1]))
		if err != nil {
			return err
		}
		if next.Last >= cutoff || pinned && next.Last > low {
			break
		}
		if err := s.foldOne(&base, seq); err != nil {
			return err
		}
	}
	return nil
}

// foldOne applies segment seq to base.img and removes it. base.json names
// the segment while the base is inside it, so that an interrupted fold is
// completed (applying a segment again from its start is harmless).
func (s *store) foldOne(base *baseState, seq uint64) error {
	base.Folding = seq
	if err := s.d.writeJSON(s.d.baseMeta(), base); err != nil {
		return err
	}
	img, err := openImage(s.d.fs, s.d.baseImage(), true)
	if err != nil {
		return err
	}
	defer img.close()
	st, _, err := walkSegment(s.d.fs, s.d.seg(seq), img, nil)
	if err == nil {
		err = img.sync()
	}
	if err != nil {
		return err
	}
	*base = baseState{Through: seq, Epoch: st.Epoch[:], Size: st.Size, Last: st.Last, From: st.From, Consistent: st.Consistent, InBaseline: st.InBaseline}
	if err := s.d.writeJSON(s.d.baseMeta(), base); err != nil {
		return err
	}
	if err := s.d.fs.Remove(s.d.seg(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func readSegHeader(fsys vfs.FS, path string) (state, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return state{}, err
	}
	defer f.Close()
	sr, err := newSegReader(f)
	if err != nil {
		return state{}, err
	}
	st, _, err := sr.header()
	if err != nil {
		return state{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// walkSegment applies the records of the segment at path to img and
// returns the state after them. With stop set, it stops before the first
// record for which stop returns true, and says so.
func walkSegment(fsys vfs.FS, path string, img *image, stop func(st *state, r journal.Record) bool) (state, bool, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return state{}, false, err
	}
	defer f.Close()
	sr, err := newSegReader(f)
	if err != nil {
		return state{}, false, err
	}
	st, _, err := sr.header()
	if err != nil {
		return state{}, false, fmt.Errorf("%s: %w", path, err)
	}
	for {
		r, ok, err := sr.next()
		if err != nil || !ok {
			return st, false, err
		}
		if stop != nil && stop(&st, r) {
			return st, true, nil
		}
		changes, err := st.step(r)
		if err != nil {
			return st, false, fmt.Errorf("%s: %w", path, err)
		}
		if changes {
			if err := img.apply(r, &st); err != nil {
				return st, false, err
			}
		}
	}
}

func (s *store) close() error {
	var err error
	if s.mirrorWant != nil {
		close(s.mirrorWant)
		err = <-s.mirrorDone
	}
	if s.seg != nil && s.mirror != nil && err == nil {
		if err = s.seg.Sync(); err == nil {
			err = s.checkpointMirror()
		}
	}
	if s.seg != nil {
		s.seg.Close()
	}
	if s.mirror != nil {
		s.mirror.close()
	}
	return err
}
