package volume

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs"
)

// BenchmarkWriteFlush: 4 KiB writes at random offsets of a volume on this
// machine's disk, a flush after every 8, and a 4 KiB read after each
// write; MB/s are of the writes.
func BenchmarkWriteFlush(b *testing.B) {
	d, err := OpenDir(filepath.Join(b.TempDir(), "v"), Options{Size: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	v, ctx := d.Volume, context.Background()
	buf, rbuf := make([]byte, 4096), make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	b.SetBytes(4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := rng.Int64N(v.Size()/4096) * 4096
		if _, err := v.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		if _, err := v.ReadAt(rbuf, off); err != nil {
			b.Fatal(err)
		}
		if i%8 == 7 {
			if err := v.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSnapshot: a snapshot of a 1 GiB thick volume that holds
// 256 MiB written in 1 MiB pieces spread over it, on this machine's disk;
// MB/s are of the data held, and it reports the bytes of data the
// snapshot holds (snapshot-MiB).
func BenchmarkSnapshot(b *testing.B) {
	dir := b.TempDir()
	d, err := OpenDir(filepath.Join(dir, "v"), Options{Size: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	p := bytes.Repeat([]byte{0xa5}, 1<<20)
	for i := range int64(256) {
		if _, err := d.Volume.WriteAt(p, i*4<<20); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := d.Volume.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(256 << 20)
	b.ReportAllocs()
	var held int64
	for i := 0; b.Loop(); i++ {
		path := filepath.Join(dir, fmt.Sprintf("snap-%d.img", i))
		if _, _, err := d.Snapshot(ctx, path); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if held, err = vfs.Written(path); err != nil {
			b.Fatal(err)
		}
		os.Remove(path)
		b.StartTimer()
	}
	b.ReportMetric(float64(held)/(1<<20), "snapshot-MiB")
}
