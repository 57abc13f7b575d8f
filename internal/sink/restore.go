package sink

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// ErrNotKept says that a receiver cannot rebuild the point asked for.
var ErrNotKept = errors.New("sink: point not kept")

// Point is what to restore: the newest point, or the image after every
// record up to Transid.
type Point struct {
	Latest  bool
	Transid uint64
}

// AtTime is the point of time t: the image after every write handed an id
// before t.
func AtTime(t time.Time) Point { return Point{Transid: journal.ClockTransid(t)} }

// Restored says what a restore wrote.
type Restored struct {
	Transid uint64 // the image is the volume's after this id
	Size    int64
	Kept    []Interval
}

// Restore writes the image of volume vol, as the receiver directory dir
// keeps it, at point p into the file out (created or replaced). It fails
// with ErrNotKept, naming the intervals kept, for a point outside them.
// It may run beside the receiver: it sees the stream as stored when it
// began.
func Restore(dir, vol string, p Point, out string) (Restored, error) {
	return restore(vfs.OS, dir, vol, p, out, nil)
}

// restore is Restore in fsys, where out is written too. If goOn is set, it
// is asked before each large step (the base image, each segment) and the
// restore stops with its error, if any.
func restore(fsys vfs.FS, dir, vol string, p Point, out string, goOn func() error) (Restored, error) {
	if goOn == nil {
		goOn = func() error { return nil }
	}
	vd, lock, err := lockVolume(fsys, dir, vol, true) // no folding meanwhile
	if err != nil {
		return Restored{}, err
	}
	defer lock.Unlock()
	base, seqs, err := vd.stored()
	if err != nil {
		return Restored{}, err
	}
	t, kept, err := keptPoint(vd, base, seqs, p)
	res := Restored{Transid: t, Kept: kept}
	if err != nil {
		return res, err
	}
	img, err := openImage(fsys, out, true)
	if err != nil {
		return res, err
	}
	defer img.close()
	if err := goOn(); err != nil {
		return res, err
	}
	if err := copyImage(fsys, vd.baseImage(), img); err != nil && !errors.Is(err, os.ErrNotExist) {
		return res, err
	}
	// Stop before the first record that leaves the state asked for.
	st := base.state()
	stop := func(s *state, r journal.Record) bool {
		iv, ok := s.interval()
		return ok && iv.From <= t &&
			(r.ID() == StreamBaselineBegin && t <= s.Last || r.ID() >= journal.StreamFirstTx && r.Transid > t)
	}
	stopped := false
	for _, seq := range seqs {
		if seq <= base.Through {
			continue
		}
		if err := goOn(); err != nil {
			return res, err
		}
		if st, stopped, err = walkSegment(fsys, vd.seg(seq), img, stop); err != nil {
			return res, err
		}
		if stopped {
			break
		}
	}
	if iv, ok := st.interval(); !ok || t < iv.From || !stopped && t > iv.To {
		return res, fmt.Errorf("sink: the stored stream ended before id %d could be rebuilt (state at %d)", t, st.Last)
	}
	if err := img.resize(int64(st.Size), true); err != nil {
		return res, err
	}
	res.Size = img.size
	return res, img.sync()
}

// stored returns the base's state and the segments after it; the caller
// holds the volume's lock.
func (vd volDir) stored() (baseState, []uint64, error) {
	var base baseState
	if err := vd.readJSON(vd.baseMeta(), &base); err != nil && !errors.Is(err, os.ErrNotExist) {
		return base, nil, err
	}
	if base.Folding != 0 {
		return base, nil, fmt.Errorf("sink: folding segment %d into the base of %s was interrupted: start the receiver to complete it", base.Folding, filepath.Base(vd.path))
	}
	seqs, err := vd.segments()
	return base, seqs, err
}

// lockVolume takes the lock of volume vol's directory in the receiver
// directory dir, shared or not, waiting for it: ErrNoVolume if the
// receiver keeps no such volume.
func lockVolume(fsys vfs.FS, dir, vol string, shared bool) (volDir, *vfs.Lock, error) {
	if !ValidVolumeID(vol) {
		return volDir{}, nil, fmt.Errorf("%w: volume id %q", ErrProto, vol)
	}
	vd := recvDir{fs: fsys, path: dir}.volume(vol)
	if _, err := fsys.List(vd.path); errors.Is(err, os.ErrNotExist) {
		return vd, nil, fmt.Errorf("%w: no volume %s in %s", ErrNoVolume, vol, dir)
	} else if err != nil {
		return vd, nil, err
	}
	lock, err := fsys.Lock(vd.lock(), shared, true)
	return vd, lock, err
}

// keptPoint returns the id point p stands for, if the stored stream (the
// base's state and the segments after it) keeps it, and the intervals it
// keeps; the caller holds the volume's lock.
func keptPoint(vd volDir, base baseState, seqs []uint64, p Point) (uint64, []Interval, error) {
	kept, err := keptIntervals(vd, base, seqs)
	if err != nil {
		return 0, nil, err
	}
	vol := filepath.Base(vd.path)
	switch {
	case len(kept) == 0:
		return 0, kept, fmt.Errorf("%w: no consistent image of %s is kept yet (a baseline copy has not completed)", ErrNotKept, vol)
	case p.Latest:
		return kept[len(kept)-1].To, kept, nil
	}
	for _, iv := range kept {
		if iv.From <= p.Transid && p.Transid <= iv.To {
			return p.Transid, kept, nil
		}
	}
	return 0, kept, fmt.Errorf("%w: id %d (%s) of %s; the receiver keeps %s", ErrNotKept, p.Transid,
		TransidTime(p.Transid).Format(time.RFC3339Nano), vol, describe(kept))
}

// keptIntervals walks the stored stream's headers and returns the ids it
// can rebuild the image at.
func keptIntervals(vd volDir, base baseState, seqs []uint64) ([]Interval, error) {
	st := base.state()
	var kept []Interval
	add := func() {
		if iv, ok := st.interval(); ok {
			if len(kept) == 0 && base.Through > 0 {
				iv.From = max(iv.From, base.Last) // before it is folded away
			}
			if iv.From <= iv.To {
				kept = append(kept, iv)
			}
		}
	}
	for _, seq := range seqs {
		if seq <= base.Through {
			continue
		}
		f, err := vd.fs.Open(vd.seg(seq))
		if err != nil {
			return nil, err
		}
		sr, err := newSegReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		sr.headersOnly = true
		if _, _, err := sr.header(); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", segName(seq), err)
		}
		for {
			r, ok, err := sr.next()
			if err != nil || !ok {
				f.Close()
				if err != nil {
					return nil, err
				}
				break
			}
			if r.ID() == StreamBaselineBegin {
				add()
			}
			if _, err := st.step(r); err != nil {
				f.Close()
				return nil, fmt.Errorf("%s: %w", segName(seq), err)
			}
		}
	}
	add()
	return kept, nil
}

func describe(kept []Interval) string {
	if len(kept) == 0 {
		return "no point"
	}
	s := make([]string, len(kept))
	for i, iv := range kept {
		s[i] = iv.String()
	}
	return "ids " + strings.Join(s, ", ")
}
