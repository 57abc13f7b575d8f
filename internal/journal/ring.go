package journal

import (
	"fmt"
	"sync/atomic"

	"github.com/jvol-io/jvol/internal/vfs"
)

const blk = vfs.BlockSize

// ringWriter appends records to the ring with direct I/O, straight from the
// FIFO's memory: a record's ring position and its FIFO index are congruent
// modulo the block size, so whole blocks of a run of records are written from
// the FIFO without a copy. Only the first and last partial blocks of a run go
// through a one-block scratch buffer, which always holds the ring block that
// the next byte lands in (bytes before that point valid, zeros after).
//
// A partial last block is written again, whole, when the next run extends
// it. Its old and new contents agree on every byte written before, so a
// rewrite torn sector by sector never damages a record that was durable.
type ringWriter struct {
	f    vfs.File
	ring uint64 // ring size
	fifo []byte // the FIFO's buffer, block aligned
	mask uint64

	head    uint64 // ring position after the last record placed
	scratch []byte // the ring block holding runH (or head when no run)
	spare   []byte // a run's last partial block, then swapped with scratch
	iov     [3][]byte
	dirty   bool // scratch holds bytes not yet written

	// The run: FIFO indices [runA, runB) placed at ring position runH, not
	// yet written. It never crosses the end of the ring or of the FIFO.
	runA, runB, runH uint64

	bytes atomic.Uint64 // record bytes written (not the rewrites of partial blocks)
}

func (w *ringWriter) fileOff(pos uint64) int64 { return int64(RingOffset + pos%w.ring) }

// record places the complete FIFO record at FIFO index pos at the head.
// The caller ensured that pos ≡ head (mod blk) and that the record fits
// before the end of the ring.
func (w *ringWriter) record(pos uint64, n uint64) error {
	if w.runA != w.runB {
		if pos != w.runB {
			panic(fmt.Sprintf("journal: FIFO record at %d does not follow the run ending at %d", pos, w.runB))
		}
		// A run is one piece of FIFO memory and of the ring: end it where
		// either wraps (both are block boundaries, so nothing is rewritten).
		if pos&w.mask == 0 || w.head%w.ring == 0 {
			if err := w.flush(true); err != nil {
				return err
			}
		}
	}
	if w.runA == w.runB {
		w.runA, w.runB, w.runH = pos, pos, w.head
	}
	w.runB += n
	w.head += n
	return nil
}

// pad places a pad record of n bytes with id transid at the head. Only its
// header and trailer are written: a pad's body is never read.
func (w *ringWriter) pad(n, transid uint64) error {
	if err := w.flush(true); err != nil {
		return err
	}
	var hdr [HeaderSize]byte
	putHeader(hdr[:], Header{Magic: BeginMagic, Stream: StreamPad | FlagBegin | FlagEnd, Size: uint32(n), Transid: transid})
	off := w.head % blk
	copy(w.scratch[off:], hdr[:])
	w.dirty = true
	end := w.head + n
	if off+n > blk {
		// The trailer lies in a later block: write this one, start that one.
		if err := w.writeScratch(w.head); err != nil {
			return err
		}
		clear(w.scratch)
	}
	if n > HeaderSize {
		t := w.scratch[(end-TrailerSize)%blk:]
		putTrailer(t, recordCRC(hdr[:], nil), uint32(n))
		w.dirty = true
	}
	w.head = end
	if end%blk == 0 {
		if err := w.writeScratch(end - 1); err != nil {
			return err
		}
		clear(w.scratch)
	}
	return nil
}

// writeScratch writes the scratch buffer as the ring block holding pos.
func (w *ringWriter) writeScratch(pos uint64) error {
	if !w.dirty {
		return nil
	}
	if _, err := w.f.WriteAt(w.scratch, w.fileOff(pos&^(blk-1))); err != nil {
		return fmt.Errorf("journal: write ring at %d: %w", pos, err)
	}
	w.dirty = false
	return nil
}

// flush writes the run, in one vectored write: its first block completed
// in scratch if it starts inside one, its whole blocks straight from the
// FIFO, and (with all set) its last partial block, zero-filled; without
// all, that partial block stays as the run.
func (w *ringWriter) flush(all bool) error {
	if w.runA == w.runB {
		if all {
			return w.writeScratch(w.head)
		}
		return nil
	}
	a, b, h := w.runA, w.runB, w.runH
	start := h
	bufs := &w.iov // a field: a local array would escape into WriteVAt
	n := 0
	headBlock := false
	// The first block, if the run starts inside it: complete it in scratch.
	if off := h % blk; off != 0 {
		take := min(b-a, blk-off)
		if off+take < blk && !all {
			return nil // not a whole block yet
		}
		copy(w.scratch[off:], w.fifo[a&w.mask:(a&w.mask)+take])
		w.dirty = true
		w.bytes.Add(take)
		a, h = a+take, h+take
		if h%blk != 0 { // the run ended inside the block: scratch stays
			w.runA = w.runB
			return w.writeScratch(start)
		}
		start -= off
		bufs[n], n, headBlock = w.scratch, n+1, true
	}
	// Whole blocks, straight from the FIFO.
	if whole := (b - a) &^ (blk - 1); whole > 0 {
		fa := a & w.mask
		bufs[n], n = w.fifo[fa:fa+whole], n+1
		w.bytes.Add(whole)
		a, h = a+whole, h+whole
	}
	// The last, partial block.
	tail := a != b && all
	if tail {
		clear(w.spare)
		copy(w.spare, w.fifo[a&w.mask:(a&w.mask)+(b-a)])
		bufs[n], n = w.spare, n+1
		w.bytes.Add(b - a)
	}
	if n > 0 {
		err := vfs.WriteVAt(w.f, bufs[:n], w.fileOff(start))
		clear(bufs[:]) // hold no FIFO memory
		if err != nil {
			return fmt.Errorf("journal: write ring at %d: %w", start, err)
		}
	}
	if headBlock {
		clear(w.scratch) // written whole: the next block starts empty
		w.dirty = false
	}
	switch {
	case tail:
		w.scratch, w.spare = w.spare, w.scratch
		w.dirty = false
		w.runA = w.runB
	case a == b:
		w.runA = w.runB
	default:
		w.runA, w.runH = a, h
	}
	return nil
}
