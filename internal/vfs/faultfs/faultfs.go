// Package faultfs is an in-memory vfs.File that remembers which writes have
// been made durable by Sync, so that tests can cut the power (drop or tear
// the unsynced writes), corrupt what is on "disk", and make writes or syncs
// fail; and an in-memory vfs.FS of such files whose power cut also undoes
// the directory changes not yet synced.
package faultfs

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
)

// SectorSize is the unit a torn write keeps or loses: a disk writes a sector
// entirely or not at all.
const SectorSize = 512

// ErrInjected is returned by a write or sync that a test made fail.
var ErrInjected = errors.New("faultfs: injected I/O error")

// write is one unsynced write; an offset below zero, -1-size, is a
// change of length to size.
type write struct {
	off  int64
	data []byte
}

// apply applies w to b, in order after every earlier write, so that a
// write always lies inside b.
func apply(b []byte, w write) []byte {
	if w.off < 0 {
		return resize(b, -1-w.off)
	}
	copy(b[w.off:], w.data)
	return b
}

// File is the fault-injecting file. Its zero value is not usable; call New.
type File struct {
	mu      sync.Mutex
	durable []byte  // what survives a power cut
	current []byte  // what reads see
	pending []write // writes since the last Sync, in order
	closed  bool

	// Align, when non-zero, makes every offset, length and buffer address
	// that is not a multiple of it fail with an error, as O_DIRECT does.
	Align int
	// FailSync, when set, is asked before each sync; an error fails it and
	// the pending writes stay pending.
	FailSync func() error

	writes, syncs int
}

// New returns a file of size zero bytes, all durable.
func New(size int64) *File {
	return &File{durable: make([]byte, size), current: make([]byte, size)}
}

// check checks an access of p at off; align, if not zero, is the
// alignment it needs.
func (f *File) check(p []byte, off int64, align int) error {
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	if off < 0 || off+int64(len(p)) > int64(len(f.current)) {
		return fmt.Errorf("faultfs: access [%d,%d) outside file of %d bytes", off, off+int64(len(p)), len(f.current))
	}
	if a := int64(align); a != 0 && (off%a != 0 || int64(len(p))%a != 0) {
		return fmt.Errorf("faultfs: unaligned direct access at %d length %d", off, len(p))
	}
	return nil
}

func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(p, off, f.Align); err != nil {
		return 0, err
	}
	return copy(p, f.current[off:]), nil
}

func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.write(p, off, f.Align); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *File) write(p []byte, off int64, align int) error {
	if err := f.check(p, off, align); err != nil {
		return err
	}
	f.writes++
	copy(f.current[off:], p)
	f.pending = append(f.pending, write{off: off, data: append([]byte(nil), p...)})
	return nil
}

func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	if f.FailSync != nil {
		if err := f.FailSync(); err != nil {
			return err
		}
	}
	f.syncs++
	for _, w := range f.pending {
		f.durable = apply(f.durable, w)
	}
	f.pending = nil
	return nil
}

func (f *File) Size() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.current)), nil
}

// SetFailSync sets FailSync while the file may be in use.
func (f *File) SetFailSync(fn func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.FailSync = fn
}

// Truncate changes the length; like any write it is lost in a power cut
// unless synced (the durable length follows at Sync).
func (f *File) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	f.current = resize(f.current, size)
	f.pending = append(f.pending, write{off: -1 - size})
	return nil
}

// Punch zeroes [off, off+n), as an unsynced write of zeros.
func (f *File) Punch(off, n int64) error {
	if off < 0 || n < 0 {
		return errors.New("faultfs: bad punch")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	end := min(off+n, int64(len(f.current)))
	if off >= end {
		return nil
	}
	return f.write(make([]byte, end-off), off, 0)
}

// Allocate holds no blocks to give: memory is all there is. It fails only
// on a closed file.
func (f *File) Allocate(off, n int64) error {
	if off < 0 || n < 0 {
		return errors.New("faultfs: bad allocate")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("faultfs: file closed")
	}
	return nil
}

// Zero is Punch: a file here holds no blocks to keep.
func (f *File) Zero(off, n int64) error { return f.Punch(off, n) }

func resize(b []byte, size int64) []byte {
	if size <= int64(len(b)) {
		return b[:size:size]
	}
	return append(b, make([]byte, size-int64(len(b)))...)
}

// Close marks the file closed; the contents stay for a later Reopen.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// Counts returns how many writes and syncs succeeded.
func (f *File) Counts() (writes, syncs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, f.syncs
}

// Unsynced returns how many bytes of writes are not yet durable.
func (f *File) Unsynced() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range f.pending {
		n += len(w.data)
	}
	return n
}

// PowerCut returns the file as the disk holds it after a power cut: every
// synced write, and of the unsynced ones whatever keep decides sector by
// sector (nil keeps none). The receiver stays as it was, so that a process
// still using it sees no change; the returned file is a fresh, open one.
func (f *File) PowerCut(keep func(off int64) bool) *File {
	f.mu.Lock()
	defer f.mu.Unlock()
	img := append([]byte(nil), f.durable...)
	if keep != nil {
		for _, w := range f.pending {
			if w.off < 0 { // a length change persists whole or not at all
				if keep(w.off) {
					img = apply(img, w)
				}
				continue
			}
			for s := int64(0); s < int64(len(w.data)); s += SectorSize {
				if keep(w.off+s) && w.off+s < int64(len(img)) {
					end := min(s+SectorSize, int64(len(w.data)), int64(len(img))-w.off)
					copy(img[w.off+s:], w.data[s:end])
				}
			}
		}
	}
	return &File{durable: img, current: append([]byte(nil), img...), Align: f.Align}
}

// TearRandomly keeps each unsynced sector with probability one half, drawn
// from rng: a power cut in the middle of a stream of writes.
func TearRandomly(rng *rand.Rand) func(int64) bool {
	return func(int64) bool { return rng.IntN(2) == 0 }
}

// Mutate changes the bytes from off on, both on "disk" and in what reads
// see, as a disk that rots would. fn is called twice and must do the same
// thing both times.
func (f *File) Mutate(off int64, fn func(b []byte)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.durable[off:])
	fn(f.current[off:])
}

// Bytes returns a copy of what reads see.
func (f *File) Bytes() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.current...)
}
