// Package node keeps the volumes of one node: it makes, grows and removes
// their directories, stages them (a block device, and for file system
// volumes a mounted file system), publishes them (bind mounts), and records
// what is staged so that a restarted node plugin serves it again.
//
// Callers serialise the operations on one volume with Lock.
package host

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/frontend/fuseconn"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

var (
	ErrBadName   = errors.New("not a valid volume id")
	ErrNotFound  = errors.New("volume not found")
	ErrStaged    = errors.New("volume is staged")
	ErrNotStaged = errors.New("volume is not staged")
	ErrPublished = errors.New("volume is still published")
	// ErrConflict: staged or published already, with other parameters.
	ErrConflict = errors.New("volume already staged or published differently")
	// ErrElsewhere: another process serves the volume (a node plugin
	// before this one, handing over or stopping).
	ErrElsewhere = fmt.Errorf("%w: served by another process", ErrConflict)
	// ErrRetired: this node plugin handed its volumes to a successor.
	ErrRetired = errors.New("the node plugin handed its volumes to its successor")
)

// Holder keeps copies of the volumes' FUSE connections in another process
// (internal/holder), so that the death of this one aborts none of them.
type Holder interface {
	Put(name string, conn *os.File) error
	Drop(name string) error
}

// Stage is how a volume is staged and published.
type Stage struct {
	Version     int                `json:"version"`
	StagingPath string             `json:"stagingPath"`
	Block       bool               `json:"block"`
	FSType      string             `json:"fsType,omitempty"`
	MountFlags  []string           `json:"mountFlags,omitempty"`
	Publishes   map[string]Publish `json:"publishes,omitempty"` // by target path
}

// Publish is one published target.
type Publish struct {
	ReadOnly bool `json:"readOnly"`
}

// Config says where a node keeps its volumes and how it serves them.
type Config struct {
	// StateDir holds the volumes, in StateDir/volumes.
	StateDir string
	// Changed, if set, is called with a volume's name when it is staged,
	// unstaged or grown, so that its Journal's status can follow.
	Changed func(name string)
	// OS is the machine's side; zero fields are the real ones.
	OS OS
	// Holder, if set, keeps a copy of every volume's FUSE connection,
	// which this package then opens itself.
	Holder Holder
}

// Volumes are the volumes of this node.
type Volumes struct {
	dir     string
	changed func(name string)
	os      OS

	mu      sync.Mutex
	locks   map[string]*sync.Mutex
	att     map[string]*attach.Attachment // staged volumes
	conns   map[string]*os.File           // their FUSE connections, with a Holder
	holder  Holder
	held    map[string]bool // connections the holder has taken and not lost
	retired bool
}

// New keeps volumes in cfg.StateDir/volumes.
func New(cfg Config) (*Volumes, error) {
	dir := filepath.Join(cfg.StateDir, "volumes")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	changed := cfg.Changed
	if changed == nil {
		changed = func(string) {}
	}
	return &Volumes{
		dir:     dir,
		changed: changed,
		os:      cfg.OS.withDefaults(),
		locks:   map[string]*sync.Mutex{},
		att:     map[string]*attach.Attachment{},
		conns:   map[string]*os.File{},
		holder:  cfg.Holder,
		held:    map[string]bool{},
	}, nil
}

// Available returns the bytes the state directory's file system can still
// give new volumes: its free bytes less what thick volumes' images do not
// hold yet (nothing, once made). So a thick volume takes its size off at
// once; a thin one takes only what it holds, as it comes: overcommitting
// is what thin is for.
func (n *Volumes) Available() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(n.dir, &st); err != nil {
		return 0, err
	}
	free := int64(st.Bavail) * st.Bsize
	ents, err := os.ReadDir(n.dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		l := volume.Layout(filepath.Join(n.dir, e.Name()))
		images := []string{l.Data(), l.Journal()}
		if m, err := volume.ReadMeta(string(l)); err == nil && m.Provisioned() == volume.Thin {
			images = images[1:]
		}
		for _, f := range images {
			var fs unix.Stat_t
			if unix.Stat(f, &fs) == nil {
				free -= max(fs.Size-fs.Blocks*512, 0)
			}
		}
	}
	return max(free, 0), nil
}

// room fails with ENOSPC unless need more bytes are Available: a thick
// volume is not made or grown past what the disk can give it (its
// fallocate would fail too, but after taking what there is).
func (n *Volumes) room(need int64) error {
	avail, err := n.Available()
	if err != nil {
		return err
	}
	if need > avail {
		return fmt.Errorf("%w: %d bytes more asked, %d available for volumes", syscall.ENOSPC, need, avail)
	}
	return nil
}

// CheckName reports whether name may name a volume: a DNS subdomain, so
// never a path (no separators, no "..").
func CheckName(name string) error {
	if len(validation.IsDNS1123Subdomain(name)) > 0 {
		return fmt.Errorf("%w: %q", ErrBadName, name)
	}
	return nil
}

func (n *Volumes) lock(name string) *sync.Mutex {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.locks[name]
	if l == nil {
		l = new(sync.Mutex)
		n.locks[name] = l
	}
	return l
}

// Lock waits for the volume's lock and returns its release.
func (n *Volumes) Lock(name string) func() {
	l := n.lock(name)
	l.Lock()
	return l.Unlock
}

// Path is the volume's directory.
func (n *Volumes) Path(name string) string { return filepath.Join(n.dir, name) }

// Exists reports whether the volume has been made.
func (n *Volumes) Exists(name string) bool {
	if CheckName(name) != nil {
		return false
	}
	_, err := volume.ReadMeta(n.Path(name))
	return err == nil
}

// ErrMissing: a volume that was made is not on the node any more.
var ErrMissing = errors.New("volume images are missing")

// Ensure makes the volume if it does not exist (and create allows: a
// volume that was made once must not come back empty because its disk is
// not mounted), grows it to o.Size if it is smaller, records o's FIFO size
// and commit interval for the next attach, and returns its size. A create
// that died half way (images without the metadata file, which is written
// last) is started over.
func (n *Volumes) Ensure(ctx context.Context, name string, o volume.Options, create bool) (int64, error) {
	if err := CheckName(name); err != nil {
		return 0, err
	}
	if n.Retired() {
		return 0, ErrRetired
	}
	if a := n.attached(name); a != nil {
		if o.Size > a.Size() {
			if err := n.room(thick(a.Provisioning(), o.Size-a.Size())); err != nil {
				return 0, err
			}
			if err := a.Grow(ctx, o.Size); err != nil {
				return 0, err
			}
		}
		return a.Size(), nil
	}
	path := n.Path(name)
	m, err := volume.ReadMeta(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if !create {
			return 0, fmt.Errorf("%w: no %s", ErrMissing, volume.Layout(path).Meta())
		}
		for _, f := range []string{volume.DataFile, volume.JournalFile} {
			if err := os.Remove(filepath.Join(path, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return 0, err
			}
		}
		if err := n.room(o.Journal() + thick(o.Provisioning, o.Size)); err != nil {
			return 0, err
		}
	case err != nil:
		return 0, err
	case m.Size >= o.Size && withSettings(m, o) == m:
		return m.Size, nil // nothing to change: no need to open and recover it
	case o.Size > m.Size:
		if err := n.room(thick(m.Provisioned(), o.Size-m.Size)); err != nil {
			return 0, err
		}
	}
	if err == nil {
		// Fixed when made; a Journal made before it was chosen asks none.
		o.Provisioning = ""
	}
	o.Name = name
	d, err := volume.OpenDir(path, o)
	if err != nil {
		return 0, err
	}
	var err2 error
	if m := withSettings(d.Meta, o); m != d.Meta { // while the directory's lock is still ours
		err2 = volume.WriteMeta(path, m)
	}
	return d.Volume.Size(), errors.Join(err2, d.Close())
}

// thick is n for a thick volume, 0 for a thin one: what it takes of the
// disk at once. The empty provisioning of a new volume is thick.
func thick(p volume.Provisioning, n int64) int64 {
	if p == volume.Thin {
		return 0
	}
	return n
}

// withSettings is m with o's FIFO size and commit interval, where set.
func withSettings(m volume.Meta, o volume.Options) volume.Meta {
	if o.FIFOSize != 0 {
		m.FIFOSize = o.FIFOSize
	}
	if o.CommitInterval != 0 {
		m.CommitInterval = o.CommitInterval.String()
	}
	return m
}

// Remove removes a volume that is not staged. Removing one that does not
// exist succeeds.
func (n *Volumes) Remove(name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	if n.Retired() {
		return ErrRetired
	}
	if n.attached(name) != nil {
		return fmt.Errorf("%w: %s", ErrStaged, name)
	}
	if st, err := n.readStage(name); err == nil && st.StagingPath != "" {
		return fmt.Errorf("%w at %s: %s", ErrStaged, st.StagingPath, name)
	}
	if err := n.notServedElsewhere(name); err != nil {
		return err
	}
	// A server that died elsewhere (the plugin before, which kept the
	// volume when a handover failed, and was unstaged here) left its FUSE
	// mount and loop device: they would keep the directory forever.
	if err := attach.ClearLeftovers(n.Path(name)); err != nil {
		return err
	}
	return os.RemoveAll(n.Path(name))
}

func (n *Volumes) attached(name string) *attach.Attachment {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.att[name]
}

// Statuses returns the figures of every volume served.
func (n *Volumes) Statuses() []attach.Status {
	n.mu.Lock()
	att := slices.Collect(maps.Values(n.att))
	n.mu.Unlock()
	s := make([]attach.Status, 0, len(att))
	for _, a := range att {
		s = append(s, a.Status())
	}
	return s
}

// Status returns the figures of a staged volume.
func (n *Volumes) Status(name string) (attach.Status, bool) {
	a := n.attached(name)
	if a == nil {
		return attach.Status{}, false
	}
	return a.Status(), true
}

// Written returns the bytes of the volume's data image that hold data:
// written and not discarded, thick or thin.
func (n *Volumes) Written(name string) int64 {
	w, err := vfs.Written(volume.Layout(n.Path(name)).Data())
	if err != nil {
		return 0
	}
	return w
}

// Provisioning returns the volume's provisioning, if it has been made.
func (n *Volumes) Provisioning(name string) volume.Provisioning {
	m, err := volume.ReadMeta(n.Path(name))
	if err != nil {
		return ""
	}
	return m.Provisioned()
}

// Size returns the volume's size.
func (n *Volumes) Size(name string) (int64, error) {
	if a := n.attached(name); a != nil {
		return a.Size(), nil
	}
	m, err := volume.ReadMeta(n.Path(name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return m.Size, err
}

func (n *Volumes) readStage(name string) (Stage, error) {
	var st Stage
	b, err := os.ReadFile(volume.Layout(n.Path(name)).Stage())
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

func (n *Volumes) writeStage(name string, st Stage) error {
	if st.StagingPath == "" {
		err := os.Remove(volume.Layout(n.Path(name)).Stage())
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		return err
	}
	st.Version = 1
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(vfs.OS, volume.Layout(n.Path(name)).Stage(), b)
}

// Recorded reports whether the volume is recorded as staged, served or
// not (it may have failed to be served again after a restart).
func (n *Volumes) Recorded(name string) bool {
	st, err := n.readStage(name)
	return err == nil && st.StagingPath != ""
}

// Staged returns how the volume is staged, if it is.
func (n *Volumes) Staged(name string) (Stage, bool) {
	if n.attached(name) == nil {
		return Stage{}, false
	}
	st, err := n.readStage(name)
	return st, err == nil
}

// Device returns the block device of a staged volume.
func (n *Volumes) Device(name string) (string, bool) {
	a := n.attached(name)
	if a == nil {
		return "", false
	}
	return a.Device, true
}

// StageVolume attaches the volume, streaming to the sink so says (nil: the
// settings the volume has; an empty URL: none), and unless want.Block makes
// its file system (once) and mounts it at want.StagingPath. Staging again
// the same way succeeds; any other way is ErrConflict.
func (n *Volumes) StageVolume(name string, want Stage, so *attach.SinkOptions) error {
	if !n.Exists(name) {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	st, err := n.readStage(name)
	switch {
	case err == nil && st.StagingPath != "":
		if st.StagingPath != want.StagingPath || st.Block != want.Block || st.FSType != want.FSType {
			return fmt.Errorf("%w: staged at %s", ErrConflict, st.StagingPath)
		}
		if n.attached(name) != nil {
			return nil
		}
		// Recorded but not served (serving it again after a restart
		// failed): serve it again now, its publishes with it.
		return n.serveAgain(name, st, so)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return err
	}
	want.Publishes = nil
	if err := n.stage(name, want, so); err != nil {
		return err
	}
	if err := n.writeStage(name, want); err != nil {
		// Unrecorded, it could not be unstaged or served again: undo it.
		return errors.Join(err, n.unstage(name, want))
	}
	return nil
}

// stage attaches the volume with sink settings so (nil: the ones it has)
// and mounts its file system.
func (n *Volumes) stage(name string, st Stage, so *attach.SinkOptions) error {
	var conn *os.File
	if n.currentHolder() != nil && n.os.Frontend == nil {
		var err error
		if conn, err = fuseconn.Open(); err != nil {
			return err
		}
	}
	a, err := attach.Attach(attach.Options{Dir: n.Path(name), Sink: so, Frontend: n.os.Frontend, Conn: conn})
	if err != nil {
		closeFile(conn)
		return err
	}
	if !st.Block {
		if err := n.os.Mounter.FormatAndMount(a.Device, st.StagingPath, st.FSType, st.MountFlags); err != nil {
			closeFile(conn) // a detached connection: nothing to keep
			return errors.Join(fmt.Errorf("%s on %s at %s: %w", st.FSType, a.Device, st.StagingPath, err), a.Detach())
		}
	}
	n.served(name, a, conn)
	return nil
}

func closeFile(f *os.File) {
	if f != nil {
		f.Close()
	}
}

// served records a served volume and has the holder keep its connection.
func (n *Volumes) served(name string, a *attach.Attachment, conn *os.File) {
	n.mu.Lock()
	n.att[name] = a
	if conn != nil {
		n.conns[name] = conn
	}
	h := n.holder
	n.mu.Unlock()
	if conn != nil && h != nil {
		n.hold(h, name, conn)
	}
	n.changed(name)
}

// hold has the holder h keep a copy of a volume's connection.
func (n *Volumes) hold(h Holder, name string, conn *os.File) {
	err := h.Put(name, conn)
	if err != nil {
		klog.ErrorS(err, "The holder cannot keep the volume's connection: it would not survive this process", "volume", name)
	}
	n.mu.Lock()
	if n.conns[name] == conn {
		n.held[name] = err == nil
	}
	n.mu.Unlock()
}

// Held reports whether volumes are to have a holder (want), and whether
// one keeps the connection of the volume called name now (held): if not,
// the volume's I/O fails when this process dies.
func (n *Volumes) Held(name string) (want, held bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.holder != nil, n.held[name]
}

// HolderGone records that the holder died: it keeps no connection now.
func (n *Volumes) HolderGone() {
	n.mu.Lock()
	clear(n.held)
	names := keys(n.att)
	n.mu.Unlock()
	for _, name := range names {
		n.changed(name)
	}
}

// Adopt serves a staged volume whose block device, mounts and FUSE
// connection conn outlived the server before (how says whether that one
// handed over or died). The caller holds no lock of the volume.
func (n *Volumes) Adopt(name string, conn *os.File, how volume.Resume) error {
	unlock := n.Lock(name)
	defer unlock()
	if !n.Recorded(name) {
		return fmt.Errorf("%w: %s", ErrNotStaged, name)
	}
	if n.attached(name) != nil {
		return fmt.Errorf("%w: %s is served already", ErrConflict, name)
	}
	a, err := attach.Attach(attach.Options{Dir: n.Path(name), Frontend: n.os.Frontend, Conn: conn, Resume: how})
	if err != nil {
		return err
	}
	n.served(name, a, conn)
	return nil
}

// AdoptHeld adopts every connection in held (by volume) whose volume is
// staged, after the death of the server before; it closes, and has the
// holder drop, the others. It goes on past a volume that fails.
func (n *Volumes) AdoptHeld(held map[string]*os.File) error {
	var errs []error
	for _, name := range keys(held) {
		conn := held[name]
		err := n.Adopt(name, conn, volume.ResumeCrash)
		if err == nil {
			klog.InfoS("Serving a volume again whose connection outlived its server", "volume", name)
			continue
		}
		klog.ErrorS(err, "Could not serve a held connection again; dropping it", "volume", name)
		errs = append(errs, fmt.Errorf("volume %s: %w", name, err))
		conn.Close()
		n.drop(name)
	}
	return errors.Join(errs...)
}

// Retire makes every later call that would change a volume fail with
// ErrRetired, waits for the calls under way (a stage holds its volume's
// lock), and returns the volumes served then: they are to be handed to a
// successor (Give).
func (n *Volumes) Retire() []string {
	n.mu.Lock()
	n.retired = true
	locks := slices.Collect(maps.Values(n.locks))
	n.mu.Unlock()
	for _, l := range locks {
		l.Lock()
		//lint:ignore SA2001 waiting for the call that holds it is the point
		l.Unlock()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return keys(n.att)
}

// Unretire undoes Retire, after a successor that failed.
func (n *Volumes) Unretire() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.retired = false
}

// Served returns the number of volumes served.
func (n *Volumes) Served() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.att)
}

// Retired reports whether Retire was called.
func (n *Volumes) Retired() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.retired
}

// Give stops serving a volume cleanly (its FIFO flushed and committed, its
// sink stopped) and returns its FUSE connection, with the block device and
// the mounts on it, for a successor to Adopt. If the successor does not,
// Adopt it back.
func (n *Volumes) Give(name string) (*os.File, error) {
	unlock := n.Lock(name)
	defer unlock()
	n.mu.Lock()
	a, conn := n.att[name], n.conns[name]
	n.mu.Unlock()
	if a == nil || conn == nil {
		return nil, fmt.Errorf("%w: %s is not served with a connection of its own", ErrNotStaged, name)
	}
	if err := a.Handover(); err != nil {
		return nil, err
	}
	n.mu.Lock()
	delete(n.att, name)
	delete(n.conns, name)
	delete(n.held, name)
	n.mu.Unlock()
	return conn, nil
}

// Given tells the holder that a volume Give returned is the successor's.
func (n *Volumes) Given(name string, conn *os.File) {
	conn.Close()
	n.drop(name)
}

// currentHolder is the holder now (SetHolder replaces it), or nil.
func (n *Volumes) currentHolder() Holder {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.holder
}

// drop has the holder, if any, close its copy of a volume's connection.
func (n *Volumes) drop(name string) {
	if h := n.currentHolder(); h != nil {
		if err := h.Drop(name); err != nil {
			klog.ErrorS(err, "The holder did not drop a volume's connection", "volume", name)
		}
	}
}

// SetHolder replaces the holder (one that died and came back) and has it
// keep every connection served now.
func (n *Volumes) SetHolder(h Holder) {
	n.mu.Lock()
	n.holder = h
	conns := maps.Clone(n.conns)
	n.mu.Unlock()
	for _, name := range keys(conns) {
		n.hold(h, name, conns[name])
		n.changed(name)
	}
}

// UnstageVolume undoes StageVolume. Unstaging a volume that is not staged
// succeeds; one that was staged before a restart and could not be served
// again loses its record and any stale mount at stagingPath.
func (n *Volumes) UnstageVolume(name, stagingPath string) error {
	st, err := n.readStage(name)
	if errors.Is(err, os.ErrNotExist) {
		// Not staged (any more): whatever is still mounted there for this
		// volume is stale.
		return unmountStale(n.os.Mounter, stagingPath)
	}
	if err != nil {
		return err
	}
	if st.StagingPath != stagingPath {
		return fmt.Errorf("%w: staged at %s, not %s", ErrConflict, st.StagingPath, stagingPath)
	}
	if len(st.Publishes) > 0 {
		return fmt.Errorf("%w at %v", ErrPublished, keys(st.Publishes))
	}
	if err := n.unstage(name, st); err != nil {
		return err
	}
	return n.writeStage(name, Stage{})
}

// Release stops serving a staged volume (unmounts its file system and
// removes its device) but keeps its record, as the death of the node plugin
// does: Restore or a repeated StageVolume serves it again, publishes and
// all. Releasing a volume that is not served succeeds.
func (n *Volumes) Release(name string) error {
	st, err := n.readStage(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return n.unstage(name, st)
}

// unstage unmounts and detaches what stage made.
func (n *Volumes) unstage(name string, st Stage) error {
	if n.attached(name) == nil {
		if err := n.notServedElsewhere(name); err != nil {
			return err
		}
	}
	if !st.Block {
		if err := unmountStale(n.os.Mounter, st.StagingPath); err != nil {
			return err
		}
	}
	if a := n.attached(name); a != nil {
		err := a.Detach()
		if a.Attached() {
			return err // busy: still attached and served
		}
		// The device is gone, even if the final commit failed: an entry
		// for it would block every later stage, unstage and delete.
		n.mu.Lock()
		delete(n.att, name)
		conn := n.conns[name]
		delete(n.conns, name)
		delete(n.held, name)
		n.mu.Unlock()
		if conn != nil {
			conn.Close()
			n.drop(name)
		}
		n.changed(name)
		return err
	}
	return nil
}

func keys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// PublishVolume bind-mounts a staged volume at target: its file system,
// or for block volumes the device onto a file.
func (n *Volumes) PublishVolume(name, target string, readOnly bool) error {
	a := n.attached(name)
	if a == nil {
		return fmt.Errorf("%w: %s", ErrNotStaged, name)
	}
	st, err := n.readStage(name)
	if err != nil {
		return err
	}
	if p, ok := st.Publishes[target]; ok {
		if p.ReadOnly != readOnly {
			return fmt.Errorf("%w: %s is published read-only=%v", ErrConflict, target, p.ReadOnly)
		}
		if mounted, err := n.os.Mounter.IsMountPoint(target); err == nil && mounted {
			return nil
		}
	}
	if err := n.bind(a.Device, st, target, readOnly); err != nil {
		return err
	}
	if st.Publishes == nil {
		st.Publishes = map[string]Publish{}
	}
	st.Publishes[target] = Publish{ReadOnly: readOnly}
	if err := n.writeStage(name, st); err != nil {
		// Unrecorded, the bind mount would keep the device busy for good.
		return errors.Join(err, mount.CleanupMountPoint(target, n.os.Mounter, true))
	}
	return nil
}

func (n *Volumes) bind(device string, st Stage, target string, readOnly bool) error {
	src := st.StagingPath
	if st.Block {
		src = device
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return err
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o660)
		if err != nil {
			return err
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return err
	}
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	return n.os.Mounter.Mount(src, target, "", opts)
}

// UnpublishVolume unmounts target and removes it. Unpublishing what is not
// published succeeds.
func (n *Volumes) UnpublishVolume(name, target string) error {
	if err := mount.CleanupMountPoint(target, n.os.Mounter, true); err != nil {
		return err
	}
	st, err := n.readStage(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, ok := st.Publishes[target]; !ok {
		return nil
	}
	delete(st.Publishes, target)
	return n.writeStage(name, st)
}

// ExpandVolume grows a staged volume's device to size (if the volume is
// not that large yet) and its file system to the device.
func (n *Volumes) ExpandVolume(ctx context.Context, name string, size int64) (int64, error) {
	a := n.attached(name)
	if a == nil {
		return 0, fmt.Errorf("%w: %s", ErrNotStaged, name)
	}
	if size > a.Size() {
		if err := a.Grow(ctx, size); err != nil {
			return 0, err
		}
	}
	st, err := n.readStage(name)
	if err != nil {
		return 0, err
	}
	if !st.Block {
		if _, err := n.os.Resizer.Resize(a.Device, st.StagingPath); err != nil {
			return 0, fmt.Errorf("resize %s on %s: %w", st.FSType, a.Device, err)
		}
	}
	n.changed(name)
	return a.Size(), nil
}

// Restore serves again every volume that was staged when the node plugin
// last stopped and is not served yet: stale mounts of the dead device are
// removed, the volume is attached again (the frontend clears its own
// leftovers), and its file system and bind mounts are mounted again. It
// goes on past a volume that fails and returns every failure (ErrElsewhere
// for one another process still serves); it stops early if ctx ends. It
// may run while CSI calls are served.
func (n *Volumes) Restore(ctx context.Context) error {
	ents, err := os.ReadDir(n.dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		name := e.Name()
		if CheckName(name) != nil {
			continue
		}
		if ctx.Err() != nil {
			return errors.Join(append(errs, ctx.Err())...)
		}
		st, err := n.restore(name)
		if err != nil {
			klog.ErrorS(err, "Could not serve a staged volume again", "volume", name)
			errs = append(errs, fmt.Errorf("volume %s: %w", name, err))
			continue
		}
		if st != nil {
			klog.InfoS("Served a staged volume again", "volume", name, "stagingPath", st.StagingPath, "publishes", len(st.Publishes))
		}
	}
	return errors.Join(errs...)
}

// restore serves name again if it is recorded as staged and not served;
// it returns the record if it did.
func (n *Volumes) restore(name string) (*Stage, error) {
	unlock := n.Lock(name)
	defer unlock()
	if n.attached(name) != nil {
		return nil, nil
	}
	if n.Retired() { // the successor serves it from its record
		return nil, ErrRetired
	}
	// Read under the lock: an unstage may have come first.
	st, err := n.readStage(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// As it was served before the restart: with the sink it streamed to
	// (and whose records its journal holds).
	return &st, n.serveAgain(name, st, nil)
}

// serveAgain stages a volume recorded as staged, with sink settings so,
// and publishes it again, replacing stale mounts of a dead device. The
// caller holds its lock.
func (n *Volumes) serveAgain(name string, st Stage, so *attach.SinkOptions) error {
	if err := n.notServedElsewhere(name); err != nil {
		return err
	}
	targets := keys(st.Publishes)
	for _, t := range targets {
		if err := unmountStale(n.os.Mounter, t); err != nil {
			return err
		}
	}
	if !st.Block {
		if err := unmountStale(n.os.Mounter, st.StagingPath); err != nil {
			return err
		}
	}
	if err := n.stage(name, st, so); err != nil {
		return err
	}
	a := n.attached(name)
	for _, t := range targets {
		if err := n.bind(a.Device, st, t, st.Publishes[t].ReadOnly); err != nil {
			return err
		}
	}
	return nil
}

// notServedElsewhere fails with ErrConflict if another process serves the
// volume (it holds the volume directory's lock): the plugin before this
// one, still handing over or keeping what it could not hand over. Its
// mounts are live, not stale: nothing of it may be unmounted here.
func (n *Volumes) notServedElsewhere(name string) error {
	locked, err := volume.IsLocked(n.Path(name))
	if err != nil {
		return err
	}
	if locked {
		return fmt.Errorf("%s: %w", name, ErrElsewhere)
	}
	return nil
}

// unmountStale unmounts every mount stacked at path.
func unmountStale(m mount.Interface, path string) error {
	for {
		mounted, err := m.IsMountPoint(path)
		if errors.Is(err, os.ErrNotExist) || err == nil && !mounted {
			return nil
		}
		if err != nil && !mount.IsCorruptedMnt(err) {
			return err
		}
		if err := m.Unmount(path); err != nil {
			return err
		}
	}
}

// Sync commits every staged volume, for a stop of the node plugin: its
// volumes stay staged (pods keep their mounts) and Restore serves them again
// at the next start.
func (n *Volumes) Sync(ctx context.Context) error {
	n.mu.Lock()
	atts := make([]*attach.Attachment, 0, len(n.att))
	for _, a := range n.att {
		atts = append(atts, a)
	}
	n.mu.Unlock()
	var errs []error
	for _, a := range atts {
		errs = append(errs, a.Commit(ctx))
	}
	return errors.Join(errs...)
}
