package hist

import (
	"sync"
	"testing"
	"time"
)

func TestObservationsLandInTheirBuckets(t *testing.T) {
	var h Durations
	for _, d := range []time.Duration{0, First, First + 1, 2 * First, 100 * time.Millisecond, time.Hour} {
		h.Observe(d)
	}
	s := h.Snapshot()
	// 0 and 16 µs in the first; 16 µs + 1 ns and 32 µs in the second;
	// 100 ms under 16 µs * 2^13 = 131 ms; an hour beyond every bound.
	want := map[int]uint64{0: 2, 1: 4, 12: 4, 13: 5, Buckets - 1: 5}
	for i, c := range want {
		if s.Cumulative[i] != c {
			t.Errorf("bucket %d (%v): %d, want %d", i, Bound(i), s.Cumulative[i], c)
		}
	}
	if s.Count != 6 || s.Sum != First+First+1+2*First+100*time.Millisecond+time.Hour {
		t.Errorf("count %d sum %v", s.Count, s.Sum)
	}
}

func TestConcurrentObservationsAllCount(t *testing.T) {
	var h Durations
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range 1000 {
				h.Observe(time.Duration(i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if s := h.Snapshot(); s.Count != 4000 || s.Cumulative[Buckets-1] != 4000 {
		t.Errorf("%+v", s)
	}
}

func BenchmarkObserve(b *testing.B) {
	var h Durations
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(0)
		for pb.Next() {
			h.Observe(d)
			d += time.Microsecond
		}
	})
}
