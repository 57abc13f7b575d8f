package journal

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// crashRun drives a journal on a fault-injecting file and remembers which
// records were acknowledged durable (a Flush returned after them) and which
// were only appended.
type crashRun struct {
	t      *testing.T
	f      *faultfs.File
	j      *Journal
	rng    *rand.Rand
	seq    int
	acked  [][]byte
	maybe  [][]byte // appended after the last completed flush
	opts   Options
	ctx    context.Context
	ringSz int
}

func newCrashRun(t *testing.T, ring int) *crashRun {
	c := &crashRun{
		t: t, f: newImage(t, ring), rng: rand.New(rand.NewPCG(1, uint64(ring))),
		opts: Options{FIFOSize: MinFIFOSize, Heartbeat: time.Hour}, ctx: context.Background(), ringSz: ring,
	}
	c.open(c.f)
	return c
}

func (c *crashRun) open(f *faultfs.File) {
	j, _, err := Open(f, c.opts, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.f, c.j = f, j
	c.t.Cleanup(func() { j.Close() })
}

// append adds n records of random size; they are not yet acknowledged.
func (c *crashRun) append(n, minSize, maxSize int) {
	for range n {
		p := payloadFor(7, c.seq, minSize+c.rng.IntN(maxSize-minSize+1))
		c.seq++
		if _, err := c.j.Append(c.ctx, StreamFirstTx, p); err != nil {
			c.t.Fatal(err)
		}
		c.maybe = append(c.maybe, p)
	}
}

// flush makes everything appended acknowledged.
func (c *crashRun) flush() {
	if err := c.j.Flush(c.ctx); err != nil {
		c.t.Fatal(err)
	}
	c.acked = append(c.acked, c.maybe...)
	c.maybe = nil
}

// checkpoint applies everything durable, as a committer would: acknowledged
// records before it are no longer expected back.
func (c *crashRun) checkpoint() {
	c.flush()
	pos, id := c.j.Durable()
	if err := c.j.Checkpoint(pos, id); err != nil {
		c.t.Fatal(err)
	}
	c.acked = nil
}

// unack turns the last acknowledged records back into merely appended ones:
// for cases that damage them as a crash mid-write would.
func (c *crashRun) unack(n int) {
	c.maybe = append(append([][]byte(nil), c.acked[len(c.acked)-n:]...), c.maybe...)
	c.acked = c.acked[:len(c.acked)-n]
}

// damageLast appends n records of min to max bytes, flushes them, then
// damages the last one (start and end are its file offsets) as a write torn
// by a crash would, so it counts as merely appended.
func (c *crashRun) damageLast(n, minSize, maxSize int, damage func(start, end int64)) *faultfs.File {
	c.append(n, minSize, maxSize)
	c.flush()
	c.unack(1)
	p := c.positions()
	start := c.fileOffset(p[len(p)-1])
	damage(start, start+int64(AlignedSize(len(c.maybe[0]))))
	return c.f.PowerCut(nil)
}

// positions returns the ring positions of the records in the image now.
func (c *crashRun) positions() []uint64 {
	var pos []uint64
	if _, _, err := Dump(c.f, func(p uint64, r Record) error {
		if !r.IsPad() {
			pos = append(pos, p)
		}
		return nil
	}); err != nil {
		c.t.Fatal(err)
	}
	return pos
}

// fileOffset is where ring position pos lies in the image.
func (c *crashRun) fileOffset(pos uint64) int64 { return RingOffset + int64(pos%uint64(c.ringSz)) }

// recoverAndVerify reopens the crashed image and checks that every
// acknowledged record is back, in order, followed by nothing but a prefix of
// the merely appended ones; then that appending goes on and survives.
func (c *crashRun) recoverAndVerify(f *faultfs.File) {
	c.t.Helper()
	var got [][]byte
	j, rec, err := Open(f, c.opts, func(pos uint64, r Record) error {
		got = append(got, append([]byte(nil), r.Payload...))
		return nil
	})
	if err != nil {
		c.t.Fatalf("recovery: %v", err)
	}
	c.t.Cleanup(func() { j.Close() })
	if len(got) < len(c.acked) {
		c.t.Fatalf("recovered %d records, but %d were acknowledged (tail: %s)", len(got), len(c.acked), rec.Tail)
	}
	for i, p := range got {
		var want []byte
		if i < len(c.acked) {
			want = c.acked[i]
		} else if i-len(c.acked) < len(c.maybe) {
			want = c.maybe[i-len(c.acked)]
		}
		if !bytes.Equal(p, want) {
			c.t.Fatalf("recovered record %d is not the one appended there (tail: %s)", i, rec.Tail)
		}
	}
	c.acked = got
	c.maybe = nil
	c.f, c.j = f, j
	c.append(20, 100, 9000)
	c.flush()
	c.j.Close()
	var again int
	j2, _, err := Open(f.PowerCut(nil), c.opts, func(uint64, Record) error { again++; return nil })
	if err != nil {
		c.t.Fatalf("reopen after appending: %v", err)
	}
	j2.Close()
	if again != len(c.acked) {
		c.t.Fatalf("after appending past the recovered tail: %d records, want %d", again, len(c.acked))
	}
}

// smash destroys the bytes from file offset off to the end of its 512-byte
// sector, with garbage or zeros: what a torn write leaves in the part of a
// sector that was being written.
func smash(f *faultfs.File, off int64, zero bool) {
	end := off | (faultfs.SectorSize - 1) + 1
	f.Mutate(off, func(b []byte) {
		r := rand.New(rand.NewPCG(uint64(off), 9)) // the same bytes both times
		for i := range end - off {
			b[i] = 0
			if !zero {
				b[i] = byte(r.IntN(256))
			}
		}
	})
}

func TestCrashRecovery(t *testing.T) {
	cases := []struct {
		name string
		ring int
		run  func(c *crashRun) *faultfs.File
	}{
		{"a power cut drops every write that was not synced", 4 << 20, func(c *crashRun) *faultfs.File {
			c.append(50, 100, 20000)
			c.flush()
			c.append(60, 8000, 20000) // past half the FIFO: written, not synced
			waitFor(c.t, func() bool { return c.f.Unsynced() > 0 })
			return c.f.PowerCut(nil)
		}},
		{"a power cut keeps a random half of the unsynced sectors", 4 << 20, func(c *crashRun) *faultfs.File {
			c.append(50, 100, 20000)
			c.flush()
			c.append(60, 8000, 20000)
			waitFor(c.t, func() bool { return c.f.Unsynced() > 0 })
			return c.f.PowerCut(faultfs.TearRandomly(c.rng))
		}},
		{"a torn rewrite of the partial last block keeps the record synced in it", 4 << 20, func(c *crashRun) *faultfs.File {
			c.append(1, 100, 100)
			c.flush()
			c.f.SetFailSync(func() error { return faultfs.ErrInjected }) // the rewrite lands, its sync does not
			c.append(1, 100, 100)
			c.j.Flush(c.ctx)
			return c.f.PowerCut(faultfs.TearRandomly(c.rng))
		}},
		{"a torn sector in the header of the last record", 4 << 20, func(c *crashRun) *faultfs.File {
			return c.damageLast(30, 600, 3000, func(start, _ int64) { smash(c.f, start, false) })
		}},
		{"a torn sector in the trailer of the last record", 4 << 20, func(c *crashRun) *faultfs.File {
			return c.damageLast(30, 6000, 9000, func(_, end int64) { smash(c.f, end-TrailerSize, false) })
		}},
		{"a torn sector in the payload of the last record", 4 << 20, func(c *crashRun) *faultfs.File {
			return c.damageLast(30, 6000, 9000, func(start, _ int64) { smash(c.f, start+2048, false) })
		}},
		{"a zeroed sector in the last record", 4 << 20, func(c *crashRun) *faultfs.File {
			return c.damageLast(30, 6000, 9000, func(start, _ int64) { smash(c.f, start+1024, true) })
		}},
		{"a bit flip in the last record", 4 << 20, func(c *crashRun) *faultfs.File {
			return c.damageLast(30, 600, 900, func(start, _ int64) {
				c.f.Mutate(start+40, func(b []byte) { b[0] ^= 0x10 })
			})
		}},
		{"records that wrap the ring end behind a pad", 2 << 20, func(c *crashRun) *faultfs.File {
			for c.j.Stats().Head < uint64(3*c.ringSz) { // laps, checkpointing as a committer would
				c.append(20, 10000, 40000)
				c.checkpoint()
			}
			c.append(30, 10000, 40000)
			c.flush()
			return c.f.PowerCut(nil)
		}},
		{"stale records from the previous lap are not returned", 2 << 20, func(c *crashRun) *faultfs.File {
			for c.j.Stats().Head < uint64(c.ringSz-100000) {
				c.append(5, 10000, 20000)
				c.checkpoint()
			}
			c.append(2, 30000, 30000) // the new lap begins; the old one lies ahead
			c.flush()
			return c.f.PowerCut(nil)
		}},
		{"a torn superblock write keeps the previous checkpoint", 4 << 20, func(c *crashRun) *faultfs.File {
			c.append(10, 1000, 2000)
			c.checkpoint()
			c.append(10, 1000, 2000)
			c.flush()
			before := append([][]byte(nil), c.acked...)
			c.checkpoint()
			// The newer superblock copy is torn: recovery falls back to the
			// older checkpoint and replays what came after it again.
			seq := c.j.sw.sb.Sequence
			smash(c.f, int64(seq%2)*SuperblockSize, false)
			c.acked = before
			return c.f.PowerCut(nil)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newCrashRun(t, tc.ring)
			crashed := tc.run(c)
			c.recoverAndVerify(crashed)
		})
	}
}

func TestCorruptionInTheMiddleIsReportedWithItsPosition(t *testing.T) {
	c := newCrashRun(t, 32<<20)
	c.append(10, 1000, 2000)
	c.flush()
	victim := c.positions()[3]
	c.append(1200, 16000, 20000) // ~20 MiB more: beyond the torn window
	c.flush()
	c.j.Close()
	c.f.Mutate(c.fileOffset(victim)+100, func(b []byte) { b[0] ^= 1 })
	_, _, err := Open(c.f.PowerCut(nil), c.opts, nil)
	var ce *CorruptError
	if !errors.As(err, &ce) {
		t.Fatalf("open: %v, want a CorruptError", err)
	}
	if ce.Pos != victim || !errors.Is(err, ErrChecksum) {
		t.Fatalf("corruption reported at %d (%v), want %d", ce.Pos, err, victim)
	}
}

func TestBothSuperblocksTornIsAnError(t *testing.T) {
	c := newCrashRun(t, 2<<20)
	c.j.Close()
	smash(c.f, 0, false)
	smash(c.f, SuperblockSize, true)
	if _, _, err := Open(c.f, c.opts, nil); !errors.Is(err, ErrSuperblock) {
		t.Fatalf("open: %v", err)
	}
}

// New ids continue above the image's, however far behind the clock is.
func TestNewIdsStayAboveTheImagesWhenTheClockIsBehind(t *testing.T) {
	c := newCrashRun(t, 4<<20)
	c.opts.FirstTransid = 1 // a clock far behind the image's ids
	c.append(10, 100, 200)
	c.flush()
	last := c.j.Stats().LastTransid
	c.j.Close()
	_, rec, j := collect(t, c.f, c.opts)
	if id, err := j.Append(c.ctx, StreamFirstTx, []byte("x")); err != nil || id <= last || rec.MaxTransid != last {
		t.Fatalf("new id %d (err %v) after last %d, max seen %d", id, err, last, rec.MaxTransid)
	}
}

// TestCleanCloseSkipsTheDamageSearchUntilTheNextAppend plants a valid record
// with a newer id far past the end of the journal, where only damage could
// put it. After a clean close Open trusts the end and does not look there;
// once reopened (and crashed before appending), it must look again.
func TestCleanCloseSkipsTheDamageSearchUntilTheNextAppend(t *testing.T) {
	c := newCrashRun(t, 32<<20)
	c.append(10, 1000, 2000)
	c.flush()
	if err := c.j.Close(); err != nil {
		t.Fatal(err)
	}
	end := c.j.Stats().Head
	planted := make([]byte, AlignedSize(8))
	EncodeRecord(planted, StreamFirstTx|FlagBegin|FlagEnd, 1<<62, []byte("planted!"))
	c.f.Mutate(c.fileOffset(end+20<<20), func(b []byte) { copy(b, planted) })

	j, _, err := Open(c.f, c.opts, nil)
	if err != nil {
		t.Fatalf("open after a clean close: %v", err)
	}
	crashed := c.f.PowerCut(nil) // the reopen cleared the clean mark durably
	j.Close()
	var ce *CorruptError
	if _, _, err := Open(crashed, c.opts, nil); !errors.As(err, &ce) {
		t.Fatalf("open after a crash: %v, want the planted record reported as corruption", err)
	}
}
