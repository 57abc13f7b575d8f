// Package journal is jvol's journal engine: writers reserve stream records in
// a memory FIFO, and a worker goroutine drains them sequentially into a
// pre-allocated journal image, with group commit for flushes. Open recovers
// the records a crash left in the image. It knows nothing of block devices or
// Kubernetes: the volume engine gives the records meaning.
package journal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jvol-io/jvol/internal/vfs"
)

// Options tune a journal. The zero value is usable.
type Options struct {
	// FIFOSize is the memory FIFO's size: a power of two from MinFIFOSize to
	// MaxFIFOSize, DefaultFIFOSize if zero. The ring must be a block larger.
	FIFOSize int
	// Duplex says whether FIFO space is freed once written (Half) or once
	// acknowledged with Ack (Full).
	Duplex Duplex
	// Heartbeat is the longest a written record waits for its fdatasync
	// when nobody flushes (default one second).
	Heartbeat time.Duration
	// Retain keeps every record in the FIFO until the owner releases it
	// (Release), after it has applied it elsewhere: the FIFO is then the
	// memory of records not yet applied, and a full one makes writers wait.
	Retain bool
	// FirstTransid is the first transaction id to hand out, each next one
	// two above; zero makes every id follow the clock (ClockTransid, or two
	// above the last if the clock has not moved on). Ids never go below
	// what the image already holds.
	FirstTransid uint64
}

// ClockTransid returns the transaction id for time t: seconds in the high
// bits, nanoseconds in the low 30, as DragonFly BSD does.
func ClockTransid(t time.Time) uint64 {
	return uint64(t.Unix())<<30 | uint64(t.Nanosecond())
}

const runSize = 1 << 20 // a run this long is written without waiting for a flush

// Journal is an open journal image with its FIFO and worker.
type Journal struct {
	f         vfs.File
	fifo      *FIFO
	sw        *superWriter
	ring      uint64
	window    uint64
	heartbeat time.Duration

	ckptMu      sync.Mutex // serialises checkpoints
	mu          sync.Mutex
	tail        uint64 // checkpoint position: ring space before it is free
	ckptID      uint64
	durablePos  uint64 // ring position synced up to
	durableID   uint64 // id of the last record synced
	durable     uint64 // FIFO index synced up to
	durableIdx  uint64 // FIFO index durablePos stands for
	flushTarget uint64 // highest FIFO index a Flush waits for
	writeTarget uint64 // highest FIFO index a WaitWritten waits for
	writtenIdx  uint64 // FIFO index written to the ring up to
	synced      chan struct{}
	writeWaits  []writeWait   // WaitWritten callers, until writtenIdx passes them
	ringSynced  chan struct{} // closed and replaced when durablePos moves
	ringFree    chan struct{}
	err         error

	kick      chan struct{}
	ckptWant  chan struct{} // the ring is half full: the owner should checkpoint
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// Owned by the worker.
	rw        ringWriter
	syncedPos uint64 // ring position synced up to
	cursor    uint64 // FIFO index placed up to
	placed    uint64 // FIFO index placed up to, within a pass
	written   uint64 // FIFO index written to the ring up to (taken)
	writtenID uint64 // id of the last record placed
	lastID    uint64 // highest id placed, pads included
	quitting  bool

	headPub                    atomic.Uint64
	tailPub                    atomic.Uint64 // j.tail, for the worker's fast path
	syncs, flushes, ringStalls atomic.Uint64
}

// Open opens the journal image in f (see Format), calls replay for every
// record a previous run left after the checkpoint, in order (pads are
// skipped; the record is valid only during the call), and starts the worker
// that appends after them.
func Open(f vfs.File, opts Options, replay func(pos uint64, r Record) error) (*Journal, Recovery, error) {
	if opts.FIFOSize == 0 {
		opts.FIFOSize = DefaultFIFOSize
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = time.Second
	}
	sb, err := readSuperblock(f)
	if err != nil {
		return nil, Recovery{}, err
	}
	// The largest record (half the FIFO) must fit behind a wrap's pads.
	if sb.RingSize < uint64(opts.FIFOSize)+blk {
		return nil, Recovery{}, fmt.Errorf("journal: ring of %d bytes cannot hold the records of a %d-byte FIFO: make the journal larger or the FIFO smaller", sb.RingSize, opts.FIFOSize)
	}
	rec, err := scan(f, sb, func(pos uint64, r Record) error {
		if r.IsPad() || replay == nil {
			return nil
		}
		return replay(pos, r)
	})
	if err != nil {
		return nil, rec, err
	}
	first := opts.FirstTransid
	if first == 0 {
		first = ClockTransid(time.Now())
	}
	first = max(first, rec.MaxTransid+2)
	// FIFO indices start congruent with the ring's head (see ringWriter).
	start := rec.End % blk
	fifo, err := newFIFOAt(opts.FIFOSize, opts.Duplex, first, start)
	if err != nil {
		return nil, rec, err
	}
	fifo.clock = opts.FirstTransid == 0
	fifo.retain = opts.Retain
	f = &stickyFile{File: f}
	j := &Journal{
		f: f, fifo: fifo, ring: sb.RingSize, heartbeat: opts.Heartbeat,
		sw:   &superWriter{f: f, sb: sb, buf: vfs.AlignedBuffer(SuperblockSize)},
		tail: sb.CkptPos, ckptID: sb.CkptTransid,
		durablePos: rec.End, durableID: rec.LastTransid,
		synced: make(chan struct{}), ringSynced: make(chan struct{}), ringFree: make(chan struct{}),
		kick: make(chan struct{}, 1), ckptWant: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
		syncedPos: rec.End, writtenID: rec.LastTransid, lastID: rec.MaxTransid,
		cursor: start, placed: start, written: start, durable: start, durableIdx: start, writtenIdx: start,
		rw: ringWriter{
			f: f, ring: sb.RingSize, fifo: fifo.buf, mask: fifo.mask,
			head: rec.End, scratch: vfs.AlignedBuffer(blk), spare: vfs.AlignedBuffer(blk),
		},
	}
	// The window never shrinks: orphans of the last run's torn tail may lie
	// as far past the end as the old window allowed.
	j.window = max(uint64(sb.TornWindow), DefaultTornWindow, uint64(opts.FIFOSize))
	if j.window != uint64(sb.TornWindow) || sb.Flags&FlagClean != 0 {
		// Durable before anything is appended: a crash from here on must
		// not pass for a clean close.
		if err := j.sw.write(func(s *Superblock) {
			s.TornWindow, s.Flags, s.CleanEnd = uint32(j.window), s.Flags&^FlagClean, 0
		}); err != nil {
			return nil, rec, err
		}
	}
	// Appending resumes in the middle of a block: keep its valid bytes.
	if off := rec.End % blk; off != 0 {
		if _, err := f.ReadAt(j.rw.scratch, j.rw.fileOff(rec.End-off)); err != nil {
			return nil, rec, err
		}
		clear(j.rw.scratch[off:])
	}
	j.headPub.Store(rec.End)
	j.tailPub.Store(j.tail)
	go j.run()
	return j, rec, nil
}

// Reserve reserves a record in the FIFO; see FIFO.Reserve.
func (j *Journal) Reserve(ctx context.Context, stream uint16, n int) (Reservation, error) {
	return j.fifo.Reserve(ctx, stream, n)
}

// Append writes one record holding payload and returns its transaction id.
func (j *Journal) Append(ctx context.Context, stream uint16, payload []byte) (uint64, error) {
	r, err := j.fifo.Reserve(ctx, stream, len(payload))
	if err != nil {
		return 0, err
	}
	copy(r.Payload, payload)
	r.Commit(len(payload))
	return r.Transid, nil
}

// Ack acknowledges transaction ids up to transid (full duplex).
func (j *Journal) Ack(transid uint64) { j.fifo.Ack(transid) }

// Flush returns once every record committed before the call is durable in
// the journal image. Flushes that arrive together share one fdatasync.
func (j *Journal) Flush(ctx context.Context) error {
	target := j.fifo.reserved()
	j.flushes.Add(1)
	j.mu.Lock()
	defer j.mu.Unlock()
	if target > j.flushTarget {
		j.flushTarget = target
		j.fifo.wantAll.Store(true)
	}
	for j.err != nil || j.durable < target {
		if j.err != nil {
			return j.err
		}
		ch := j.synced
		j.mu.Unlock()
		select {
		case j.kick <- struct{}{}:
		default:
		}
		select {
		case <-ch:
		case <-ctx.Done():
			j.mu.Lock()
			return ctx.Err()
		}
		j.mu.Lock()
	}
	return nil
}

// Durable returns the ring position up to which the journal is synced and
// the id of the last record before it: what a checkpoint may name.
func (j *Journal) Durable() (pos, transid uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durablePos, j.durableID
}

// DurableIndex is Durable with the FIFO index that the ring position
// stands for: every record before index is synced.
func (j *Journal) DurableIndex() (index, pos, transid uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durableIdx, j.durablePos, j.durableID
}

// WaitWritten returns once every record before FIFO index end (a
// committed Reservation's End) is written to the ring, not necessarily
// synced: it survives the death of this process, not of the machine.
// Waiters that arrive together share the worker's writes. It allocates
// nothing: a waiter's channel comes from a pool.
func (j *Journal) WaitWritten(ctx context.Context, end uint64) error {
	j.mu.Lock()
	if j.writtenIdx >= end || j.err != nil {
		defer j.mu.Unlock()
		if j.writtenIdx >= end {
			return nil
		}
		return j.err
	}
	ch := waitChans.Get().(chan struct{})
	j.writeWaits = append(j.writeWaits, writeWait{end, ch})
	if end > j.writeTarget {
		j.writeTarget = end
		j.fifo.wantAll.Store(true)
	}
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
	select {
	case <-ch:
		waitChans.Put(ch)
		j.mu.Lock()
		defer j.mu.Unlock()
		if j.writtenIdx >= end {
			return nil
		}
		return j.err // woken by the failure
	case <-ctx.Done():
		j.mu.Lock()
		if !j.unwait(ch) {
			<-ch // woken meanwhile: the wake is in the channel
		}
		j.mu.Unlock()
		waitChans.Put(ch)
		return ctx.Err()
	}
}

// A writeWait is a WaitWritten caller: woken by a send on ch once the
// ring holds every record before end, or the journal fails.
type writeWait struct {
	end uint64
	ch  chan struct{} // buffered: the send never blocks
}

var waitChans = sync.Pool{New: func() any { return make(chan struct{}, 1) }}

// wakeWritten wakes the waiters that the ring now satisfies, or all of
// them if all is set; j.mu is held.
func (j *Journal) wakeWritten(all bool) {
	left := j.writeWaits[:0]
	for _, w := range j.writeWaits {
		if all || w.end <= j.writtenIdx {
			w.ch <- struct{}{}
		} else {
			left = append(left, w)
		}
	}
	clear(j.writeWaits[len(left):])
	j.writeWaits = left
}

// unwait removes the waiter of ch and reports whether it was still
// waiting; j.mu is held.
func (j *Journal) unwait(ch chan struct{}) bool {
	for i, w := range j.writeWaits {
		if w.ch == ch {
			last := len(j.writeWaits) - 1
			j.writeWaits[i], j.writeWaits[last] = j.writeWaits[last], writeWait{}
			j.writeWaits = j.writeWaits[:last]
			return true
		}
	}
	return false
}

// Bytes returns the n FIFO bytes from index i on (inside one record's
// payload), which a retaining journal keeps until they are released.
func (j *Journal) Bytes(i uint64, n int) []byte {
	off := i & j.fifo.mask
	return j.fifo.buf[off : off+uint64(n)]
}

// Release tells a retaining journal (Options.Retain) that every record
// before FIFO index i is applied: its FIFO space may be reused.
func (j *Journal) Release(i uint64) { j.fifo.release(i) }

// Checkpoint records that every record before ring position pos, the last
// of which has id transid, is applied where it belongs, and frees its space.
// pos must not be beyond what Durable returned.
func (j *Journal) Checkpoint(pos, transid uint64) error {
	// One checkpoint at a time: the check, the superblock and the tail
	// must move together, or a slower, older checkpoint could land last.
	j.ckptMu.Lock()
	defer j.ckptMu.Unlock()
	j.mu.Lock()
	if pos < j.tail || pos > j.durablePos || transid > j.durableID || j.err != nil {
		defer j.mu.Unlock()
		if j.err != nil {
			return j.err
		}
		return fmt.Errorf("journal: checkpoint at %d (id %d) outside [%d, %d] (id %d)", pos, transid, j.tail, j.durablePos, j.durableID)
	}
	j.mu.Unlock()
	if err := j.sw.write(func(s *Superblock) { s.CkptPos, s.CkptTransid = pos, transid }); err != nil {
		j.fail(err)
		return err
	}
	j.mu.Lock()
	j.tail, j.ckptID = pos, transid
	j.tailPub.Store(pos)
	close(j.ringFree)
	j.ringFree = make(chan struct{})
	j.mu.Unlock()
	return nil
}

// Close stops taking reservations, writes and syncs every committed record,
// and stops the worker. It does not close the file. Records that do not fit
// in a full ring are dropped (they were never flushed).
func (j *Journal) Close() error {
	j.closeOnce.Do(func() {
		j.fifo.Close(ErrClosed)
		close(j.quit)
		<-j.done
		j.mu.Lock()
		err, end := j.err, j.durablePos
		j.mu.Unlock()
		if !errors.Is(err, ErrClosed) {
			j.closeErr = err
			return
		}
		// Everything is written and synced: mark where it ends, so that
		// the next Open need not search the rest of the ring for damage.
		j.closeErr = j.sw.write(func(s *Superblock) { s.Flags, s.CleanEnd = s.Flags|FlagClean, end })
	})
	return j.closeErr
}

// fail stops the journal with err: flushes and reservations return it.
// Errors of fdatasync are final: the kernel may have dropped the pages.
func (j *Journal) fail(err error) {
	// Refuse new reservations before any flush waiter can see the error:
	// a caller told its flush failed must not then get an append through.
	j.fifo.Close(err)
	j.mu.Lock()
	if j.err == nil {
		j.err = err
		close(j.synced)
		j.synced = make(chan struct{})
		j.wakeWritten(true)
		close(j.ringSynced)
		j.ringSynced = make(chan struct{})
	}
	j.mu.Unlock()
}

func (j *Journal) run() {
	defer close(j.done)
	t := time.NewTicker(j.heartbeat)
	defer t.Stop()
	for {
		force := false
		select {
		case <-j.fifo.wake:
		case <-j.kick:
		case <-t.C:
			force = true
		case <-j.quitC():
			j.quitting = true
			j.fifo.wantAll.Store(true)
		}
		err := j.cycle(force || j.quitting)
		if err == nil && j.quitting {
			if r, w := j.fifo.pending(); r == w {
				err = ErrClosed
			}
		}
		if err != nil {
			j.fail(err)
			return
		}
	}
}

// quitC returns the quit channel until the worker has seen it.
func (j *Journal) quitC() chan struct{} {
	if j.quitting {
		return nil
	}
	return j.quit
}

// cycle places every complete record from the FIFO at the ring's head
// (place writes full runs on its own). It writes the rest of the run out and
// frees the FIFO space only when a flush waits, force is set or the FIFO is
// half full, and then syncs if a flush waits or force is set.
func (j *Journal) cycle(force bool) error {
	var r, w uint64
	for {
		r, w = j.fifo.pending()
		pos := j.cursor
		for pos < w {
			h, rec, ok := j.fifo.peek(pos)
			if !ok {
				break
			}
			if err := j.place(pos, h, uint64(len(rec))); err != nil {
				return err
			}
			pos += uint64(len(rec))
		}
		if pos == j.cursor {
			break
		}
		j.cursor = pos
	}
	j.mu.Lock()
	want := j.flushTarget > j.durable
	wantWrite := j.writeTarget > j.writtenIdx
	durable := j.durableIdx
	j.mu.Unlock()
	// Writers waiting for space need it written and freed now, and (full
	// duplex) synced, so that the peer can acknowledge it.
	starved := j.fifo.starved()
	force = force || starved
	// A retaining FIFO half full of records the owner has not applied: make
	// them durable and ask the owner to apply them, once per half.
	apply := false
	if j.fifo.retain {
		windex, kept := j.fifo.retained()
		size := uint64(len(j.fifo.buf))
		apply = starved || windex-kept >= size/2 && durable-kept < size/4
		force = force || apply
	}
	if !want && !wantWrite && !force && w-r < uint64(len(j.fifo.buf)/2) {
		return nil
	}
	if j.cursor != j.written {
		if err := j.rw.flush(true); err != nil {
			return err
		}
		j.fifo.taken(j.cursor)
		j.written = j.cursor
	}
	if j.rw.head != j.syncedPos && (want || force) {
		if err := j.syncAll(); err != nil {
			return err
		}
	}
	if apply {
		j.wantCheckpoint()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return j.err
	}
	if j.writtenIdx != j.written {
		j.writtenIdx = j.written
		j.wakeWritten(false)
	}
	if j.rw.head == j.syncedPos && j.durable != j.written {
		j.durable = j.written
		close(j.synced)
		j.synced = make(chan struct{})
	}
	if j.flushTarget <= j.durable && j.writeTarget <= j.writtenIdx && !j.quitting {
		j.fifo.wantAll.Store(false)
	}
	return nil
}

// place puts the FIFO record (or pad) at index pos, of a bytes, at the head
// of the ring. Where it does not fit before the ring's end, a pad fills the
// rest and a second one at the start restores the congruence of ring and
// FIFO positions. It waits for a checkpoint while the ring is full, and
// syncs first if the unsynced bytes would exceed the torn window.
func (j *Journal) place(pos uint64, h Header, a uint64) error {
	head := j.rw.head
	var p1, p2 uint64
	if phys := head % j.ring; phys+a > j.ring {
		p1, p2 = j.ring-phys, pos%blk
	}
	// The ring is written in whole blocks: the head must not enter the
	// block that holds the checkpoint, or its zero fill would wipe the
	// first live record. The tail only moves forward, so its published
	// copy answers without a lock unless the ring looks full.
	fits := func(tail uint64) bool { return head+p1+p2+a <= tail&^(blk-1)+j.ring }
	tail := j.tailPub.Load()
	for stalled := false; !fits(tail); stalled = true {
		j.mu.Lock()
		tail = j.tail
		ch := j.ringFree
		j.mu.Unlock()
		if fits(tail) {
			break
		}
		if !stalled {
			j.ringStalls.Add(1)
			// Make everything durable, then ask the owner to apply and
			// checkpoint it.
			if err := j.syncAll(); err != nil {
				return err
			}
			j.wantCheckpoint()
		}
		select {
		case <-ch:
		case <-j.quit:
			return ErrClosed
		}
	}
	if head+p1+p2+a-j.syncedPos > j.window {
		if err := j.syncAll(); err != nil {
			return err
		}
	}
	var err error
	if p1 > 0 {
		if err = j.rw.pad(p1, j.lastID); err == nil && p2 > 0 {
			err = j.rw.pad(p2, j.lastID)
		}
	}
	if err == nil {
		if h.IsPad() {
			err = j.rw.pad(a, h.Transid)
		} else if err = j.rw.record(pos, a); err == nil && j.rw.runB-j.rw.runA >= runSize {
			err = j.rw.flush(false)
		}
	}
	if err != nil {
		return err
	}
	if !h.IsPad() {
		j.writtenID = h.Transid
	}
	j.lastID = max(j.lastID, h.Transid)
	j.placed = pos + a
	j.headPub.Store(j.rw.head)
	if j.rw.head-tail >= j.ring/2 {
		j.wantCheckpoint()
	}
	return nil
}

func (j *Journal) wantCheckpoint() {
	select {
	case j.ckptWant <- struct{}{}:
	default:
	}
}

// CheckpointWanted receives when half the ring is in use or the ring is
// full: the owner should apply what is durable and checkpoint, as gjournal
// switches journal areas when the active one fills.
func (j *Journal) CheckpointWanted() <-chan struct{} { return j.ckptWant }

// syncAll writes everything placed and makes the ring durable up to it.
func (j *Journal) syncAll() error {
	if err := j.rw.flush(true); err != nil {
		return err
	}
	if j.rw.head == j.syncedPos {
		return nil
	}
	if err := j.f.Sync(); err != nil {
		return err // stickyFile says what failed
	}
	j.syncs.Add(1)
	j.syncedPos = j.rw.head
	j.mu.Lock()
	j.durablePos, j.durableID, j.durableIdx = j.rw.head, j.writtenID, j.placed
	close(j.ringSynced)
	j.ringSynced = make(chan struct{})
	j.mu.Unlock()
	return nil
}

// DurableChanged returns a channel closed when the durable position next
// moves or the journal fails: a reader of the ring (the sink's sender)
// waits on it for more records.
func (j *Journal) DurableChanged() <-chan struct{} {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.ringSynced
}

// UUID returns the journal image's UUID, made when it was formatted: the
// identity of the stream its records form.
func (j *Journal) UUID() [16]byte { return j.sw.uuid() }

// ReadDurable reads synced ring bytes from position pos on into buf (made
// with vfs.AlignedBuffer, at least two blocks) and returns them: records
// exactly as the ring holds them, never past the durable position or the
// end of the ring's lap (a pad always ends a lap). pos must not be before
// the checkpoint: the caller holds the ring there (see Checkpoint). A
// failed journal returns its error.
func (j *Journal) ReadDurable(buf []byte, pos uint64) ([]byte, error) {
	j.mu.Lock()
	durable, tail, err := j.durablePos, j.tail, j.err
	j.mu.Unlock()
	if err != nil && !errors.Is(err, ErrClosed) {
		return nil, err
	}
	if pos < tail&^(blk-1) {
		return nil, fmt.Errorf("journal: position %d is before the checkpoint %d: its space may be reused", pos, tail)
	}
	a := pos &^ (blk - 1)
	phys := a % j.ring
	end := min(durable, a+uint64(len(buf)), a+(j.ring-phys))
	if end <= pos {
		return nil, nil
	}
	n := alignUp(end - a)
	if _, err := j.f.ReadAt(buf[:n], int64(RingOffset+phys)); err != nil {
		return nil, fmt.Errorf("journal: read ring at %d: %w", a, err)
	}
	j.mu.Lock()
	tail = j.tail
	j.mu.Unlock()
	if pos < tail&^(blk-1) { // freed during the read: the bytes may be new
		return nil, fmt.Errorf("journal: position %d was freed (checkpoint %d) while it was read", pos, tail)
	}
	return buf[pos-a : end-a], nil
}

// Stats is a snapshot of a journal's figures, cheap enough to take often.
type Stats struct {
	FIFO FIFOStats
	// Ring positions: Head is placed up to, Durable synced up to,
	// Checkpoint applied up to. Used is Head-Checkpoint of RingSize.
	RingSize, Head, Durable, Checkpoint, Used uint64
	// Ids: the last handed out, the last durable, the last acknowledged
	// (durable in half duplex, acknowledged by the peer in full duplex) and
	// the checkpoint's.
	LastTransid, DurableTransid, AckedTransid, CheckpointTransid uint64
	BytesWritten, Syncs, Flushes, RingStalls                     uint64
}

// Stats returns the journal's figures.
func (j *Journal) Stats() Stats {
	fs := j.fifo.Stats()
	j.mu.Lock()
	s := Stats{
		FIFO: fs, RingSize: j.ring, Head: j.headPub.Load(), Durable: j.durablePos, Checkpoint: j.tail,
		LastTransid: fs.LastTransid, DurableTransid: j.durableID, CheckpointTransid: j.ckptID,
	}
	j.mu.Unlock()
	s.Used = s.Head - s.Checkpoint
	s.AckedTransid = s.DurableTransid
	if j.fifo.duplex == Full {
		s.AckedTransid = fs.AckedTransid
	}
	s.BytesWritten, s.Syncs, s.Flushes, s.RingStalls = j.rw.bytes.Load(), j.syncs.Load(), j.flushes.Load(), j.ringStalls.Load()
	return s
}

// stickyFile serialises Sync and remembers its first failure: after a
// failed fdatasync the kernel may have dropped the dirty pages and reports
// the error to one caller only, so every later Sync must fail too.
type stickyFile struct {
	vfs.File
	mu  sync.Mutex
	err error
}

// WriteVAt passes vectored writes through (see vfs.WriteVAt).
func (s *stickyFile) WriteVAt(bufs [][]byte, off int64) error {
	return vfs.WriteVAt(s.File, bufs, off)
}

func (s *stickyFile) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		if err := s.File.Sync(); err != nil {
			s.err = fmt.Errorf("journal: sync: %w", err)
		}
	}
	return s.err
}
