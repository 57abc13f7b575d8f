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

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/frontend/fuseconn"
	"github.com/jvol-io/jvol/internal/loop"
)

// FuseLoop is a volume exposed as a loop device.
type FuseLoop struct {
	srv       server
	mnt, file string
	device    string
}

// server is what serves the FUSE file: jvol's own (fuseconn), or go-fuse.
type server interface {
	Unmount() error
	Wait()
}

var _ frontend.Frontend = (*FuseLoop)(nil)

// Options for Open.
type Options struct {
	// Conn is an open /dev/fuse to serve (a copy kept by another process
	// keeps the connection alive if this one dies); nil: Open opens one.
	Conn *os.File
	// Resume takes over Conn, already mounted at mnt, initialised and with
	// a loop device on its file, from a server that died or handed over.
	Resume bool
	// GoFuse serves with go-fuse instead of fuseconn (no resume), for
	// comparison in benchmarks.
	GoFuse bool
}

// Open mounts a FUSE file system at mnt whose file name serves dev, and
// attaches a loop device to it. The caller must own mnt exclusively (hold
// the volume's lock): whatever is mounted or attached there was left by a
// process that died, and is cleared first. With o.Resume it only serves
// what is there.
func Open(mnt, name string, dev frontend.Device, o Options) (*FuseLoop, error) {
	fl := &FuseLoop{mnt: mnt, file: filepath.Join(mnt, name)}
	if o.Resume {
		return fl, fl.resume(name, dev, o.Conn)
	}
	if err := ClearLeftovers(mnt, fl.file); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return nil, err
	}
	var err error
	if o.GoFuse {
		fl.srv, err = mountGoFuse(mnt, name, dev)
	} else {
		fl.srv, err = mountConn(mnt, name, dev, o.Conn)
	}
	if err != nil {
		return nil, err
	}
	if fl.device, err = loop.Attach(fl.file); err != nil {
		fl.unmount()
		return nil, err
	}
	return fl, nil
}

// mountConn mounts conn (a new one if nil) at mnt and answers its INIT.
func mountConn(mnt, name string, dev frontend.Device, conn *os.File) (server, error) {
	if conn == nil {
		var err error
		if conn, err = fuseconn.Open(); err != nil {
			return nil, err
		}
		defer conn.Close() // the mount holds the connection; the server its own copy
	}
	if err := fuseconn.Mount(mnt, conn); err != nil {
		return nil, err
	}
	srv, err := serve(mnt, name, dev, conn, fuseconn.Options{})
	if err == nil {
		err = fuseconn.NoPoll(filepath.Join(mnt, name))
	}
	if err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		return nil, err
	}
	return srv, nil
}

// resume serves conn, which is mounted at f.mnt with a loop device on
// f.file.
func (f *FuseLoop) resume(name string, dev frontend.Device, conn *os.File) error {
	if conn == nil {
		return errors.New("fuseloop: resuming needs the connection")
	}
	// Serve first: finding the loop device may ask the kernel for its
	// file's attributes (LOOP_GET_STATUS64), which is a request on this
	// very connection.
	var err error
	if f.srv, err = serve(f.mnt, name, dev, conn, fuseconn.Options{Resume: true}); err != nil {
		return err
	}
	devs, err := loop.Backing(f.file)
	if err == nil && len(devs) != 1 {
		err = fmt.Errorf("fuseloop: resuming %s: want one loop device on it, found %q", f.file, devs)
	}
	if err != nil {
		f.Stop()
		f.srv.Wait()
		return err
	}
	f.device = devs[0]
	return nil
}

// connServer is a fuseconn server and its mount point.
type connServer struct {
	*fuseconn.Server
	mnt  string
	conn *os.File
}

func serve(mnt, name string, dev frontend.Device, conn *os.File, o fuseconn.Options) (server, error) {
	// A copy of its own: the server's lifetime is not the caller's file's.
	fd, err := unix.FcntlInt(conn.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	own := os.NewFile(uintptr(fd), conn.Name())
	srv, err := fuseconn.Serve(own, name, dev, o)
	if err != nil {
		own.Close()
		return nil, err
	}
	return &connServer{Server: srv, mnt: mnt, conn: own}, nil
}

// Unmount ends the connection: the workers see ENODEV.
func (c *connServer) Unmount() error { return unix.Unmount(c.mnt, 0) }

func (c *connServer) Wait() {
	c.Server.Wait()
	c.conn.Close()
}

// Stop stops serving: once it returns, no request is being handled or
// read, and the connection, its mount and the loop device are left for
// the next server (see fuseconn.Server.Stop); a go-fuse server cannot.
func (f *FuseLoop) Stop() error {
	cs, ok := f.srv.(*connServer)
	if !ok {
		return errors.New("fuseloop: a go-fuse server cannot hand over")
	}
	cs.Stop()
	return nil
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

// ClearLeftovers undoes what a dead process left at mnt: file systems
// mounted from loop devices on file, those loop devices, and the FUSE mount
// (whose server is gone: "transport endpoint is not connected"). Loop
// devices and mounts of other files are not touched. The caller must own
// mnt exclusively: a live server's mounts are not leftovers.
func ClearLeftovers(mnt, file string) error {
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

// Opener returns Open with o as a frontend.Opener.
func Opener(o Options) frontend.Opener {
	return func(mnt, name string, dev frontend.Device) (frontend.Frontend, error) {
		fl, err := Open(mnt, name, dev, o)
		if err != nil {
			return nil, err
		}
		return fl, nil
	}
}
