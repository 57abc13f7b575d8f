package volume

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/loop"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
)

// A snapshot taken while writers write is one cut through them: for each
// writer, exactly its writes up to some point (each of its blocks holds
// the last of them there), at least every write acknowledged before the
// snapshot was asked for; and the copy is of the data image as it was,
// writes landing in it meanwhile. Each writer owns a region and writes
// one 4 KiB block at a time, its number and the write's sequence in it,
// so the cut can be read back from the snapshot alone.
func TestSnapshotUnderWritersIsACutThroughThem(t *testing.T) {
	const (
		writers = 4
		region  = 256 << 10 // per writer
		size    = writers * region
	)
	for round := range 8 {
		data, jf := images(t, size, 16<<20)
		v := openVolume(t, data, jf, size)
		ctx := context.Background()
		var (
			stop    atomic.Bool
			acked   [writers]atomic.Int64 // writes returned, per writer
			history [writers][]int64      // the block of each write, in order
			wg      sync.WaitGroup
			going   = make(chan struct{}) // closed once every writer has written
			started sync.WaitGroup
		)
		started.Add(writers)
		go func() { started.Wait(); close(going) }()
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				b := make([]byte, 4096)
				for seq := int64(1); !stop.Load(); seq++ {
					blk := (seq*7 + int64(w)*3 + seq*seq) % (region / 4096)
					binary.LittleEndian.PutUint64(b, uint64(w+1))
					binary.LittleEndian.PutUint64(b[8:], uint64(seq))
					history[w] = append(history[w], blk)
					if _, err := v.WriteAt(b, int64(w)*region+blk*4096); err != nil {
						t.Error(err)
						return
					}
					if seq%8 == 0 {
						if err := v.Flush(ctx); err != nil {
							t.Error(err)
							return
						}
					}
					acked[w].Store(seq)
					if seq == 20 {
						started.Done()
					}
				}
			}()
		}
		// Let the writers run, then snapshot while they go on.
		<-going
		var before [writers]int64
		for w := range before {
			before[w] = acked[w].Load()
		}
		snap := faultfs.New(0)
		copied := false
		_, _, err := v.Snapshot(ctx, func(n int64) error {
			copied = true
			snap.Truncate(n)
			b := make([]byte, 4096)
			for off := int64(0); off < n; off += 4096 { // a block at a time: writes interleave
				if _, err := data.ReadAt(b, off); err != nil {
					return err
				}
				if _, err := snap.WriteAt(b, off); err != nil {
					return err
				}
			}
			return nil
		}, snap)
		stop.Store(true)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		if !copied {
			t.Fatal("the copy was never made")
		}
		img := make([]byte, size)
		if _, err := snap.ReadAt(img, 0); err != nil {
			t.Fatal(err)
		}
		for w := range writers {
			// The writer's cut: the highest sequence the snapshot shows.
			cut := int64(0)
			for off := w * region; off < (w+1)*region; off += 4096 {
				if who := binary.LittleEndian.Uint64(img[off:]); who != 0 && who != uint64(w+1) {
					t.Fatalf("round %d: writer %d's block at %d holds writer %d's data", round, w, off, who)
				}
				cut = max(cut, int64(binary.LittleEndian.Uint64(img[off+8:])))
			}
			if cut < before[w] {
				t.Fatalf("round %d: writer %d had %d writes acknowledged before the snapshot; it shows %d", round, w, before[w], cut)
			}
			last := map[int64]int64{} // block -> the last sequence up to the cut
			for seq := int64(1); seq <= cut; seq++ {
				last[history[w][seq-1]] = seq
			}
			for blk := int64(0); blk < region/4096; blk++ {
				off := int64(w)*region + blk*4096
				if got := int64(binary.LittleEndian.Uint64(img[off+8:])); got != last[blk] {
					t.Fatalf("round %d: writer %d's block %d holds write %d; cut at %d, it should hold %d", round, w, blk, got, cut, last[blk])
				}
			}
		}
		v.Close()
	}
}

// A snapshot whose copy takes longer than the journal holds the writes
// made meanwhile fails, and says to try again; the volume goes on.
func TestSnapshotOverrunFailsCleanly(t *testing.T) {
	const size = 1 << 20
	data, jf := images(t, size, 2<<20)
	v := openVolume(t, data, jf, size)
	defer v.Close()
	ctx := context.Background()
	b := make([]byte, 64<<10)
	_, _, err := v.Snapshot(ctx, func(int64) error {
		// Writes fill the ring several times over while the copy runs.
		for i := range 200 {
			if _, err := v.WriteAt(b, int64(i%16)*int64(len(b))); err != nil {
				return err
			}
			if err := v.Flush(ctx); err != nil {
				return err
			}
		}
		return nil
	}, faultfs.New(size))
	if !errors.Is(err, ErrSnapshotOverrun) {
		t.Fatalf("snapshot over writes of 12 MiB through a 2 MiB journal: %v, want ErrSnapshotOverrun", err)
	}
	if _, err := v.WriteAt(b, 0); err != nil {
		t.Fatalf("writes after the failed snapshot: %v", err)
	}
}

// xfsDir mounts a fresh XFS (reflink on: the clone path) on a loop device
// on a sparse file, for the test; it skips without root or mkfs.xfs.
func xfsDir(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.xfs"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and mkfs.xfs")
	}
	img := filepath.Join(t.TempDir(), "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", "-s", "size=4096", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	dev, err := loop.Attach(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { loop.Detach(dev) })
	dir := t.TempDir()
	if err := unix.Mount(dev, dir, "xfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	return dir
}

// On real files, under a writer: the snapshot is a new file, sparse where
// the volume holds no data, equal to the volume at its point. A thin
// volume's is cloned on XFS (it takes no space); a thick volume's is a
// copy there too (it shares no block with the volume, whose writes would
// need space for them). A second snapshot at the same path is refused.
func TestDirSnapshotOfRealFiles(t *testing.T) {
	for _, c := range []struct {
		name string
		dir  func() string
		p    Provisioning
	}{
		{"tempdir", t.TempDir, Thick},
		{"tmpfs", func() string { return vfstest.SmallFS(t, 256<<20) }, Thick},
		{"xfs-thick", func() string { return xfsDir(t) }, Thick},
		{"xfs-thin", func() string { return xfsDir(t) }, Thin},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := c.dir()
			d, err := OpenDir(filepath.Join(base, "v"), Options{Size: 32 * mib, JournalSize: MinJournalSize, Provisioning: c.p})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			ctx := context.Background()
			b := bytes.Repeat([]byte{1}, 4*mib)
			if _, err := d.Volume.WriteAt(b, 8*mib); err != nil {
				t.Fatal(err)
			}
			stop, done, first := make(chan struct{}), make(chan error), make(chan struct{})
			go func() { // rewrites the first MiB with a counter until told
				p := make([]byte, mib)
				for i := 1; ; i++ {
					select {
					case <-stop:
						done <- nil
						return
					default:
					}
					binary.LittleEndian.PutUint64(p, uint64(i))
					if _, err := d.Volume.WriteAt(p, 0); err != nil {
						done <- err
						return
					}
					if i == 1 {
						close(first)
					}
				}
			}()
			select {
			case <-first:
			case err := <-done:
				t.Fatal(err)
			}
			if err := d.Volume.Commit(ctx); err != nil { // the 4 MiB in the data image, synced
				t.Fatal(err)
			}
			var before unix.Statfs_t
			if err := unix.Statfs(base, &before); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(base, "snap.img")
			transid, size, err := d.Snapshot(ctx, path)
			close(stop)
			if werr := <-done; werr != nil {
				t.Fatal(werr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if size != 32*mib || transid == 0 {
				t.Errorf("snapshot at %d of %d bytes", transid, size)
			}
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(img[8*mib:12*mib], b) || !allZero(img[12*mib:]) || !allZero(img[mib:8*mib]) {
				t.Error("the snapshot does not hold what was written before it")
			}
			if n := binary.LittleEndian.Uint64(img); n == 0 || !allZero(img[8:mib]) {
				t.Errorf("the first MiB holds no whole write of the counter (%d)", n)
			}
			if w, err := vfs.Written(path); err != nil || w > 6*mib {
				t.Errorf("the snapshot holds %d bytes of data (%v): it is not sparse", w, err)
			}
			if _, _, err := d.Snapshot(ctx, path); !errors.Is(err, os.ErrExist) {
				t.Errorf("a second snapshot over the first: %v", err)
			}
			if strings.HasPrefix(c.name, "xfs") {
				var after unix.Statfs_t
				if err := unix.Statfs(base, &after); err != nil {
					t.Fatal(err)
				}
				took := int64(before.Bfree-after.Bfree) * after.Bsize // the counter's MiB is the writer's either way
				if c.p == Thick && took < 4*mib || c.p == Thin && took >= 4*mib {
					t.Errorf("a %s volume's snapshot took %d bytes of the file system for 4 MiB shared or copied", c.p, took)
				}
			}
		})
	}
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

// A volume made from a snapshot holds what the snapshot does, at the size
// asked (at least the snapshot's), thick or thin; a smaller size is
// refused and leaves nothing.
func TestVolumeFromASnapshot(t *testing.T) {
	base := t.TempDir()
	d, err := OpenDir(filepath.Join(base, "v"), Options{Size: 16 * mib, JournalSize: MinJournalSize})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b := bytes.Repeat([]byte{7}, 3*mib)
	if _, err := d.Volume.WriteAt(b, 5*mib); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(base, "snap.img")
	if _, _, err := d.Snapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	// The source goes on: the copies do not follow.
	if _, err := d.Volume.WriteAt(bytes.Repeat([]byte{9}, mib), 5*mib); err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, c := range []struct {
		p    Provisioning
		size int64
	}{{Thick, 0}, {Thin, 24 * mib}} {
		r, err := OpenDir(filepath.Join(base, "from-"+string(c.p)), Options{From: snap, Size: c.size, JournalSize: MinJournalSize, Provisioning: c.p})
		if err != nil {
			t.Fatal(err)
		}
		want := max(c.size, 16*mib)
		got := make([]byte, want)
		if _, err := r.Volume.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if r.Volume.Size() != want || !bytes.Equal(got[5*mib:8*mib], b) || !allZero(got[:5*mib]) || !allZero(got[8*mib:]) {
			t.Errorf("%s volume from the snapshot: %d bytes, not the snapshot's data", c.p, r.Volume.Size())
		}
		if a := holds(t, r); c.p == Thick && a < want || c.p == Thin && a > 4*mib {
			t.Errorf("%s volume from the snapshot holds %d bytes", c.p, a)
		}
		r.Close()
	}
	if _, err := OpenDir(filepath.Join(base, "small"), Options{From: snap, Size: 8 * mib}); !errors.Is(err, ErrShrink) {
		t.Errorf("a volume smaller than its snapshot: %v", err)
	}
	if _, err := os.Stat(filepath.Join(base, "small")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused volume left %v", err)
	}
}
