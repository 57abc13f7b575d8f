package fsmount

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/loop"
)

func TestParseExtSize(t *testing.T) {
	out := []byte("dumpe2fs 1.47.0 (5-Feb-2023)\nFilesystem volume name:   <none>\nBlock count:              4096\nReserved block count:     204\nBlock size:               4096\n")
	if size, bs, err := ParseExtSize(out); err != nil || size != 16<<20 || bs != 4096 {
		t.Errorf("got %d, %d, %v", size, bs, err)
	}
	for _, bad := range []string{"", "Block count: 10\n", "Block size: 4096\n", "Block count: x\nBlock size: 4096\n", "Block count: 10\nBlock size: 0\n", "Block count: 9223372036854775807\nBlock size: 4096\n"} {
		if _, _, err := ParseExtSize([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func FuzzParseExtSize(f *testing.F) {
	f.Add([]byte("Block count: 4096\nBlock size: 4096\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		size, bs, err := ParseExtSize(b)
		if err == nil && (bs <= 0 || size < 0 || size%bs != 0) {
			t.Errorf("%d, %d from %q", size, bs, b)
		}
	})
}

// An ext4 of 16 MiB on a 32 MiB device is mounted at 32 MiB, and one that
// fills its device as it is.
func TestAnExtSmallerThanItsDeviceIsGrownBeforeItIsMounted(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	for _, fsSize := range []string{"16M", "32M"} {
		t.Run(fsSize, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, 32<<20); err != nil {
				t.Fatal(err)
			}
			// 4 KiB blocks: the loop device's logical blocks are 4 KiB.
			if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096", img, fsSize).CombinedOutput(); err != nil {
				t.Fatalf("mkfs.ext4: %v: %s", err, out)
			}
			dev, err := loop.Attach(img)
			if err != nil {
				t.Fatal(err)
			}
			defer loop.Detach(dev)
			mnt := t.TempDir()
			if err := New().FormatAndMount(dev, mnt, "ext4", nil); err != nil {
				t.Fatal(err)
			}
			defer unix.Unmount(mnt, 0)
			var st unix.Statfs_t
			if err := unix.Statfs(mnt, &st); err != nil {
				t.Fatal(err)
			}
			// statfs counts the blocks left after the file system's own.
			if size := st.Blocks * uint64(st.Bsize); size < 24<<20 || size > 32<<20 {
				t.Errorf("mounted with %d bytes, want about 32 MiB", size)
			}
		})
	}
}

// An XFS file system smaller than its device is grown when it is mounted,
// and a copy of it (a clone) mounts beside it.
func TestAnXFSIsGrownAndItsCopyMountsBesideIt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	dir := t.TempDir()
	img, clone := filepath.Join(dir, "img"), filepath.Join(dir, "clone")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	// 4 KiB sectors: the loop device's logical blocks are 4 KiB.
	if out, err := exec.Command("mkfs.xfs", "-q", "-f", "-s", "size=4096", "-d", "size=300m", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v: %s", err, out)
	}
	if out, err := exec.Command("cp", "--sparse=always", img, clone).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if err := os.Truncate(clone, 400<<20); err != nil {
		t.Fatal(err)
	}
	var sizes []uint64
	for _, f := range []string{img, clone} {
		dev, err := loop.Attach(f)
		if err != nil {
			t.Fatal(err)
		}
		defer loop.Detach(dev)
		mnt := t.TempDir()
		if err := New().FormatAndMount(dev, mnt, "xfs", nil); err != nil {
			t.Fatalf("mount %s: %v", filepath.Base(f), err)
		}
		defer unix.Unmount(mnt, 0)
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, st.Blocks*uint64(st.Bsize))
	}
	if sizes[0] > 300<<20 || sizes[1] < 320<<20 {
		t.Errorf("mounted with %d and %d bytes, want under 300 MiB, then over 320 (grown to 400)", sizes[0], sizes[1])
	}
}
