package vfs

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPreallocateRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := Preallocate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Size() != 1<<20 {
		t.Fatalf("size %v, %v", st, err)
	}
	if err := Preallocate(path, 2<<20); err == nil {
		t.Fatal("an existing image was overwritten")
	}
}

func TestDirectFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := Preallocate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	f, err := OpenDirect(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := AlignedBuffer(BlockSize)
	if uintptrOf(buf)%BlockSize != 0 || len(buf) != BlockSize {
		t.Fatal("buffer not aligned")
	}
	copy(buf, "jvol")
	if _, err := f.WriteAt(buf, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	got := AlignedBuffer(BlockSize)
	if _, err := f.ReadAt(got, 8192); err != nil || string(got[:4]) != "jvol" {
		t.Fatalf("read back %q, %v", got[:4], err)
	}
}
