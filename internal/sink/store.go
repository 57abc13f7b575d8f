package sink

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// A receiver keeps each volume in its own directory:
//
//	base.img, base.json    the image at the start of the oldest segment kept,
//	                       and the stream's state there (segments older than
//	                       the retention are folded into it)
//	seg-NNNN.jseg          the received stream: a segment header record, then
//	                       the records as received, in the journal format
//	mirror.img, mirror.json
//	                       the image with every stored record applied; the
//	                       JSON names the segment and offset it is synced up to
//	lock                   restore holds it shared, folding exclusively
//
// Records are appended and synced before they are acknowledged; the mirror
// is synced only when a segment is closed (as the journal's data image is
// at a commit): after a crash the records after mirror.json are applied
// again.
type store struct {
	dir    string
	st     state // after the last record stored
	seq    uint64
	seg    *os.File
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

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(vfs.OS, path, append(b, '\n'))
}

// openStore opens (creating if need be) the volume directory dir: it cuts
// the last segment after its last whole record and brings the mirror up to
// date with the stored stream.
func openStore(dir string, retain time.Duration, segMax int64) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &store{dir: dir, retain: retain, segMax: segMax}
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
	if err := readJSON(filepath.Join(s.dir, baseMeta), &base); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if base.Folding != 0 {
		if err := s.foldOne(&base, base.Folding); err != nil {
			return fmt.Errorf("completing the fold of segment %d: %w", base.Folding, err)
		}
	}
	seqs, err := segments(s.dir)
	if err != nil {
		return err
	}
	// A crash or a full disk can leave the newest segment without its
	// header: nothing in it was acknowledged.
	if n := len(seqs); n > 0 {
		if _, err := readSegHeader(filepath.Join(s.dir, segName(seqs[n-1]))); err != nil {
			if err := os.Remove(filepath.Join(s.dir, segName(seqs[n-1]))); err != nil {
				return err
			}
			seqs = seqs[:n-1]
		}
	}
	if s.mirror, err = openImage(filepath.Join(s.dir, mirrorImage), true); err != nil {
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
	if err := readJSON(filepath.Join(s.dir, mirrorMeta), &mp); err != nil && !errors.Is(err, os.ErrNotExist) {
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
		f, err := os.OpenFile(filepath.Join(s.dir, segName(seq)), os.O_RDWR, 0)
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
			err = unix.Fdatasync(int(f.Fd()))
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
func (s *store) replay(f *os.File, seq uint64, mp mirrorPoint) (int64, state, error) {
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

// copyImage makes dst a copy of the image file at path, holes kept.
func copyImage(path string, dst *image) error {
	src, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if terr := dst.resize(0, true); terr != nil {
				return terr
			}
		}
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if err := dst.resize(0, true); err != nil {
		return err
	}
	if err := dst.resize(st.Size(), true); err != nil {
		return err
	}
	// copy_file_range keeps holes where the file system can.
	for off := int64(0); off < st.Size(); {
		in, out := off, off
		n, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.f.Fd()), &out, int(min(st.Size()-off, 1<<30)), 0)
		if err != nil {
			return fmt.Errorf("copy %s: %w", path, err)
		}
		if n == 0 {
			return fmt.Errorf("copy %s: short copy at %d", path, off)
		}
		off += int64(n)
	}
	return nil
}

// newSegment closes the current segment (synced) and begins segment seq
// with a header holding the state.
func (s *store) newSegment(seq uint64) error {
	if s.seg != nil {
		if err := unix.Fdatasync(int(s.seg.Fd())); err != nil {
			return err
		}
		s.seg.Close()
		s.seg = nil
	}
	f, err := os.OpenFile(filepath.Join(s.dir, segName(seq)), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	hdr := appendRecord(nil, StreamSegment, s.st.Last, s.st.encode(seq))
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return err
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return err
	}
	s.seg, s.seq, s.segOff = f, seq, int64(len(hdr))
	return vfs.OS.SyncDir(s.dir)
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
	return writeJSON(filepath.Join(s.dir, mirrorMeta), mp)
}

// mirrorFromBase makes the mirror a copy of the base image (empty if
// there is none yet).
func (s *store) mirrorFromBase() error {
	if err := copyImage(filepath.Join(s.dir, baseImage), s.mirror); err != nil && !errors.Is(err, os.ErrNotExist) {
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
// retention to the base image and removes them.
func (s *store) fold(now time.Time) error {
	if s.retain <= 0 {
		return nil
	}
	cutoff := journal.ClockTransid(now.Add(-s.retain))
	seqs, err := segments(s.dir)
	if err != nil {
		return err
	}
	// A restore holds the lock shared; fold at a later rotation then,
	// rather than stop the stream for it.
	lock, err := vfs.OS.Lock(filepath.Join(s.dir, lockName), false, false)
	if errors.Is(err, vfs.ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	var base baseState
	if err := readJSON(filepath.Join(s.dir, baseMeta), &base); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for i, seq := range seqs {
		if seq >= s.seq || i+1 >= len(seqs) {
			break
		}
		// The next segment's header holds the state at this one's end.
		next, err := readSegHeader(filepath.Join(s.dir, segName(seqs[i+1])))
		if err != nil {
			return err
		}
		if next.Last >= cutoff {
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
	if err := writeJSON(filepath.Join(s.dir, baseMeta), base); err != nil {
		return err
	}
	img, err := openImage(filepath.Join(s.dir, baseImage), true)
	if err != nil {
		return err
	}
	defer img.close()
	st, _, err := walkSegment(filepath.Join(s.dir, segName(seq)), img, nil)
	if err == nil {
		err = img.sync()
	}
	if err != nil {
		return err
	}
	*base = baseState{Through: seq, Epoch: st.Epoch[:], Size: st.Size, Last: st.Last, From: st.From, Consistent: st.Consistent, InBaseline: st.InBaseline}
	if err := writeJSON(filepath.Join(s.dir, baseMeta), base); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(s.dir, segName(seq))); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func readSegHeader(path string) (state, error) {
	f, err := os.Open(path)
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
func walkSegment(path string, img *image, stop func(st *state, r journal.Record) bool) (state, bool, error) {
	f, err := os.Open(path)
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
		if err = unix.Fdatasync(int(s.seg.Fd())); err == nil {
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
