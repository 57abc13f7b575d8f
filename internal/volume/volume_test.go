package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
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

// TestVolumeMatchesAModel runs random unaligned writes, reads, discards and
// flushes, small enough a journal that commits and ring wraps happen often,
// and compares every read with an in-memory model.
func TestVolumeMatchesAModel(t *testing.T) {
	const size = 8 << 20
	data, jf := images(t, size, 2<<20)
	v := openVolume(t, data, jf, size)
	defer v.Close()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	ctx := context.Background()
	for i := range 3000 {
		off := rng.Int64N(size)
		n := min(1+rng.Int64N(200000), size-off)
		switch op := rng.IntN(10); {
		case op < 5:
			p := make([]byte, n)
			for k := range p {
				p[k] = byte(i + k*7)
			}
			if _, err := v.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		case op < 8:
			got := make([]byte, n)
			if _, err := v.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				t.Fatalf("op %d: read [%d,%d) differs from the model", i, off, off+n)
			}
		case op < 9:
			if err := v.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		default:
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if s := v.Stats(); s.Commits < 10 || s.Journal.Head < 4*s.Journal.RingSize {
		t.Fatalf("too few commits (%d) or laps of the ring (head %d): the test did not exercise them", s.Commits, s.Journal.Head)
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

// TestResumeAfterACrashKeepsWritesTheJournalLost is a server dying while
// its block device lives on (a keeper held the FUSE connection): a write
// that was acknowledged reached the data image, but its record was still
// in the memory FIFO. Its block's older record in the journal must not be
// replayed over it, and after the resume it must survive a power cut.
func TestResumeAfterACrashKeepsWritesTheJournalLost(t *testing.T) {
	const size = 1 << 20
	keepAll := func(int64) bool { return true }
	old, newer := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	for _, resume := range []Resume{NoResume, ResumeCrash} {
		data, jf := images(t, size, 2<<20)
		v := openVolume(t, data, jf, size)
		if _, err := v.WriteAt(old, 8192); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		jAtDeath := jf.PowerCut(keepAll) // the newer record never got here
		if _, err := v.WriteAt(newer, 8192); err != nil {
			t.Fatal(err)
		}
		dAtDeath := data.PowerCut(keepAll)
		v.Close()

		cfg := testConfig()
		cfg.Resume = resume
		v2, _, err := Open(dAtDeath, jAtDeath, size, cfg)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		if _, err := v2.ReadAt(got, 8192); err != nil {
			t.Fatal(err)
		}
		if resume == NoResume {
			// What the replay does without knowing: the reason for Resume.
			if !bytes.Equal(got, old) {
				t.Fatal("a replay did not bring the older record back: the test no longer shows the danger")
			}
			v2.Close()
			continue
		}
		if !bytes.Equal(got, newer) {
			t.Fatalf("after the resume the block holds %d, want the acknowledged write (2)", got[0])
		}
		// Power cut right after the resume: nothing synced since.
		d3, j3 := dAtDeath.PowerCut(func(int64) bool { return false }), jAtDeath.PowerCut(func(int64) bool { return false })
		v2.Close()
		v3 := openVolume(t, d3, j3, size)
		if _, err := v3.ReadAt(got, 8192); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, newer) {
			t.Fatalf("after a resume and a power cut the block holds %d, want 2", got[0])
		}
		v3.Close()
	}
}
