// Package hist is a histogram of durations cheap enough for the I/O path:
// fixed buckets whose bounds double from 16 µs, atomic counts, no lock and
// no allocation per observation. Readers take a Snapshot.
package hist

import (
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	// First is the upper bound of the first bucket; each next one's is
	// twice the one before.
	First = 16 * time.Microsecond
	// Buckets is the number of buckets with a bound (the last, 16 µs
	// times 2^19, is about 8.4 s); longer observations count only in the
	// total.
	Buckets = 20
)

// Durations counts observed durations by bucket.
type Durations struct {
	counts [Buckets + 1]atomic.Uint64 // the last: beyond every bound
	sum    atomic.Int64               // ns
}

// Observe counts d.
func (h *Durations) Observe(d time.Duration) {
	i := 0
	if d > 0 {
		i = min(bits.Len64(uint64((d-1)/First)), Buckets)
	}
	h.counts[i].Add(1)
	h.sum.Add(int64(d))
}

// Snapshot is a histogram's figures at one moment.
type Snapshot struct {
	// Cumulative[i] counts observations of at most Bound(i).
	Cumulative [Buckets]uint64 `json:"cumulative"`
	Count      uint64          `json:"count"`
	Sum        time.Duration   `json:"sum"`
}

// Bound is the upper bound of bucket i.
func Bound(i int) time.Duration { return First << i }

// Snapshot returns the counts so far. Observations that land while it
// reads may be in Count and not yet in a bucket, never the other way.
func (h *Durations) Snapshot() Snapshot {
	var s Snapshot
	var c uint64
	for i := range Buckets {
		c += h.counts[i].Load()
		s.Cumulative[i] = c
	}
	s.Count = c + h.counts[Buckets].Load()
	s.Sum = time.Duration(h.sum.Load())
	return s
}
