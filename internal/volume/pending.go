package volume

import (
	"cmp"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// Writes of whole blocks are deferred, gjournal style: a write's data goes
// into its journal record only, and the volume answers once the journal
// worker has written the record to the ring (so it outlives this process;
// a flush makes it outlive the machine). The committer later applies the
// newest data of every block to the data image, sorted and coalesced, in
// large writes, then syncs and checkpoints.
//
// Until then the data is found through pending: for every 4 KiB block
// written and not yet applied, the FIFO index of its newest data. The
// journal keeps those records in its FIFO (journal.Options.Retain) until
// the committer releases them, so the data stays where the index points,
// and the index never holds more entries than the FIFO has blocks:
// FIFOSize/4096 (4096 for the default 16 MiB FIFO, about 50 bytes each).
// A FIFO full of records not yet applied makes writers wait (a stall in
// the journal's figures) until the committer frees it.
//
// Writes of part of a block, and discards, go through to the data image as
// before, after applying whatever pending data they overlap.
type pending struct {
	mu sync.RWMutex // shared by readers and the committer's collect
	m  map[int64]uint64
	n  atomic.Int64 // len(m), read without the lock
	// Owned by the committer: the entries of one apply.
	apply []entry
}

type entry struct {
	block int64
	at    uint64 // FIFO index of the block's data
}

func newPending(fifoSize int) *pending {
	return &pending{m: make(map[int64]uint64, fifoSize/blk)}
}

// put records that the n blocks from block on have their newest data in
// the FIFO from index at on.
func (p *pending) put(block int64, n int, at uint64) {
	p.mu.Lock()
	for i := range int64(n) {
		p.m[block+i] = at + uint64(i)*blk
	}
	p.n.Store(int64(len(p.m)))
	p.mu.Unlock()
}

// overlaps reports whether any of the blocks [first, last] is pending.
func (p *pending) overlaps(first, last int64) bool {
	if p.n.Load() == 0 {
		return false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if last-first >= int64(len(p.m)) {
		for b := range p.m {
			if b >= first && b <= last {
				return true
			}
		}
		return false
	}
	for b := first; b <= last; b++ {
		if _, ok := p.m[b]; ok {
			return true
		}
	}
	return false
}

// readAt reads [off, off+len(b)): the pending blocks from fifo, under the
// shared lock, then the others through read (the data image), without it.
// A block found not pending was in the data image by then (the committer
// forgets a block only after writing it); a write that makes it pending
// afterwards is concurrent with the read, which may return either. It
// returns how many of the blocks were pending, and how many in all.
func (p *pending) readAt(b []byte, off int64, read func([]byte, int64) error, fifo func(uint64, int) []byte) (laid, blocks int, err error) {
	if p.n.Load() == 0 {
		return 0, 0, read(b, off)
	}
	for len(b) > 0 { // in pieces of up to readPiece blocks, one bit each
		var found [readPiece / 64]uint64
		first := off / blk
		end := min(off+int64(len(b)), (first+readPiece)*blk)
		p.mu.RLock()
		for k := first; k*blk < end; k++ {
			blocks++
			at, ok := p.m[k]
			if !ok {
				continue
			}
			laid++
			found[(k-first)/64] |= 1 << ((k - first) % 64)
			from, to := max(off, k*blk), min(end, k*blk+blk)
			copy(b[from-off:to-off], fifo(at+uint64(from-k*blk), int(to-from)))
		}
		p.mu.RUnlock()
		// The runs of blocks not found, from the data image.
		for k := first; k*blk < end; {
			if found[(k-first)/64]&(1<<((k-first)%64)) != 0 {
				k++
				continue
			}
			from := max(off, k*blk)
			for k*blk < end && found[(k-first)/64]&(1<<((k-first)%64)) == 0 {
				k++
			}
			to := min(end, k*blk)
			if err := read(b[from-off:to-off], from); err != nil {
				return 0, 0, err
			}
		}
		b, off = b[end-off:], end
	}
	return laid, blocks, nil
}

// readPiece is how many blocks readAt looks up at a time.
const readPiece = 256

// collect returns the pending entries whose data lies before FIFO index
// before, sorted by block.
func (p *pending) collect(before uint64) []entry {
	p.apply = p.apply[:0]
	p.mu.RLock()
	for b, at := range p.m {
		if at < before {
			p.apply = append(p.apply, entry{b, at})
		}
	}
	p.mu.RUnlock()
	slices.SortFunc(p.apply, func(a, b entry) int { return cmp.Compare(a.block, b.block) })
	return p.apply
}

// prune forgets the entries collect returned, unless a newer write
// replaced them meanwhile.
func (p *pending) prune(applied []entry) {
	p.mu.Lock()
	for _, e := range applied {
		if p.m[e.block] == e.at {
			delete(p.m, e.block)
		}
	}
	p.n.Store(int64(len(p.m)))
	p.mu.Unlock()
}

// applyRun is the most one write of the committer carries.
const applyRun = 1 << 20

// applyWriters is how many writes the committer keeps in flight on a data
// image opened for direct I/O, where each write waits for its device.
// Through the page cache (Volume.cached) one writer does: its writes are
// copies, and the sync writes them back in batches.
const applyWriters = 8

// applyPending writes the pending entries (sorted by block) to the data
// image: runs of adjacent blocks become one write each, up to applyRun
// bytes. It does not sync.
func (v *Volume) applyPending(ents []entry) error {
	if len(ents) == 0 {
		return nil
	}
	var to io.WriterAt = v.data
	writers := applyWriters
	if v.cached != nil {
		to, writers = v.cached, 1
	}
	var next atomic.Int64 // index into ents of the next run's start, claimed by a writer
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for w := range min(writers, len(ents)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := getBuf(applyRun)
			defer putBuf(b)
			buf := *b
			for errs[w] == nil {
				i := int(next.Load())
				if i >= len(ents) {
					return
				}
				// Claim a run: from i, adjacent blocks up to applyRun.
				j := i + 1
				for j < len(ents) && ents[j].block == ents[j-1].block+1 && (j-i)*blk < applyRun {
					j++
				}
				if !next.CompareAndSwap(int64(i), int64(j)) {
					continue
				}
				for k := i; k < j; k++ {
					copy(buf[(k-i)*blk:], v.j.Bytes(ents[k].at, blk))
				}
				_, errs[w] = to.WriteAt(buf[:(j-i)*blk], ents[i].block*blk)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
