package attach

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/loop"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// requireRoot skips where loop devices and mounts cannot be made. CI runs
// as root, so these tests run there.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices, FUSE and mounts")
	}
}

func attachNew(t *testing.T, dir string, o Options) *Attachment {
	t.Helper()
	o.Dir = dir
	a, err := Attach(o)
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() {
		if a.fe != nil {
			a.Detach()
		}
	})
	return a
}

// openDevice opens the loop device for direct I/O, so that every read and
// write goes through the device to the volume.
func openDevice(t *testing.T, dev string) *os.File {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func discard(t *testing.T, f *os.File, off, n int64) {
	t.Helper()
	r := [2]uint64{uint64(off), uint64(n)}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r))); e != 0 {
		t.Fatalf("BLKDISCARD: %v", e)
	}
}

// TestBlockDeviceMatchesAModel sends random reads, writes, discards and
// flushes of random sizes and offsets through the real loop device and
// compares with an in-memory model, with a journal small enough and a
// commit interval short enough that the committer applies concurrently
// and the ring wraps several times, and reads that take blocks not yet
// applied (from the FIFO) and applied ones (from the data image) at once.
func TestBlockDeviceMatchesAModel(t *testing.T) {
	requireRoot(t)
	const size = 64 << 20
	a := attachNew(t, t.TempDir(), Options{Volume: volume.Options{
		Size: size, JournalSize: volume.MinJournalSize, FIFOSize: 4 << 20, CommitInterval: 50 * time.Millisecond,
	}})
	f := openDevice(t, a.Device)
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(5, 6))
	buf := vfs.AlignedBuffer(2 << 20)
	for i := range 1500 {
		off := rng.Int64N(size/4096) * 4096
		n := min((1+rng.Int64N(512))*4096, size-off)
		switch op := rng.IntN(10); {
		case op < 5:
			p := buf[:n]
			for k := range p {
				p[k] = byte(i*13 + k>>9)
			}
			if _, err := f.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		case op < 8:
			p := buf[:n]
			if _, err := f.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, model[off:off+n]) {
				t.Fatalf("op %d: read [%d,%d) differs from the model", i, off, off+n)
			}
		case op < 9:
			discard(t, f, off, n)
			clear(model[off : off+n])
		default:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if s := a.dir.Volume.Stats(); s.Commits < 3 || s.Journal.Head < 3*s.Journal.RingSize {
		t.Fatalf("commits %d, journal head %d of a %d ring: areas did not swap or the ring did not wrap several times", s.Commits, s.Journal.Head, s.Journal.RingSize)
	} else if s.MixedReads == 0 {
		t.Fatalf("of %d reads that took blocks not yet applied from the FIFO, none took others from the data image too", s.PendingReads)
	}
	// And after a detach and attach, from the data image.
	f.Close()
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	b := attachNew(t, a.dir.Path, Options{})
	g := openDevice(t, b.Device)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := g.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, model[off:off+int64(len(buf))]) {
			t.Fatalf("after reattach: [%d,%d) differs from the model", off, off+int64(len(buf)))
		}
	}
}

func TestDetachLeavesNoLoopDeviceOrMount(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	a := attachNew(t, dir, Options{Volume: volume.Options{Size: 16 << 20}})
	file := filepath.Join(volume.Layout(a.dir.Path).Fuse(), filepath.Base(a.dir.Path)) // as the kernel names it
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	if devs, err := loop.Backing(file); err != nil || len(devs) != 0 {
		t.Fatalf("loop devices left: %v %v", devs, err)
	}
	if mounted(t, volume.Layout(dir).Fuse()) {
		t.Fatal("FUSE mount left")
	}
}

func TestGrowReachesTheLoopDevice(t *testing.T) {
	requireRoot(t)
	a := attachNew(t, t.TempDir(), Options{Volume: volume.Options{Size: 16 << 20}})
	if err := a.Grow(context.Background(), 48<<20); err != nil {
		t.Fatal(err)
	}
	if n, err := loop.Size(a.Device); err != nil || n != 48<<20 {
		t.Fatalf("loop device size %d, %v; want 48 MiB", n, err)
	}
	if m, err := volume.ReadMeta(a.dir.Path); err != nil || m.Size != 48<<20 {
		t.Fatalf("metadata size %d, %v", m.Size, err)
	}
}

func TestASecondAttachOfTheSameDirIsRefused(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	attachNew(t, dir, Options{Volume: volume.Options{Size: 16 << 20}})
	if _, err := Attach(Options{Dir: dir}); err == nil {
		t.Fatal("a second attach of an attached directory succeeded")
	}
}

func mounted(t *testing.T, path string) bool {
	t.Helper()
	m, err := mountinfo.Mounted(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
