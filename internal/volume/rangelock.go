package volume

import (
	"math/bits"
	"sync"
)

// rangeLocks serialises I/O on overlapping ranges: the volume is cut into
// 1 MiB chunks, each hashed to one of 256 mutexes. A range locks the
// mutexes of its chunks in ascending order, so two ranges never wait on each
// other in a cycle.
type rangeLocks struct {
	mu [256]sync.Mutex
}

const chunkShift = 20

// stripes is a set of mutex indices.
type stripes [4]uint64

// lock locks the stripes of [off, off+n), n > 0, and returns them for unlock.
func (l *rangeLocks) lock(off, n int64) stripes {
	var s stripes
	first, last := off>>chunkShift, (off+n-1)>>chunkShift
	for c := first; c <= last && c-first < 256; c++ {
		i := c & 255
		s[i>>6] |= 1 << (i & 63)
	}
	for w, word := range s {
		for ; word != 0; word &= word - 1 {
			l.mu[w<<6|bits.TrailingZeros64(word)].Lock()
		}
	}
	return s
}

func (l *rangeLocks) unlock(s stripes) {
	for w, word := range s {
		for ; word != 0; word &= word - 1 {
			l.mu[w<<6|bits.TrailingZeros64(word)].Unlock()
		}
	}
}
