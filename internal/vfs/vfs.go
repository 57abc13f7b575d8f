// Package vfs is the small file interface the engines write through: File
// for a file's bytes, FS for names (create, open, rename, remove, list,
// mkdir, sync a directory, lock), with the one atomic file write
// (WriteFileAtomic) and the one lock. The operating system implementation
// opens data files with O_DIRECT where the file system allows it; tests
// substitute faultfs, which injects failed writes and syncs, drops unsynced
// data and undoes unsynced directory changes (a power cut), and tears
// sectors.
package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// BlockSize is the alignment of every offset, length and buffer handed to a
// File opened for direct I/O.
const BlockSize = 4096

// File is what the engines need of a backing file.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// Size returns the current length of the file.
	Size() (int64, error)
	Close() error
}

// Resizer is a File whose length can change: the data image of a volume.
type Resizer interface {
	// Truncate sets the file's length; it is durable after the next Sync.
	Truncate(size int64) error
	// Punch deallocates [off, off+n): it reads as zeros afterwards.
	Punch(off, n int64) error
	// Allocate gives [off, off+n) disk blocks without changing the length
	// or the data (fallocate, no zeroing): later writes there cannot fail
	// for want of space. It fails with ENOSPC, holding whatever it got,
	// when the file system cannot give them all.
	Allocate(off, n int64) error
	// Zero makes [off, off+n) read as zeros and keeps its blocks.
	Zero(off, n int64) error
}

// OSFile is a File on the host file system.
type OSFile struct {
	f      *os.File
	direct bool
}

// OpenDirect opens an existing file for reading and writing, with O_DIRECT
// when the file system supports it (tmpfs does not; then the page cache is
// used and Sync still makes writes durable).
func OpenDirect(path string) (*OSFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if errors.Is(err, syscall.EINVAL) {
		f, err = os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		return &OSFile{f: f}, nil
	}
	if err != nil {
		return nil, err
	}
	return &OSFile{f: f, direct: true}, nil
}

// OpenBuffered opens an existing file for reading and writing through the
// page cache: for files written at any offset and synced once (a
// snapshot's image).
func OpenBuffered(path string) (*OSFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &OSFile{f: f}, nil
}

// NextData returns the first range of f at or after off that may hold
// data, [data, hole), and false past the last: SEEK_DATA and SEEK_HOLE for
// a file of the host's (holes, and blocks allocated and never written, are
// skipped), the whole rest up to size for any other File.
func NextData(f File, off, size int64) (data, hole int64, ok bool, err error) {
	o, isOS := f.(*OSFile)
	if !isOS {
		return off, size, off < size, nil
	}
	fd := int(o.f.Fd())
	data, err = unix.Seek(fd, off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return 0, 0, false, nil
	}
	if err != nil {
		return 0, 0, false, err
	}
	hole, err = unix.Seek(fd, data, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, false, err
	}
	return data, min(hole, size), data < size, nil
}

// Clone makes dst share all of src's blocks (FICLONE), where the file
// system can (XFS, btrfs); elsewhere it fails and nothing changed. Shared
// blocks cost nothing until either file writes them: a write then needs
// new blocks (copy on write), and can fail for want of space.
func Clone(dst, src *OSFile) error {
	return unix.IoctlFileClone(int(dst.f.Fd()), int(src.f.Fd()))
}

// CopySparse copies src's bytes into dst, which must be as long and hold
// nothing yet: only src's data (SEEK_DATA: not holes, nor blocks
// allocated and never written) and, where it copies through memory, only
// blocks that are not all zeros, so dst is as sparse as src holds data.
// With share, copy_file_range lets the file system share blocks where it
// can (see Clone); without, every block copied is dst's own. Writes to
// src meanwhile may or may not be seen, each block whole or not at all.
func CopySparse(dst, src *OSFile, share bool) error {
	size, err := src.Size()
	if err != nil {
		return err
	}
	var buf []byte
	for off := int64(0); off < size; {
		data, hole, ok, err := NextData(src, off, size)
		if err != nil || !ok {
			return err
		}
		if share {
			err = copyRange(dst, src, data, hole)
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				share = false // another file system, or none that can: copy
			}
		}
		if !share {
			if buf == nil {
				buf = AlignedBuffer(1 << 20)
			}
			err = copyRead(dst, src, data, hole, buf)
		}
		if err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies [from, to) of src into dst with copy_file_range.
func copyRange(dst, src *OSFile, from, to int64) error {
	for r, w := from, from; r < to; {
		n, err := unix.CopyFileRange(int(src.f.Fd()), &r, int(dst.f.Fd()), &w, int(min(to-r, 1<<30)), 0)
		if err != nil {
			return fmt.Errorf("copy_file_range at %d: %w", r, err)
		}
		if n == 0 {
			return fmt.Errorf("copy_file_range at %d: %w", r, io.ErrUnexpectedEOF)
		}
	}
	return nil
}

// copyRead copies [from, to) of src into dst through buf (aligned, for a
// src opened for direct I/O; extents are block-aligned), writing only the
// blocks that are not all zeros (dst holds nothing yet: it reads zeros).
func copyRead(dst, src *OSFile, from, to int64, buf []byte) error {
	for off := from; off < to; {
		n := int(min(int64(len(buf)), to-off))
		if src.direct {
			n = (n + BlockSize - 1) &^ (BlockSize - 1)
		}
		got, err := src.ReadAt(buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && got > 0) {
			return err
		}
		got = int(min(int64(got), to-off))
		err = DataRuns(buf[:got], func(i, j int) error {
			_, err := dst.WriteAt(buf[i:j], off+int64(i))
			return err
		})
		if err != nil {
			return err
		}
		off += int64(got)
	}
	return nil
}

// WriteVAt writes bufs one after another from off: in one system call
// (pwritev) where f can, one write each otherwise. Direct I/O wants every
// buffer aligned.
func WriteVAt(f File, bufs [][]byte, off int64) error {
	if v, ok := f.(interface {
		WriteVAt([][]byte, int64) error
	}); ok {
		return v.WriteVAt(bufs, off)
	}
	for _, b := range bufs {
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(len(b))
	}
	return nil
}

// WriteVAt writes bufs one after another from off with one pwritev.
func (o *OSFile) WriteVAt(bufs [][]byte, off int64) error {
	want := 0
	for _, b := range bufs {
		want += len(b)
	}
	n, err := unix.Pwritev(int(o.f.Fd()), bufs, off)
	if err == nil && n != want {
		err = io.ErrShortWrite
	}
	if err != nil {
		return &os.PathError{Op: "pwritev", Path: o.f.Name(), Err: err}
	}
	return nil
}

// Direct reports whether the file bypasses the page cache.
func (o *OSFile) Direct() bool { return o.direct }

// Cached opens a second handle on a file opened for direct I/O that goes
// through the page cache, or returns nil for a file that is not direct.
// It is for writes that are many, small and synced together (a volume's
// committer): the kernel writes those back in batches, where each direct
// write pays a device round trip. A Sync of either handle syncs both.
func (o *OSFile) Cached() (*OSFile, error) {
	if !o.direct {
		return nil, nil
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", o.f.Fd()), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	return &OSFile{f: f}, nil
}

// DropCache evicts the file's clean pages from the page cache: after a
// Sync, what Cached wrote leaves memory.
func (o *OSFile) DropCache() error {
	return unix.Fadvise(int(o.f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

func (o *OSFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *OSFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *OSFile) Sync() error                              { return unix.Fdatasync(int(o.f.Fd())) }
func (o *OSFile) Close() error                             { return o.f.Close() }

func (o *OSFile) Truncate(size int64) error { return o.f.Truncate(size) }

func (o *OSFile) Punch(off, n int64) error {
	return unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func (o *OSFile) Allocate(off, n int64) error {
	return unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// Zero asks the file system to zero the range in place (unwritten
// extents); one that cannot (tmpfs) gets zeros written.
func (o *OSFile) Zero(off, n int64) error {
	err := unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	return writeZeros(o, off, n)
}

// writeZeros writes zeros over [off, off+n), which is block-aligned where
// f is opened for direct I/O.
func writeZeros(f io.WriterAt, off, n int64) error {
	z := AlignedBuffer(int(min(n, 1<<20)+BlockSize-1) &^ (BlockSize - 1))
	for n > 0 {
		c := min(n, int64(len(z)))
		if _, err := f.WriteAt(z[:c], off); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}

// Allocated returns the bytes of disk the file holds.
func (o *OSFile) Allocated() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(o.f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// Available returns the bytes the file's file system can still give it.
func (o *OSFile) Available() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(o.f.Fd()), &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func (o *OSFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Preallocate creates path with size bytes allocated on disk (fallocate), so
// that later writes never extend the file: a growing file costs about twice
// as much per fdatasync. It refuses to overwrite an existing file.
func Preallocate(path string, size int64) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil { // nothing is left half made on a full disk
			f.Close()
			os.Remove(path)
		}
	}()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		// Some file systems cannot fallocate; a sized sparse file still
		// works. Any other failure (ENOSPC above all) is the caller's: the
		// file goes, with whatever blocks it had got.
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("preallocate %s: %w", path, err)
		}
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("size %s: %w", path, err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return OS.SyncDir(filepath.Dir(path))
}

// AlignedBuffer returns a zeroed buffer of n bytes whose first byte is aligned
// to BlockSize, as O_DIRECT requires.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+BlockSize)
	shift := 0
	if r := int(uintptrOf(b) % BlockSize); r != 0 {
		shift = BlockSize - r
	}
	return b[shift : shift+n : shift+n]
}

// IsAligned reports whether b can be used for direct I/O at its address
// and length (the offset is the caller's to check).
func IsAligned(b []byte) bool {
	return uintptrOf(b)%BlockSize == 0 && len(b)%BlockSize == 0
}

// OpenReadOnly opens an existing file for reading only; its writes fail.
// Tools that inspect an image (dump, status) use it.
func OpenReadOnly(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return readOnly{&OSFile{f: f}}, nil
}

type readOnly struct{ *OSFile }

func (readOnly) WriteAt([]byte, int64) (int, error) {
	return 0, errors.New("vfs: file opened read only")
}
func (readOnly) Sync() error { return nil }

// Written returns the bytes of the file at path that hold data: neither
// holes nor blocks allocated and never written (ext4, XFS and tmpfs
// report those as holes too), so a thick image counts as a sparse one.
func Written(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	o := &OSFile{f: f}
	size, err := o.Size()
	if err != nil {
		return 0, err
	}
	var n int64
	for off := int64(0); off < size; {
		data, hole, ok, err := NextData(o, off, size)
		if err != nil || !ok {
			return n, err
		}
		n, off = n+hole-data, hole
	}
	return n, nil
}

// IsZero reports whether b holds only zeros.
func IsZero(b []byte) bool {
	for len(b) > 0 { // compared a block at a time: memequal is vectorised
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroBlock [BlockSize]byte

// DataRuns calls fn for each run [i, j) of p's BlockSize blocks (the last
// may be short) that are not all zeros, in order, until fn fails.
func DataRuns(p []byte, fn func(i, j int) error) error {
	for i := 0; i < len(p); {
		for i < len(p) && IsZero(p[i:min(i+BlockSize, len(p))]) {
			i += BlockSize
		}
		j := i
		for j < len(p) && !IsZero(p[j:min(j+BlockSize, len(p))]) {
			j += BlockSize
		}
		if j > i {
			if err := fn(i, min(j, len(p))); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}
