package sink

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// A restore over TLS, with the token, equals the one made from the
// receiver's files, at a past id and at the latest, and writes only the
// blocks that hold data. Refusals say why, each with its error.
func TestRestoreOverTheNetworkMatchesTheReceiversFiles(t *testing.T) {
	ca := newCA(t, "jvol test CA")
	token := []byte("s3cret")
	rdir := t.TempDir()
	rc := startReceiver(t, ReceiverConfig{Dir: rdir, Token: token, SegmentSize: 4 << 20},
		&tls.Config{Certificates: []tls.Certificate{ca.issue(t, "receiver", true)}})
	url := "tls://" + rc.addr()
	const size = 16 << 20
	v, err := volume.OpenDir(filepath.Join(t.TempDir(), "vol"), volume.Options{Size: size, JournalSize: volume.MinJournalSize, Hold: true, Provisioning: volume.Thin})
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartSender(v.Volume, SenderConfig{URL: url, Volume: testVolume, Duplex: journal.Full, Token: token,
		TLS: &tls.Config{RootCAs: ca.pool}, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, v: v, s: s, rdir: rdir, size: size, rng: newRand(t), timeout: time.Minute}
	defer r.close()
	r.ready()
	first := r.write(8)
	r.waitAcked(first)
	r.waitAcked(r.write(8))

	client := &Client{URL: url, TLS: &tls.Config{RootCAs: ca.pool}, Token: token}
	ctx := context.Background()
	for _, p := range []Point{{Transid: first}, {Latest: true}} {
		local := filepath.Join(t.TempDir(), "local.img")
		want, err := Restore(rdir, testVolume, p, local)
		if err != nil {
			t.Fatal(err)
		}
		remote := filepath.Join(t.TempDir(), "remote.img")
		got, err := client.RestoreFrom(ctx, testVolume, p, remote)
		if err != nil {
			t.Fatal(err)
		}
		if got.Transid != want.Transid || got.Size != want.Size {
			t.Errorf("%+v: restored at %d, %d bytes; from the files at %d, %d bytes", p, got.Transid, got.Size, want.Transid, want.Size)
		}
		img := readFile(t, local)
		sameImage(t, "restored over the network", readFile(t, remote), img)
		var data int64
		for o := 0; o < len(img); o += 4096 {
			if !vfs.IsZero(img[o : o+4096]) {
				data += 4096
			}
		}
		if w, err := vfs.Written(remote); err != nil || w != data {
			t.Errorf("%+v: the restored file holds %d bytes of data (%v), the image %d", p, w, err, data)
		}
	}
	st := rc.Stats()
	if len(st) != 1 || st[0].Restores != 2 || st[0].RestoredBytes == 0 {
		t.Errorf("receiver figures %+v, want 2 restores", st)
	}

	for _, c := range []struct {
		what   string
		client Client
		vol    string
		p      Point
		want   error
		says   string
	}{
		{"wrong token", Client{URL: url, TLS: client.TLS, Token: []byte("guess")}, testVolume, Point{Latest: true}, ErrAuthentication, "wrong token"},
		{"unknown volume", *client, "no-such-volume", Point{Latest: true}, ErrNoVolume, "no-such-volume"},
		{"a point not kept", *client, testVolume, Point{Transid: 1}, ErrNotKept, "the receiver keeps ids"},
		{"a bad volume id", *client, "../etc", Point{Latest: true}, ErrProto, "volume id"},
	} {
		_, err := c.client.RestoreFrom(ctx, c.vol, c.p, filepath.Join(t.TempDir(), "x.img"))
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want %v saying %q", c.what, err, c.want, c.says)
		}
	}
	if st := rc.Stats(); st[0].CutOff[0] != 1 {
		t.Errorf("the wrong token is not counted: %+v", st)
	}
}

// Pins over the network: what Pin and Unpin do at the receiver, with the
// same refusals, and the token.
func TestPinsOverTheNetwork(t *testing.T) {
	rdir, token := t.TempDir(), []byte("s3cret")
	rc := startReceiver(t, ReceiverConfig{Dir: rdir, Token: token}, nil)
	v, err := volume.OpenDir(filepath.Join(t.TempDir(), "vol"), volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize, Hold: true})
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartSender(v.Volume, SenderConfig{URL: "tcp://" + rc.addr(), Volume: testVolume, Duplex: journal.Full, Token: token, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, v: v, s: s, rdir: rdir, size: 8 << 20, rng: newRand(t), timeout: time.Minute}
	defer r.close()
	r.ready()
	id := r.write(3)
	r.waitAcked(id)
	cl := &Client{URL: "tcp://" + rc.addr(), Token: token}
	ctx := context.Background()
	if got, err := cl.Pin(ctx, testVolume, "snap-1", Point{Transid: id}); err != nil || got != id {
		t.Fatalf("pin at %d: %d, %v", id, got, err)
	}
	if got, err := cl.Pin(ctx, testVolume, "snap-2", Point{Latest: true}); err != nil || got < id {
		t.Errorf("pin of the latest: %d, %v", got, err)
	}
	pins, err := recvDir{fs: vfs.OS, path: rdir}.volume(testVolume).pins()
	if err != nil || pins["snap-1"] != id || len(pins) != 2 {
		t.Errorf("pins at the receiver: %v, %v", pins, err)
	}
	for _, c := range []struct {
		what string
		err  error
		want error
	}{
		{"a name holding another point", func() error { _, err := cl.Pin(ctx, testVolume, "snap-1", Point{Transid: id - 1}); return err }(), ErrPinExists},
		{"a volume not kept", func() error { _, err := cl.Pin(ctx, "other", "snap-1", Point{Latest: true}); return err }(), ErrNoVolume},
		{"a point not kept", func() error {
			_, err := cl.Pin(ctx, testVolume, "snap-3", AtTime(time.Now().Add(time.Hour)))
			return err
		}(), ErrNotKept},
		{"a wrong token", func() error {
			_, err := (&Client{URL: cl.URL, Token: []byte("guess")}).Pin(ctx, testVolume, "snap-3", Point{Latest: true})
			return err
		}(), ErrAuthentication},
		{"a bad name", cl.Unpin(ctx, testVolume, "../x"), ErrProto},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, c.err, c.want)
		}
	}
	for range 2 { // unpinning twice is no error
		if err := cl.Unpin(ctx, testVolume, "snap-1"); err != nil {
			t.Fatal(err)
		}
	}
	if pins, _ := (recvDir{fs: vfs.OS, path: rdir}).volume(testVolume).pins(); len(pins) != 1 {
		t.Errorf("pins after the unpin: %v", pins)
	}
}

// Restore requests decode as they were encoded, and nothing else does.
func FuzzDecodeRequest(f *testing.F) {
	f.Add((&Request{Point: Point{Transid: 42}, Volume: "v", Token: []byte("t")}).Encode())
	f.Add((&Request{Point: Point{Latest: true}, Volume: "pvc-1"}).Encode())
	f.Add((&Request{Point: Point{Transid: 7}, Volume: "pvc-1", Name: "snap-1", Token: []byte("t")}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := DecodeRequest(b)
		if err != nil {
			return
		}
		if again := q.Encode(); string(again) != string(b) {
			t.Fatalf("%x decodes to %+v, which encodes to %x", b, q, again)
		}
	})
}

// A receiver that knows no client (no token, no client certificates)
// takes streams but serves no requests: they read what it keeps.
func TestRequestsNeedAnAuthenticatedReceiver(t *testing.T) {
	r := newRig(t, 4<<20, true) // a receiver without a token
	cl := &Client{URL: "tcp://" + r.rc.addr()}
	if _, err := cl.RestoreFrom(context.Background(), testVolume, Point{Latest: true}, filepath.Join(t.TempDir(), "x.img")); !errors.Is(err, ErrAuthentication) || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("a restore from a receiver without a token: %v", err)
	}
	if _, err := cl.Pin(context.Background(), testVolume, "p", Point{Latest: true}); !errors.Is(err, ErrAuthentication) {
		t.Errorf("a pin at a receiver without a token: %v", err)
	}
}

// gatedFS holds the nth Open of a segment until let is closed, and counts
// the segment opens.
type gatedFS struct {
	vfs.FS
	n      int32
	opened atomic.Int32
	held   chan struct{} // closed when the nth open waits
	let    chan struct{}
}

func (g *gatedFS) Open(name string) (vfs.RWFile, error) {
	if strings.HasSuffix(name, segSuffix) && g.opened.Add(1) == g.n {
		close(g.held)
		<-g.let
	}
	return g.FS.Open(name)
}

// A restore whose client goes away while the receiver rebuilds the image
// stops at the next segment, frees its place and leaves no image behind.
func TestRestoreStopsWhenItsClientGoes(t *testing.T) {
	r := &rig{t: t, vdir: filepath.Join(t.TempDir(), "vol"), rdir: t.TempDir(), size: 16 << 20, rng: newRand(t), timeout: time.Minute}
	r.rc = startReceiver(t, ReceiverConfig{Dir: r.rdir, SegmentSize: 1 << 20}, nil)
	r.openVolume(true, "tcp://"+r.rc.addr())
	r.ready()
	r.waitAcked(r.write(64))
	r.close()
	r.stopReceiver()
	seqs, err := recvDir{fs: vfs.OS, path: r.rdir}.volume(testVolume).segments()
	if err != nil {
		t.Fatal(err)
	}
	segs := len(seqs)
	if segs < 3 {
		t.Fatalf("%d segments stored; the test wants 3 or more", segs)
	}

	// keptPoint opens every segment once, then the rebuild walks them: the
	// rebuild's first open waits until the client is gone.
	token := []byte("s3cret")
	g := &gatedFS{FS: vfs.OS, n: int32(segs) + 1, held: make(chan struct{}), let: make(chan struct{})}
	rc := startReceiver(t, ReceiverConfig{Dir: r.rdir, Token: token, FS: g}, nil)
	client := &Client{URL: "tcp://" + rc.addr(), Token: token}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := client.RestoreFrom(ctx, testVolume, Point{Latest: true}, filepath.Join(t.TempDir(), "x.img"))
		done <- err
	}()
	<-g.held
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a restore cancelled by its client succeeded")
	}
	close(g.let)
	rc.stop() // waits for the request to end
	if n := g.opened.Load(); n != g.n {
		t.Errorf("the rebuild opened %d segments after its client went, want none", n-g.n)
	}
	for _, st := range rc.Stats() {
		if st.Restores != 0 {
			t.Errorf("receiver figures %+v, want no restore served", st)
		}
	}
	left, err := filepath.Glob(filepath.Join(r.rdir, testVolume, restorePrefix+"*"))
	if err != nil || len(left) > 0 {
		t.Errorf("images left behind: %v %v", left, err)
	}
}
