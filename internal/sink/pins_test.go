package sink

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs"
)

// A pinned point survives folding however short the retention, and is
// restorable until unpinned; then it folds away. Pins of points not kept,
// of volumes not kept, and a name reused for another point are refused.
func TestAPinnedPointSurvivesFolding(t *testing.T) {
	const size = 8 << 20
	r := &rig{t: t, vdir: filepath.Join(t.TempDir(), "vol"), rdir: t.TempDir(), size: size, rng: newRand(t), timeout: time.Minute}
	r.rc = startReceiver(t, ReceiverConfig{Dir: r.rdir, SegmentSize: 1 << 20, Retain: time.Nanosecond}, nil)
	r.openVolume(true, "tcp://"+r.rc.addr())
	defer r.close()
	r.ready()
	round := func() uint64 { // enough to close several segments: each closing folds
		id := r.write(40)
		r.waitAcked(id)
		return id
	}
	pinned := round()
	img := r.image()
	if got, err := Pin(r.rdir, testVolume, "snap-1", Point{Transid: pinned}); err != nil || got != pinned {
		t.Fatalf("pin at %d: %d, %v", pinned, got, err)
	}
	if got, err := Pin(r.rdir, testVolume, "snap-1", Point{Transid: pinned}); err != nil || got != pinned {
		t.Errorf("the same pin again: %d, %v", got, err)
	}
	for range 3 {
		round()
	}
	sameImage(t, "the pinned point after folding", r.restore(Point{Transid: pinned}), img)
	var base baseState
	vd := recvDir{fs: vfs.OS, path: r.rdir}.volume(testVolume)
	if err := vd.readJSON(vd.baseMeta(), &base); err != nil || base.Through == 0 {
		t.Errorf("nothing was folded before the pin: %+v, %v", base, err)
	}

	latest := round()
	for _, c := range []struct {
		what      string
		vol, name string
		p         Point
		want      error
	}{
		{"a point folded away", testVolume, "snap-2", Point{Transid: 1}, ErrNotKept},
		{"a volume not kept", "other", "snap-2", Point{Latest: true}, ErrNoVolume},
		{"a name that pins another point", testVolume, "snap-1", Point{Transid: latest}, ErrPinExists},
		{"a bad name", testVolume, "../x", Point{Latest: true}, ErrProto},
	} {
		if _, err := Pin(r.rdir, c.vol, c.name, c.p); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}

	if err := Unpin(r.rdir, testVolume, "snap-1"); err != nil {
		t.Fatal(err)
	}
	if err := Unpin(r.rdir, testVolume, "snap-1"); err != nil {
		t.Errorf("unpinning again: %v", err)
	}
	for range 2 {
		round()
	}
	if _, err := Restore(r.rdir, testVolume, Point{Transid: pinned}, filepath.Join(t.TempDir(), "x.img")); !errors.Is(err, ErrNotKept) {
		t.Errorf("the unpinned point after folding: %v, want ErrNotKept", err)
	}
}
