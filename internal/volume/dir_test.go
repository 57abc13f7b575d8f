package volume

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestOpenDirRefusesBadInputAndOverwritesNothing(t *testing.T) {
	cases := []struct {
		name    string
		prepare func(dir string)
		opts    Options
		want    string
		is      error
	}{
		{"a new volume without a size", nil, Options{}, "needs a size", ErrNoSize},
		{"a size that is not a multiple of 4 KiB", nil, Options{Size: 1<<20 + 512}, "multiple of 4096", ErrAlignment},
		{"a journal below the minimum", nil, Options{Size: 1 << 30, JournalSize: 32 << 20}, "smaller than the minimum", nil},
		{"a corrupt metadata file", func(dir string) {
			os.WriteFile(filepath.Join(dir, MetaFile), []byte("{not json"), 0o600)
		}, Options{Size: 1 << 20}, "metadata file is corrupt", ErrCorruptMeta},
		{"metadata with an impossible size", func(dir string) {
			os.WriteFile(filepath.Join(dir, MetaFile), []byte(`{"version":1,"size":100,"journalSize":67108864}`), 0o600)
		}, Options{}, "metadata file is corrupt", ErrCorruptMeta},
		{"images without metadata", func(dir string) {
			os.WriteFile(filepath.Join(dir, DataFile), []byte("precious"), 0o600)
		}, Options{Size: 1 << 20}, "remove it to start over", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if c.prepare != nil {
				c.prepare(dir)
			}
			before := listing(t, dir)
			d, err := OpenDir(dir, c.opts)
			if err == nil {
				d.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
				t.Fatalf("error %q, want one saying %q", err, c.want)
			}
			if after := listing(t, dir); after != before {
				t.Fatalf("the directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// listing names the files of dir with their sizes and contents' lengths,
// ignoring the lock file, which opening may create.
func listing(t *testing.T, dir string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range entries {
		if e.Name() == LockFile {
			continue
		}
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		b.WriteString(e.Name() + "=" + string(data[:min(len(data), 16)]) + ";")
	}
	return b.String()
}

func TestOpenDirCreatesReopensAndLocks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol1")
	d, err := OpenDir(dir, Options{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if d.Meta.Name != "vol1" || d.Meta.JournalSize != MinJournalSize || d.Volume.Size() != 8<<20 {
		t.Fatalf("meta %+v", d.Meta)
	}
	if _, err := OpenDir(dir, Options{}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	if held, err := IsLocked(dir); err != nil || !held {
		t.Fatalf("locked while open: %v %v", held, err)
	}
	if _, err := d.Volume.WriteAt([]byte("hello"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if held, err := IsLocked(dir); err != nil || held {
		t.Fatalf("locked after close: %v %v", held, err)
	}
	if _, err := OpenDir(dir, Options{JournalSize: 128 << 20}); err == nil || !strings.Contains(err.Error(), "fixed at creation") {
		t.Fatalf("changing the journal size: %v", err)
	}
	if _, err := OpenDir(dir, Options{Size: 4 << 20}); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrinking: %v", err)
	}
	d, err = OpenDir(dir, Options{Size: 16 << 20}) // grows
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make([]byte, 5)
	if _, err := d.Volume.ReadAt(got, 4096); err != nil || string(got) != "hello" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if m, err := ReadMeta(dir); err != nil || m.Size != 16<<20 {
		t.Fatalf("metadata after growing: %+v, %v", m, err)
	}
}

func TestAFailedOpenLeavesNothingRunning(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDir(dir, Options{Size: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	before := runtime.NumGoroutine()
	if _, err := OpenDir(dir, Options{Size: 8<<20 + 1}); !errors.Is(err, ErrAlignment) {
		t.Fatalf("growing to an unaligned size: %v", err)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("%d goroutines before a failed open, %d after: the volume was left running", before, after)
	}
}
