package journal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/jvol-io/jvol/internal/vfs"
)

// FIFO sizes. The default holds sixteen of the largest writes the FUSE
// frontend takes (1 MiB); BenchmarkJournalWrite moves as fast with 8, 16 or
// 64 MiB, so more only costs memory.
const (
	MinFIFOSize     = 1 << 20
	MaxFIFOSize     = 1 << 30
	DefaultFIFOSize = 16 << 20
)

// wakeBytes of records waiting wake the consumer even below half full.
const wakeBytes = 1 << 20

// Duplex says when FIFO space is freed.
type Duplex int

const (
	// Half frees space as soon as the consumer has taken a record.
	Half Duplex = iota
	// Full frees space only when the consumer's peer acknowledges the
	// record's transaction id; a restarted consumer resumes from there.
	Full
)

func (d Duplex) String() string {
	if d == Full {
		return "Full"
	}
	return "Half"
}

// ParseDuplex is the one parser of a duplex: "half" or "full" in any case;
// empty is Half.
func ParseDuplex(s string) (Duplex, error) {
	switch strings.ToLower(s) {
	case "", "half":
		return Half, nil
	case "full":
		return Full, nil
	}
	return Half, fmt.Errorf("duplex %q: want half or full", s)
}

// MarshalText writes Half or Full.
func (d Duplex) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads what ParseDuplex takes.
func (d *Duplex) UnmarshalText(b []byte) error {
	v, err := ParseDuplex(string(b))
	*d = v
	return err
}

var (
	ErrClosed   = errors.New("journal: closed")
	ErrTooLarge = errors.New("journal: record larger than half the FIFO")
)

// FIFO is the memory ring that writers reserve records in, after DragonFly
// BSD's journal_reserve/extend/commit/abort. Many writers reserve at once and
// fill their space outside any lock; one consumer takes complete records in
// order and never passes an incomplete one.
//
// Three byte indices only ever grow: windex (reserved up to), rindex (taken
// by the consumer up to) and xindex (freed up to). xindex <= rindex <= windex
// and windex-xindex <= size. A position's offset in the ring is index&mask.
type FIFO struct {
	buf    []byte
	mask   uint64
	duplex Duplex
	retain bool // space is freed only up to what the owner released

	mu      sync.Mutex
	windex  uint64
	rindex  uint64
	xindex  uint64
	nextID  uint64        // next transaction id handed out
	clock   bool          // ids follow the clock (see ClockTransid)
	acked   uint64        // last acknowledged id (full duplex)
	kept    uint64        // index the owner released up to (retain)
	space   chan struct{} // closed and replaced when space is freed and someone waits
	waiting int           // writers waiting on space
	wokeAt  uint64        // windex when a reservation last woke the consumer
	err     error         // set by Close

	wake    chan struct{} // tells the consumer there is work
	wantAll atomic.Bool   // set while a flush waits: every commit wakes the consumer
	blocked atomic.Bool   // the consumer stopped at an incomplete record
	stalls  atomic.Uint64
}

// NewFIFO makes a FIFO of size bytes (a power of two between MinFIFOSize and
// MaxFIFOSize) whose first transaction id is firstID.
func NewFIFO(size int, duplex Duplex, firstID uint64) (*FIFO, error) {
	return newFIFOAt(size, duplex, firstID, 0)
}

// newFIFOAt makes a FIFO whose indices start at start rather than zero. Its
// buffer is block aligned, so that whole blocks can be written from it with
// direct I/O.
func newFIFOAt(size int, duplex Duplex, firstID, start uint64) (*FIFO, error) {
	if size < MinFIFOSize || size > MaxFIFOSize || size&(size-1) != 0 {
		return nil, fmt.Errorf("journal: FIFO size %d is not a power of two between %d and %d", size, MinFIFOSize, MaxFIFOSize)
	}
	return &FIFO{
		windex: start, rindex: start, xindex: start, kept: start,
		buf:    vfs.AlignedBuffer(size),
		mask:   uint64(size - 1),
		duplex: duplex,
		nextID: firstID,
		acked:  firstID - 2,
		space:  make(chan struct{}),
		wake:   make(chan struct{}, 1),
	}, nil
}

// Reservation is space for one record that its writer fills and then
// commits or aborts, exactly once.
type Reservation struct {
	f       *FIFO
	pos     uint64 // index of the record
	off     uint64 // offset in the ring
	n       int    // aligned bytes reserved
	stream  uint16 // id and flags
	Transid uint64
	// Payload is the space to fill, as long as was asked for.
	Payload []byte
}

// word0 is the first 32 bits of a header: begin magic and stream. In the
// FIFO it is only ever accessed atomically: its store publishes a record.
func (f *FIFO) word0(off uint64) *uint32 {
	return (*uint32)(unsafe.Pointer(&f.buf[off]))
}

func publish(p *uint32, magic, stream uint16) {
	atomic.StoreUint32(p, uint32(magic)|uint32(stream)<<16)
}

// Reserve reserves a record for a payload of n bytes on stream (an id of
// StreamFirstTx or more, or a special id) and assigns it the next
// transaction id. It blocks while the FIFO is full, counting a stall, until
// space is freed, ctx is done or the FIFO is closed.
func (f *FIFO) Reserve(ctx context.Context, stream uint16, n int) (Reservation, error) {
	return f.reserve(ctx, stream&StreamMask|FlagBegin, n)
}

func (f *FIFO) reserve(ctx context.Context, stream uint16, n int) (Reservation, error) {
	size := uint64(len(f.buf))
	need := uint64(AlignedSize(n))
	if n < 0 || need > size/2 {
		return Reservation{}, ErrTooLarge
	}
	var now uint64 // read outside the lock: it is not free
	if f.clock {
		now = ClockTransid(time.Now())
	}
	f.mu.Lock()
	var off, pad uint64
	for stalled := false; ; {
		if f.err != nil {
			f.mu.Unlock()
			return Reservation{}, f.err
		}
		off = f.windex & f.mask
		pad = 0
		if off+need > size {
			pad = size - off
		}
		if size-(f.windex-f.xindex) >= pad+need {
			break
		}
		if !stalled {
			stalled = true
			f.stalls.Add(1)
		}
		space := f.space
		f.waiting++
		f.mu.Unlock()
		f.signal() // the consumer may be waiting for more, not for us
		select {
		case <-space:
		case <-ctx.Done():
			f.mu.Lock()
			if f.space == space { // not freed meanwhile: no longer waiting
				f.waiting--
			}
			f.mu.Unlock()
			return Reservation{}, ctx.Err()
		}
		if f.clock {
			now = ClockTransid(time.Now()) // the wait took time
		}
		f.mu.Lock()
	}
	// Ids follow the clock, so that an id tells when its write was made
	// (a sink restores to a time by it), and never go back.
	f.nextID = max(f.nextID, now)
	if pad > 0 {
		// Dead space at the wrap: a complete pad, so that the record is
		// contiguous. Its id is the one left free after the previous record.
		f.finish(off, StreamPad|FlagBegin|FlagEnd, int(pad), f.nextID-1, nil)
		f.windex += pad
		off = 0
	}
	r := Reservation{f: f, pos: f.windex, off: off, n: int(need), stream: stream, Transid: f.nextID}
	r.Payload = f.buf[off+HeaderSize : off+HeaderSize+uint64(n)]
	f.nextID += 2 // the odd id is kept for a pad behind this record
	publish(f.word0(off), IncompleteMagic, stream)
	f.windex += need
	// Wake the consumer when the FIFO is half full, or earlier once a
	// large sequential write's worth waits: writing it while writers go on
	// filling overlaps the two instead of leaving it all to the next flush.
	// Once per step of new records, not for every record after that.
	wake := (f.windex-f.xindex >= size/2 || f.windex-f.rindex >= wakeBytes) &&
		f.windex-max(f.wokeAt, f.rindex) >= min(wakeBytes, size/4)
	if wake {
		f.wokeAt = f.windex
	}
	f.mu.Unlock()
	if wake {
		f.signal()
	}
	return r, nil
}

func (f *FIFO) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// finish completes a record of n aligned bytes at off whose payload (of
// which crcPayload is the part the checksum covers) is in place, and
// publishes it.
func (f *FIFO) finish(off uint64, stream uint16, n int, transid uint64, crcPayload []byte) {
	b := f.buf[off : off+uint64(n)]
	size := n
	if stream&StreamMask != StreamPad {
		size = len(crcPayload) + Overhead
		clear(b[HeaderSize+len(crcPayload) : n-TrailerSize])
	}
	binary.LittleEndian.PutUint32(b[4:], uint32(size))
	binary.LittleEndian.PutUint64(b[8:], transid)
	if size > HeaderSize {
		// The checksum covers the header as it will be published; the
		// trailer's own bytes serve as scratch for it (a local array would
		// escape into the CRC code and cost an allocation per record).
		t := b[n-TrailerSize:]
		putHeader(t, Header{Magic: BeginMagic, Stream: stream, Size: uint32(size), Transid: transid})
		putTrailer(t, recordCRC(t, crcPayload), uint32(size))
	}
	publish(f.word0(off), BeginMagic, stream)
}

// PayloadIndex is the FIFO index of the payload's first byte. A retaining
// FIFO keeps the bytes there until its owner releases them (see
// Journal.Bytes).
func (r *Reservation) PayloadIndex() uint64 { return r.pos + HeaderSize }

// End is the FIFO index just past the record (see Journal.WaitWritten).
func (r *Reservation) End() uint64 { return r.pos + uint64(r.n) }

// Commit completes the record with the first used bytes of its payload and
// ends its transaction. Space reserved beyond what is used becomes a pad.
func (r *Reservation) Commit(used int) {
	r.commit(used, FlagEnd)
}

func (r *Reservation) commit(used int, flags uint16) {
	if used < 0 || used > len(r.Payload) {
		panic(fmt.Sprintf("journal: commit of %d bytes in a reservation of %d", used, len(r.Payload)))
	}
	a := AlignedSize(used)
	if a < r.n {
		r.f.finish(r.off+uint64(a), StreamPad|FlagBegin|FlagEnd, r.n-a, r.Transid+1, nil)
	}
	f := r.f
	f.finish(r.off, r.stream|flags, a, r.Transid, r.Payload[:used])
	r.f = nil
	f.published()
}

// published wakes the consumer if it waits for this record or a flush
// waits. It runs after the publishing store: either the consumer's second
// look sees the record, or this load sees the flag the consumer set before
// that look (Go's atomics are sequentially consistent), so no wake is lost.
func (f *FIFO) published() {
	if f.blocked.Load() || f.wantAll.Load() {
		f.signal()
	}
}

// Extend commits the first used bytes as one record of the transaction and
// reserves the next record of the same transaction, for n more bytes. On
// error (the FIFO closed, ctx done) the transaction is left without its END
// record, and readers drop such a transaction; aborting r is then a no-op.
func (r *Reservation) Extend(ctx context.Context, used, n int) (Reservation, error) {
	f, stream := r.f, r.stream&^FlagBegin
	r.commit(used, 0)
	return f.reserve(ctx, stream, n)
}

// Abort drops the reservation. A transaction that has not committed a
// record yet leaves only a pad; one that has is closed with an empty record
// flagged aborted, so that readers drop all of it.
func (r *Reservation) Abort() {
	if r.f == nil {
		return // committed already (as by an Extend that then failed)
	}
	if r.stream&FlagBegin != 0 {
		f := r.f
		f.finish(r.off, StreamPad|FlagBegin|FlagEnd, r.n, r.Transid, nil)
		r.f = nil
		f.published()
		return
	}
	r.commit(0, FlagEnd|FlagAborted)
}

// pending returns the range of reserved bytes the consumer has not taken.
// The consumer calls it at the start of each pass.
func (f *FIFO) pending() (rindex, windex uint64) {
	f.blocked.Store(false)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rindex, f.windex
}

// reserved returns the index up to which records are reserved.
func (f *FIFO) reserved() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.windex
}

// starved reports whether writers wait for space.
func (f *FIFO) starved() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting > 0
}

// peek returns the complete record at index pos (< windex), or ok false if
// it is still being written.
func (f *FIFO) peek(pos uint64) (h Header, rec []byte, ok bool) {
	off := pos & f.mask
	w := atomic.LoadUint32(f.word0(off))
	if uint16(w) == IncompleteMagic {
		// Ask for a wake-up on its commit, then look once more.
		f.blocked.Store(true)
		w = atomic.LoadUint32(f.word0(off))
	}
	if uint16(w) != BeginMagic {
		if uint16(w) != IncompleteMagic {
			panic(fmt.Sprintf("journal: FIFO corrupt at %d: magic %#x", pos, uint16(w)))
		}
		return Header{}, nil, false
	}
	h = getHeader(f.buf[off:])
	return h, f.buf[off : off+uint64(h.Aligned())], true
}

// taken tells the FIFO that the consumer has taken every record before pos.
// In half duplex that frees the space.
func (f *FIFO) taken(pos uint64) {
	f.mu.Lock()
	f.rindex = pos
	f.advance()
	f.mu.Unlock()
}

// advance frees what may be freed: what the consumer took (half duplex)
// or the peer acknowledged (full), and, when the FIFO retains records, no
// more than the owner released. f.mu is held.
func (f *FIFO) advance() {
	limit := f.rindex
	if f.retain {
		limit = min(limit, f.kept)
	}
	pos := f.xindex
	if f.duplex == Half {
		pos = max(pos, limit)
	}
	for f.duplex == Full && pos < limit {
		h := getHeader(f.buf[pos&f.mask:])
		if !h.IsPad() && h.Transid > f.acked {
			break
		}
		pos += uint64(h.Aligned())
	}
	if pos > f.xindex {
		f.free(pos)
	}
}

// release tells a retaining FIFO that its owner is done with every record
// before pos: their space may be freed once taken.
func (f *FIFO) release(pos uint64) {
	f.mu.Lock()
	f.kept = max(f.kept, pos)
	f.advance()
	f.mu.Unlock()
}

// retained returns the index reserved up to and the one the owner
// released up to.
func (f *FIFO) retained() (windex, kept uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.windex, f.kept
}

// free moves xindex to pos and wakes blocked writers; f.mu is held.
func (f *FIFO) free(pos uint64) {
	f.xindex = pos
	if f.waiting > 0 {
		f.waiting = 0
		close(f.space)
		f.space = make(chan struct{})
	}
}

// Ack acknowledges every record up to transaction id transid (cumulative)
// and, in full duplex, frees their space. Acks for ids not yet taken by the
// consumer stop at what was taken.
func (f *FIFO) Ack(transid uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if transid > f.acked {
		f.acked = transid
	}
	f.advance()
}

// Rewind makes the consumer take again every record not yet acknowledged:
// after a broken link, the stream resumes from the last acknowledged id.
func (f *FIFO) Rewind() {
	f.mu.Lock()
	f.rindex = f.xindex
	f.mu.Unlock()
}

// Close fails every blocked and later Reserve with err (ErrClosed if nil).
func (f *FIFO) Close(err error) {
	if err == nil {
		err = ErrClosed
	}
	f.mu.Lock()
	if f.err == nil {
		f.err = err
		close(f.space)
		f.space = make(chan struct{})
	}
	f.mu.Unlock()
	f.signal()
}

// FIFOStats is a snapshot of a FIFO's figures.
type FIFOStats struct {
	Size           int
	Used           uint64 // reserved and not yet freed
	WIndex, RIndex uint64
	XIndex         uint64
	LastTransid    uint64 // last id handed out
	AckedTransid   uint64 // last id acknowledged (full duplex)
	Stalls         uint64 // reservations that had to wait for space
}

// Stats returns the FIFO's figures.
func (f *FIFO) Stats() FIFOStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return FIFOStats{
		Size: len(f.buf), Used: f.windex - f.xindex,
		WIndex: f.windex, RIndex: f.rindex, XIndex: f.xindex,
		LastTransid: f.nextID - 2, AckedTransid: f.acked, Stalls: f.stalls.Load(),
	}
}
