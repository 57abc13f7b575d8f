package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// ErrSnapshotOverrun: writes filled the journal's spool share while a
// snapshot was copied, so the records it needed were let go; try again.
var ErrSnapshotOverrun = errors.New("volume: writes filled the journal while the snapshot was copied: try again")

// Snapshot makes target a crash-consistent copy of the volume, without
// stopping writes: the image after every write whose id is at or below
// the transid it returns, which is at or after the id of every write
// acknowledged before the call; size is the image's size then.
//
// It pins the journal at P0, before which the data image holds every
// record (the committer applied them), has copy copy the data image into
// target as it is (writes and the committer land in it meanwhile: the copy
// is fuzzy, as a sink's baseline is), flushes, and applies over the copy,
// in order, every record from P0 to the durable end after the flush. A
// write the copy may have missed or caught half is in those records (its
// record is reserved before it reaches the data image, directly or through
// the committer, and the flush covers every record reserved before it); a
// write after the flush never reached the copy. The records stay in the ring while pinned; if writes fill the
// spool share first, Snapshot fails with ErrSnapshotOverrun.
func (v *Volume) Snapshot(ctx context.Context, copy func(size int64) error, target Data) (transid uint64, size int64, err error) {
	if err := v.failed(); err != nil {
		return 0, 0, err
	}
	p := v.pinApplied()
	defer func() {
		if !v.unpin(p) && err == nil {
			err = ErrSnapshotOverrun
		}
	}()
	size = v.Size()
	if err := copy(size); err != nil {
		return 0, 0, fmt.Errorf("volume: copying the data image: %w", err)
	}
	if err := v.Flush(ctx); err != nil {
		return 0, 0, err
	}
	end, last := v.j.Durable()
	if size, err = v.applyRing(p, end, size, target); err != nil {
		return 0, 0, err
	}
	if err := target.Sync(); err != nil {
		return 0, 0, err
	}
	return max(last, p.transid), size, nil
}

// applyRing applies the block records of the ring from p's position to
// end to target, an image of size bytes, and returns its size after them.
func (v *Volume) applyRing(p *pin, end uint64, size int64, target Data) (int64, error) {
	buf := vfs.AlignedBuffer(4<<20 + vfs.BlockSize)
	for pos := p.pos; pos < end; {
		b, err := v.j.ReadDurable(buf, pos)
		if err != nil {
			if !v.pinned(p) {
				return 0, ErrSnapshotOverrun
			}
			return 0, err
		}
		i := 0
		for i+journal.HeaderSize <= len(b) && pos+uint64(i) < end {
			n := journal.Align(max(int(binary.LittleEndian.Uint32(b[i+4:])), journal.HeaderSize))
			if n > journal.Align(journal.MaxRecordSize) {
				return 0, fmt.Errorf("volume: journal record of %d bytes at %d", n, pos+uint64(i))
			}
			if i+n > len(b) {
				if i == 0 { // a record larger than the buffer
					buf = vfs.AlignedBuffer(n + vfs.BlockSize)
				}
				break
			}
			r, err := journal.DecodeRecord(b[i : i+n])
			if err != nil {
				return 0, fmt.Errorf("volume: journal record at %d: %w", pos+uint64(i), err)
			}
			if size, err = applyRecord(r, size, target); err != nil {
				return 0, err
			}
			i += n
		}
		pos += uint64(i)
	}
	return size, nil
}

// pinned reports whether p still holds.
func (v *Volume) pinned(p *pin) bool {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	return !p.dropped
}

// applyRecord applies a block record to target, an image of size bytes,
// and returns its size after it: as a replay does, into another file.
func applyRecord(r journal.Record, size int64, target Data) (int64, error) {
	if r.IsPad() || r.ID() != StreamIO || r.Stream&journal.FlagAborted != 0 {
		return size, nil
	}
	_, err := blockrec.Decode(r.Payload, uint64(size), func(op blockrec.Op) error {
		switch op.Kind {
		case blockrec.Write:
			_, err := target.WriteAt(op.Data, int64(op.Off))
			return err
		case blockrec.Discard:
			return target.Punch(int64(op.Off), int64(op.Len))
		case blockrec.Resize:
			if int64(op.Size) > size {
				size = int64(op.Size)
				return target.Truncate(size)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("volume: applying record %d: %w", r.Transid, err)
	}
	return size, nil
}

// Snapshot writes a crash-consistent copy of the volume into a new file
// at path, without stopping writes (see Volume.Snapshot): a sparse copy
// of the data image's blocks that hold data (for a thin volume, a clone
// where its file system shares blocks: FICLONE on XFS, btrfs), then the
// journal's records over it. On failure nothing is left at path.
func (d *Dir) Snapshot(ctx context.Context, path string) (transid uint64, size int64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, 0, err
	}
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	target, err := vfs.OpenBuffered(path)
	if err != nil {
		return 0, 0, err
	}
	defer target.Close()
	// A thick volume shares no blocks with its snapshots: a write to a
	// shared block would need space it may not get.
	share := d.Meta.Provisioned() == Thin
	transid, size, err = d.Volume.Snapshot(ctx, func(size int64) error {
		if share && vfs.Clone(target, d.data) == nil {
			return target.Truncate(size) // a resize may be under way
		}
		if err := target.Truncate(size); err != nil {
			return err
		}
		return vfs.CopySparse(target, d.data, share)
	}, target)
	if err != nil {
		return 0, 0, err
	}
	return transid, size, vfs.OS.SyncDir(filepath.Dir(path))
}
