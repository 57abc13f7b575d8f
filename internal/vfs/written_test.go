package vfs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
)

// Written counts written blocks only: not holes, not blocks allocated
// and never written, not blocks zeroed in place.
func TestWrittenCountsDataNotAllocation(t *testing.T) {
	for name, dir := range map[string]string{"tempdir": t.TempDir(), "tmpfs": vfstest.SmallFS(t, 64<<20)} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, "img")
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := vfs.OpenDirect(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			const size, mib = 16 << 20, 1 << 20
			written := func(want int64, when string) {
				t.Helper()
				if n, err := vfs.Written(path); err != nil || n != want {
					t.Errorf("%s: %d bytes written (%v), want %d", when, n, err, want)
				}
			}
			if err := f.Truncate(size); err != nil {
				t.Fatal(err)
			}
			if err := f.Allocate(0, size); err != nil {
				t.Fatal(err)
			}
			written(0, "allocated")
			if _, err := f.WriteAt(vfs.AlignedBuffer(2*mib), 4*mib); err != nil {
				t.Fatal(err)
			}
			written(2*mib, "2 MiB written")
			if err := f.Zero(4*mib, mib); err != nil {
				t.Fatal(err)
			}
			if name == "tempdir" { // tmpfs zeroes by writing zeros
				written(mib, "1 MiB of them zeroed")
			}
			if err := f.Punch(0, size); err != nil {
				t.Fatal(err)
			}
			written(0, "punched")
		})
	}
}

// A copy through memory (no block sharing) writes only the source's blocks
// that are not all zeros, and a short last block whole: the copy holds
// the same bytes, as sparse as the data in them.
func TestCopySparseSkipsZeroBlocks(t *testing.T) {
	dir := t.TempDir()
	const size, blk = 4<<20 + 512, vfs.BlockSize
	src := filepath.Join(dir, "src")
	b := make([]byte, size)
	b[blk] = 1                                          // block 1
	b[3*blk+blk-1] = 2                                  // block 3, its last byte
	b[size-1] = 3                                       // the short last block
	if err := os.WriteFile(src, b, 0o600); err != nil { // zeros written, not holes
		t.Fatal(err)
	}
	if n, err := vfs.Written(src); err != nil || n < size-512 {
		t.Fatalf("the source holds %d bytes of data (%v): its zeros are not written", n, err)
	}
	s, err := vfs.OpenBuffered(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dst := filepath.Join(dir, "dst")
	if err := os.WriteFile(dst, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := vfs.OpenBuffered(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := vfs.CopySparse(d, s, false); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, b) {
		t.Error("the copy differs from its source")
	}
	if n, err := vfs.Written(dst); err != nil || n > 3*blk {
		t.Errorf("the copy holds %d bytes of data (%v), want 3 blocks at most", n, err)
	}
}
