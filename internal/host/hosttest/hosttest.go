// Package hosttest has fakes of the machine's side of host.Volumes, for
// tests without root: a frontend whose block device is a regular file, a
// mounter that only keeps a table of mounts, and a resizer that does
// nothing. Volumes on them are made, opened, journaled and committed for
// real; only the kernel's part is pretended.
package hosttest

import (
	"os"
	"path/filepath"
	"slices"
	"sync"

	mount "k8s.io/mount-utils"

	"github.com/jvol-io/jvol/internal/frontend"
	"github.com/jvol-io/jvol/internal/host"
)

// Fakes are one of each fake, as one host.Volumes uses them.
type Fakes struct {
	Frontends *Frontends
	Mounter   *Mounter
	Resizer   *Resizer
}

// New returns fresh fakes.
func New() *Fakes {
	return &Fakes{Frontends: &Frontends{}, Mounter: NewMounter(), Resizer: &Resizer{}}
}

// OS is the fakes as a host.OS.
func (f *Fakes) OS() host.OS {
	return host.OS{Frontend: f.Frontends.Open, Mounter: f.Mounter, Resizer: f.Resizer}
}

// OS returns a host.OS of fresh fakes, for tests without root that need
// not look at them.
func OS() host.OS { return New().OS() }

// Frontends is a fake frontend, for tests without root: the block device
// its Open serves is a regular file, made in the directory it is given and
// removed by Close. Nothing written to the file reaches the volume.
type Frontends struct {
	mu      sync.Mutex
	open    []string
	resized map[string]int
}

var _ frontend.Opener = (*Frontends)(nil).Open

// Open makes the file dir/name, clearing whatever dir held (as a frontend
// clears the leftovers of a process that died), and returns it as a block
// device.
func (f *Frontends) Open(dir, name string, _ frontend.Device) (frontend.Frontend, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.open = append(f.open, path)
	return &device{f: f, path: path}, nil
}

// Devices returns the devices open now, in the order they were opened.
func (f *Frontends) Devices() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.open)
}

// Resizes returns how often the device at path was told its volume grew.
func (f *Frontends) Resizes(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resized[path]
}

type device struct {
	f    *Frontends
	path string
}

func (d *device) Path() string { return d.path }

func (d *device) Resized() error {
	d.f.mu.Lock()
	defer d.f.mu.Unlock()
	if d.f.resized == nil {
		d.f.resized = map[string]int{}
	}
	d.f.resized[d.path]++
	return nil
}

func (d *device) Close() error {
	d.f.mu.Lock()
	d.f.open = slices.DeleteFunc(d.f.open, func(p string) bool { return p == d.path })
	d.f.mu.Unlock()
	return os.Remove(d.path)
}

// Mounter is a fake mounter, for tests without root: mount-utils'
// FakeMounter, which keeps mounts in a table (IsMountPoint answers from it
// for paths that exist), with FormatAndMount a Mount. A mount stacked on
// another is unmounted with it.
type Mounter struct {
	*mount.FakeMounter

	mu        sync.Mutex
	formatErr error
}

var _ host.Mounter = (*Mounter)(nil)

// NewMounter returns a Mounter with nothing mounted.
func NewMounter() *Mounter { return &Mounter{FakeMounter: mount.NewFakeMounter(nil)} }

// FormatAndMount mounts source at target, unless told to fail.
func (m *Mounter) FormatAndMount(source, target, fstype string, options []string) error {
	m.mu.Lock()
	err := m.formatErr
	m.mu.Unlock()
	if err != nil {
		return err
	}
	return m.Mount(source, target, fstype, options)
}

// FailFormat makes every later FormatAndMount fail with err (nil: succeed
// again).
func (m *Mounter) FailFormat(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.formatErr = err
}

// MountsAt returns the mounts stacked at path, lowest first.
func (m *Mounter) MountsAt(path string) []mount.MountPoint {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real // as Mount records it
	}
	mps, _ := m.List()
	var at []mount.MountPoint
	for _, mp := range mps {
		if mp.Path == path {
			at = append(at, mp)
		}
	}
	return at
}

// Resizer is a fake file system resizer, for tests without root: it
// records what it is asked to grow and succeeds, unless told to fail.
type Resizer struct {
	mu      sync.Mutex
	err     error
	resized []string
}

var _ host.Resizer = (*Resizer)(nil)

// Resize records deviceMountPath as grown.
func (r *Resizer) Resize(_, deviceMountPath string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return false, r.err
	}
	r.resized = append(r.resized, deviceMountPath)
	return true, nil
}

// Fail makes every later Resize fail with err (nil: succeed again).
func (r *Resizer) Fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// Resized returns the mount paths grown so far, in order.
func (r *Resizer) Resized() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.resized)
}
