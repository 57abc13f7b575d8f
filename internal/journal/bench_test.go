package journal

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs"
)

// BenchmarkFIFO measures reserve + copy + commit, with one consumer taking
// records as a journal worker would (without writing them anywhere).
func BenchmarkFIFO(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		for _, writers := range []int{1, 8} {
			b.Run(fmt.Sprintf("size=%dk/writers=%d", size>>10, writers), func(b *testing.B) {
				f, err := NewFIFO(DefaultFIFOSize, Half, 1)
				if err != nil {
					b.Fatal(err)
				}
				done := make(chan struct{})
				consumed := make(chan struct{})
				go func() {
					defer close(consumed)
					for {
						select {
						case <-f.wake:
						case <-done:
							return
						}
						drop(f)
					}
				}()
				data := make([]byte, size)
				ctx := context.Background()
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := range writers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := w; i < b.N; i += writers {
							r, err := f.Reserve(ctx, StreamFirstTx, size)
							if err != nil {
								b.Error(err)
								return
							}
							copy(r.Payload, data)
							r.Commit(size)
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				close(done)
				<-consumed
			})
		}
	}
}

// BenchmarkJournalWrite compares appending 64 KiB records into a journal
// image, with a flush every 1 or 8 MiB, with plain O_DIRECT writes of the
// same bytes to the same file, one write and one fdatasync per flush, in the
// same run. The ratio of the MB/s figures is what matters: the disk here is
// noisy.
func BenchmarkJournalWrite(b *testing.B) {
	const ring = 256 << 20
	const rec = 64 << 10
	path := filepath.Join(b.TempDir(), "journal")
	if err := vfs.Preallocate(path, RingOffset+ring); err != nil {
		b.Fatal(err)
	}
	f, err := vfs.OpenDirect(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := Format(f); err != nil {
		b.Fatal(err)
	}
	for _, flush := range []int{1 << 20, 8 << 20} {
		flushEvery := flush / rec
		b.Run(fmt.Sprintf("flush=%dm/kind=plain", flush>>20), func(b *testing.B) {
			buf := vfs.AlignedBuffer(flush)
			b.SetBytes(rec)
			b.ReportAllocs()
			var off int64
			for i := 0; i < b.N; i += flushEvery {
				if _, err := f.WriteAt(buf, RingOffset+off); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				off = (off + int64(len(buf))) % ring
			}
		})
		b.Run(fmt.Sprintf("flush=%dm/kind=journal", flush>>20), func(b *testing.B) {
			j, _, err := Open(f, Options{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			data := make([]byte, rec-Overhead)
			ctx := context.Background()
			b.SetBytes(rec)
			b.ReportAllocs()
			b.ResetTimer() // not the recovery scan of Open
			for i := range b.N {
				if _, err := j.Append(ctx, StreamFirstTx, data); err != nil {
					b.Fatal(err)
				}
				if (i+1)%flushEvery == 0 || i == b.N-1 {
					if err := j.Flush(ctx); err != nil {
						b.Fatal(err)
					}
				}
				if (i+1)%(ring/4/rec) == 0 { // a committer checkpoints now and then
					pos, id := j.Durable()
					if err := j.Checkpoint(pos, id); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
