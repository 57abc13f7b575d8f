// Package writecheck is a verifying writer, for tests of the data path
// across server deaths and handovers: random 4 KiB direct-I/O writes to a
// block device or a file, an fsync after every Batch, each write stamped
// with its sequence number, and each block's last completed write
// remembered; Verify then reads every block written back.
package writecheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs"
)

const (
	// Block is the size of a write.
	Block = 4096
	// Batch is how many writes an fsync follows.
	Batch = 8
)

// Writer writes and remembers.
type Writer struct {
	f       *os.File
	blocks  int64
	last    map[int64]uint64 // block -> sequence number of its last completed write
	writes  uint64
	longest time.Duration
	lap     atomic.Int64 // the longest write since the last Lap, in ns
	began   atomic.Int64 // when the write under way began, in Unix ns; 0 between writes
}

// Open opens path (a block device, or a file made size bytes long if it is
// not there) for direct I/O; the writes go to its first size bytes.
func Open(path string, size int64) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_DIRECT, 0o600)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() < size {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
			f.Close()
			return nil, err
		}
	}
	if size < Block {
		f.Close()
		return nil, fmt.Errorf("writecheck: size %d is less than a block", size)
	}
	return &Writer{f: f, blocks: size / Block, last: map[int64]uint64{}}, nil
}

// Run writes until stop is closed or a write fails, and sends the sequence
// number of each completed write to progress if it has room.
func (w *Writer) Run(stop <-chan struct{}, seed uint64, progress chan<- uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	buf := vfs.AlignedBuffer(Block)
	for seq := w.writes + 1; ; seq++ {
		select {
		case <-stop:
			return nil
		default:
		}
		b := rng.Int64N(w.blocks)
		for k := 0; k < Block; k += 8 {
			binary.LittleEndian.PutUint64(buf[k:], seq)
		}
		start := time.Now()
		w.began.Store(start.UnixNano())
		if _, err := w.f.WriteAt(buf, b*Block); err != nil {
			return fmt.Errorf("write %d (block %d): %w", seq, b, err)
		}
		if seq%Batch == 0 {
			if err := w.f.Sync(); err != nil {
				return fmt.Errorf("fsync after write %d: %w", seq, err)
			}
		}
		took := time.Since(start)
		w.began.Store(0)
		w.longest = max(w.longest, took)
		for l := w.lap.Load(); int64(took) > l && !w.lap.CompareAndSwap(l, int64(took)); l = w.lap.Load() {
		}
		w.last[b] = seq
		w.writes = seq
		select {
		case progress <- seq:
		default:
		}
	}
}

// Start runs Run in the background. progress has each completed write's
// sequence number when there is room; stop ends the run and returns its
// error.
func (w *Writer) Start(seed uint64) (progress <-chan uint64, stop func() error) {
	p := make(chan uint64, 1)
	quit := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- w.Run(quit, seed, p) }()
	return p, func() error {
		close(quit)
		return <-done
	}
}

// Verify reads every block written and checks that it holds its last
// completed write, fsynced or not.
func (w *Writer) Verify() error { return w.VerifyFile(w.f) }

// VerifyFile is Verify on another open file of the same device (opened
// with O_DIRECT).
func (w *Writer) VerifyFile(f *os.File) error {
	buf := vfs.AlignedBuffer(Block)
	for b, seq := range w.last {
		if _, err := f.ReadAt(buf, b*Block); err != nil {
			return err
		}
		for k := 0; k < Block; k += 8 {
			if got := binary.LittleEndian.Uint64(buf[k:]); got != seq {
				return fmt.Errorf("block %d holds write %d, want its last completed write %d", b, got, seq)
			}
		}
	}
	return nil
}

// Writes is the number of writes completed; Blocks the number of blocks
// written; Longest the longest a write (with its fsync, if one followed)
// took.
func (w *Writer) Writes() uint64         { return w.writes }
func (w *Writer) Blocks() int            { return len(w.last) }
func (w *Writer) Longest() time.Duration { return w.longest }

// Lap returns the longest a write has taken since the last Lap, counting
// the one under way for as long as it has waited so far, and starts the
// next lap. It may be called while Run runs.
func (w *Writer) Lap() time.Duration {
	d := time.Duration(w.lap.Swap(0))
	if b := w.began.Load(); b != 0 {
		d = max(d, time.Since(time.Unix(0, b)))
	}
	return d
}

// Close closes the file.
func (w *Writer) Close() error { return errors.Join(w.f.Sync(), w.f.Close()) }
