package sink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
	"github.com/jvol-io/jvol/internal/volume"
)

// rig is a volume with a sender, and a receiver, in one process.
type rig struct {
	t       *testing.T
	vdir    string // the volume's directory
	rdir    string // the receiver's
	v       *volume.Dir
	s       *Sender
	rc      *testReceiver
	rng     *rand.Rand
	size    int64
	timeout time.Duration
}

const testVolume = "vol-1"

func newRig(t *testing.T, size int64, full bool) *rig {
	t.Helper()
	r := &rig{t: t, vdir: filepath.Join(t.TempDir(), "vol"), rdir: t.TempDir(), size: size, rng: newRand(t), timeout: time.Minute}
	r.startReceiver()
	r.openVolume(full, "tcp://"+r.rc.addr())
	t.Cleanup(r.close)
	r.ready()
	return r
}

// ready waits until the receiver has a first record after its baseline:
// from then on every point is kept.
func (r *rig) ready() {
	r.t.Helper()
	r.waitAcked(r.write(1))
}

func newRand(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	return rand.New(rand.NewPCG(seed, 7))
}

func vfstestSmallFS(t *testing.T, size int) string { return vfstest.SmallFS(t, size) }

// testReceiver is a receiver serving on a loopback port.
type testReceiver struct {
	*Receiver
	l    net.Listener
	once sync.Once
}

// startReceiver starts a receiver with cfg, serving TLS with tc if set; it
// stops when the test ends, if not before.
func startReceiver(tb testing.TB, cfg ReceiverConfig, tc *tls.Config) *testReceiver {
	tb.Helper()
	rc, err := NewReceiver(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		rc.Close()
		tb.Fatal(err)
	}
	if tc != nil {
		l = tls.NewListener(l, tc)
	}
	go rc.Serve(l)
	r := &testReceiver{Receiver: rc, l: l}
	tb.Cleanup(r.stop)
	return r
}

func (r *testReceiver) addr() string { return r.l.Addr().String() }

// stop stops the receiver: it stores what it was sent, then lets go.
func (r *testReceiver) stop() {
	r.once.Do(func() {
		r.l.Close()
		r.Close()
	})
}

func (r *rig) startReceiver() {
	r.t.Helper()
	r.rc = startReceiver(r.t, ReceiverConfig{Dir: r.rdir, SegmentSize: 4 << 20}, nil)
}

func (r *rig) stopReceiver() {
	if r.rc != nil {
		r.rc.stop()
		r.rc = nil
	}
}

func (r *rig) openVolume(full bool, url string) {
	r.t.Helper()
	v, err := volume.OpenDir(r.vdir, volume.Options{Size: r.size, JournalSize: volume.MinJournalSize, Hold: true})
	if err != nil {
		r.t.Fatal(err)
	}
	s, err := StartSender(v.Volume, SenderConfig{URL: url, Volume: testVolume, Duplex: duplex(full), MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		r.t.Fatal(err)
	}
	r.v, r.s = v, s
}

func (r *rig) close() {
	if r.s != nil {
		r.s.Close()
	}
	if r.v != nil {
		r.v.Close()
	}
	r.stopReceiver()
}

// write makes n random writes of up to 256 KiB and flushes; it returns
// the id of the last durable record.
func (r *rig) write(n int) uint64 {
	r.t.Helper()
	for range n {
		l := (1 + r.rng.Int64N(64)) * 4096
		off := r.rng.Int64N((r.size-l)/4096+1) * 4096
		b := make([]byte, l)
		for i := range b {
			b[i] = byte(r.rng.Uint32())
		}
		if _, err := r.v.Volume.WriteAt(b, off); err != nil {
			r.t.Fatal(err)
		}
	}
	if err := r.v.Volume.Flush(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	_, id := r.v.Volume.Journal().Durable()
	return id
}

func (r *rig) waitAcked(id uint64) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.s.WaitAcked(ctx, id); err != nil {
		r.t.Fatalf("%v; sender: %+v", err, r.s.Stats())
	}
}

// image returns the volume's current contents.
func (r *rig) image() []byte {
	r.t.Helper()
	b := make([]byte, r.v.Volume.Size())
	if _, err := r.v.Volume.ReadAt(b, 0); err != nil {
		r.t.Fatal(err)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameImage(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		at := -1
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				at = i
				break
			}
		}
		var blocks, zeroGot, zeroWant int
		for o := 0; o+4096 <= min(len(got), len(want)); o += 4096 {
			if !bytes.Equal(got[o:o+4096], want[o:o+4096]) {
				blocks++
				if vfs.IsZero(got[o : o+4096]) {
					zeroGot++
				}
				if vfs.IsZero(want[o : o+4096]) {
					zeroWant++
				}
			}
		}
		t.Fatalf("%s differs: %d bytes vs %d, first difference at %d, %d blocks differ (%d zero here, %d zero there) (%x vs %x)", what, len(got), len(want), at, blocks, zeroGot, zeroWant, sha256.Sum256(got), sha256.Sum256(want))
	}
}

func (r *rig) mirror() []byte {
	return readFile(r.t, recvDir{path: r.rdir}.volume(testVolume).mirrorImage())
}

func (r *rig) restore(p Point) []byte {
	r.t.Helper()
	out := filepath.Join(r.t.TempDir(), "restored.img")
	if _, err := Restore(r.rdir, testVolume, p, out); err != nil {
		r.t.Fatal(err)
	}
	return readFile(r.t, out)
}

func TestFullDuplexMirrorAndRestore(t *testing.T) {
	r := newRig(t, 16<<20, true)
	type snap struct {
		id  uint64
		at  time.Time // after the snapshot, before the next writes
		img []byte
	}
	var snaps []snap
	for range 8 {
		id := r.write(1 + r.rng.IntN(40))
		r.waitAcked(id)
		img := r.image()
		sameImage(t, "mirror", r.mirror(), img)
		snaps = append(snaps, snap{id, time.Now(), img})
	}
	for i, s := range snaps {
		sameImage(t, "restored image", r.restore(Point{Transid: s.id}), s.img)
		if i < len(snaps)-1 { // the last one's time is after the stream's end
			sameImage(t, "image restored by time", r.restore(AtTime(s.at)), s.img)
		}
	}
	sameImage(t, "latest", r.restore(Point{Latest: true}), snaps[len(snaps)-1].img)
	// The receiver's figures: what it stored, synced and acknowledged.
	st := r.rc.Stats()
	if len(st) != 1 || !st[0].Connected || st[0].StoredBytes == 0 || st[0].SyncedTransid < snaps[len(snaps)-1].id ||
		st[0].Syncs.Count == 0 || st[0].CutOff != [4]uint64{} {
		t.Errorf("receiver figures %+v", st)
	}
}

// duplex is Full if full, else Half.
func duplex(full bool) journal.Duplex {
	if full {
		return journal.Full
	}
	return journal.Half
}

// TestResyncCoversWritesTheJournalLost: a server died with a write in its
// data image whose record never reached the journal (the memory FIFO
// died with it), and the device lived on. The ids show no gap, so only
// Resync brings that write to the receiver: by a baseline copy.
func TestResyncCoversWritesTheJournalLost(t *testing.T) {
	r := newRig(t, 16<<20, true)
	r.waitAcked(r.write(5))
	r.s.Close()
	r.v.Close()
	r.s, r.v = nil, nil

	lost := bytes.Repeat([]byte{0xa5}, 64<<10)
	f, err := os.OpenFile(volume.Layout(r.vdir).Data(), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(lost, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()

	v, err := volume.OpenDir(r.vdir, volume.Options{Hold: true, Resume: volume.ResumeCrash})
	if err != nil {
		t.Fatal(err)
	}
	resynced := make(chan struct{})
	s, err := StartSender(v.Volume, SenderConfig{
		URL: "tcp://" + r.rc.addr(), Volume: testVolume, Duplex: journal.Full, MinBackoff: 10 * time.Millisecond,
		Resync: true, Resynced: func() { close(resynced) },
	})
	if err != nil {
		t.Fatal(err)
	}
	r.v, r.s = v, s
	if st := s.Stats().State; st != OutOfSync {
		t.Fatalf("state %s before the baseline, want %s", st, OutOfSync)
	}
	r.waitAcked(r.write(1))
	<-resynced
	sameImage(t, "mirror", r.mirror(), r.image())
}
