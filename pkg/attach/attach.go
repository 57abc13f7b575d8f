// Package attach makes a volume directory a usable block device on this
// machine: it opens (and recovers) the volume, serves it through a FUSE file,
// attaches a loop device to that file, and optionally makes and mounts a
// file system on it. It finds and clears its own leftovers from a process
// that died, and never touches loop devices or mounts that are not its own.
package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	"k8s.io/utils/exec"

	"github.com/jvol-io/jvol/pkg/frontend/fusefile"
	"github.com/jvol-io/jvol/pkg/loop"
	"github.com/jvol-io/jvol/pkg/volume"
)

// FuseDir is where, inside the volume directory, the FUSE file system is
// mounted; the served file is named after the volume.
const FuseDir = "fuse"

// Options for Attach.
type Options struct {
	Dir    string
	Volume volume.Options
	// FS, if set (ext4 or xfs), is made on the device unless it holds one,
	// and mounted at Mount.
	FS    string
	Mount string
}

// Attachment is an attached volume.
type Attachment struct {
	*volume.Dir
	Device    string
	MountPath string
	fuse      *fusefile.Server
}

// Attach attaches the volume in o.Dir, creating it if needed.
func Attach(ctx context.Context, o Options) (*Attachment, error) {
	if (o.FS == "") != (o.Mount == "") {
		return nil, errors.New("attach: a file system and a mount point go together")
	}
	if o.FS != "" && o.FS != "ext4" && o.FS != "xfs" {
		return nil, fmt.Errorf("attach: file system %q: want ext4 or xfs", o.FS)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	d, err := volume.OpenDir(dir, o.Volume)
	if err != nil {
		return nil, err
	}
	a := &Attachment{Dir: d}
	if err := a.attach(o); err != nil {
		a.Detach()
		return nil, err
	}
	return a, nil
}

func (a *Attachment) attach(o Options) error {
	mnt := filepath.Join(a.Path, FuseDir)
	file := filepath.Join(mnt, a.Meta.Name)
	// We hold the directory's lock, so whatever is mounted or attached at
	// our paths was left by a process that died.
	if err := clearLeftovers(mnt, file); err != nil {
		return err
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return err
	}
	srv, err := fusefile.Mount(mnt, a.Meta.Name, a.Volume)
	if err != nil {
		return err
	}
	a.fuse = srv
	if a.Device, err = loop.Attach(file); err != nil {
		return err
	}
	klog.InfoS("Attached volume", "dir", a.Path, "device", a.Device, "size", a.Size())
	if o.FS == "" {
		return nil
	}
	if err := os.MkdirAll(o.Mount, 0o755); err != nil {
		return err
	}
	m := mount.NewSafeFormatAndMount(mount.New(""), exec.New())
	if err := m.FormatAndMount(a.Device, o.Mount, o.FS, nil); err != nil {
		return fmt.Errorf("attach: %s on %s at %s: %w", o.FS, a.Device, o.Mount, err)
	}
	a.MountPath = o.Mount
	return nil
}

// clearLeftovers undoes what a dead attach of the same volume left: file
// systems mounted from its loop devices, the loop devices, and its FUSE
// mount (whose server is gone: "transport endpoint is not connected").
func clearLeftovers(mnt, file string) error {
	devs, err := loop.Backing(file)
	if err != nil {
		return err
	}
	mounts, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, dev := range devs {
		for _, m := range mounts {
			if m.Source == dev {
				klog.InfoS("Unmounting a leftover file system", "device", dev, "mountpoint", m.MountPoint)
				if err := unix.Unmount(m.MountPoint, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("attach: unmount leftover %s: %w", m.MountPoint, err)
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
				return fmt.Errorf("attach: unmount leftover %s: %w", mnt, err)
			}
		}
	}
	return nil
}

// Grow grows the volume and the loop device online; a mounted file system
// is the caller's to grow.
func (a *Attachment) Grow(ctx context.Context, size int64) error {
	if err := a.Dir.Grow(ctx, size); err != nil {
		return err
	}
	// A stat refreshes the size the kernel caches for the FUSE file, which
	// LOOP_SET_CAPACITY reads.
	if _, err := os.Stat(a.fuse.Path); err != nil {
		return err
	}
	return loop.SetCapacity(a.Device)
}

// Detach unmounts the file system (if Attach mounted one), flushes, frees
// the loop device, unmounts the FUSE file system and closes the volume
// (a final commit). It undoes whatever part of Attach happened.
func (a *Attachment) Detach() error {
	var errs []error
	if a.MountPath != "" {
		if err := mount.New("").Unmount(a.MountPath); err != nil {
			errs = append(errs, err)
		}
	}
	if a.Device != "" {
		if err := a.Flush(context.Background()); err != nil {
			errs = append(errs, err)
		}
		if err := loop.Detach(a.Device); err != nil {
			errs = append(errs, err)
		}
	}
	if a.fuse != nil {
		if err := a.fuse.Unmount(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := a.Dir.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
