package vfs_test

import (
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
