package vfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs/vfstest"
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
	if !IsAligned(buf) || len(buf) != BlockSize || IsAligned(AlignedBuffer(2 * BlockSize)[1:BlockSize+1]) {
		t.Fatal("alignment")
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

// Regression: a journal image that did not fit used to become a sparse file
// holding every block it had got, leaving the disk full and the journal
// not preallocated.
func TestPreallocateOnAFullDiskLeavesNothing(t *testing.T) {
	dir := vfstest.SmallFS(t, 4<<20)
	path := filepath.Join(dir, "journal.img")
	err := Preallocate(path, 64<<20)
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("got %v, want ENOSPC", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("file left behind: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bfree != st.Blocks {
		t.Errorf("%d of %d blocks still used", st.Blocks-st.Bfree, st.Blocks)
	}
}

func TestOSLocksExcludeAndCanBeTestedWithoutBeingTaken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	if held, err := IsLocked(path); err != nil || held {
		t.Fatalf("a missing lock file: held %v, %v", held, err)
	}
	sh, err := OS.Lock(path, true, false)
	if err != nil {
		t.Fatal(err)
	}
	sh2, err := OS.Lock(path, true, true)
	if err != nil {
		t.Fatalf("a second shared lock: %v", err)
	}
	if _, err := OS.Lock(path, false, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("exclusive beside shared: %v, want ErrLocked", err)
	}
	for range 2 { // testing does not take it
		if held, err := IsLocked(path); err != nil || !held {
			t.Fatalf("held %v, %v", held, err)
		}
	}
	sh.Unlock()
	sh2.Unlock()
	if held, err := IsLocked(path); err != nil || held {
		t.Fatalf("after unlocking: held %v, %v", held, err)
	}
	ex, err := OS.Lock(path, false, false)
	if err != nil {
		t.Fatal(err)
	}
	ex.Unlock()
}

func TestWriteFileAtomicReplacesWholeAndLeavesNoTemporary(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "f.json")
	for _, s := range []string{"first, longer", "second"} {
		if err := WriteFileAtomic(OS, name, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if b, err := ReadFile(OS, name); err != nil || string(b) != s {
			t.Fatalf("read %q, %v; want %q", b, err, s)
		}
	}
	if names, err := OS.List(dir); err != nil || len(names) != 1 {
		t.Fatalf("directory holds %v, %v", names, err)
	}
}

// TestVectoredAndCachedWritesReachTheDirectFile: WriteVAt lays its
// buffers one after another; what the cached twin writes, the direct
// handle reads once synced, and DropCache leaves it there.
func TestVectoredAndCachedWritesReachTheDirectFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := Preallocate(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	f, err := OpenDirect(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Direct() {
		t.Skip("the temporary directory's file system takes no direct I/O")
	}
	bufs := [][]byte{AlignedBuffer(BlockSize), AlignedBuffer(2 * BlockSize), AlignedBuffer(BlockSize)}
	for i, b := range bufs {
		for k := range b {
			b[k] = byte(i + 1)
		}
	}
	if err := WriteVAt(f, bufs, 4*BlockSize); err != nil {
		t.Fatal(err)
	}
	c, err := f.Cached()
	if err != nil || c == nil || c.Direct() {
		t.Fatalf("cached twin %v, %v", c, err)
	}
	defer c.Close()
	if _, err := c.WriteAt([]byte("cached"), 5*BlockSize+100); err != nil { // unaligned: no direct I/O
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := c.DropCache(); err != nil {
		t.Fatal(err)
	}
	got := AlignedBuffer(4 * BlockSize)
	if _, err := f.ReadAt(got, 4*BlockSize); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, bufs[0]...), bufs[1]...), bufs[2]...)
	copy(want[BlockSize+100:], "cached")
	if string(got) != string(want) {
		t.Fatal("the direct handle reads other than what was written through both")
	}
}
