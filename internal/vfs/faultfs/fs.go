package faultfs

import (
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"

	"github.com/jvol-io/jvol/internal/vfs"
)

// FS is an in-memory vfs.FS that remembers, as File does for data, which
// changes to directories have been made durable: an entry created, renamed
// or removed since its directory's last SyncDir is undone by a power cut.
// Directories themselves are made durably (MkdirAll's contract), and locks
// do not survive a power cut. Its zero value is not usable; call NewFS.
type FS struct {
	mu      sync.Mutex
	files   map[string]*File // the entries that lookups see, by path
	durable map[string]*File // the entries as of each directory's last sync
	dirs    map[string]bool
	locks   map[string]*lockState
	freed   *sync.Cond // a lock was released

	// After, if set, is called after every change that reaches the disk or
	// its cache (a write, truncate, punch or sync of a file; a create,
	// rename, remove or directory sync): a test can cut the power there.
	// It must not call the FS's methods but PowerCut.
	After func()
}

type lockState struct {
	shared int
	excl   bool
}

// NewFS returns an empty file system holding only the root directory.
func NewFS() *FS {
	f := &FS{files: map[string]*File{}, durable: map[string]*File{}, dirs: map[string]bool{"/": true, ".": true}, locks: map[string]*lockState{}}
	f.freed = sync.NewCond(&f.mu)
	return f
}

var _ vfs.FS = (*FS)(nil)

func (f *FS) after() {
	if f.After != nil {
		f.After()
	}
}

func notExist(op, name string) error { return &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist} }

// lookup returns the file name, checking that its directory exists.
func (f *FS) lookup(op, name string) (*File, string, error) {
	name = filepath.Clean(name)
	if !f.dirs[filepath.Dir(name)] {
		return nil, name, notExist(op, name)
	}
	return f.files[name], name, nil
}

func (f *FS) Create(name string) (vfs.RWFile, error) {
	f.mu.Lock()
	file, name, err := f.lookup("create", name)
	if err == nil && file == nil {
		file = New(0)
		f.files[name] = file
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	h := &handle{File: file, fs: f}
	if err := h.Truncate(0); err != nil {
		return nil, err
	}
	return h, nil
}

func (f *FS) Open(name string) (vfs.RWFile, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	file, _, err := f.lookup("open", name)
	if err == nil && file == nil {
		err = notExist("open", name)
	}
	if err != nil {
		return nil, err
	}
	return &handle{File: file, fs: f}, nil
}

func (f *FS) Rename(oldname, newname string) error {
	f.mu.Lock()
	file, oldname, err := f.lookup("rename", oldname)
	if err == nil && file == nil {
		err = notExist("rename", oldname)
	}
	if err == nil {
		// A file replaced lives on in durable until the directory is synced.
		_, newname, err = f.lookup("rename", newname)
	}
	if err == nil {
		delete(f.files, oldname)
		f.files[newname] = file
	}
	f.mu.Unlock()
	if err == nil {
		f.after()
	}
	return err
}

func (f *FS) Remove(name string) error {
	f.mu.Lock()
	file, name, err := f.lookup("remove", name)
	if err == nil && file == nil {
		err = notExist("remove", name)
	}
	if err == nil {
		delete(f.files, name)
	}
	f.mu.Unlock()
	if err == nil {
		f.after()
	}
	return err
}

func (f *FS) List(dir string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	dir = filepath.Clean(dir)
	if !f.dirs[dir] {
		return nil, notExist("list", dir)
	}
	var names []string
	for name := range f.files {
		if filepath.Dir(name) == dir {
			names = append(names, filepath.Base(name))
		}
	}
	for d := range f.dirs {
		if filepath.Dir(d) == dir && d != dir {
			names = append(names, filepath.Base(d))
		}
	}
	slices.Sort(names)
	return names, nil
}

func (f *FS) MkdirAll(dir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for d := filepath.Clean(dir); !f.dirs[d]; d = filepath.Dir(d) {
		if f.files[d] != nil {
			return &fs.PathError{Op: "mkdir", Path: d, Err: errors.New("not a directory")}
		}
		f.dirs[d] = true
	}
	return nil
}

func (f *FS) SyncDir(dir string) error {
	f.mu.Lock()
	dir = filepath.Clean(dir)
	if !f.dirs[dir] {
		f.mu.Unlock()
		return notExist("sync", dir)
	}
	for name := range f.durable {
		if filepath.Dir(name) == dir {
			delete(f.durable, name)
		}
	}
	for name, file := range f.files {
		if filepath.Dir(name) == dir {
			f.durable[name] = file
		}
	}
	f.mu.Unlock()
	f.after()
	return nil
}

// Lock takes an in-memory lock; the file is created as Create would,
// but not emptied.
func (f *FS) Lock(name string, shared, wait bool) (*vfs.Lock, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	file, name, err := f.lookup("lock", name)
	if err != nil {
		return nil, err
	}
	if file == nil {
		f.files[name] = New(0)
	}
	ls := f.locks[name]
	if ls == nil {
		ls = &lockState{}
		f.locks[name] = ls
	}
	for ls.excl || !shared && ls.shared > 0 {
		if !wait {
			return nil, &fs.PathError{Op: "lock", Path: name, Err: vfs.ErrLocked}
		}
		f.freed.Wait()
	}
	if shared {
		ls.shared++
	} else {
		ls.excl = true
	}
	var once sync.Once
	return vfs.NewLock(func() error {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if shared {
				ls.shared--
			} else {
				ls.excl = false
			}
			f.freed.Broadcast()
		})
		return nil
	}), nil
}

// PowerCut returns the file system as the disk holds it after a power
// cut: the entries as of each directory's last sync, each file cut as
// File.PowerCut does with keep. The receiver goes on unchanged.
func (f *FS) PowerCut(keep func(off int64) bool) *FS {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := NewFS()
	for d := range f.dirs {
		n.dirs[d] = true
	}
	cut := map[*File]*File{}
	for name, file := range f.durable {
		c := cut[file]
		if c == nil {
			c = file.PowerCut(keep)
			cut[file] = c
		}
		n.files[name], n.durable[name] = c, c
	}
	return n
}

// File returns the file name as reads see it, or nil.
func (f *FS) File(name string) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[filepath.Clean(name)]
}

// handle is a file opened through an FS: closing it leaves the file.
type handle struct {
	*File
	fs     *FS
	mu     sync.Mutex
	closed bool
}

func (h *handle) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return errors.New("faultfs: file closed")
	}
	return nil
}

// changed runs op on the file and then the FS's After.
func (h *handle) changed(op func() error) error {
	if err := h.check(); err != nil {
		return err
	}
	if err := op(); err != nil {
		return err
	}
	h.fs.after()
	return nil
}

func (h *handle) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	// Reads past the end stop there, as a file's do.
	size, _ := h.File.Size()
	if off >= size {
		return 0, io.EOF
	}
	n, err := h.File.ReadAt(p[:min(int64(len(p)), size-off)], off)
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return n, err
}

func (h *handle) WriteAt(p []byte, off int64) (int, error) {
	err := h.changed(func() error {
		// Writes past the end extend the file, as a file's do.
		if size, _ := h.File.Size(); off+int64(len(p)) > size {
			if err := h.File.Truncate(off + int64(len(p))); err != nil {
				return err
			}
		}
		_, err := h.File.WriteAt(p, off)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (h *handle) Sync() error { return h.changed(h.File.Sync) }
func (h *handle) Truncate(size int64) error {
	return h.changed(func() error { return h.File.Truncate(size) })
}
func (h *handle) Punch(off, n int64) error {
	return h.changed(func() error { return h.File.Punch(off, n) })
}

func (h *handle) Allocate(off, n int64) error {
	return h.changed(func() error { return h.File.Allocate(off, n) })
}
func (h *handle) Zero(off, n int64) error {
	return h.changed(func() error { return h.File.Zero(off, n) })
}

func (h *handle) Size() (int64, error) {
	if err := h.check(); err != nil {
		return 0, err
	}
	return h.File.Size()
}

func (h *handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	return nil
}
