// Package loop attaches files to loop devices through the kernel's ioctls
// and finds the devices attached to a given file.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const loopMajor = 7

// Attach attaches the file at path to a free loop device with direct I/O
// and a 4096-byte logical block size, and returns the device's path.
func Attach(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("loop: get a free device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		err = configure(dev, n, f, path)
		if errors.Is(err, unix.EBUSY) && attempt < 10 {
			continue // another process took it between the two calls
		}
		if err != nil {
			return "", err
		}
		return dev, nil
	}
}

func configure(dev string, n int, f *os.File, path string) error {
	if _, err := os.Stat(dev); errors.Is(err, os.ErrNotExist) {
		// A static /dev (as in some containers) lacks new nodes.
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(loopMajor, uint32(n)))); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("loop: mknod %s: %w", dev, err)
		}
	}
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	cfg := unix.LoopConfig{Fd: uint32(f.Fd()), Size: 4096}
	cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	copy(cfg.Info.File_name[:], path)
	if err := unix.IoctlLoopConfigure(int(d.Fd()), &cfg); err != nil {
		return fmt.Errorf("loop: configure %s on %s: %w", dev, path, err)
	}
	return nil
}

// Detach detaches the loop device. If something still holds it open, the
// kernel detaches it when that closes.
func Detach(dev string) error {
	err := ioctl(dev, unix.LOOP_CLR_FD)
	if errors.Is(err, unix.ENXIO) { // not attached: done already
		return nil
	}
	return err
}

// SetCapacity makes the loop device take the current size of its file.
func SetCapacity(dev string) error { return ioctl(dev, unix.LOOP_SET_CAPACITY) }

func ioctl(dev string, req uint) error {
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.IoctlSetInt(int(d.Fd()), req, 0); err != nil {
		return fmt.Errorf("loop: %s: ioctl %#x: %w", dev, req, err)
	}
	return nil
}

// Backing returns the loop devices whose backing file is path. The
// kernel names a backing file by where it is now: once the mount holding it
// is gone (a FUSE mount whose server died, unmounted lazily), sysfs names it
// relative to that mount's root. Such a device still counts when the sysfs
// name is a suffix of path and either the name given at attach
// (LOOP_GET_STATUS64; the kernel keeps its first 63 bytes) is path's, or the
// file is on a FUSE mount whose server is gone (the ioctl fails with
// ENOTCONN): a file of the same name that nobody can read or write any more.
func Backing(path string) ([]string, error) {
	entries, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var devs []string
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			continue // detached meanwhile
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(e)))
		if name == path || strings.HasSuffix(path, name) && attachedAs(dev, path) {
			devs = append(devs, dev)
		}
	}
	return devs, nil
}

// attachedAs says whether dev was attached naming path, or is attached to
// a file of a dead FUSE mount.
func attachedAs(dev, path string) bool {
	d, err := os.Open(dev)
	if err != nil {
		return false
	}
	defer d.Close()
	info, err := unix.IoctlLoopGetStatus64(int(d.Fd()))
	if err != nil {
		return errors.Is(err, unix.ENOTCONN)
	}
	given := unix.ByteSliceToString(info.File_name[:])
	want := path[:min(len(path), len(info.File_name)-1)]
	return given == want
}

// Size returns the loop device's size in bytes.
func Size(dev string) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "size"))
	if err != nil {
		return 0, err
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return sectors * 512, err
}
