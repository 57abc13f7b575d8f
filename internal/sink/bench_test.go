package sink

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// BenchmarkStream measures streaming a spooled journal over loopback: full
// duplex, half duplex, and a plain TCP copy of the same ring bytes into a
// file synced at the end, all in the same run. It reports each in MB/s and
// the ratios of the sink's modes to the plain copy.
func BenchmarkStream(b *testing.B) {
	const spool = 128 << 20
	dir := b.TempDir()
	var full, half, plain time.Duration
	for i := 0; i < b.N; i++ {
		full += streamOnce(b, filepath.Join(dir, "full"), true, spool)
		half += streamOnce(b, filepath.Join(dir, "half"), false, spool)
		plain += plainCopy(b, filepath.Join(dir, "plain"), spool)
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * spool / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(full), "full-MB/s")
	b.ReportMetric(mbps(half), "half-MB/s")
	b.ReportMetric(mbps(plain), "plain-MB/s")
	b.ReportMetric(plain.Seconds()/full.Seconds(), "full/plain")
	b.ReportMetric(plain.Seconds()/half.Seconds(), "half/plain")
	b.ReportMetric(0, "ns/op")
}

// spooled makes a volume whose journal holds n bytes of 1 MiB writes that
// a receiver has not had, after its baseline.
func spooled(b *testing.B, dir string, full bool, n int) (*volume.Dir, *testReceiver, uint64) {
	os.RemoveAll(dir)
	rc := startReceiver(b, ReceiverConfig{Dir: filepath.Join(dir, "sink")}, nil)
	v, err := volume.OpenDir(filepath.Join(dir, "vol"), volume.Options{Size: 64 << 20, JournalSize: 256 << 20, Hold: true})
	if err != nil {
		b.Fatal(err)
	}
	s, err := StartSender(v.Volume, SenderConfig{URL: "tcp://" + rc.addr(), Volume: "bench", Duplex: duplex(full)})
	if err != nil {
		b.Fatal(err)
	}
	data := vfs.AlignedBuffer(1 << 20)
	write := func(k int) uint64 {
		for i := range k {
			data[0] = byte(i)
			if _, err := v.Volume.WriteAt(data, int64(i%64)<<20); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Volume.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		_, id := v.Volume.Journal().Durable()
		return id
	}
	if err := s.WaitAcked(context.Background(), write(1)); err != nil {
		b.Fatal(err)
	}
	s.Close() // the hold stays: what follows is spooled
	return v, rc, write(n >> 20)
}

func streamOnce(b *testing.B, dir string, full bool, n int) time.Duration {
	v, rc, last := spooled(b, dir, full, n)
	defer func() { v.Close(); rc.stop() }()
	start := time.Now()
	s, err := StartSender(v.Volume, SenderConfig{URL: "tcp://" + rc.addr(), Volume: "bench", Duplex: duplex(full)})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.WaitAcked(context.Background(), last); err != nil {
		b.Fatal(err)
	}
	if !full {
		// Sent is not received: the receiver has it all once it stored it.
		s.Close()
		rc.stop()
	}
	d := time.Since(start)
	if full {
		s.Close()
	}
	return d
}

// plainCopy sends the same spooled ring bytes over TCP to a reader that
// writes them to a file and syncs it.
func plainCopy(b *testing.B, dir string, n int) time.Duration {
	v, rc, _ := spooled(b, dir, true, n)
	defer func() { v.Close(); rc.stop() }()
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pl.Close()
	done := make(chan error, 1)
	go func() {
		c, err := pl.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		f, err := os.Create(filepath.Join(dir, "copy"))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if _, err := io.CopyBuffer(f, c, make([]byte, 1<<20)); err != nil {
			done <- err
			return
		}
		done <- unix.Fdatasync(int(f.Fd()))
	}()
	j := v.Volume.Journal()
	pos, _ := v.Volume.Hold(nil)
	end, _ := j.Durable()
	buf := vfs.AlignedBuffer(readChunk + vfs.BlockSize)
	start := time.Now()
	c, err := net.Dial("tcp", pl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	for pos < end {
		p, err := j.ReadDurable(buf, pos)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		pos += uint64(len(p))
	}
	c.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// BenchmarkRestore measures restores of a 1 GiB thin volume holding
// 256 MiB, streamed in full duplex over TLS: from the receiver over TLS
// with its token (what a node plugin does), and straight from the
// receiver's files (`jvol restore --sink-dir`). It reports each in MB/s of
// the data restored, and their ratio.
func BenchmarkRestore(b *testing.B) {
	const size, data = 1 << 30, 256 << 20
	ca := newCA(b, "jvol bench CA")
	token := []byte("s3cret")
	rdir := b.TempDir()
	rc := startReceiver(b, ReceiverConfig{Dir: rdir, Token: token},
		&tls.Config{Certificates: []tls.Certificate{ca.issue(b, "receiver", true)}})
	defer rc.stop()
	url := "tls://" + rc.addr()
	v, err := volume.OpenDir(filepath.Join(b.TempDir(), "vol"), volume.Options{Size: size, JournalSize: 64 << 20, Hold: true, Provisioning: volume.Thin})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	tc := &tls.Config{RootCAs: ca.pool}
	s, err := StartSender(v.Volume, SenderConfig{URL: url, Volume: "bench", Duplex: journal.Full, Token: token, TLS: tc})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	// 1 MiB writes every 4 MiB: the data is spread over the whole volume.
	buf := vfs.AlignedBuffer(1 << 20)
	for i := range data >> 20 {
		crand.Read(buf)
		if _, err := v.Volume.WriteAt(buf, int64(i)*(size/(data>>20))); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	if err := v.Volume.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	_, last := v.Volume.Journal().Durable()
	if err := s.WaitAcked(ctx, last); err != nil {
		b.Fatal(err)
	}

	client := &Client{URL: url, TLS: tc, Token: token}
	out := filepath.Join(b.TempDir(), "restored.img")
	var overTLS, files time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if _, err := client.RestoreFrom(ctx, "bench", Point{Latest: true}, out); err != nil {
			b.Fatal(err)
		}
		overTLS += time.Since(start)
		start = time.Now()
		if _, err := Restore(rdir, "bench", Point{Latest: true}, out); err != nil {
			b.Fatal(err)
		}
		files += time.Since(start)
	}
	b.StopTimer()
	if w, err := vfs.Written(out); err != nil || w != data {
		b.Fatalf("the restored image holds %d bytes of data (%v), want %d", w, err, data)
	}
	mbps := func(d time.Duration) float64 { return float64(b.N) * data / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(overTLS), "tls-MB/s")
	b.ReportMetric(mbps(files), "files-MB/s")
	b.ReportMetric(files.Seconds()/overTLS.Seconds(), "tls/files")
	b.ReportMetric(0, "ns/op")
}
