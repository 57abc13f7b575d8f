package volume

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// images returns a data image of size bytes and a formatted journal image
// with a ring of ring bytes.
func images(t *testing.T, size int64, ring int64) (*faultfs.File, *faultfs.File) {
	t.Helper()
	jf := faultfs.New(journal.RingOffset + ring)
	jf.Align = vfs.BlockSize
	if _, err := journal.Format(jf); err != nil {
		t.Fatal(err)
	}
	return faultfs.New(size), jf
}

func testConfig() Config {
	return Config{Journal: journal.Options{FIFOSize: 1 << 20, Heartbeat: time.Hour}, CommitInterval: time.Hour}
}

func openVolume(t *testing.T, data, jf *faultfs.File, size int64) *Volume {
	t.Helper()
	v, _, err := Open(data, jf, size, testConfig())
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return v
}

// TestVolumeMatchesAModel runs random writes (mostly of whole blocks,
// which stay pending until the committer applies them; some of parts of
// blocks, which go through), reads, discards, flushes and grows, with a
// committer applying concurrently and a journal small enough that its ring
// wraps many times, and compares every read with an in-memory model.
func TestVolumeMatchesAModel(t *testing.T) {
	size := int64(8 << 20)
	data, jf := images(t, size, 2<<20)
	v := openVolume(t, data, jf, size)
	defer v.Close()
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := v.commit(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); <-stopped }()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()
	for i := range 6000 {
		off := rng.Int64N(size)
		n := min(1+rng.Int64N(200000), size-off)
		if rng.IntN(4) > 0 { // whole blocks
			off &^= 4095
			n = min((n+4095)&^4095, size-off)
		}
		switch op := rng.IntN(20); {
		case op < 10:
			p := make([]byte, n)
			for k := range p {
				p[k] = byte(i + k*7)
			}
			if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		case op < 16:
			got := make([]byte, n)
			if _, err := v.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d: read [%d,%d) differs from the model", i, off, off+n)
			}
		case op < 18:
			if err := v.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case op < 19 && size < 12<<20:
			size += 4096 * (1 + rng.Int64N(64))
			if err := v.Grow(ctx, size); err != nil {
				t.Fatal(err)
			}
			model = append(model, make([]byte, size-int64(len(model)))...)
		default:
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := v.Stats()
	if s.Commits < 10 || s.Journal.Head < 4*s.Journal.RingSize {
		t.Fatalf("too few commits (%d) or laps of the ring (head %d): the test did not exercise them", s.Commits, s.Journal.Head)
	}
	if s.MixedReads == 0 || s.PendingReads == s.MixedReads {
		t.Fatalf("%d reads took pending blocks, %d of them blocks of the data image too: the test did not exercise both kinds", s.PendingReads, s.MixedReads)
	}
}

// TestAFIFOFullOfPendingWritesMakesWritersWait: while the committer cannot
// apply, pending writes fill the FIFO and the next writer waits (a stall),
// with the index no larger than the FIFO's blocks; once it applies, the
// writers go on and nothing is lost, also after a power cut.
func TestAFIFOFullOfPendingWritesMakesWritersWait(t *testing.T) {
	const size = 8 << 20
	const fifo = 1 << 20 // testConfig's
	data, jf := images(t, size, 4<<20)
	v := openVolume(t, data, jf, size)
	ctx := context.Background()
	block := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, 64<<10) }
	v.commitMu.Lock() // no commit can apply
	done := make(chan error, 1)
	go func() {
		for i := range 64 { // 4 MiB through a 1 MiB FIFO
			if _, err := v.WriteAt(block(i), int64(i)*64<<10); err != nil {
				done <- err
				return
			}
		}
		done <- v.Flush(ctx)
	}()
	deadline := time.Now().Add(time.Minute)
	for v.j.Stats().FIFO.Stalls == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no writer waited for FIFO space")
		}
		time.Sleep(time.Millisecond) // polling a figure, not synchronising
	}
	select {
	case err := <-done:
		t.Fatalf("4 MiB of writes went through a 1 MiB FIFO that nothing applied (%v)", err)
	default:
	}
	if n := v.pend.n.Load(); n == 0 || n > fifo/4096 {
		t.Fatalf("%d blocks pending: want some, at most the FIFO's %d", n, fifo/4096)
	}
	v.commitMu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	check := func(v *Volume, when string) {
		got := make([]byte, 64<<10)
		for i := range 64 {
			if _, err := v.ReadAt(got, int64(i)*64<<10); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, block(i)) {
				t.Fatalf("%s: block %d holds %d", when, i, got[0])
			}
		}
	}
	check(v, "after the wait")
	v2 := openVolume(t, data.PowerCut(nil), jf.PowerCut(nil), size)
	check(v2, "after a power cut")
	v2.Close()
	v.Close()
}

// cutData cuts the power (calls cut) at its armed'th write.
type cutData struct {
	*faultfs.File
	armed atomic.Int64
	cut   func()
}

func (c *cutData) WriteAt(p []byte, off int64) (int, error) {
	if c.armed.Add(-1) == 0 {
		c.cut()
	}
	return c.File.WriteAt(p, off)
}

// stopCommitter stops v's committer goroutine: only the test's commits
// apply pending blocks then.
func stopCommitter(v *Volume) {
	close(v.quit)
	<-v.done
	v.quit = make(chan struct{}) // for Close
}

// TestPowerCutInTheMiddleOfACommit cuts the power while a commit writes
// pending blocks to the data image (some written, some not, the unsynced
// ones kept, lost or torn): after recovery every flushed write is there.
func TestPowerCutInTheMiddleOfACommit(t *testing.T) {
	const size = 4 << 20
	const fifo = 1 << 20 // testConfig's
	for round := range 12 {
		rng := rand.New(rand.NewPCG(uint64(round), 11))
		file, jf := images(t, size, 4<<20)
		data := &cutData{File: file}
		v, _, err := Open(data, jf, size, testConfig())
		if err != nil {
			t.Fatal(err)
		}
		stopCommitter(v)
		m := faultfs.NewSectorModel(size)
		ctx := context.Background()
		flush := func() {
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			m.Synced()
		}
		for i := range 100 + rng.IntN(100) {
			off := rng.Int64N(size/4096) * 4096
			n := min((1+rng.Int64N(16))*4096, size-off)
			p := make([]byte, n)
			for k := range p {
				p[k] = byte(round*31 + i + k/faultfs.SectorSize)
			}
			if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			m.Wrote(p, off)
			if rng.IntN(10) == 0 {
				flush()
			}
			if v.j.Stats().FIFO.Used > fifo/2 { // this test is the committer
				flush()
				if err := v.commit(); err != nil {
					t.Fatal(err)
				}
			}
		}
		last := bytes.Repeat([]byte{byte(round)}, 8192) // pending for sure
		if _, err := v.WriteAt(last, 8192); err != nil {
			t.Fatal(err)
		}
		m.Wrote(last, 8192)
		flush() // every pending block durable in the journal, for the commit
		runs := 0
		for i, e := range v.pend.collect(math.MaxUint64) {
			if i == 0 || e.block != v.pend.apply[i-1].block+1 {
				runs++
			}
		}
		if runs == 0 {
			t.Fatalf("round %d: nothing pending for the commit", round)
		}
		var d2, j2 *faultfs.File
		keep := faultfs.TearRandomly(rng)
		data.cut = func() { d2, j2 = file.PowerCut(keep), jf.PowerCut(keep) }
		data.armed.Store(1 + rng.Int64N(int64(runs)))
		if err := v.commit(); err != nil {
			t.Fatal(err)
		}
		if d2 == nil {
			t.Fatalf("round %d: the commit did not write %d runs", round, runs)
		}
		v.Close()
		v2 := openVolume(t, d2, j2, size)
		if bad, err := m.Check(v2); err != nil || len(bad) > 0 {
			t.Fatalf("round %d: sectors %v hold data never written there after their last flush (%v)", round, bad, err)
		}
		v2.Close()
	}
}

// TestPowerCutKeepsEveryFlushedWrite cuts the power (both images lose or
// tear their unsynced writes) at random points of a random workload, then
// recovers: every sector must hold what it held at the last flush or
// something written to it since.
func TestPowerCutKeepsEveryFlushedWrite(t *testing.T) {
	const size = 4 << 20
	for round := range 8 {
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		data, jf := images(t, size, 2<<20)
		v := openVolume(t, data, jf, size)
		m := faultfs.NewSectorModel(size)
		ctx := context.Background()
		for i := range 300 + rng.IntN(300) {
			off := rng.Int64N(size/4096) * 4096
			n := min((1+rng.Int64N(32))*4096, size-off)
			p := make([]byte, n)
			for k := range p {
				p[k] = byte(round*31 + i + k/faultfs.SectorSize)
			}
			if rng.IntN(8) == 0 {
				clear(p)
				if err := v.Discard(off, n); err != nil {
					t.Fatal(err)
				}
			} else if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			m.Wrote(p, off)
			if rng.IntN(10) == 0 {
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				m.Synced()
			}
			if rng.IntN(40) == 0 {
				v.commit()
			}
		}
		keep := faultfs.TearRandomly(rng)
		d2, j2 := data.PowerCut(keep), jf.PowerCut(keep)
		v.Close()
		v2 := openVolume(t, d2, j2, size)
		if bad, err := m.Check(v2); err != nil || len(bad) > 0 {
			t.Fatalf("sectors %v hold data never written there after their last flush (%v)", bad, err)
		}
		v2.Close()
	}
}

func TestGrowIsDurableAndShrinkRefused(t *testing.T) {
	data, jf := images(t, 1<<20, 2<<20)
	v := openVolume(t, data, jf, 1<<20)
	ctx := context.Background()
	if err := v.Grow(ctx, 3<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WriteAt([]byte("tail"), 3<<20-4); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Grow(ctx, 2<<20); !errors.Is(err, ErrShrink) {
		t.Fatalf("shrink: %v", err)
	}
	if err := v.Grow(ctx, 3<<20+1); !errors.Is(err, ErrAlignment) {
		t.Fatalf("unaligned grow: %v", err)
	}
	if err := v.Grow(ctx, blockrec.MaxSize+4096); err == nil || v.Size() != 3<<20 {
		t.Fatalf("grow above the largest size a replay takes: size %d, %v", v.Size(), err)
	}
	if _, err := v.WriteAt([]byte("x"), 3<<20); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	// A crash before anyone recorded the new size: the replay restores it.
	v2 := openVolume(t, data.PowerCut(nil), jf.PowerCut(nil), 1<<20)
	defer v2.Close()
	got := make([]byte, 4)
	if _, err := v2.ReadAt(got, 3<<20-4); err != nil || string(got) != "tail" || v2.Size() != 3<<20 {
		t.Fatalf("after crash: size %d, %q, %v", v2.Size(), got, err)
	}
	v.Close()
}

func TestConcurrentOverlappingWritesLeaveJournalAndDataInAgreement(t *testing.T) {
	const size = 1 << 20
	data, jf := images(t, size, 4<<20)
	v := openVolume(t, data, jf, size)
	ctx := context.Background()
	done := make(chan struct{})
	for w := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			p := bytes.Repeat([]byte{byte(w + 1)}, 64<<10)
			for i := range 200 {
				if _, err := v.WriteAt(p, int64(i%4)*4096); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	live := make([]byte, 80<<10)
	if _, err := v.ReadAt(live, 0); err != nil {
		t.Fatal(err)
	}
	// The durable data image and the journal replayed onto it must give
	// what was live.
	v2 := openVolume(t, data.PowerCut(nil), jf.PowerCut(nil), size)
	defer v2.Close()
	replayed := make([]byte, len(live))
	if _, err := v2.ReadAt(replayed, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(live, replayed) {
		t.Fatal("the journal's order of overlapping writes differs from the data image's")
	}
	v.Close()
}

// TestAFailedCommitFailsIOInsteadOfHangingIt: after the data image's
// fdatasync fails, no commit can free the journal; writers that would wait
// for space forever must get the error instead, and no later commit may
// checkpoint.
func TestAFailedCommitFailsIOInsteadOfHangingIt(t *testing.T) {
	data, jf := images(t, 4<<20, 2<<20)
	v := openVolume(t, data, jf, 4<<20)
	data.SetFailSync(func() error { return faultfs.ErrInjected })
	p := bytes.Repeat([]byte{7}, 256<<10)
	var err error
	for i := 0; err == nil && i < 64; i++ { // 16 MiB through a 2 MiB ring
		_, err = v.WriteAt(p, int64(i%16)*int64(len(p)))
	}
	if !errors.Is(err, faultfs.ErrInjected) {
		t.Fatalf("writes after a failed commit: %v, want the sync error", err)
	}
	data.SetFailSync(nil)
	before := v.Stats().Commits
	if err := v.commit(); err == nil || v.Stats().Commits != before {
		t.Fatalf("a commit after a failed sync went ahead: %v", err)
	}
	if err := v.Flush(context.Background()); !errors.Is(err, faultfs.ErrInjected) {
		t.Fatalf("flush: %v", err)
	}
	if err := v.Grow(context.Background(), 8<<20); !errors.Is(err, faultfs.ErrInjected) {
		t.Fatalf("grow: %v", err)
	}
}

// TestReplayRefusesADiscardPastTheEnd: a record the volume could not have
// written fails the open instead of being applied.
func TestReplayRefusesADiscardPastTheEnd(t *testing.T) {
	data, jf := images(t, 1<<20, 2<<20)
	ctx := context.Background()
	j, _, err := journal.Open(jf, testConfig().Journal, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, blockrec.DiscardSize)
	blockrec.PutDiscard(p, 1<<20, 4096)
	if _, err := j.Append(ctx, StreamIO, p); err != nil {
		t.Fatal(err)
	}
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if v, _, err := Open(data, jf, 1<<20, testConfig()); !errors.Is(err, blockrec.ErrRange) {
		if err == nil {
			v.Close()
		}
		t.Fatalf("open replaying a discard past the end: %v, want %v", err, blockrec.ErrRange)
	}
}

// TestResumeAfterACrashKeepsEveryAnsweredWrite is a server dying while its
// block device lives on (a keeper held the FUSE connection): an answered
// write of whole blocks is in the journal's ring, written and not synced,
// and not in the data image (the committer had not applied it); one of
// part of a block is in both. After the resume both must read back, and
// survive a power cut right after it.
func TestResumeAfterACrashKeepsEveryAnsweredWrite(t *testing.T) {
	const size = 1 << 20
	keepAll := func(int64) bool { return true }
	old, newer := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	for _, resume := range []Resume{NoResume, ResumeClean, ResumeCrash} {
		data, jf := images(t, size, 2<<20)
		v := openVolume(t, data, jf, size)
		for _, off := range []int64{8192, 16384 + 100} {
			if _, err := v.WriteAt(old, off); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, off := range []int64{8192, 16384 + 100} {
			if _, err := v.WriteAt(newer, off); err != nil {
				t.Fatal(err)
			}
		}
		// The process dies: what it wrote stays, synced or not.
		dAtDeath, jAtDeath := data.PowerCut(keepAll), jf.PowerCut(keepAll)
		v.Close()
		probe := make([]byte, 4096)
		if _, err := dAtDeath.ReadAt(probe, 8192); err != nil || !bytes.Equal(probe, old) {
			t.Fatalf("the data image holds %d at 8192 (%v): the write was applied, the test shows nothing", probe[0], err)
		}

		cfg := testConfig()
		cfg.Resume = resume
		v2, _, err := Open(dAtDeath, jAtDeath, size, cfg)
		if err != nil {
			t.Fatal(err)
		}
		check := func(v *Volume, when string) {
			t.Helper()
			got := make([]byte, 4096)
			for _, off := range []int64{8192, 16384 + 100} {
				if _, err := v.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, newer) {
					t.Fatalf("resume %d, %s: the block at %d holds %d, want the answered write (2)", resume, when, off, got[0])
				}
			}
		}
		check(v2, "after the resume")
		// Power cut right after the resume: nothing synced since.
		d3, j3 := dAtDeath.PowerCut(func(int64) bool { return false }), jAtDeath.PowerCut(func(int64) bool { return false })
		v2.Close()
		v3 := openVolume(t, d3, j3, size)
		check(v3, "after a resume and a power cut")
		v3.Close()
	}
}
