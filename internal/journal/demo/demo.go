// Package demo runs the journal engine alone, as `jvol journal demo` shows
// it: concurrent writers, group commit, checkpoints and live figures, then
// the recovery of what a crash left after the last checkpoint.
package demo

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// Options shape the engine demonstration.
type Options struct {
	Dir         string // where the journal image is created
	JournalSize int64
	Writers     int
	Records     int // per writer
}

// Run creates a journal image, drives it with concurrent writers (block
// writes with flushes, checkpoints as a committer would make them, up to
// each writer's last 16 records) while printing live figures, stops without
// a final checkpoint as a crash would leave it, and recovers: every record
// after the last checkpoint must come back intact.
func Run(ctx context.Context, w io.Writer, o Options) error {
	path := filepath.Join(o.Dir, volume.JournalFile)
	if err := vfs.Preallocate(path, o.JournalSize); err != nil {
		return err
	}
	f, err := vfs.OpenDirect(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sb, err := journal.Format(f)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "journal image %s: %d MiB ring, uuid %x, direct I/O %v\n", path, sb.RingSize>>20, sb.UUID, f.Direct())

	opts := journal.Options{FIFOSize: 16 << 20}
	j, _, err := journal.Open(f, opts, nil)
	if err != nil {
		return err
	}
	start := time.Now()
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // stats printer and checkpointer
		defer bg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if n%5 == 0 {
				printStats(w, j.Stats(), time.Since(start))
			}
			// Stand-in for the volume's committer: everything durable is
			// taken as applied.
			pos, id := j.Durable()
			if err := j.Checkpoint(pos, id); err != nil {
				fmt.Fprintln(w, "checkpoint:", err)
			}
		}
	}()

	// The checkpointer stops before each writer's last tail records, so
	// that they always stay after the last checkpoint.
	const tail = 16
	last := max(o.Records-tail, 0)
	err = writeAll(ctx, j, o.Writers, 0, last)
	close(stop)
	bg.Wait()
	if err == nil {
		err = writeAll(ctx, j, o.Writers, last, o.Records)
	}
	if err != nil {
		return err
	}
	final := j.Stats()
	printStats(w, final, time.Since(start))
	if err := j.Close(); err != nil {
		return err
	}
	mb := float64(final.BytesWritten) / (1 << 20)
	fmt.Fprintf(w, "wrote %.1f MiB in %d records with %d flushes served by %d fdatasyncs (group commit), %.0f MiB/s\n",
		mb, o.Writers*o.Records, final.Flushes, final.Syncs, mb/time.Since(start).Seconds())

	// Reopen as after a crash: the records after the last checkpoint replay.
	fmt.Fprintln(w, "closing without a final checkpoint, as a crash would, and recovering:")
	bad := 0
	j, rec, err := journal.Open(f, opts, func(pos uint64, r journal.Record) error {
		if !intact(r) {
			bad++
		}
		return nil
	})
	if err != nil {
		return err
	}
	defer j.Close()
	if bad > 0 {
		return fmt.Errorf("recovery returned %d damaged records", bad)
	}
	fmt.Fprintf(w, "recovered %d records from position %d to %d, last transid %d, every checksum and payload intact (tail: %s)\n",
		rec.Records, rec.Start, rec.End, rec.LastTransid, rec.Tail)
	return nil
}

// writeAll runs writers concurrently, each appending its records from
// to to, and returns the first error of any.
func writeAll(ctx context.Context, j *journal.Journal, writers, from, to int) error {
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for wr := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- writer(ctx, j, wr, from, to)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writer appends the block writes from to to of writer wr, of 4 to 64 KiB,
// flushing after every 16th and at the end.
func writer(ctx context.Context, j *journal.Journal, wr, from, to int) error {
	rng := rand.New(rand.NewPCG(uint64(wr), 42+uint64(from)))
	data := make([]byte, 64<<10)
	for i := from; i < to; i++ {
		size := (1 + rng.IntN(16)) * 4096
		for k := range data[:size] {
			data[k] = byte(wr + i + k)
		}
		r, err := j.Reserve(ctx, journal.StreamFirstTx+uint16(wr), blockrec.WriteSize(size))
		if err != nil {
			return err
		}
		off := uint64(wr)<<32 | uint64(i)*65536
		// The last 4 bytes of each block write carry the CRC of the rest,
		// so that recovery can check the payload end to end.
		body := data[:size]
		binary.LittleEndian.PutUint32(body[size-4:], crc32.ChecksumIEEE(body[:size-4]))
		blockrec.PutWrite(r.Payload, off, body)
		r.Commit(len(r.Payload))
		if i%16 == 15 {
			if err := j.Flush(ctx); err != nil {
				return err
			}
		}
	}
	return j.Flush(ctx)
}

func intact(r journal.Record) bool {
	ok := false
	err := journal.ParseSubs(r.Payload, func(s journal.Sub) error {
		op, _, err := blockrec.Parse(s)
		if err != nil || op.Kind != blockrec.Write || len(op.Data) < 4 {
			return fmt.Errorf("not a block write")
		}
		ok = binary.LittleEndian.Uint32(op.Data[len(op.Data)-4:]) == crc32.ChecksumIEEE(op.Data[:len(op.Data)-4])
		return nil
	})
	return err == nil && ok
}

func printStats(w io.Writer, s journal.Stats, d time.Duration) {
	fmt.Fprintf(w, "%6.2fs transid=%d acked=%d fifo=%dKiB/%dMiB ring=%dKiB/%dMiB written=%dMiB syncs=%d flushes=%d fifo-stalls=%d ring-stalls=%d\n",
		d.Seconds(), s.LastTransid, s.AckedTransid, s.FIFO.Used>>10, s.FIFO.Size>>20, s.Used>>10, s.RingSize>>20,
		s.BytesWritten>>20, s.Syncs, s.Flushes, s.FIFO.Stalls, s.RingStalls)
}
