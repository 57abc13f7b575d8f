package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

const testRing = 2 << 20

// newImage returns a formatted in-memory journal image with a ring of ring
// bytes that insists on direct-I/O alignment.
func newImage(t testing.TB, ring int) *faultfs.File {
	t.Helper()
	f := faultfs.New(int64(RingOffset + ring))
	f.Align = vfs.BlockSize
	if _, err := Format(f); err != nil {
		t.Fatal(err)
	}
	return f
}

// payloadFor makes a payload that names its writer and sequence number, so a
// reader can check content, order and duplicates.
func payloadFor(writer, seq, n int) []byte {
	n = max(n, 16)
	p := make([]byte, n)
	binary.LittleEndian.PutUint64(p, uint64(writer))
	binary.LittleEndian.PutUint64(p[8:], uint64(seq))
	for i := 16; i < n; i++ {
		p[i] = byte(writer*31 + seq*7 + i)
	}
	return p
}

// collect opens f and returns the payloads replayed, closing the journal.
func collect(t *testing.T, f vfs.File, opts Options) ([][]byte, Recovery, *Journal) {
	t.Helper()
	var got [][]byte
	j, rec, err := Open(f, opts, func(pos uint64, r Record) error {
		got = append(got, append([]byte(nil), r.Payload...))
		return nil
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { j.Close() })
	return got, rec, j
}

func smallOpts() Options {
	return Options{FIFOSize: MinFIFOSize, Heartbeat: time.Hour}
}

func TestAppendFlushReopenReplaysEveryRecordInOrder(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	ctx := context.Background()
	var want [][]byte
	for i := range 100 {
		p := payloadFor(1, i, 100+i*37)
		if _, err := j.Append(ctx, StreamFirstTx, p); err != nil {
			t.Fatal(err)
		}
		want = append(want, p)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	got, rec, _ := collect(t, f, smallOpts())
	if len(got) != len(want) {
		t.Fatalf("replayed %d records, want %d (tail %q)", len(got), len(want), rec.Tail)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
	if rec.Tail != "unwritten" {
		t.Errorf("tail %q, want unwritten", rec.Tail)
	}
}

func TestFlushReturnsOnlyWhenRecordsAreSynced(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	ctx := context.Background()
	if _, err := j.Append(ctx, StreamFirstTx, payloadFor(1, 1, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Whatever the journal did not sync is lost; the record must survive.
	got, _, _ := collect(t, f.PowerCut(nil), smallOpts())
	if len(got) != 1 || !bytes.Equal(got[0], payloadFor(1, 1, 4096)) {
		t.Fatalf("after power cut: %d records", len(got))
	}
}

func TestCheckpointFreesTheRingAndRecoveryStartsThere(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	ctx := context.Background()
	// Five laps of the ring, checkpointing as a committer would.
	seq := 0
	for lap := 0; lap < 5*testRing/(64<<10); lap++ {
		for range 4 {
			if _, err := j.Append(ctx, StreamFirstTx, payloadFor(1, seq, 15000)); err != nil {
				t.Fatal(err)
			}
			seq++
		}
		if err := j.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		pos, id := j.Durable()
		if err := j.Checkpoint(pos, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Append(ctx, StreamFirstTx, payloadFor(1, seq, 9000)); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st := j.Stats()
	if st.Head < 4*testRing {
		t.Fatalf("head %d: the ring did not wrap", st.Head)
	}
	got, rec, _ := collect(t, f.PowerCut(nil), smallOpts())
	if len(got) != 1 || !bytes.Equal(got[0], payloadFor(1, seq, 9000)) {
		t.Fatalf("replayed %d records after the checkpoint, want the 1 after it (tail %q)", len(got), rec.Tail)
	}
}

func TestFullRingMakesTheWorkerWaitForACheckpoint(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	ctx := context.Background()
	p := payloadFor(1, 0, 60<<10)
	// More than the ring holds: appends pass through the FIFO until the
	// ring is full, then the FIFO fills and writers stall.
	done := make(chan error, 1)
	go func() {
		for range 3 * testRing / len(p) {
			if _, err := j.Append(ctx, StreamFirstTx, p); err != nil {
				done <- err
				return
			}
		}
		done <- j.Flush(ctx)
	}()
	// Checkpoint when the journal asks and the ring has stalled (a lazy
	// committer: checkpointing at half full could keep the ring from ever
	// filling, and the stall is what is under test), until the writer is
	// done.
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if s := j.Stats(); s.RingStalls == 0 {
				t.Fatalf("ring never stalled: %+v", s)
			}
			return
		case <-j.CheckpointWanted():
			if j.Stats().RingStalls == 0 {
				continue // the stall sends again
			}
			pos, id := j.Durable()
			if err := j.Checkpoint(pos, id); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestClosedJournalRefusesWork(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append(context.Background(), StreamFirstTx, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if err := j.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

func TestFailedSyncFailsFlushAndStaysFailed(t *testing.T) {
	f := newImage(t, testRing)
	_, _, j := collect(t, f, smallOpts())
	f.SetFailSync(func() error { return faultfs.ErrInjected })
	ctx := context.Background()
	if _, err := j.Append(ctx, StreamFirstTx, []byte("lost")); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(ctx); !errors.Is(err, faultfs.ErrInjected) {
		t.Fatalf("flush: %v, want the injected error", err)
	}
	f.SetFailSync(nil)
	if _, err := j.Append(ctx, StreamFirstTx, []byte("later")); !errors.Is(err, faultfs.ErrInjected) {
		t.Fatalf("append after a failed sync: %v; a failed fdatasync must stay failed", err)
	}
}

func ExampleJournal() {
	f := faultfs.New(RingOffset + 2<<20)
	if _, err := Format(f); err != nil {
		panic(err)
	}
	j, _, _ := Open(f, Options{FIFOSize: 1 << 20, FirstTransid: 1000}, nil)
	ctx := context.Background()
	j.Append(ctx, StreamFirstTx, []byte("hello"))
	j.Flush(ctx)
	j.Close()
	Dump(f, func(pos uint64, r Record) error {
		fmt.Printf("pos=%d transid=%d stream=%#x payload=%q\n", pos, r.Transid, r.Stream, r.Payload)
		return nil
	})
	// Output: pos=0 transid=1000 stream=0xc100 payload="hello"
}

func TestARingTooSmallForTheFIFOIsRefused(t *testing.T) {
	f := newImage(t, 2<<20)
	if _, _, err := Open(f, Options{FIFOSize: 2 << 20}, nil); err == nil {
		t.Fatal("a 2 MiB ring opened with a 2 MiB FIFO: its largest record could never fit behind the wrap pads")
	}
}

// TestRingAndFIFOWrapAtDifferentPoints drives records of random sizes
// through a FIFO and a ring whose sizes do not divide each other, so that
// the two wrap at unrelated places and the ring writer has to restore the
// congruence of positions after every ring wrap; now and then it reopens
// (with the partial last block to resume in) and checks that exactly the
// records after the checkpoint come back.
func TestRingAndFIFOWrapAtDifferentPoints(t *testing.T) {
	const ring = 2<<20 + 3*4096
	f := newImage(t, ring)
	opts := smallOpts()
	rng := rand.New(rand.NewPCG(11, 12))
	ctx := context.Background()
	var since [][]byte // appended after the last checkpoint
	seq := 0
	j, _, err := Open(f, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 60 {
		for range 1 + rng.IntN(40) {
			n := 1 + rng.IntN(30000)
			if rng.IntN(4) == 0 {
				n = 1 + rng.IntN(64)
			}
			p := payloadFor(3, seq, n)
			seq++
			if rng.IntN(8) == 0 { // a reservation given back, or committed short
				r, err := j.Reserve(ctx, StreamFirstTx, n+100)
				if err != nil {
					t.Fatal(err)
				}
				if rng.IntN(2) == 0 {
					r.Abort()
					continue
				}
				copy(r.Payload, p)
				r.Commit(len(p))
			} else if _, err := j.Append(ctx, StreamFirstTx, p); err != nil {
				t.Fatal(err)
			}
			since = append(since, p)
		}
		if err := j.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(2) == 0 {
			pos, id := j.Durable()
			if err := j.Checkpoint(pos, id); err != nil {
				t.Fatal(err)
			}
			since = nil
		}
		if round%7 == 6 {
			j.Close()
			var got [][]byte
			j, _, err = Open(f, opts, func(_ uint64, r Record) error {
				got = append(got, append([]byte(nil), r.Payload...))
				return nil
			})
			if err != nil {
				t.Fatalf("round %d: reopen: %v", round, err)
			}
			if len(got) != len(since) {
				t.Fatalf("round %d: replayed %d records, want %d", round, len(got), len(since))
			}
			for i := range got {
				if !bytes.Equal(got[i], since[i]) {
					t.Fatalf("round %d: record %d differs", round, i)
				}
			}
		}
	}
	j.Close()
	if s := j.Stats(); s.Head < 5*ring {
		t.Fatalf("head %d: fewer than five laps of the ring", s.Head)
	}
}

// TestWaitWrittenWritesWithoutSyncing: WaitWritten returns once the record
// is in the ring (it survives the process) without an fdatasync (a power
// cut may take it).
func TestWaitWrittenWritesWithoutSyncing(t *testing.T) {
	f := newImage(t, testRing)
	j, _, err := Open(f, smallOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := j.Reserve(context.Background(), StreamFirstTx, 100)
	if err != nil {
		t.Fatal(err)
	}
	copy(r.Payload, payloadFor(1, 1, 100))
	r.Commit(100)
	_, syncs := f.Counts()
	if err := j.WaitWritten(context.Background(), r.End()); err != nil {
		t.Fatal(err)
	}
	if _, now := f.Counts(); now != syncs {
		t.Errorf("WaitWritten synced (%d syncs, were %d)", now, syncs)
	}
	dead := f.PowerCut(func(int64) bool { return true }) // the process died
	cut := f.PowerCut(func(int64) bool { return false }) // the machine did
	j.Close()
	if got, _, _ := collect(t, dead, smallOpts()); len(got) != 1 || !bytes.Equal(got[0], payloadFor(1, 1, 100)) {
		t.Errorf("after the process died the journal holds %d records, want the one written", len(got))
	}
	if got, _, _ := collect(t, cut, smallOpts()); len(got) != 0 {
		t.Errorf("after a power cut the journal holds %d records: it was synced", len(got))
	}
}

// TestARetainingFIFOKeepsRecordsUntilReleased: with Retain, records that
// are written and synced keep their FIFO space; half a FIFO of them asks
// for a checkpoint, a full one makes writers wait, and Release lets them
// go on. The bytes stay readable where Bytes finds them until then.
func TestARetainingFIFOKeepsRecordsUntilReleased(t *testing.T) {
	opts := smallOpts()
	opts.Retain = true
	j, _, err := Open(newImage(t, 8<<20), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	ctx := context.Background()
	const n = 64 << 10
	first, err := j.Reserve(ctx, StreamFirstTx, n)
	if err != nil {
		t.Fatal(err)
	}
	at := first.PayloadIndex()
	copy(first.Payload, payloadFor(1, 0, n))
	first.Commit(n)
	wrote := make(chan uint64)
	go func() {
		defer close(wrote)
		for seq := 1; seq < 3*MinFIFOSize/n; seq++ {
			r, err := j.Reserve(ctx, StreamFirstTx, n)
			if err != nil {
				t.Error(err)
				return
			}
			copy(r.Payload, payloadFor(1, seq, n))
			r.Commit(n)
			if err := j.WaitWritten(ctx, r.End()); err != nil {
				t.Error(err)
				return
			}
			wrote <- r.End()
		}
	}()
	var end uint64
	for j.Stats().FIFO.Stalls == 0 {
		select {
		case end = <-wrote:
		case <-time.After(time.Millisecond): // polling a figure, not synchronising
		}
	}
	select {
	case <-j.CheckpointWanted():
	default:
		t.Error("a FIFO full of retained records did not ask for a checkpoint")
	}
	if !bytes.Equal(j.Bytes(at, n), payloadFor(1, 0, n)) {
		t.Fatal("the first record's bytes changed before they were released")
	}
	select {
	case e := <-wrote:
		t.Fatalf("a writer went on (to %d) while the FIFO was full of retained records", e)
	default:
	}
	if end == 0 {
		t.Fatal("nothing was written")
	}
	j.Release(end)
	for e := range wrote { // each release lets the writer go on
		j.Release(e)
	}
}

// TestWaitWrittenEndsWithItsContext: a record behind one still being
// filled cannot be written; its waiter returns when its context ends, and
// a later wait returns once the first record is committed.
func TestWaitWrittenEndsWithItsContext(t *testing.T) {
	j, _, err := Open(newImage(t, testRing), smallOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	bg := context.Background()
	first, err := j.Reserve(bg, StreamFirstTx, 100)
	if err != nil {
		t.Fatal(err)
	}
	second, err := j.Reserve(bg, StreamFirstTx, 100)
	if err != nil {
		t.Fatal(err)
	}
	second.Commit(100)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	if err := j.WaitWritten(ctx, second.End()); !errors.Is(err, context.Canceled) {
		t.Fatalf("a wait behind an incomplete record: %v, want the context's end", err)
	}
	first.Commit(100)
	if err := j.WaitWritten(bg, second.End()); err != nil {
		t.Fatal(err)
	}
	if n := len(j.writeWaits); n != 0 {
		t.Errorf("%d waiters left behind", n)
	}
}
