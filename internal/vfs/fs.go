package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// FS is the directory side of the file interface: what the engines do to
// names rather than to bytes. Names are paths of the host's form. A change
// to a directory's entries (a file created, renamed or removed) survives a
// power cut only once SyncDir of that directory has returned, as a file's
// data only once its Sync has. OS is the host's; faultfs has one that
// forgets what was not synced.
type FS interface {
	// Create opens name for reading and writing, creating it, or emptying
	// it if it exists.
	Create(name string) (RWFile, error)
	// Open opens an existing file for reading and writing.
	Open(name string) (RWFile, error)
	// Rename renames oldname to newname, replacing any file there.
	Rename(oldname, newname string) error
	// Remove removes the file name.
	Remove(name string) error
	// List returns the names of dir's entries, sorted.
	List(dir string) ([]string, error)
	// MkdirAll creates dir and any missing parent, durably: each directory
	// it creates is synced into its parent.
	MkdirAll(dir string) error
	// SyncDir makes the changes to dir's entries durable.
	SyncDir(dir string) error
	// Lock takes the lock of the file name, creating the file if need be:
	// shared or exclusive; without wait it fails at once with ErrLocked
	// when another holder is in the way.
	Lock(name string, shared, wait bool) (*Lock, error)
}

// RWFile is a file opened through an FS.
type RWFile interface {
	File
	Resizer
}

// OS is the host's file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) Create(name string) (RWFile, error) {
	return openOS(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC)
}
func (osFS) Open(name string) (RWFile, error) { return openOS(name, os.O_RDWR) }
func (osFS) Rename(oldname, newname string) error {
	return os.Rename(oldname, newname)
}
func (osFS) Remove(name string) error { return os.Remove(name) }

func openOS(name string, flag int) (RWFile, error) {
	f, err := os.OpenFile(name, flag, 0o600)
	if err != nil {
		return nil, err
	}
	return &OSFile{f: f}, nil
}

func (osFS) List(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir) // sorted
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (fsys osFS) MkdirAll(dir string) error {
	dir = filepath.Clean(dir)
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("mkdir %s: not a directory", dir)
		}
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := fsys.MkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return fsys.SyncDir(filepath.Dir(dir))
}

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ErrLocked says that another holder has the lock asked for.
var ErrLocked = errors.New("vfs: locked by another holder")

// Lock is a held lock; Unlock releases it.
type Lock struct{ release func() error }

// NewLock returns a held lock that release releases, for an FS to hand
// out.
func NewLock(release func() error) *Lock { return &Lock{release: release} }

// Unlock releases the lock.
func (l *Lock) Unlock() error { return l.release() }

// The host's locks are open-file-description locks (fcntl F_OFD_SETLK) on
// the whole file, released when the file is closed. Unlike flock, one can
// be tested without being taken (IsLocked), so that looking at a lock
// never makes a taker fail.
func (osFS) Lock(name string, shared, wait bool) (*Lock, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	lk := wholeFileLock(shared)
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	for {
		if err = unix.FcntlFlock(f.Fd(), cmd, &lk); !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("%s: %w", name, ErrLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return NewLock(f.Close), nil
}

func wholeFileLock(shared bool) unix.Flock_t {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if shared {
		lk.Type = unix.F_RDLCK
	}
	return lk
}

// IsLocked reports whether a holder has the host's lock of the file at
// path, shared or exclusive, without taking it. A missing file is not
// locked.
func IsLocked(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	lk := wholeFileLock(false) // conflicts with any lock
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// WriteFileAtomic replaces name with b so that after a power cut name holds
// the old contents or the new, whole: b is written to a temporary file
// beside name, synced, renamed over name, and the directory synced.
func WriteFileAtomic(fsys FS, name string, b []byte) error { return replace(fsys, name, b, true) }

// ReplaceFile replaces name with b so that readers see the old contents or
// the new, whole; nothing is synced (for files that need not survive a
// crash, such as published figures).
func ReplaceFile(fsys FS, name string, b []byte) error { return replace(fsys, name, b, false) }

func replace(fsys FS, name string, b []byte, durable bool) error {
	dir := filepath.Dir(name)
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.tmp-%016x", filepath.Base(name), rand.Uint64()))
	f, err := fsys.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, name)
	}
	if err != nil {
		fsys.Remove(tmp)
		return err
	}
	if durable {
		return fsys.SyncDir(dir)
	}
	return nil
}

// ReadFile returns the contents of the file name.
func ReadFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}

// CopyData copies the first n bytes of src to the same offsets of dst,
// which must read as zeros there (a file just sized), keeping holes: with
// copy_file_range between host files, elsewhere by leaving out blocks of
// zeros.
func CopyData(dst, src File, n int64) error {
	if d, ok := dst.(*OSFile); ok {
		if s, ok := src.(*OSFile); ok {
			return copyFileRange(d, s, n)
		}
	}
	buf := make([]byte, 1<<20)
	zero := make([]byte, BlockSize)
	for off := int64(0); off < n; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), n-off)]
		if _, err := src.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for k := 0; k < len(b); k += BlockSize {
			blk := b[k:min(k+BlockSize, len(b))]
			if bytes.Equal(blk, zero[:len(blk)]) {
				continue
			}
			if _, err := dst.WriteAt(blk, off+int64(k)); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyFileRange(dst, src *OSFile, n int64) error {
	for off := int64(0); off < n; {
		in, out := off, off
		c, err := unix.CopyFileRange(int(src.f.Fd()), &in, int(dst.f.Fd()), &out, int(min(n-off, 1<<30)), 0)
		if err != nil {
			return fmt.Errorf("copy %s: %w", src.f.Name(), err)
		}
		if c == 0 {
			return fmt.Errorf("copy %s: short copy at %d", src.f.Name(), off)
		}
		off += int64(c)
	}
	return nil
}
