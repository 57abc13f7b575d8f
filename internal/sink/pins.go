package sink

import (
	"errors"
	"fmt"
	"os"

	"github.com/jvol-io/jvol/internal/vfs"
)

// Pins keep points of a volume's stream at a receiver for as long as
// something needs them (a snapshot kept off site): retention never folds
// the stream past a pinned id. They are kept in pins.json in the volume's
// directory, {"pins": {name: transid}}, replaced atomically under the
// volume's lock held exclusively, which folding takes too: a point is
// checked to be kept and pinned in one step.

// ErrPinExists: the name pins another point already.
var ErrPinExists = errors.New("sink: the pin's name holds another point")

type pinFile struct {
	Pins map[string]uint64 `json:"pins"`
}

func (d volDir) pinsFile() string { return d.file("pins.json") }

func (d volDir) pins() (map[string]uint64, error) {
	var pf pinFile
	if err := d.readJSON(d.pinsFile(), &pf); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if pf.Pins == nil {
		pf.Pins = map[string]uint64{}
	}
	return pf.Pins, nil
}

// lowestPin is the lowest id pinned, if any: folding must leave the
// state at it restorable.
func (d volDir) lowestPin() (low uint64, pinned bool, err error) {
	pins, err := d.pins()
	for _, t := range pins {
		if !pinned || t < low {
			low, pinned = t, true
		}
	}
	return low, pinned, err
}

// Pin keeps point p of volume vol, in the receiver directory dir, under
// name until Unpin: retention never folds past it. It returns the id
// pinned (the newest kept, for Latest). A point not kept is ErrNotKept,
// naming what is; pinning a name again at its point does nothing, at
// another ErrPinExists.
func Pin(dir, vol, name string, p Point) (uint64, error) { return pin(vfs.OS, dir, vol, name, p) }

func pin(fsys vfs.FS, dir, vol, name string, p Point) (uint64, error) {
	if !ValidVolumeID(name) {
		return 0, fmt.Errorf("%w: pin %q", ErrProto, name)
	}
	vd, lock, err := lockVolume(fsys, dir, vol, false) // no fold meanwhile
	if err != nil {
		return 0, err
	}
	defer lock.Unlock()
	base, seqs, err := vd.stored()
	if err != nil {
		return 0, err
	}
	t, _, err := keptPoint(vd, base, seqs, p)
	if err != nil {
		return 0, err
	}
	pins, err := vd.pins()
	if err != nil {
		return 0, err
	}
	if old, ok := pins[name]; ok {
		if old != t && !p.Latest {
			return 0, fmt.Errorf("%w: %s pins id %d, not %d", ErrPinExists, name, old, t)
		}
		return old, nil
	}
	pins[name] = t
	return t, vd.writeJSON(vd.pinsFile(), pinFile{pins})
}

// Unpin lets the point pinned under name go; one not pinned is no error.
func Unpin(dir, vol, name string) error { return unpin(vfs.OS, dir, vol, name) }

func unpin(fsys vfs.FS, dir, vol, name string) error {
	if !ValidVolumeID(name) {
		return fmt.Errorf("%w: pin %q", ErrProto, name)
	}
	vd, lock, err := lockVolume(fsys, dir, vol, false)
	if errors.Is(err, ErrNoVolume) {
		return nil // nothing kept, nothing pinned
	}
	if err != nil {
		return err
	}
	defer lock.Unlock()
	pins, err := vd.pins()
	if err != nil {
		return err
	}
	if _, ok := pins[name]; !ok {
		return nil
	}
	delete(pins, name)
	return vd.writeJSON(vd.pinsFile(), pinFile{pins})
}
