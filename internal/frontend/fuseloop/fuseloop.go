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

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/loop"
)

// FuseLoop is a volume exposed as a loop device.
type FuseLoop struct {
	srv       *fuse.Server
	mnt, file string
	device    string
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
	fl := &FuseLoop{srv: srv, mnt: mnt, file: file}
	if fl.device, err = loop.Attach(file); err != nil {
		fl.unmount()
		return nil, err
	}
	return fl, nil
}

func (f *FuseLoop) Path() string { return f.device }

// Resized refreshes the size the kernel caches for the FUSE file (a stat
// does it), which LOOP_SET_CAPACITY then reads.
func (f *FuseLoop) Resized() error {
	if _, err := os.Stat(f.file); err != nil {
		return err
	}
	return loop.SetCapacity(f.device)
}

// Close detaches the loop device and unmounts the FUSE file system.
func (f *FuseLoop) Close() error {
	return errors.Join(loop.Detach(f.device), f.unmount())
}

// unmount unmounts the FUSE file system and waits until it is no longer
// served.
func (f *FuseLoop) unmount() error {
	if err := f.srv.Unmount(); err != nil {
		return fmt.Errorf("fuse unmount %s: %w", f.mnt, err)
	}
	f.srv.Wait()
	return nil
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
	mounts, err := mountinfo.GetMounts(nil) // paths unescaped
	if err != nil {
		return err
	}
	for _, dev := range devs {
		for _, m := range mounts {
			if m.Source == dev {
				klog.InfoS("Unmounting a leftover file system", "device", dev, "mountpoint", m.Mountpoint)
				if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmount leftover %s: %w", m.Mountpoint, err)
				}
			}
		}
		klog.InfoS("Detaching a leftover loop device", "device", dev, "file", file)
		if err := loop.Detach(dev); err != nil {
			return err
		}
	}
	for _, m := range mounts {
		if m.Mountpoint == mnt && strings.HasPrefix(m.FSType, "fuse") {
			klog.InfoS("Unmounting a leftover FUSE mount", "mountpoint", mnt)
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				return fmt.Errorf("unmount leftover %s: %w", mnt, err)
			}
		}
	}
	return nil
}

// Opener is Open as a frontend.Opener.
func Opener(mnt, name string, dev frontend.Device) (frontend.Frontend, error) {
	fl, err := Open(mnt, name, dev)
	if err != nil {
		return nil, err
	}
	return fl, nil
}
