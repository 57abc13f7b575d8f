// Package fuseloop is the frontend for kernels with FUSE and loop only: the
// volume is served as one file in a FUSE mount, and a loop device with
// direct I/O is attached to that file.
package fuseloop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/jvol-io/jvol/pkg/frontend"
	"github.com/jvol-io/jvol/pkg/loop"
)

// FuseLoop is a volume exposed as a loop device.
type FuseLoop struct {
	fuse   *fuseServer
	device string
}

var _ frontend.Frontend = (*FuseLoop)(nil)

// Open mounts a FUSE file system at mnt whose file name serves dev, and
// attaches a loop device to it. The caller must own mnt exclusively (hold
// the volume's lock): whatever is mounted or attached there was left by a
// process that died, and is cleared first.
func Open(mnt, name string, dev frontend.Device) (*FuseLoop, error) {
	file := filepath.Join(mnt, name)
	if err := clearLeftovers(mnt, file); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return nil, err
	}
	srv, err := mountFile(mnt, name, dev)
	if err != nil {
		return nil, err
	}
	fl := &FuseLoop{fuse: srv}
	if fl.device, err = loop.Attach(file); err != nil {
		srv.Unmount()
		return nil, err
	}
	return fl, nil
}

func (f *FuseLoop) Path() string { return f.device }

// Resized refreshes the size the kernel caches for the FUSE file (a stat
// does it), which LOOP_SET_CAPACITY then reads.
func (f *FuseLoop) Resized() error {
	if _, err := os.Stat(f.fuse.Path); err != nil {
		return err
	}
	return loop.SetCapacity(f.device)
}

// Close detaches the loop device and unmounts the FUSE file system.
func (f *FuseLoop) Close() error {
	return errors.Join(loop.Detach(f.device), f.fuse.Unmount())
}

// clearLeftovers undoes what a dead process left at mnt: file systems
// mounted from loop devices on file, those loop devices, and the FUSE mount
// (whose server is gone: "transport endpoint is not connected"). Loop
// devices and mounts of other files are not touched.
func clearLeftovers(mnt, file string) error {
	devs, err := loop.Backing(file)
	if err != nil {
		return err
	}
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for i := range mounts { // mountinfo escapes space, tab, newline, backslash
		mounts[i].MountPoint, mounts[i].Source = unescape(mounts[i].MountPoint), unescape(mounts[i].Source)
	}
	for _, dev := range devs {
		for _, m := range mounts {
			if m.Source == dev {
				klog.InfoS("Unmounting a leftover file system", "device", dev, "mountpoint", m.MountPoint)
				if err := unix.Unmount(m.MountPoint, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmount leftover %s: %w", m.MountPoint, err)
				}
			}
		}
		klog.InfoS("Detaching a leftover loop device", "device", dev, "file", file)
		if err := loop.Detach(dev); err != nil {
			return err
		}
	}
	for _, m := range mounts {
		if m.MountPoint == mnt && strings.HasPrefix(m.FsType, "fuse") {
			klog.InfoS("Unmounting a leftover FUSE mount", "mountpoint", mnt)
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount leftover %s: %w", mnt, err)
			}
		}
	}
	return nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
