package journal

import (
	"context"
	"errors"
	"testing"
	"time"
)

// take consumes every complete record, returning the non-pad ones.
func take(f *FIFO) []Record {
	var out []Record
	r, w := f.pending()
	pos := r
	for pos < w {
		h, rec, ok := f.peek(pos)
		if !ok {
			break
		}
		if !h.IsPad() {
			d, err := DecodeRecord(rec)
			if err != nil {
				panic(err)
			}
			out = append(out, d)
		} else if _, err := DecodeRecord(rec); err != nil {
			panic(err)
		}
		pos += uint64(len(rec))
	}
	f.taken(pos)
	return out
}

// drop consumes every complete record without looking at it.
func drop(f *FIFO) {
	r, w := f.pending()
	for r < w {
		_, rec, ok := f.peek(r)
		if !ok {
			break
		}
		r += uint64(len(rec))
	}
	f.taken(r)
}

func newFIFO(t *testing.T, d Duplex) *FIFO {
	t.Helper()
	f, err := NewFIFO(MinFIFOSize, d, 100)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestFIFOSizeMustBeAPowerOfTwoInRange(t *testing.T) {
	for _, n := range []int{0, MinFIFOSize / 2, MinFIFOSize + 16, 2 * MaxFIFOSize} {
		if _, err := NewFIFO(n, Half, 1); err == nil {
			t.Errorf("size %d accepted", n)
		}
	}
}

func TestConsumerNeverPassesAnIncompleteRecord(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	a, _ := f.Reserve(ctx, StreamFirstTx, 10)
	b, _ := f.Reserve(ctx, StreamFirstTx, 10)
	b.Commit(10)
	if got := take(f); len(got) != 0 {
		t.Fatalf("took %d records past an incomplete one", len(got))
	}
	a.Commit(10)
	got := take(f)
	if len(got) != 2 || got[0].Transid != a.Transid || got[1].Transid != b.Transid {
		t.Fatalf("took %+v", got)
	}
	if a.Transid >= b.Transid {
		t.Fatalf("ids %d then %d: not increasing", a.Transid, b.Transid)
	}
}

func TestShortCommitLeavesAPadAndAbortLeavesOnlyAPad(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	a, _ := f.Reserve(ctx, StreamFirstTx, 1000)
	copy(a.Payload, "abc")
	a.Commit(3)
	b, _ := f.Reserve(ctx, StreamFirstTx, 1000)
	b.Abort()
	got := take(f)
	if len(got) != 1 || string(got[0].Payload) != "abc" || got[0].Stream != StreamFirstTx|FlagBegin|FlagEnd {
		t.Fatalf("took %+v", got)
	}
	if s := f.Stats(); s.Used != 0 {
		t.Fatalf("half duplex: %d bytes still used after taking everything", s.Used)
	}
}

func TestExtendSplitsATransactionAndAbortMarksItAborted(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	r, _ := f.Reserve(ctx, StreamFirstTx+1, 8)
	copy(r.Payload, "part one")
	r2, err := r.Extend(ctx, 8, 8)
	if err != nil {
		t.Fatal(err)
	}
	copy(r2.Payload, "part two")
	r3, err := r2.Extend(ctx, 8, 8)
	if err != nil {
		t.Fatal(err)
	}
	r3.Abort()
	got := take(f)
	want := []uint16{FlagBegin, 0, FlagEnd | FlagAborted}
	if len(got) != 3 {
		t.Fatalf("took %d records, want 3", len(got))
	}
	for i, g := range got {
		if g.ID() != StreamFirstTx+1 || g.Stream&^StreamMask != want[i] {
			t.Errorf("record %d: stream %#x, want flags %#x", i, g.Stream, want[i])
		}
	}
	if string(got[1].Payload) != "part two" || len(got[2].Payload) != 0 {
		t.Errorf("payloads %q %q", got[1].Payload, got[2].Payload)
	}
}

func TestWrapPadsKeepEveryRecordContiguous(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	seq := 0
	for range 200 { // about 25 laps of a 1 MiB FIFO
		var batch []int
		for range 3 {
			n := 30000 + seq*13%9000
			r, err := f.Reserve(ctx, StreamFirstTx, n)
			if err != nil {
				t.Fatal(err)
			}
			copy(r.Payload, payloadFor(0, seq, n))
			r.Commit(n)
			batch = append(batch, seq)
			seq++
		}
		got := take(f)
		if len(got) != len(batch) {
			t.Fatalf("took %d, want %d", len(got), len(batch))
		}
		for i, g := range got {
			if string(g.Payload[8:16]) != string(payloadFor(0, batch[i], 16)[8:16]) {
				t.Fatalf("record %d out of order", batch[i])
			}
		}
	}
	if s := f.Stats(); s.WIndex < 10*MinFIFOSize {
		t.Fatalf("windex %d: FIFO did not wrap", s.WIndex)
	}
}

func TestFullFIFOStallsUntilSpaceOrCancel(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	for range 4 {
		r, err := f.Reserve(ctx, StreamFirstTx, MinFIFOSize/4-Overhead)
		if err != nil {
			t.Fatal(err)
		}
		r.Commit(len(r.Payload))
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error)
	go func() {
		_, err := f.Reserve(cctx, StreamFirstTx, 100)
		errc <- err
	}()
	waitFor(t, func() bool { return f.Stats().Stalls == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reserve: %v", err)
	}

	go func() {
		r, err := f.Reserve(ctx, StreamFirstTx, 100)
		if err == nil {
			r.Commit(0)
		}
		errc <- err
	}()
	waitFor(t, func() bool { return f.Stats().Stalls == 2 })
	take(f) // frees the space: the writer goes on
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	go func() {
		for {
			if _, err := f.Reserve(ctx, StreamFirstTx, 100000); err != nil {
				errc <- err
				return
			}
		}
	}()
	waitFor(t, func() bool { return f.Stats().Stalls == 3 })
	f.Close(nil)
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("reserve on a closed FIFO: %v", err)
	}
}

func TestFullDuplexFreesOnlyAcknowledgedAndRewindResends(t *testing.T) {
	f := newFIFO(t, Full)
	ctx := context.Background()
	var ids []uint64
	for i := range 5 {
		r, _ := f.Reserve(ctx, StreamFirstTx, 16)
		copy(r.Payload, payloadFor(0, i, 16))
		r.Commit(16)
		ids = append(ids, r.Transid)
	}
	if got := take(f); len(got) != 5 {
		t.Fatalf("took %d", len(got))
	}
	if s := f.Stats(); s.Used != 5*48 {
		t.Fatalf("full duplex freed space before any ack: used %d", s.Used)
	}
	f.Ack(ids[1])
	if s := f.Stats(); s.Used != 3*48 || s.AckedTransid != ids[1] {
		t.Fatalf("after ack of the 2nd: used %d, acked %d", s.Used, s.AckedTransid)
	}
	f.Ack(ids[0]) // late, out of order: changes nothing
	if s := f.Stats(); s.Used != 3*48 || s.AckedTransid != ids[1] {
		t.Fatalf("an older ack moved things: %+v", s)
	}
	f.Rewind()
	got := take(f)
	if len(got) != 3 || got[0].Transid != ids[2] {
		t.Fatalf("after rewind took %d records starting at %d, want 3 from %d", len(got), got[0].Transid, ids[2])
	}
	f.Ack(ids[4] + 100) // an ack beyond what was sent frees only what was sent
	if s := f.Stats(); s.Used != 0 {
		t.Fatalf("used %d after acking everything", s.Used)
	}
}

func TestReserveAndCommitAllocateNothing(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	data := make([]byte, 4096)
	allocs := testing.AllocsPerRun(1000, func() {
		r, err := f.Reserve(ctx, StreamFirstTx, len(data))
		if err != nil {
			t.Fatal(err)
		}
		copy(r.Payload, data)
		r.Commit(len(data))
		drop(f)
	})
	if allocs != 0 {
		t.Fatalf("reserve+commit+take allocates %.1f times per record", allocs)
	}
}

func TestRecordsOverHalfTheFIFOAreRefused(t *testing.T) {
	f := newFIFO(t, Half)
	if _, err := f.Reserve(context.Background(), StreamFirstTx, MinFIFOSize/2); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// waitFor polls cond: for states that only a blocked goroutine can reach
// and that expose no channel to wait on.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// Regression: a writer that gave up waiting for space (its context ended)
// stayed counted as waiting, and the consumer kept forcing a write and a
// sync on every pass for it.
func TestAWriterThatGivesUpNoLongerWaits(t *testing.T) {
	f := newFIFO(t, Half)
	n := MinFIFOSize / 3
	for range 2 {
		r, err := f.Reserve(context.Background(), StreamFirstTx, n)
		if err != nil {
			t.Fatal(err)
		}
		r.Commit(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := f.Reserve(ctx, StreamFirstTx, n) // does not fit: waits
		done <- err
	}()
	waitFor(t, f.starved)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("reserve: %v", err)
	}
	if f.starved() {
		t.Error("a writer that gave up is still waiting")
	}
}
