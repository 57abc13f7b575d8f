package volume

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
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
