// Package volume turns the journal engine into a block device: a data image
// and a journal image, written through the journal.
//
// A write of whole blocks becomes a block-write record: reserved in the
// FIFO, filled, entered in the index of pending blocks, committed, and
// answered once the journal worker has written it to the ring. The data
// image gets it later, from the committer (see pending.go); reads find it
// through the index until then. A write of part of a block, and a discard,
// first has the committer apply whatever pending data it overlaps, then
// goes to the data image (direct I/O) before its record is committed, as
// all writes did before the commit was deferred. Overlapping writes are
// serialised by range locks, so journal order and data order agree.
//
// A flush waits until the journal has synced every earlier write. The
// committer, gjournal style, switches journal areas when half the ring is
// in use, half the FIFO holds records not yet applied, or the commit
// interval passes: it takes the journal's durable position, applies every
// pending block before it to the data image, fdatasyncs the data image, and
// checkpoints there. After a crash, Open replays the records after the
// checkpoint into the data image, newest last, before anything is served.
package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/hist"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// StreamIO is the journal stream id of block I/O.
const StreamIO = journal.StreamFirstTx

// DefaultCommitInterval is the longest the committer waits between commits.
const DefaultCommitInterval = 5 * time.Second

var (
	ErrOutOfRange = errors.New("volume: I/O beyond the end of the volume")
	ErrShrink     = errors.New("volume: a volume never shrinks")
	ErrAlignment  = errors.New("volume: size must be a multiple of 4096")
)

// Data is what the volume needs of its data image.
type Data interface {
	vfs.File
	vfs.Resizer
}

// Config tunes an open volume.
type Config struct {
	Journal        journal.Options
	CommitInterval time.Duration
	// Hold pins the journal's records from its checkpoint on, as Open
	// finds them, until the holder (the sink's sender) moves or drops the
	// hold: records not yet sent or acknowledged survive a restart.
	Hold bool
	// Resume says whether, and how, the block device above outlived the
	// process that served the volume before.
	Resume Resume
	// Provisioning is the volume's (see Provisioning); empty: Thin, as
	// volumes were made before it was chosen.
	Provisioning Provisioning
}

// Resume says how the block device above a volume outlived the process
// that served it (a keeper kept its FUSE connection), whose file system
// caches every write the kernel was told was done. Every such write is in
// the journal's ring (a write is answered once its record is written
// there), so Open replays the journal whatever the mode.
type Resume int

const (
	// NoResume: nothing survived.
	NoResume Resume = iota
	// ResumeClean: the server before closed the volume cleanly (a
	// handover): the journal holds every write.
	ResumeClean
	// ResumeCrash: the server before died. A write of part of a block or
	// a discard may have reached the data image and not the ring (it was
	// not answered), so Open syncs the data image and checkpoints after
	// the journal's last record, dropping any hold: the sink's stream may
	// miss it (a baseline copy must follow).
	ResumeCrash
)

// Volume is an open volume.
type Volume struct {
	data  Data
	alloc *allocated // a thin volume's allocated steps; nil when thick
	j     *journal.Journal
	locks rangeLocks
	cfg   Config

	sizeMu sync.RWMutex // held shared by I/O, exclusively to grow
	size   int64

	pend *pending // blocks written and not yet applied to the data image
	// cached is the data image through the page cache, which the
	// committer writes if the data image has it (vfs.OSFile.Cached).
	cached *vfs.OSFile

	commitMu sync.Mutex // one commit at a time
	commits  uint64
	lastCkpt uint64
	// Applied up to: the FIFO index, ring position and last id before
	// which every record is in the data image (not necessarily synced).
	appliedIdx, appliedPos, appliedID uint64
	ring                              uint64 // the journal's ring size
	hold                              hold
	pins                              map[*pin]struct{}
	quit                              chan struct{}
	done                              chan struct{}
	// ctx ends with the first commit failure: the volume is unusable then,
	// and I/O, even I/O blocked on a full journal, fails with the cause.
	ctx  context.Context
	fail context.CancelCauseFunc

	closeOnce sync.Once
	closeErr  error

	stats ioStats
}

// ioStats counts the volume's requests for its Stats: atomics and a histogram,
// nothing that allocates or locks.
type ioStats struct {
	reads, readBytes, writes, discards, discardBytes atomic.Uint64
	pendingReads, mixedReads                         atomic.Uint64
	spaceErrors                                      atomic.Uint64
	flushes, commits                                 hist.Durations
}

// Open opens a volume on its data and journal images (the journal already
// formatted). size is the volume's size as its metadata records it; a
// replayed resize may raise it (see Size). Records after the journal's
// checkpoint are replayed into the data image and committed before Open
// returns.
func Open(data Data, jf vfs.File, size int64, cfg Config) (*Volume, journal.Recovery, error) {
	if cfg.CommitInterval <= 0 {
		cfg.CommitInterval = DefaultCommitInterval
	}
	if cfg.Provisioning == "" {
		cfg.Provisioning = Thin
	}
	if cfg.Journal.FIFOSize == 0 {
		cfg.Journal.FIFOSize = journal.DefaultFIFOSize
	}
	cfg.Journal.Retain = true // pending data lives in the FIFO
	v := &Volume{data: data, cfg: cfg, size: size, quit: make(chan struct{}), done: make(chan struct{})}
	v.pend = newPending(cfg.Journal.FIFOSize)
	if cfg.Provisioning == Thin {
		v.alloc = newAllocated(size)
	}
	if cur, err := data.Size(); err != nil {
		return nil, journal.Recovery{}, err
	} else if cur < size {
		if err := v.extend(cur, size); err != nil {
			return nil, journal.Recovery{}, err
		}
	} else if f, ok := data.(SpaceFile); ok && cfg.Provisioning == Thick {
		// Blocks a crash took from a grow are allocated again. A disk too
		// full for them fails writes there later, as counted.
		if held, err := f.Allocated(); err == nil && held < size {
			if err := data.Allocate(0, size); err != nil {
				v.stats.spaceErrors.Add(1)
			}
		}
	}
	v.ctx, v.fail = context.WithCancelCause(context.Background())
	j, rec, err := journal.Open(jf, cfg.Journal, v.replay)
	if err != nil {
		return nil, rec, err
	}
	v.j = j
	// What was replayed is in the data image.
	v.appliedIdx, v.appliedPos, v.appliedID = j.DurableIndex()
	// Commit what was replayed, if anything was: nothing to sync otherwise.
	st := j.Stats()
	v.lastCkpt, v.ring = st.Checkpoint, st.RingSize
	if cfg.Hold && cfg.Resume != ResumeCrash {
		v.hold = hold{on: true, pos: st.Checkpoint, transid: st.CheckpointTransid}
	}
	if cfg.Resume == ResumeCrash {
		// Even with nothing after the checkpoint: the writes the journal
		// lost are made durable here.
		if err := data.Sync(); err != nil {
			j.Close()
			return nil, rec, fmt.Errorf("volume: sync data image: %w", err)
		}
	}
	if err := v.commit(); err != nil {
		j.Close()
		return nil, rec, err
	}
	if c, ok := data.(interface{ Cached() (*vfs.OSFile, error) }); ok {
		if v.cached, err = c.Cached(); err != nil {
			j.Close()
			return nil, rec, err
		}
	}
	go v.committer()
	return v, rec, nil
}

// replay applies one record found after the checkpoint to the data image.
func (v *Volume) replay(_ uint64, r journal.Record) error {
	if r.ID() != StreamIO || r.Stream&journal.FlagAborted != 0 {
		return nil
	}
	if r.Stream&(journal.FlagBegin|journal.FlagEnd) != journal.FlagBegin|journal.FlagEnd {
		return fmt.Errorf("volume: record %d is part of a multi-record transaction, which volumes do not write", r.Transid)
	}
	_, err := blockrec.Decode(r.Payload, uint64(v.size), func(op blockrec.Op) error {
		switch op.Kind {
		case blockrec.Write:
			// Best effort: a full disk may still hold the write's blocks
			// (the step was allocated before the crash, or by an older
			// jvol); only the write's own failure is final.
			v.reserve(int64(op.Off), int64(len(op.Data)))
			return v.writeData(op.Data, int64(op.Off))
		case blockrec.Discard:
			return v.deallocate(int64(op.Off), int64(op.Len))
		case blockrec.Resize:
			if int64(op.Size) > v.size {
				if err := v.extend(v.size, int64(op.Size)); err != nil {
					return err
				}
				v.size = int64(op.Size)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("volume: replaying record %d: %w", r.Transid, err)
	}
	return nil
}

// Size returns the volume's size in bytes.
func (v *Volume) Size() int64 {
	v.sizeMu.RLock()
	defer v.sizeMu.RUnlock()
	return v.size
}

func (v *Volume) check(off, n int64) error {
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		return fmt.Errorf("%w: [%d, %d) of %d", ErrOutOfRange, off, off+n, v.size)
	}
	return nil
}

// ReadAt reads the newest data of [off, off+len(p)).
func (v *Volume) ReadAt(p []byte, off int64) (int, error) {
	v.sizeMu.RLock()
	defer v.sizeMu.RUnlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	laid, blocks, err := v.pend.readAt(p, off, v.readData, v.j.Bytes)
	if err != nil {
		return 0, err
	}
	if laid > 0 {
		v.stats.pendingReads.Add(1)
		if laid < blocks {
			v.stats.mixedReads.Add(1)
		}
	}
	v.stats.reads.Add(1)
	v.stats.readBytes.Add(uint64(len(p)))
	return len(p), nil
}

// maxChunk is the largest write one record carries; larger ones are split
// (a block device promises no atomicity for a write anyway).
func (v *Volume) maxChunk() int {
	fifo := v.cfg.Journal.FIFOSize
	if fifo == 0 {
		fifo = journal.DefaultFIFOSize
	}
	return min(fifo/4, MaxRecordData)
}

// MaxRecordData is the most data one write record carries: a sink takes
// records of up to 8 MiB.
const MaxRecordData = 4 << 20

// WriteAt writes p at off. It returns once the write's records are in the
// journal's ring (it outlives this process); Flush makes it durable.
func (v *Volume) WriteAt(p []byte, off int64) (int, error) {
	v.sizeMu.RLock()
	defer v.sizeMu.RUnlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	v.stats.writes.Add(1)
	done := 0
	var end uint64
	for done < len(p) {
		n := min(len(p)-done, v.maxChunk())
		var err error
		if end, err = v.writeChunk(p[done:done+n], off+int64(done)); err != nil {
			return done, err
		}
		done += n
	}
	if err := v.j.WaitWritten(v.ctx, end); err != nil {
		return 0, v.cause(err)
	}
	return done, nil
}

// writeChunk journals one record's write and returns the record's end in
// the FIFO.
func (v *Volume) writeChunk(p []byte, off int64) (uint64, error) {
	n := int64(len(p))
	defer v.locks.unlock(v.locks.lock(off, n))
	if err := v.reserve(off, n); err != nil {
		return 0, err
	}
	whole := off%blk == 0 && n%blk == 0
	if !whole {
		if err := v.applyOverlap(off, n); err != nil {
			return 0, err
		}
	}
	r, err := v.j.Reserve(v.ctx, StreamIO, blockrec.WriteSize(len(p)))
	if err != nil {
		return 0, v.cause(err)
	}
	blockrec.PutWrite(r.Payload, uint64(off), p)
	if whole {
		// Pending before the commit: once the record is durable, the
		// committer finds it.
		v.pend.put(off/blk, len(p)/blk, r.PayloadIndex()+blockrec.WriteDataOffset)
	} else if err := v.writeData(p, off); err != nil {
		// Into the data image before the commit, as the committer's
		// checkpoint assumes of every record not pending.
		r.Abort()
		return 0, err
	}
	r.Commit(len(r.Payload))
	return r.End(), nil
}

// applyOverlap has the committer apply the pending blocks [off, off+n)
// overlaps, if any, so that the data image may be written there directly;
// the caller holds the range lock.
func (v *Volume) applyOverlap(off, n int64) error {
	start, end := span(off, n)
	if !v.pend.overlaps(start/blk, end/blk-1) {
		return nil
	}
	if err := v.j.Flush(v.ctx); err != nil {
		return v.cause(err)
	}
	return v.commit()
}

// Discard makes [off, off+n) read as zeros; a thin volume gives its blocks
// back, a thick one keeps them.
func (v *Volume) Discard(off, n int64) error {
	v.sizeMu.RLock()
	defer v.sizeMu.RUnlock()
	if err := v.check(off, n); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	s := v.locks.lock(off, n)
	if err := v.applyOverlap(off, n); err != nil {
		v.locks.unlock(s)
		return err
	}
	r, err := v.j.Reserve(v.ctx, StreamIO, blockrec.DiscardSize)
	if err != nil {
		v.locks.unlock(s)
		return v.cause(err)
	}
	blockrec.PutDiscard(r.Payload, uint64(off), uint64(n))
	if err := v.deallocate(off, n); err != nil {
		r.Abort()
		v.locks.unlock(s)
		return err
	}
	r.Commit(len(r.Payload))
	v.locks.unlock(s)
	v.stats.discards.Add(1)
	v.stats.discardBytes.Add(uint64(n))
	return v.cause(v.j.WaitWritten(v.ctx, r.End()))
}

// Grow raises the size to size (a multiple of 4096, at most
// blockrec.MaxSize), durably, before it returns. Growing to the current
// size is a no-op; shrinking is refused.
func (v *Volume) Grow(ctx context.Context, size int64) error {
	if size%vfs.BlockSize != 0 {
		return ErrAlignment
	}
	if err := v.failed(); err != nil {
		return err
	}
	ctx, done := v.bind(ctx)
	defer done()
	v.sizeMu.Lock()
	defer v.sizeMu.Unlock()
	switch {
	case size == v.size:
		return nil
	case size < v.size:
		return fmt.Errorf("%w: %d to %d", ErrShrink, v.size, size)
	case size > blockrec.MaxSize: // a replay would refuse the record
		return fmt.Errorf("volume: %d bytes is above the largest size, %d", size, blockrec.MaxSize)
	}
	r, err := v.j.Reserve(ctx, StreamIO, blockrec.ResizeSize)
	if err != nil {
		return v.cause(err)
	}
	blockrec.PutResize(r.Payload, uint64(size))
	err = v.extend(v.size, size)
	if err == nil && v.alloc == nil {
		// A thick volume's new blocks are durable before the resize is:
		// after a crash the volume is either as it was or grown and
		// allocated.
		err = v.data.Sync()
	}
	if err != nil {
		r.Abort()
		return err
	}
	r.Commit(len(r.Payload))
	if err := v.j.Flush(ctx); err != nil {
		return v.cause(err)
	}
	v.size = size
	return nil
}

// extend lengthens the data image from old to size bytes, with its blocks
// if thick; if they cannot all be had, the image keeps its old length (and
// gives back what it got beyond it). The caller holds the size lock
// exclusively, or is Open.
func (v *Volume) extend(old, size int64) error {
	if err := v.data.Truncate(size); err != nil {
		return err
	}
	if err := v.grown(old, size); err != nil {
		return errors.Join(err, v.data.Truncate(old))
	}
	return nil
}

// Flush returns once every write that returned before it is durable.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.failed(); err != nil {
		return err
	}
	ctx, done := v.bind(ctx)
	defer done()
	start := time.Now()
	err := v.j.Flush(ctx)
	v.stats.flushes.Observe(time.Since(start))
	return v.cause(err)
}

// bind returns ctx, also ended when the volume fails.
func (v *Volume) bind(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(v.ctx, func() { cancel(context.Cause(v.ctx)) })
	return ctx, func() { stop(); cancel(nil) }
}

func (v *Volume) failed() error { return context.Cause(v.ctx) }

// cause returns why the volume failed if it did, else err.
func (v *Volume) cause(err error) error {
	if c := v.failed(); c != nil {
		return c
	}
	return err
}

// committer commits when half the ring is in use or the interval passes.
func (v *Volume) committer() {
	defer close(v.done)
	t := time.NewTicker(v.cfg.CommitInterval)
	defer t.Stop()
	for {
		force := false
		select {
		case <-v.quit:
			return
		case <-t.C:
			force = true
		case <-v.j.CheckpointWanted():
		}
		if err := v.commitHeld(force); err != nil {
			return
		}
	}
}

// commit applies every pending block the journal has synced, makes the
// data image durable and checkpoints the journal there, freeing its space.
func (v *Volume) commit() error { return v.commitHeld(true) }

// commitHeld applies the pending blocks of every record the journal has
// synced, syncs the data image and checkpoints up to those records, or only
// up to the hold if one is set. Unless force is set, a commit that has
// nothing to apply and that the hold keeps from freeing much is skipped:
// acknowledgements arrive often, and each commit costs two syncs.
func (v *Volume) commitHeld(force bool) error {
	v.commitMu.Lock()
	defer v.commitMu.Unlock()
	if err := v.failed(); err != nil {
		return err
	}
	idx, durable, durableID := v.j.DurableIndex()
	apply := idx > v.appliedIdx
	pos, id := durable, durableID
	if hp, hid, held := v.held(pos); held {
		pos, id = hp, hid
		if !force && !apply && pos-v.lastCkpt < v.ring/16 {
			return nil
		}
	}
	if pos <= v.lastCkpt && !apply {
		return nil
	}
	start := time.Now()
	var applied []entry
	if apply {
		applied = v.pend.collect(idx)
		if err := v.applyPending(applied); err != nil {
			err = fmt.Errorf("volume: apply to the data image: %w", err)
			v.fail(err)
			return err
		}
	}
	// A failed fdatasync is final: the kernel may have dropped the pages
	// and tells only one caller, so no later commit may checkpoint.
	if err := v.data.Sync(); err != nil {
		err = fmt.Errorf("volume: sync data image: %w", err)
		v.fail(err)
		return err
	}
	if v.cached != nil && len(applied) > 0 {
		v.cached.DropCache() // best effort: the pages are clean, only memory
	}
	if apply {
		v.pend.prune(applied)
		v.j.Release(idx)
		v.appliedIdx, v.appliedPos, v.appliedID = idx, durable, durableID
	}
	if pos > v.lastCkpt {
		if err := v.j.Checkpoint(pos, id); err != nil {
			v.fail(err)
			return err
		}
		v.lastCkpt = pos
	}
	v.commits++
	v.stats.commits.Observe(time.Since(start))
	return nil
}

// Commit flushes and commits now: the journal is empty afterwards unless
// writes go on meanwhile.
func (v *Volume) Commit(ctx context.Context) error {
	if err := v.Flush(ctx); err != nil {
		return err
	}
	return v.commit()
}

// Close flushes, commits and closes the journal cleanly. It does not close
// the files.
func (v *Volume) Close() error {
	v.closeOnce.Do(func() { v.closeErr = v.close() })
	return v.closeErr
}

func (v *Volume) close() error {
	close(v.quit)
	<-v.done
	err := v.Commit(context.Background())
	if cerr := v.j.Close(); err == nil {
		err = cerr
	}
	if v.cached != nil {
		if cerr := v.cached.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Stats are the volume's figures.
type Stats struct {
	Size    int64
	Commits uint64
	Journal journal.Stats
	// Requests: reads and their bytes, writes (bytes in Journal),
	// discards and their bytes; how long flushes and commits took.
	Reads, ReadBytes, Writes, Discards, DiscardBytes uint64
	// Reads that took blocks not yet applied from the FIFO; of them, the
	// reads that took others from the data image too. Pending is how many
	// blocks are not applied yet (at most FIFO size / 4096).
	PendingReads, MixedReads, Pending uint64
	FlushTimes, CommitTimes           hist.Snapshot
	Space                             Space
}

// Stats returns the volume's figures; cheap enough to call often.
func (v *Volume) Stats() Stats {
	v.commitMu.Lock()
	c := v.commits
	v.commitMu.Unlock()
	size := v.Size()
	return Stats{Size: size, Commits: c, Journal: v.j.Stats(), Space: v.space(size),
		Reads: v.stats.reads.Load(), ReadBytes: v.stats.readBytes.Load(), Writes: v.stats.writes.Load(),
		Discards: v.stats.discards.Load(), DiscardBytes: v.stats.discardBytes.Load(),
		PendingReads: v.stats.pendingReads.Load(), MixedReads: v.stats.mixedReads.Load(), Pending: uint64(v.pend.n.Load()),
		FlushTimes: v.stats.flushes.Snapshot(), CommitTimes: v.stats.commits.Snapshot()}
}
