package volume

import (
	"sync"

	"github.com/jvol-io/jvol/internal/vfs"
)

// The data image is opened for direct I/O: no page cache between the
// volume and the disk (the kernel above the loop device has its own), no
// dirty-page throttling of writers, and flushes that cost what they should.
// Direct I/O wants block-aligned offsets, lengths and memory, so data passes
// through aligned bounce buffers, and a write that covers part of a block
// reads the rest of it first (under the range lock, so nothing interleaves).

const blk = vfs.BlockSize

// bounce holds aligned buffers in power-of-two size classes from 4 KiB.
var bounce [16]sync.Pool

func class(n int) int {
	c := 0
	for blk<<c < n {
		c++
	}
	return c
}

// getBuf returns an aligned buffer of n bytes (a multiple of blk); putBuf
// gives it back.
func getBuf(n int) *[]byte {
	c := class(n)
	if c >= len(bounce) {
		b := vfs.AlignedBuffer(n)
		return &b
	}
	if b, ok := bounce[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := vfs.AlignedBuffer(blk << c)[:n]
	return &b
}

func putBuf(b *[]byte) {
	if c := class(cap(*b)); c < len(bounce) && blk<<c == cap(*b) {
		bounce[c].Put(b)
	}
}

func span(off, n int64) (start, end int64) {
	return off &^ (blk - 1), (off + n + blk - 1) &^ (blk - 1)
}

// readData reads [off, off+len(p)) of the data image.
func (v *Volume) readData(p []byte, off int64) error {
	if off%blk == 0 && vfs.IsAligned(p) { // the loop device's usual read
		_, err := v.data.ReadAt(p, off)
		return err
	}
	start, end := span(off, int64(len(p)))
	b := getBuf(int(end - start))
	defer putBuf(b)
	if _, err := v.data.ReadAt(*b, start); err != nil {
		return err
	}
	copy(p, (*b)[off-start:])
	return nil
}

// writeData writes p at off into the data image; the caller holds the
// range lock of [off, off+len(p)).
func (v *Volume) writeData(p []byte, off int64) error {
	start, end := span(off, int64(len(p)))
	b := getBuf(int(end - start))
	defer putBuf(b)
	buf := *b
	if off != start { // the head block is partly old
		if _, err := v.data.ReadAt(buf[:blk], start); err != nil {
			return err
		}
	}
	if tail := off + int64(len(p)); tail != end && (end-blk != start || off == start) {
		if _, err := v.data.ReadAt(buf[len(buf)-blk:], end-blk); err != nil {
			return err
		}
	}
	copy(buf[off-start:], p)
	_, err := v.data.WriteAt(buf, start)
	return err
}
