package loop

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs/vfstest"
)

// A loop device stays found by its file's path after the mount holding the
// file is gone (lazily unmounted, as a dead FUSE mount is), when the kernel
// names the file relative to that mount's root instead. Restore relies on
// this to detach what a killed node plugin left.
func TestBackingFindsADeviceWhoseMountIsGone(t *testing.T) {
	mnt := vfstest.SmallFS(t, 8<<20)
	// A long path, as a volume's is: more than the 63 bytes the kernel keeps.
	dir := filepath.Join(mnt, "volumes", "pvc-2dc6a647-5cab-4839-a3b5-bd592f7f1910", "fuse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "pvc-2dc6a647-5cab-4839-a3b5-bd592f7f1910")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dev, err := Attach(file)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Detach(dev) })
	if devs, err := Backing(file); err != nil || !slices.Equal(devs, []string{dev}) {
		t.Fatalf("Backing(%s) = %v, %v; want [%s]", file, devs, err, dev)
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if devs, err := Backing(file); err != nil || !slices.Equal(devs, []string{dev}) {
		t.Fatalf("after the mount is gone, Backing(%s) = %v, %v; want [%s]", file, devs, err, dev)
	}
	// Another file whose path ends the same way is not it.
	other := "/elsewhere/volumes/pvc-2dc6a647-5cab-4839-a3b5-bd592f7f1910/fuse/pvc-2dc6a647-5cab-4839-a3b5-bd592f7f1910"
	if devs, err := Backing(other); err != nil || len(devs) != 0 {
		t.Fatalf("Backing of another path = %v, %v", devs, err)
	}
}
