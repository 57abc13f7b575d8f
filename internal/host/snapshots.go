package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// ErrNoSnapshot: no snapshot of that name on this node.
var ErrNoSnapshot = errors.New("snapshot not found on this node")

// Snapshot describes a local snapshot: a volume's data image as of a
// transaction id, kept in StateDir/snapshots/NAME/ as two files:
//
//	image          the data image, as sparse as the volume's (or sharing
//	               its blocks, for a thin volume on XFS or btrfs)
//	snapshot.json  this, JSON; written last: without it there is no
//	               snapshot, and what is there is the rest of one whose
//	               taking died
type Snapshot struct {
	// Version is SnapshotVersion.
	Version int `json:"version"`
	// Source is the volume it was taken of.
	Source string `json:"source"`
	// Size is the image's: the source's size when taken.
	Size int64 `json:"size"`
	// Transid is the source's last transaction id in the image.
	Transid uint64 `json:"transid"`
	// TakenAt is when it was taken, UTC.
	TakenAt time.Time `json:"takenAt"`
}

// SnapshotVersion is the version of snapshot.json.
const SnapshotVersion = 1

const (
	snapshotImage = "image"
	snapshotMeta  = "snapshot.json"
)

func (n *Volumes) snapshotDir(name string) string {
	return filepath.Join(filepath.Dir(n.dir), "snapshots", name)
}

// SnapshotImage is the path of the snapshot's image.
func (n *Volumes) SnapshotImage(name string) string {
	return filepath.Join(n.snapshotDir(name), snapshotImage)
}

// Snapshot returns the snapshot called name, or ErrNoSnapshot.
func (n *Volumes) Snapshot(name string) (Snapshot, error) {
	var s Snapshot
	if err := CheckName(name); err != nil {
		return s, err
	}
	b, err := os.ReadFile(filepath.Join(n.snapshotDir(name), snapshotMeta))
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("%w: %s", ErrNoSnapshot, name)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("snapshot %s: %s: %w", name, snapshotMeta, err)
	}
	if s.Version != SnapshotVersion {
		return s, fmt.Errorf("snapshot %s: %s version %d, want %d", name, snapshotMeta, s.Version, SnapshotVersion)
	}
	return s, nil
}

// TakeSnapshot takes a crash-consistent snapshot of the volume source,
// called name, without stopping its writes: it holds every write
// acknowledged before the call. Taking one that exists returns it, of
// whatever volume; one whose taking died is taken again.
func (n *Volumes) TakeSnapshot(ctx context.Context, source, name string) (Snapshot, error) {
	if err := CheckName(name); err != nil {
		return Snapshot{}, err
	}
	defer n.Lock(snapshotLock(name))()
	if s, err := n.Snapshot(name); !errors.Is(err, ErrNoSnapshot) {
		return s, err
	}
	dir := n.snapshotDir(name)
	if err := os.RemoveAll(dir); err != nil {
		return Snapshot{}, err
	}
	if err := vfs.OS.MkdirAll(dir); err != nil {
		return Snapshot{}, err
	}
	taken := time.Now().UTC()
	transid, size, err := n.copyVolume(ctx, source, filepath.Join(dir, snapshotImage))
	if err != nil {
		return Snapshot{}, errors.Join(err, os.RemoveAll(dir))
	}
	s := Snapshot{Version: SnapshotVersion, Source: source, Size: size, Transid: transid, TakenAt: taken}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return Snapshot{}, err
	}
	if err := vfs.WriteFileAtomic(vfs.OS, filepath.Join(dir, snapshotMeta), append(b, '\n')); err != nil {
		return Snapshot{}, errors.Join(err, os.RemoveAll(dir))
	}
	return s, nil
}

// snapshotLock is the name of a snapshot's lock: it cannot be a volume's.
func snapshotLock(name string) string { return "snapshot/" + name }

// copyVolume writes a crash-consistent copy of the volume's data image to
// a new file at path (volume.Dir.Snapshot), through its attachment if it
// is staged, else opening it for the time of the copy.
func (n *Volumes) copyVolume(ctx context.Context, name, path string) (transid uint64, size int64, err error) {
	if err := CheckName(name); err != nil {
		return 0, 0, err
	}
	defer n.Lock(name)()
	if n.Retired() {
		return 0, 0, ErrRetired
	}
	if a := n.attached(name); a != nil {
		return a.Snapshot(ctx, path)
	}
	if !n.Exists(name) {
		return 0, 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	d, err := volume.OpenDir(n.Path(name), volume.Options{Name: name})
	if err != nil {
		return 0, 0, err
	}
	transid, size, err = d.Snapshot(ctx, path)
	return transid, size, errors.Join(err, d.Close())
}

// RemoveSnapshot removes a snapshot; removing one that does not exist
// succeeds.
func (n *Volumes) RemoveSnapshot(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	defer n.Lock(snapshotLock(name))()
	dir := n.snapshotDir(name)
	// The metadata first, durably: what a crash leaves is no snapshot.
	if err := os.Remove(filepath.Join(dir, snapshotMeta)); err == nil {
		if err := vfs.OS.SyncDir(dir); err != nil {
			return err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.RemoveAll(dir)
}

// SnapshotAllocated returns the bytes of disk the snapshot's image holds.
func (n *Volumes) SnapshotAllocated(name string) int64 {
	var st unix.Stat_t
	if unix.Stat(n.SnapshotImage(name), &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// EnsureFrom is Ensure (with create) for a volume that starts as a copy of another
// volume (a clone): the copy is taken as a snapshot would be, into a file
// the new volume's data image is made from, then removed. Callers hold neither volume's lock.
func (n *Volumes) EnsureFrom(ctx context.Context, name, source string, o volume.Options) (int64, error) {
	if err := CheckName(name); err != nil {
		return 0, err
	}
	if !n.Exists(name) {
		tmp := n.snapshotDir(".clone-" + name)
		if err := os.RemoveAll(tmp); err != nil {
			return 0, err
		}
		if err := vfs.OS.MkdirAll(tmp); err != nil {
			return 0, err
		}
		defer os.RemoveAll(tmp)
		o.From = filepath.Join(tmp, snapshotImage)
		if _, _, err := n.copyVolume(ctx, source, o.From); err != nil {
			return 0, fmt.Errorf("copying volume %s: %w", source, err)
		}
	}
	defer n.Lock(name)()
	return n.Ensure(ctx, name, o, true)
}

// WorkDir makes an empty directory, for work on name that must leave
// nothing behind (a restore's image, a receiver's credentials), and
// returns it with its removal. It is under the state directory: an image
// made there is on the volumes' file system.
func (n *Volumes) WorkDir(name string) (string, func(), error) {
	if err := CheckName(name); err != nil {
		return "", nil, err
	}
	dir := n.snapshotDir(".work-" + name)
	if err := os.RemoveAll(dir); err != nil {
		return "", nil, err
	}
	if err := vfs.OS.MkdirAll(dir); err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}
