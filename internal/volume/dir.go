package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

const (
	MetaVersion = 1
	// MinJournalSize is the smallest journal image a volume takes.
	MinJournalSize = 64 << 20
)

// Meta is the metadata file, volume.json: written whole to a temporary
// file, synced, renamed over the old one, and the directory synced.
type Meta struct {
	Version        int    `json:"version"`
	Name           string `json:"name"`
	Size           int64  `json:"size"`
	JournalSize    int64  `json:"journalSize"`
	FIFOSize       int    `json:"fifoSize"`
	CommitInterval string `json:"commitInterval"`
	Created        string `json:"created"`
	// Provisioning is thick or thin; absent in volumes made before it
	// was chosen, which are thin.
	Provisioning Provisioning `json:"provisioning,omitempty"`
}

// Provisioned is the volume's provisioning.
func (m Meta) Provisioned() Provisioning {
	if m.Provisioning == "" {
		return Thin
	}
	return m.Provisioning
}

// Options for OpenDir. Zero values mean: what the volume has (or the
// default, for a new one).
type Options struct {
	Name           string
	Size           int64 // required to create; larger than the volume's grows it
	JournalSize    int64 // only when creating: default 10% of Size, at least MinJournalSize
	FIFOSize       int
	CommitInterval time.Duration
	// Provisioning is fixed when the volume is made: default Thick.
	Provisioning Provisioning
	// From, only when creating, is an image (a snapshot's) the data image
	// starts as: cloned where the file system shares blocks, else the
	// blocks of it that hold data copied. Size is then at least its size
	// (its size if zero).
	From string
	// Hold keeps the journal's records for a reader (see Config.Hold).
	Hold bool
	// Resume opens a volume whose block device outlived its server (see
	// Config.Resume).
	Resume Resume
}

var (
	ErrInUse       = errors.New("volume: in use by another process")
	ErrNoSize      = errors.New("volume: a new volume needs a size")
	ErrCorruptMeta = errors.New("volume: metadata file is corrupt")
)

// Dir is an open volume directory: the volume, its files and its lock.
type Dir struct {
	Volume *Volume
	Path   string
	Meta   Meta

	lock          *vfs.Lock
	data, journal *vfs.OSFile
}

// OpenDir opens the volume in path, creating it first if path holds none,
// and recovers it. It holds an exclusive lock on the directory until Close.
func OpenDir(path string, o Options) (*Dir, error) {
	_, err := os.Stat(path)
	made := errors.Is(err, os.ErrNotExist)
	if err := vfs.OS.MkdirAll(path); err != nil {
		return nil, err
	}
	d := &Dir{Path: path}
	// Without waiting for another attach; the lock can be looked at
	// without being taken (IsLocked), so `jvol status` never makes an
	// attach fail.
	lock, err := vfs.OS.Lock(Layout(path).Lock(), false, false)
	if errors.Is(err, vfs.ErrLocked) {
		return nil, fmt.Errorf("%w: %s", ErrInUse, path)
	}
	if err != nil {
		return nil, err
	}
	d.lock = lock
	if err := d.open(o); err != nil {
		if d.Volume != nil {
			d.Volume.Close()
		}
		if _, serr := os.Stat(Layout(path).Meta()); made && errors.Is(serr, os.ErrNotExist) {
			// A create that failed leaves no trace; the lock file goes
			// while it is still held, so no other process can have taken
			// it before it goes (one that opened it finds its directory
			// gone).
			os.Remove(Layout(path).Lock())
			os.Remove(path)
		}
		d.release()
		return nil, err
	}
	return d, nil
}

// IsLocked reports whether a process holds the lock of the volume in dir.
func IsLocked(dir string) (bool, error) { return vfs.IsLocked(Layout(dir).Lock()) }

func (d *Dir) open(o Options) error {
	meta, err := ReadMeta(d.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if meta, err = create(d.Path, o); err != nil {
			return err
		}
	case err != nil:
		return err
	case o.JournalSize != 0 && o.JournalSize != meta.JournalSize:
		return fmt.Errorf("volume: the journal size is fixed at creation (%d), not %d", meta.JournalSize, o.JournalSize)
	case o.Size != 0 && o.Size < meta.Size:
		return fmt.Errorf("%w: %d to %d", ErrShrink, meta.Size, o.Size)
	case o.Provisioning != "" && o.Provisioning != meta.Provisioned():
		return fmt.Errorf("volume: the provisioning is fixed at creation (%s), not %s", meta.Provisioned(), o.Provisioning)
	}
	cfg := Config{Journal: journal.Options{FIFOSize: meta.FIFOSize}, Hold: o.Hold, Resume: o.Resume, Provisioning: meta.Provisioned()}
	if o.FIFOSize != 0 {
		cfg.Journal.FIFOSize = o.FIFOSize
	}
	cfg.CommitInterval, _ = time.ParseDuration(meta.CommitInterval)
	if o.CommitInterval != 0 {
		cfg.CommitInterval = o.CommitInterval
	}
	if d.data, err = vfs.OpenDirect(Layout(d.Path).Data()); err != nil {
		return err
	}
	if d.journal, err = vfs.OpenDirect(Layout(d.Path).Journal()); err != nil {
		return err
	}
	if d.Volume, _, err = Open(d.data, d.journal, meta.Size, cfg); err != nil {
		return fmt.Errorf("volume %s: %w", d.Path, err)
	}
	d.Meta = meta
	if o.Size > d.Volume.Size() {
		if err := d.Volume.Grow(context.Background(), o.Size); err != nil {
			return err
		}
	}
	if d.Volume.Size() != d.Meta.Size { // grown now, or by a replayed resize
		return d.saveSize()
	}
	return nil
}

// Grow grows the volume online and records the new size.
func (d *Dir) Grow(ctx context.Context, size int64) error {
	if err := d.Volume.Grow(ctx, size); err != nil {
		return err
	}
	return d.saveSize()
}

func (d *Dir) saveSize() error {
	d.Meta.Size = d.Volume.Size()
	return WriteMeta(d.Path, d.Meta)
}

// Close closes the volume cleanly (flush, commit), its files and the lock.
func (d *Dir) Close() error {
	var err error
	if d.Volume != nil {
		err = d.Volume.Close()
	}
	if rerr := d.release(); err == nil {
		err = rerr
	}
	return err
}

func (d *Dir) release() error {
	var err error
	for _, f := range []*vfs.OSFile{d.data, d.journal} {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if d.lock != nil {
		d.lock.Unlock()
	}
	return err
}

func create(path string, o Options) (Meta, error) {
	if o.From != "" {
		st, err := os.Stat(o.From)
		if err != nil {
			return Meta{}, fmt.Errorf("volume: the image to start from: %w", err)
		}
		if o.Size == 0 {
			o.Size = st.Size()
		}
		if o.Size < st.Size() {
			return Meta{}, fmt.Errorf("%w: a volume of %d bytes cannot hold the image %s of %d", ErrShrink, o.Size, o.From, st.Size())
		}
	}
	if o.Size == 0 {
		return Meta{}, ErrNoSize
	}
	if o.Size < 0 || o.Size%vfs.BlockSize != 0 {
		return Meta{}, fmt.Errorf("%w: %d", ErrAlignment, o.Size)
	}
	js := o.Journal()
	switch {
	case js < MinJournalSize:
		return Meta{}, fmt.Errorf("volume: journal of %d bytes is smaller than the minimum %d", js, MinJournalSize)
	case js%vfs.BlockSize != 0:
		return Meta{}, fmt.Errorf("volume: journal size: %w", ErrAlignment)
	}
	for _, name := range []string{DataFile, JournalFile} {
		if _, err := os.Stat(filepath.Join(path, name)); err == nil {
			return Meta{}, fmt.Errorf("volume: %s holds %s but no %s (an interrupted create?): remove it to start over", path, name, MetaFile)
		}
	}
	name := o.Name
	if name == "" {
		name = filepath.Base(filepath.Clean(path))
	}
	meta := Meta{
		Version: MetaVersion, Name: name, Size: o.Size, JournalSize: js, FIFOSize: o.FIFOSize,
		CommitInterval: DefaultCommitInterval.String(), Created: time.Now().UTC().Format(time.RFC3339),
		Provisioning: o.Provisioning,
	}
	if meta.Provisioning == "" {
		meta.Provisioning = Thick
	}
	if o.CommitInterval != 0 {
		meta.CommitInterval = o.CommitInterval.String()
	}
	if err := createImages(path, meta, o.From); err != nil {
		// Nothing is left half made (on a full disk, above all).
		return Meta{}, errors.Join(err, removeImages(path))
	}
	// The metadata file last: a volume without it was never created.
	if err := WriteMeta(path, meta); err != nil {
		removeImages(path)
		return Meta{}, err
	}
	return meta, nil
}

// removeImages removes what a create that failed made.
func removeImages(path string) error {
	var err error
	for _, f := range []string{Layout(path).Journal(), Layout(path).Data(), Layout(path).Meta()} {
		if rerr := os.Remove(f); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// createImages makes the journal image, allocated and formatted, and the
// data image: a copy of the image from, if set; allocated whole if thick,
// sparse if thin.
func createImages(path string, meta Meta, from string) error {
	jpath := Layout(path).Journal()
	if err := vfs.Preallocate(jpath, meta.JournalSize); err != nil {
		return err
	}
	jf, err := vfs.OpenDirect(jpath)
	if err != nil {
		return err
	}
	_, err = journal.Format(jf)
	jf.Close()
	if err != nil {
		return err
	}
	df, err := os.OpenFile(Layout(path).Data(), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer df.Close()
	if from != "" {
		if err := copyImage(Layout(path).Data(), from, meta.Provisioning == Thin); err != nil {
			return fmt.Errorf("volume: copying %s: %w", from, err)
		}
	}
	if err := df.Truncate(meta.Size); err != nil {
		return err
	}
	if meta.Provisioning == Thick {
		if err := unix.Fallocate(int(df.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, meta.Size); err != nil {
			return fmt.Errorf("volume: no space for the %d bytes of a thick volume's data image (a thin one takes its space as it is written): %w", meta.Size, err)
		}
	}
	return df.Sync() // fsync: the allocation is metadata
}

// copyImage makes the empty file dst a copy of the file src's blocks
// that hold data; with share, a clone where the file system shares blocks
// (a thick volume's image shares none: writing a shared block needs
// space).
func copyImage(dst, src string, share bool) error {
	d, err := vfs.OpenBuffered(dst)
	if err != nil {
		return err
	}
	defer d.Close()
	s, err := vfs.OpenBuffered(src)
	if err != nil {
		return err
	}
	defer s.Close()
	if share && vfs.Clone(d, s) == nil {
		return nil
	}
	size, err := s.Size()
	if err == nil {
		err = d.Truncate(size)
	}
	if err == nil {
		err = vfs.CopySparse(d, s, share)
	}
	return err
}

// ReadMeta reads and checks a volume directory's metadata.
func ReadMeta(path string) (Meta, error) { return readMeta(vfs.OS, path) }

func readMeta(fsys vfs.FS, path string) (Meta, error) {
	b, err := vfs.ReadFile(fsys, Layout(path).Meta())
	if err != nil {
		return Meta{}, err
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("%w: %s: %v", ErrCorruptMeta, path, err)
	}
	if m.Version != MetaVersion || m.Size <= 0 || m.Size%vfs.BlockSize != 0 || m.JournalSize < MinJournalSize {
		return Meta{}, fmt.Errorf("%w: %s: version %d, size %d, journal size %d", ErrCorruptMeta, path, m.Version, m.Size, m.JournalSize)
	}
	return m, nil
}

// WriteMeta replaces the metadata file atomically.
func WriteMeta(path string, m Meta) error { return writeMeta(vfs.OS, path, m) }

func writeMeta(fsys vfs.FS, path string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(fsys, Layout(path).Meta(), append(b, '\n'))
}

// Journal is the size of the journal image a volume made with o has:
// JournalSize, or by default a tenth of Size, at least MinJournalSize.
func (o Options) Journal() int64 {
	if o.JournalSize != 0 {
		return o.JournalSize
	}
	return max(o.Size/10&^(vfs.BlockSize-1), MinJournalSize)
}
