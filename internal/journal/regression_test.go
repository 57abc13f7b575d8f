package journal

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// Regression tests for bugs a review found; each failed before its fix.

func appendAligned(t *testing.T, j *Journal, seq, a int) {
	t.Helper()
	if _, err := j.Append(context.Background(), StreamFirstTx, payloadFor(5, seq, a-Overhead)); err != nil {
		t.Fatal(err)
	}
}

func TestTheNextLapNeverEntersTheCheckpointsBlock(t *testing.T) {
	const ring = 2 << 20
	f := newImage(t, ring)
	opts := smallOpts()
	j, _, err := Open(f, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appendAligned(t, j, 0, 2048)
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pos, id := j.Durable()
	if err := j.Checkpoint(pos, id); err != nil { // mid-block
		t.Fatal(err)
	}
	appendAligned(t, j, 1, 65536-2048)
	for i := range 31 { // to the ring's end exactly
		appendAligned(t, j, 2+i, 65536)
	}
	appendAligned(t, j, 100, 1024) // the next lap, in the checkpoint's block
	flushed := make(chan error, 1)
	go func() { flushed <- j.Flush(ctx) }()
	// The worker must wait for a checkpoint rather than write that block.
	waitFor(t, func() bool {
		p, _ := j.Durable() // synced up to the ring's end, then stalled
		return j.Stats().RingStalls > 0 && p == ring
	})
	// A crash now recovers the whole lap from the first checkpoint.
	if got, rec, _ := collect(t, f.PowerCut(nil), opts); len(got) != 32 {
		t.Fatalf("recovered %d records of the full ring, want 32 (tail %q)", len(got), rec.Tail)
	}
	pos, id = j.Durable()
	if err := j.Checkpoint(pos, id); err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if got, rec, _ := collect(t, f.PowerCut(nil), opts); len(got) != 1 {
		t.Fatalf("recovered %d records after the second checkpoint, want 1 (tail %q)", len(got), rec.Tail)
	}
}

func TestOrphansBehindAStaleRecordStillRaiseTheNextId(t *testing.T) {
	const ring = 2 << 20
	f := newImage(t, ring)
	opts := smallOpts()
	opts.FirstTransid = 1 // a clock that cannot be trusted to move forward
	j, _, err := Open(f, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ckpt := func() {
		if err := j.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		p, id := j.Durable()
		if err := j.Checkpoint(p, id); err != nil {
			t.Fatal(err)
		}
	}
	for seq := 1; seq <= 512+10; seq++ { // a lap and a bit
		appendAligned(t, j, seq, 4096)
		if seq%64 == 0 {
			ckpt()
		}
	}
	ckpt()
	s, _ := j.Durable()
	for i := range 140 { // past half the FIFO: written, not synced
		appendAligned(t, j, 1000+i, 4096)
	}
	waitFor(t, func() bool { return f.Unsynced() >= 64*4096 })
	cutAt := RingOffset + int64(s%ring) + 4096
	crashed := f.PowerCut(func(off int64) bool { return off >= cutAt }) // lose the first, keep the rest
	_, _, j2 := collect(t, crashed, opts)
	if _, err := j2.Append(ctx, StreamFirstTx, payloadFor(9, 0, 4096-Overhead)); err != nil {
		t.Fatal(err)
	}
	if err := j2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	got, rec, _ := collect(t, crashed.PowerCut(nil), opts)
	if len(got) != 1 {
		t.Fatalf("replayed %d records after the crash point, want the 1 appended since (tail %q)", len(got), rec.Tail)
	}
}

func TestAFailedCheckpointSyncFailsEveryLaterFlush(t *testing.T) {
	f := newImage(t, 8<<20)
	j, _, err := Open(f, smallOpts(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appendAligned(t, j, 0, 4096)
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	pos, id := j.Durable()
	for i := range 140 {
		appendAligned(t, j, 1+i, 4096)
	}
	var fail atomic.Bool
	fail.Store(true)
	f.SetFailSync(func() error {
		if fail.CompareAndSwap(true, false) {
			return faultfs.ErrInjected
		}
		return nil
	})
	if err := j.Checkpoint(pos, id); err == nil {
		t.Fatal("checkpoint with a failing sync succeeded")
	}
	// The disk answers fine now; the flush must still fail.
	if err := j.Flush(ctx); err == nil {
		t.Fatal("a flush succeeded after a failed fdatasync")
	}
}

func TestAbortAfterAFailedExtendIsHarmless(t *testing.T) {
	f := newFIFO(t, Half)
	ctx := context.Background()
	r, _ := f.Reserve(ctx, StreamFirstTx+1, 8)
	f.Close(nil)
	if _, err := r.Extend(ctx, 8, 8); err == nil {
		t.Fatal("extend on a closed FIFO succeeded")
	}
	r.Abort()
}

func TestAWriterWaitingForSpaceIsServedWithoutAFlush(t *testing.T) {
	f := newImage(t, 8<<20)
	j, _, err := Open(f, smallOpts(), nil) // no heartbeat to speak of
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	appendAligned(t, j, 0, 300<<10)
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	appendAligned(t, j, 1, 240<<10) // below half: nothing wakes the worker
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := j.Append(ctx2, StreamFirstTx, payloadFor(5, 2, 512<<10-Overhead)); err != nil {
		t.Fatalf("a writer waiting for space was never served: %v", err)
	}
}
