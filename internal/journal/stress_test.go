package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestConcurrentWritersKeepOrderContentAndCount runs 16 writers with random
// record sizes against a 1 MiB FIFO, with flushes sprinkled in, and checks
// the journal image afterwards: every record once, each writer's in order,
// content intact, ids increasing.
func TestConcurrentWritersKeepOrderContentAndCount(t *testing.T) {
	for _, d := range []Duplex{Half, Full} {
		t.Run(d.String()+" duplex", func(t *testing.T) {
			const writers, perWriter = 16, 120
			f := newImage(t, 64<<20)
			j, _, err := Open(f, Options{FIFOSize: MinFIFOSize, Duplex: d, Heartbeat: 5 * time.Millisecond}, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			stop := make(chan struct{})
			var ackers sync.WaitGroup
			if d == Full {
				// The peer acknowledges late and not at batch boundaries:
				// some id between what it acked last and what is durable,
				// now and then an older one again.
				ackers.Add(1)
				go func() {
					defer ackers.Done()
					rng := rand.New(rand.NewPCG(3, 4))
					var last uint64
					for {
						select {
						case <-stop:
							return
						case <-time.After(200 * time.Microsecond):
						}
						st := j.Stats()
						durable := st.DurableTransid
						// Nothing until a writer has stalled: the FIFO holds
						// 1 MiB of the ~40 MiB written, so one must, and
						// then the stall is certain, not a matter of timing.
						if durable <= last || st.FIFO.Stalls == 0 {
							continue
						}
						id := last + rng.Uint64N(durable-last) + 1
						if rng.IntN(4) == 0 {
							j.Ack(last / 2) // a stale, out-of-order ack
						}
						j.Ack(id)
						last = id
					}
				}()
			}
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 5))
					for s := range perWriter {
						n := 16 + rng.IntN(64<<10)
						if rng.IntN(3) == 0 {
							n = 16 + rng.IntN(512)
						}
						r, err := j.Reserve(ctx, StreamFirstTx+uint16(w), n)
						if err != nil {
							t.Error(err)
							return
						}
						copy(r.Payload, payloadFor(w, s, n))
						r.Commit(n)
						if rng.IntN(10) == 0 {
							if err := j.Flush(ctx); err != nil {
								t.Error(err)
								return
							}
						}
					}
				}()
			}
			wg.Wait()
			if err := j.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			close(stop)
			ackers.Wait()
			// (Full duplex: the acker acknowledges nothing until a writer
			// has stalled, so getting here means writers stalled on
			// unacknowledged space and the late acks freed it.)
			if err := j.Close(); err != nil {
				t.Fatal(err)
			}

			next := make([]int, writers)
			var lastID uint64
			total := 0
			if _, _, err := Dump(f.PowerCut(nil), func(pos uint64, r Record) error {
				if r.IsPad() {
					return nil
				}
				w := int(binary.LittleEndian.Uint64(r.Payload))
				s := int(binary.LittleEndian.Uint64(r.Payload[8:]))
				if w >= writers || r.ID() != StreamFirstTx+uint16(w) {
					t.Fatalf("record at %d names writer %d on stream %#x", pos, w, r.Stream)
				}
				if s != next[w] {
					t.Fatalf("writer %d: record %d where %d was due (lost, duplicated or reordered)", w, s, next[w])
				}
				if !bytes.Equal(r.Payload, payloadFor(w, s, len(r.Payload))) {
					t.Fatalf("writer %d record %d: content differs", w, s)
				}
				if r.Transid <= lastID {
					t.Fatalf("id %d after %d", r.Transid, lastID)
				}
				lastID = r.Transid
				next[w]++
				total++
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if total != writers*perWriter {
				t.Fatalf("%d records in the journal, want %d", total, writers*perWriter)
			}
		})
	}
}
