// Package attach makes a volume directory a usable block device on this
// machine: it opens (and recovers) the volume under its lock, exposes it
// through a frontend (fuseloop: a FUSE file with a loop device on it, which
// clears its own leftovers from a process that died), and optionally makes
// and mounts a file system on it.
package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/frontend/fuseconn"
	"github.com/jvol-io/jvol/internal/frontend/fuseloop"
	"github.com/jvol-io/jvol/internal/fsmount"
	"github.com/jvol-io/jvol/internal/sink"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// Options for Attach.
type Options struct {
	Dir    string
	Volume volume.Options
	// FS, if set (ext4 or xfs), is made on the device unless it holds one,
	// and mounted at Mount.
	FS    string
	Mount string
	// Sink, if set, replaces the volume's sink settings (an empty URL
	// removes them); if nil, the volume keeps the ones it has.
	Sink *SinkOptions
	// Frontend makes the block device; nil: fuseloop (a FUSE file with a
	// loop device on it) serving Conn, or a connection of its own.
	Frontend frontend.Opener
	// Conn is the FUSE connection a keeper passed on (internal/keeper).
	Conn *os.File
	// Resume takes over the block device, its mounts and Conn from a
	// server that handed over or died, instead of making them. After a
	// death (ResumeCrash), the requests that server read from Conn and
	// never answered are queued again (FUSE_NOTIFY_RESEND) once the
	// volume is open (its lock held), before any is read.
	Resume volume.Resume
	// GoFuse serves the FUSE file with go-fuse (for comparison).
	GoFuse bool
	// Restarts counts the servers before this one (the status shows it).
	Restarts int
	// PID is the process the status names as the volume's (0: this one),
	// such as a keeper's.
	PID int
}

// Attachment is an attached volume.
type Attachment struct {
	Device    string
	MountPath string

	dir    *volume.Dir
	fe     frontend.Frontend
	sink   *SinkOptions
	sender *sink.Sender

	pid      int // of the attach command: the keeper's, if it has one
	restarts int
}

// Check returns what is wrong with o that needs nothing made or started
// to find: a file system without a mount point or of an unknown kind, or a
// new volume without a size.
func (o Options) Check() error {
	if (o.FS == "") != (o.Mount == "") {
		return errors.New("attach: a file system and a mount point go together")
	}
	if o.FS != "" && o.FS != "ext4" && o.FS != "xfs" {
		return fmt.Errorf("attach: file system %q: want ext4 or xfs", o.FS)
	}
	if o.Volume.Size == 0 && o.Volume.From == "" {
		if _, err := volume.ReadMeta(o.Dir); errors.Is(err, os.ErrNotExist) {
			return volume.ErrNoSize
		}
	}
	return nil
}

// Attach attaches the volume in o.Dir, creating it if needed.
func Attach(o Options) (*Attachment, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	so, err := sinkSettings(dir, o.Sink)
	if err != nil {
		return nil, err
	}
	o.Volume.Hold = so != nil
	o.Volume.Resume = o.Resume
	d, err := volume.OpenDir(dir, o.Volume)
	if err != nil {
		return nil, err
	}
	if o.Sink != nil {
		if err := saveSinkSettings(dir, so); err != nil {
			d.Close()
			return nil, err
		}
	}
	// The kernel names loop backing files and mount points by their real
	// path; so must we, to recognise our own leftovers.
	if d.Path, err = filepath.EvalSymlinks(dir); err != nil {
		d.Close()
		return nil, err
	}
	if o.Conn != nil && o.Resume == volume.ResumeCrash {
		// The requests the dead server read and never answered are queued
		// again for this one. Only now: the volume's lock says that no
		// other process serves it, so none reads them meanwhile.
		if err := fuseconn.Resend(o.Conn); err != nil {
			klog.ErrorS(err, "Queuing a dead server's requests again; those it read wait for ever", "dir", dir)
		}
	}
	if o.Frontend == nil {
		o.Frontend = fuseloop.Opener(fuseloop.Options{Conn: o.Conn, Resume: o.Resume != volume.NoResume, GoFuse: o.GoFuse})
	}
	a := &Attachment{dir: d, sink: so, pid: o.PID, restarts: o.Restarts}
	if a.pid == 0 {
		a.pid = os.Getpid()
	}
	if err := a.attach(o); err != nil {
		a.Detach()
		return nil, err
	}
	return a, nil
}

func (a *Attachment) attach(o Options) error {
	fe, err := o.Frontend(volume.Layout(a.dir.Path).Fuse(), a.Name(), a.dir.Volume)
	if err != nil {
		return err
	}
	a.fe, a.Device = fe, fe.Path()
	klog.InfoS("Attached volume", "dir", a.dir.Path, "device", a.Device, "size", a.Size())
	if a.sink != nil {
		cfg, err := a.sink.config(a.Name())
		if err != nil {
			return err
		}
		if cfg.Resync, cfg.Resynced, err = resyncMarker(a.dir.Path, o.Resume == volume.ResumeCrash); err != nil {
			return err
		}
		if a.sender, err = sink.StartSender(a.dir.Volume, cfg); err != nil {
			return err
		}
		klog.InfoS("Streaming the journal to a sink", "dir", a.dir.Path, "url", cfg.URL, "duplex", cfg.Duplex)
	}
	if o.FS == "" {
		return nil
	}
	if o.Resume != volume.NoResume { // mounted by the first server
		a.MountPath = o.Mount
		return nil
	}
	if err := os.MkdirAll(o.Mount, 0o755); err != nil {
		return err
	}
	if err := fsmount.New().FormatAndMount(a.Device, o.Mount, o.FS, nil); err != nil {
		return fmt.Errorf("attach: %s on %s at %s: %w", o.FS, a.Device, o.Mount, err)
	}
	a.MountPath = o.Mount
	return nil
}

// Name is the volume's name.
func (a *Attachment) Name() string { return a.dir.Meta.Name }

// Dir is the volume's directory.
func (a *Attachment) Dir() string { return a.dir.Path }

// Size is the volume's size.
func (a *Attachment) Size() int64 { return a.dir.Volume.Size() }

// Provisioning is the volume's: thick or thin.
func (a *Attachment) Provisioning() volume.Provisioning { return a.dir.Meta.Provisioned() }

// Snapshot writes a crash-consistent copy of the data image to a new file
// at path while the volume serves on (volume.Dir.Snapshot).
func (a *Attachment) Snapshot(ctx context.Context, path string) (transid uint64, size int64, err error) {
	return a.dir.Snapshot(ctx, path)
}

// Commit commits the volume's journal to its data image.
func (a *Attachment) Commit(ctx context.Context) error { return a.dir.Volume.Commit(ctx) }

// Grow grows the volume (recording its new size) and then its block device,
// online; a mounted file system is the caller's to grow.
func (a *Attachment) Grow(ctx context.Context, size int64) error {
	if err := a.dir.Grow(ctx, size); err != nil {
		return err
	}
	return a.fe.Resized()
}

// Attached reports whether the block device is still there.
func (a *Attachment) Attached() bool { return a.fe != nil }

// Handover stops serving the block device and closes the volume cleanly,
// leaving the device, its mounts and the FUSE connection to the next
// server (see internal/keeper): the process must exit right after. It
// fails for a frontend that cannot hand over.
func (a *Attachment) Handover() error {
	h, ok := a.fe.(interface{ Stop() error })
	if !ok {
		return errors.New("attach: this frontend cannot hand over")
	}
	if err := h.Stop(); err != nil {
		return err
	}
	if a.sender != nil {
		a.sender.Close()
		a.sender = nil
	}
	return a.dir.Close() // flushes and commits
}

// ClearLeftovers undoes what a server of the volume in dir that died left
// behind (see fuseloop.ClearLeftovers): its block device, the file systems
// on it and its FUSE mount, which would keep the directory from being
// removed. The caller holds the volume's lock, or knows that no process
// serves it.
func ClearLeftovers(dir string) error {
	m, err := volume.ReadMeta(dir)
	if err != nil {
		return nil // made only in part, or unreadable: never served by that name
	}
	// The kernel names loop backing files and mount points by their real
	// path.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return err
	}
	mnt := volume.Layout(dir).Fuse()
	return fuseloop.ClearLeftovers(mnt, filepath.Join(mnt, m.Name))
}

// resyncMarker returns whether the sink needs a baseline copy, and what
// to call once it has one. crash says that the server before died: the
// writes still in its memory FIFO are missing from the stream, so the
// marker is made, durably, before anything is sent.
func resyncMarker(dir string, crash bool) (bool, func(), error) {
	path := volume.Layout(dir).SinkResync()
	if crash {
		if err := vfs.WriteFileAtomic(vfs.OS, path, nil); err != nil {
			return false, nil, err
		}
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil, nil
	} else if err != nil {
		return false, nil, err
	}
	done := func() {
		if err := os.Remove(path); err != nil {
			klog.ErrorS(err, "Removing the sink's resync marker", "dir", dir)
		}
	}
	return true, done, nil
}

// DrainTimeout bounds how long Detach waits for a receiver to have the
// last writes.
var DrainTimeout = 10 * time.Second

// drain makes every write durable and, while the receiver is reachable,
// waits up to DrainTimeout for it to have them all: a node drained and
// then lost leaves at the receiver what its pods wrote last, flushed or
// not. What it lacks after that stays in the journal, sent at the next
// attach.
func (a *Attachment) drain() {
	ctx, cancel := context.WithTimeout(context.Background(), DrainTimeout)
	defer cancel()
	if err := a.dir.Volume.Flush(ctx); err != nil {
		return // Close says why
	}
	if st := a.sender.Stats().State; st == sink.Disconnected || st == sink.OutOfSync {
		return
	}
	id := a.dir.Volume.Journal().Stats().DurableTransid
	if err := a.sender.WaitAcked(ctx, id); err != nil {
		klog.InfoS("The receiver lacks the last writes; they stay in the journal, sent at the next attach", "dir", a.dir.Path, "err", err)
	}
}

// Detach unmounts the file system (if Attach mounted one), removes the
// block device and closes the volume (a final flush and commit). If the file
// system or the device is still busy, it stops there and returns the error:
// the volume stays attached and served, and Detach can be called again.
func (a *Attachment) Detach() error {
	if a.MountPath != "" {
		if err := mount.New("").Unmount(a.MountPath); err != nil {
			return fmt.Errorf("detach: %w; the volume stays attached", err)
		}
		a.MountPath = ""
	}
	if a.fe != nil {
		if err := a.fe.Close(); err != nil {
			return fmt.Errorf("detach: %w; the volume stays attached", err)
		}
		a.fe = nil
	}
	if a.sender != nil {
		a.drain()
		a.sender.Close() // what it has not sent stays in the journal
		a.sender = nil
	}
	os.Remove(volume.Layout(a.dir.Path).Status()) // while the lock is ours
	return a.dir.Close()                          // flushes and commits
}
