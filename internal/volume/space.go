package volume

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Provisioning says when a volume's data image gets its disk blocks. A
// volume never acknowledges a write it has no blocks for: once written to
// the journal a write must reach the data image, whatever the host file
// system's free space is then.
//
// Writing into a hole also costs: the host file system allocates inside
// the request, and ext4 and XFS serialise direct writes that allocate
// (the inode lock taken exclusively, waiting for all direct I/O in
// flight), where writes into allocated blocks, even unwritten ones, run
// in parallel. So a fresh sparse image ran at a quarter of a full one.
type Provisioning string

const (
	// Thick allocates the whole data image when the volume is made and
	// when it grows (fallocate: unwritten extents, no zeroing), and a
	// discard zeroes in place, keeping the blocks. No write can meet a
	// full disk; making or growing the volume fails instead.
	Thick Provisioning = "thick"
	// Thin keeps the image sparse, for overcommitting on purpose. The
	// first write into each AllocStep of the image allocates the whole
	// step before the write is journaled, so a full disk fails that
	// write, never one already acknowledged; a discard gives the blocks
	// back.
	Thin Provisioning = "thin"
)

// AllocStep is how much of a thin volume's data image is allocated at
// once: large, so that allocation is rare and the steps' extents long.
const AllocStep = 8 << 20

// ParseProvisioning reads thick or thin, in any case.
func ParseProvisioning(s string) (Provisioning, error) {
	switch p := Provisioning(strings.ToLower(s)); p {
	case Thick, Thin:
		return p, nil
	}
	return "", fmt.Errorf("provisioning %q: want thick or thin", s)
}

// allocated is what a thin volume knows of its data image's blocks: a
// bit per AllocStep, set once the step has been allocated since the
// volume was opened (a step allocated before costs one fallocate again).
// Writes test their steps' bits without a lock; allocation and discard
// take mu, so that a discard's hole never hides behind a set bit.
type allocated struct {
	mu   sync.Mutex
	bits []atomic.Uint64
}

func newAllocated(size int64) *allocated {
	a := &allocated{}
	a.resize(size)
	return a
}

// resize makes room for the steps of size bytes; the caller excludes
// every other use (the volume's size lock, held exclusively).
func (a *allocated) resize(size int64) {
	steps := (size + AllocStep - 1) / AllocStep
	if words := int((steps + 63) / 64); words > len(a.bits) {
		bits := make([]atomic.Uint64, words)
		for i := range a.bits {
			bits[i].Store(a.bits[i].Load())
		}
		a.bits = bits
	}
}

func (a *allocated) has(step int64) bool {
	return a.bits[step/64].Load()&(1<<(step%64)) != 0
}

func (a *allocated) set(step int64) { a.bits[step/64].Or(1 << (step % 64)) }

func (a *allocated) clear(step int64) { a.bits[step/64].And(^uint64(1 << (step % 64))) }

// reserve makes sure the data image holds blocks for [off, off+n) before
// a write there is journaled; the caller holds the size lock (shared). A
// replay reserves too, but goes on without the space (the blocks may
// still be there): it fails only if the write itself does.
func (v *Volume) reserve(off, n int64) error {
	a := v.alloc
	if a == nil || n == 0 {
		return nil
	}
	for s := off / AllocStep; s <= (off+n-1)/AllocStep; s++ {
		if !a.has(s) {
			if err := v.allocStep(s); err != nil {
				return err
			}
		}
	}
	return nil
}

func (v *Volume) allocStep(s int64) error {
	a := v.alloc
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.has(s) {
		return nil
	}
	off := s * AllocStep
	if err := v.data.Allocate(off, min(AllocStep, v.size-off)); err != nil {
		v.stats.spaceErrors.Add(1)
		return fmt.Errorf("volume: no space for [%d, %d) of the data image: %w", off, off+AllocStep, err)
	}
	a.set(s)
	return nil
}

// deallocate makes [off, off+n) read as zeros: a thick volume keeps the
// blocks, a thin one gives them back and forgets the steps it touched.
func (v *Volume) deallocate(off, n int64) error {
	a := v.alloc
	if a == nil {
		return v.zero(off, n)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for s := off / AllocStep; s <= (off+n-1)/AllocStep; s++ {
		a.clear(s)
	}
	return v.data.Punch(off, n)
}

// zero zeroes [off, off+n) of a thick volume in place: whole blocks by
// the file system (unwritten extents), the partial blocks at either end by
// writing zeros over them (the caller holds the range's lock). A file
// system that zeroes by freeing and allocating again (XFS) may fail for
// want of space after freeing: the range then reads as zeros all the
// same, as a hole, and the failure is counted.
func (v *Volume) zero(off, n int64) error {
	start, end := (off+blk-1)&^(blk-1), (off+n)&^(blk-1)
	if start >= end { // inside one block
		return v.writeData(make([]byte, n), off)
	}
	if off < start {
		if err := v.writeData(make([]byte, start-off), off); err != nil {
			return err
		}
	}
	if off+n > end {
		if err := v.writeData(make([]byte, off+n-end), end); err != nil {
			return err
		}
	}
	if err := v.data.Zero(start, end-start); err != nil {
		if !errors.Is(err, syscall.ENOSPC) {
			return err
		}
		v.stats.spaceErrors.Add(1)
		return v.data.Punch(start, end-start)
	}
	return nil
}

// grown allocates what a grow from old to size adds, for a thick volume;
// a thin one only has more steps to allocate later. The caller holds the
// size lock exclusively.
func (v *Volume) grown(old, size int64) error {
	if a := v.alloc; a != nil {
		a.resize(size)
		if old%AllocStep != 0 { // its last step was allocated up to old only
			a.clear(old / AllocStep)
		}
		return nil
	}
	if err := v.data.Allocate(old, size-old); err != nil {
		v.stats.spaceErrors.Add(1)
		return fmt.Errorf("volume: no space to grow the data image to %d bytes: %w", size, err)
	}
	return nil
}

// Space is what a volume holds of its host file system.
type Space struct {
	Provisioning Provisioning
	// Allocated is the bytes of disk the data image holds (0 if its file
	// cannot say), Available what the host file system can still give.
	Allocated, Available int64
	// Low: a thin volume that may yet need more than the host file
	// system has left (see lowWater).
	Low bool
	// Errors counts writes and grows refused for want of space.
	Errors uint64
}

// SpaceFile is a data image that can tell its allocation.
type SpaceFile interface {
	Allocated() (int64, error)
	Available() (int64, error)
}

// lowWater is the free space under which a thin volume of size bytes
// that could still take more is low on space: a tenth of its size, at
// least 64 MiB.
func lowWater(size int64) int64 { return max(size/10, 64<<20) }

func (v *Volume) space(size int64) Space {
	s := Space{Provisioning: v.cfg.Provisioning, Errors: v.stats.spaceErrors.Load()}
	f, ok := v.data.(SpaceFile)
	if !ok {
		return s
	}
	var err1, err2 error
	s.Allocated, err1 = f.Allocated()
	s.Available, err2 = f.Available()
	s.Low = v.alloc != nil && err1 == nil && err2 == nil && s.Available < min(size-s.Allocated, lowWater(size))
	return s
}
