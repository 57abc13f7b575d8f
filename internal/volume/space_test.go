package volume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
)

const mib = 1 << 20

func holds(t *testing.T, d *Dir) int64 {
	t.Helper()
	n, err := d.data.Allocated()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// crash closes d as a process that died would: no commit; what the
// journal holds after its checkpoint replays at the next open.
func crash(d *Dir) {
	close(d.Volume.quit)
	<-d.Volume.done
	d.Volume.j.Close()
	d.release()
}

// A thick volume that its file system cannot hold is refused, and leaves
// nothing behind: no directory, no images, no space taken.
func TestThickCreateRefusedWhenTheSpaceIsNotThere(t *testing.T) {
	fs := vfstest.SmallFS(t, 100*mib)
	path := filepath.Join(fs, "v")
	_, err := OpenDir(path, Options{Size: 256 * mib, JournalSize: MinJournalSize})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("a 256 MiB thick volume on a 100 MiB file system: %v, want ENOSPC", err)
	}
	if ents, _ := os.ReadDir(fs); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bfree != st.Blocks {
		t.Errorf("%d of %d blocks still taken", st.Blocks-st.Bfree, st.Blocks)
	}
	// Thin, it is made: its data image is sparse.
	d, err := OpenDir(path, Options{Size: 256 * mib, JournalSize: MinJournalSize, Provisioning: Thin})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if s := d.Volume.Stats().Space; s.Provisioning != Thin || s.Allocated != 0 {
		t.Errorf("thin volume: %+v", s)
	}
}

// A thick volume holds its whole data image from the start and after a
// grow; a discard zeroes, keeping the blocks, also when replayed.
func TestThickVolumeOwnsItsSpace(t *testing.T) {
	for _, fs := range []struct{ name, dir string }{
		{"tmpfs", vfstest.SmallFS(t, 512*mib)}, // no zero range: zeros are written
		{"tempdir", t.TempDir()},
	} {
		t.Run(fs.name, func(t *testing.T) {
			path := filepath.Join(fs.dir, "v")
			d, err := OpenDir(path, Options{Size: 32 * mib, JournalSize: MinJournalSize, CommitInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer func() { d.Close() }()
			if s := d.Volume.Stats().Space; s.Provisioning != Thick || s.Allocated < 32*mib {
				t.Fatalf("new thick volume: %+v", s)
			}
			if err := d.Grow(context.Background(), 48*mib); err != nil {
				t.Fatal(err)
			}
			if a := holds(t, d); a < 48*mib {
				t.Errorf("grown to 48 MiB, it holds %d bytes", a)
			}
			data := bytes.Repeat([]byte{0xa5}, 4*mib)
			if _, err := d.Volume.WriteAt(data, 40*mib); err != nil {
				t.Fatal(err)
			}
			before := holds(t, d)
			if err := d.Volume.Discard(41*mib, 2*mib); err != nil {
				t.Fatal(err)
			}
			if a := holds(t, d); a < before { // may grow: an extent tree block
				t.Errorf("a discard freed blocks of a thick volume: %d to %d bytes", before, a)
			}
			if err := d.Volume.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			want := append(append(bytes.Repeat([]byte{0xa5}, mib), make([]byte, 2*mib)...), bytes.Repeat([]byte{0xa5}, mib)...)
			check := func(when string) {
				got := make([]byte, 4*mib)
				if _, err := d.Volume.ReadAt(got, 40*mib); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s: the discarded range does not read as zeros between the written data", when)
				}
			}
			check("after the discard")
			// Reopened without a commit: the records replay.
			crash(d)
			if d, err = OpenDir(path, Options{}); err != nil {
				t.Fatal(err)
			}
			check("after replay")
			if a := holds(t, d); a < 48*mib {
				t.Errorf("after replay, it holds %d bytes", a)
			}
			d2, err := OpenDir(path+"-2", Options{Size: 32 * mib, Provisioning: Thin})
			if err != nil {
				t.Fatal(err)
			}
			d2.Close()
			d2, err = OpenDir(path+"-2", Options{Provisioning: Thick})
			if err == nil {
				d2.Close()
				t.Error("a thin volume opened as thick")
			}
		})
	}
}

// A thin volume on a file system that fills up refuses the write that
// needs space it cannot get, before acknowledging it; once space is
// freed it goes on, and every write acknowledged before is intact, also
// after a crash.
func TestThinVolumeRefusesWritesItCannotStore(t *testing.T) {
	fs := vfstest.SmallFS(t, 120*mib)
	filler := filepath.Join(fs, "filler")
	if err := os.WriteFile(filler, make([]byte, 16*mib), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(fs, "v")
	const size = 64 * mib
	d, err := OpenDir(path, Options{Size: size, JournalSize: MinJournalSize, Provisioning: Thin, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	acked := map[int64]byte{} // 1 MiB blocks written and flushed
	block := func(i int64) []byte { return bytes.Repeat([]byte{byte(i + 1)}, mib) }
	// writeUntilFull writes 1 MiB blocks from the first not yet written
	// until one fails, and returns that one.
	writeUntilFull := func() int64 {
		for i := int64(len(acked)); i < size/mib; i++ {
			if _, err := d.Volume.WriteAt(block(i), i*mib); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("write of block %d: %v, want ENOSPC", i, err)
				}
				return i
			}
			if err := d.Volume.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			acked[i] = byte(i + 1)
		}
		t.Fatal("the volume took more than its file system has")
		return 0
	}
	if _, err := d.Volume.WriteAt(block(0), 0); err != nil {
		t.Fatal(err)
	}
	if a := holds(t, d); a != AllocStep {
		t.Errorf("after a first write of 1 MiB the image holds %d bytes, want one step of %d", a, AllocStep)
	}
	full := writeUntilFull()
	if full*mib < 24*mib {
		t.Errorf("the first write refused was at %d MiB, with about 40 MiB free", full)
	}
	s := d.Volume.Stats().Space
	if !s.Low || s.Errors == 0 {
		t.Errorf("full: %+v, want low and errors counted", s)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if again := writeUntilFull(); again <= full {
		t.Errorf("with 16 MiB freed, the write at %d MiB still failed", again)
	}
	check := func(when string) {
		got := make([]byte, mib)
		for i, b := range acked {
			if _, err := d.Volume.ReadAt(got, i*mib); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, bytes.Repeat([]byte{b}, mib)) {
				t.Errorf("%s: block %d lost its acknowledged write", when, i)
			}
		}
	}
	check("served")
	crash(d)
	if d, err = OpenDir(path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	check("after a crash")
}

// A thick volume's discard of a range that is not block-aligned zeroes
// exactly that range, and keeps the blocks; one that lost blocks (a crash
// in a grow) gets them back when it is opened.
func TestThickVolumeZeroesPartialBlocksAndReallocatesAtOpen(t *testing.T) {
	path := filepath.Join(vfstest.SmallFS(t, 256*mib), "v")
	d, err := OpenDir(path, Options{Size: 16 * mib, JournalSize: MinJournalSize})
	if err != nil {
		t.Fatal(err)
	}
	ones := bytes.Repeat([]byte{1}, 64<<10)
	if _, err := d.Volume.WriteAt(ones, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Volume.Discard(1000, 10000); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(ones))
	if _, err := d.Volume.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(ones)
	clear(want[1000:11000])
	if !bytes.Equal(got, want) {
		t.Error("an unaligned discard did not zero exactly its range")
	}
	d.Close()
	// Blocks lost: punched behind the volume's back.
	f, err := vfs.OpenDirect(Layout(path).Data())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Punch(8*mib, 4*mib); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if d, err = OpenDir(path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if a := holds(t, d); a < 16*mib {
		t.Errorf("reopened, the thick volume holds %d of its 16 MiB", a)
	}
}

// A crash leaves a thin volume's records to replay on a disk that has
// filled since: a write whose blocks are still there replays although its
// step cannot be allocated whole (as in a volume an older jvol made,
// sparse inside the step).
func TestThinReplayOnAFullDisk(t *testing.T) {
	fs := vfstest.SmallFS(t, 96*mib)
	path := filepath.Join(fs, "v")
	d, err := OpenDir(path, Options{Size: 16 * mib, JournalSize: MinJournalSize, Provisioning: Thin, CommitInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{3}, 4096)
	if _, err := d.Volume.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Volume.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	crash(d)
	// The step around the write is a hole again, and the disk is full.
	f, err := vfs.OpenDirect(Layout(path).Data())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Punch(4096, AllocStep-4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fs, "filler"), make([]byte, int64(st.Bavail)*st.Bsize), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err = OpenDir(path, Options{}); err != nil {
		t.Fatalf("replay on a full disk of a write whose blocks are there: %v", err)
	}
	defer d.Close()
	got := make([]byte, 4096)
	if _, err := d.Volume.ReadAt(got, 0); err != nil || !bytes.Equal(got, p) {
		t.Errorf("the replayed write: %v", err)
	}
}
