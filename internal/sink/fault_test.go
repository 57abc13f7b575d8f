package sink

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// eventually waits for cond, checking it every few milliseconds, or fails.
func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(r.timeout)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s; sender: %+v", what, r.s.Stats())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with a deadline
	}
}

// newProxiedRig is a rig whose sender reaches the receiver through a
// fault proxy.
func newProxiedRig(t *testing.T, size int64, full bool) (*rig, *faultProxy) {
	r := &rig{t: t, vdir: t.TempDir() + "/vol", rdir: t.TempDir(), size: size, timeout: time.Minute}
	r.rng = newRand(t)
	r.startReceiver()
	p := newFaultProxy(t, r.rc.addr())
	r.openVolume(full, p.url())
	t.Cleanup(r.close)
	r.ready()
	return r, p
}

func TestCutMidRecord(t *testing.T) {
	r, p := newProxiedRig(t, 16<<20, true)
	r.waitAcked(r.write(4))
	for i := range 6 {
		if i == 1 {
			// A resize the receiver must remember across reconnects.
			if err := r.v.Volume.Grow(context.Background(), r.size+4<<20); err != nil {
				t.Fatal(err)
			}
			r.size += 4 << 20
		}
		// Cut the next connection somewhere inside a record: records are
		// up to 256 KiB, the cut lands after the handshake.
		p.set(func(p *faultProxy) { p.cutAfter = 1000 + r.rng.Int64N(300<<10) })
		p.cut()
		id := r.write(8 + i)
		r.waitAcked(id)
		sameImage(t, "mirror after a cut", r.mirror(), r.image())
	}
	if p.cuts < 6 {
		t.Fatalf("only %d cuts", p.cuts)
	}
	sameImage(t, "restored after cuts", r.restore(Point{Latest: true}), r.image())
}

func TestSlowLink(t *testing.T) {
	r, p := newProxiedRig(t, 16<<20, true)
	p.set(func(p *faultProxy) { p.rate = 4 << 20 })
	var ids []uint64
	var imgs [][]byte
	sawCatchUp := false
	for range 4 {
		ids = append(ids, r.write(16))
		imgs = append(imgs, r.image())
		if st := r.s.Stats(); st.LagBytes > 0 && st.AckedTransid < ids[len(ids)-1] {
			sawCatchUp = true
		}
	}
	if !sawCatchUp {
		t.Errorf("the sender never lagged behind a 4 MB/s link")
	}
	r.waitAcked(ids[len(ids)-1])
	sameImage(t, "mirror over a slow link", r.mirror(), imgs[len(imgs)-1])
	for i, id := range ids {
		sameImage(t, "restored over a slow link", r.restore(Point{Transid: id}), imgs[i])
	}
}

func TestSpoolExhaustedResyncs(t *testing.T) {
	r, p := newProxiedRig(t, 64<<20, true)
	before := r.write(8)
	r.waitAcked(before)
	beforeImg := r.image()
	first := r.s.Stats()
	// The link goes down for longer than the journal can spool.
	p.set(func(p *faultProxy) { p.down = true })
	p.cut()
	r.eventually("the link to drop", func() bool { return r.s.Stats().State == Disconnected })
	for r.s.Stats().State != OutOfSync {
		r.write(32) // must never block for good: the hold is dropped instead
		if r.v.Volume.Stats().Journal.Used > r.v.Volume.Stats().Journal.RingSize {
			t.Fatal("journal overfilled")
		}
	}
	gap := r.write(1)
	stalls := r.v.Volume.Stats().Journal.RingStalls
	p.set(func(p *faultProxy) { p.down = false })
	after := r.write(4)
	r.waitAcked(after)
	r.eventually("the sender to leave OutOfSync", func() bool { return r.s.Stats().State != OutOfSync })
	if st := r.s.Stats(); st.Connects <= first.Connects || st.Baselines <= first.Baselines {
		t.Errorf("connects %d, baselines %d; were %d, %d before the resync", st.Connects, st.Baselines, first.Connects, first.Baselines)
	}
	sameImage(t, "mirror after resync", r.mirror(), r.image())
	sameImage(t, "restored before the gap", r.restore(Point{Transid: before}), beforeImg)
	sameImage(t, "restored after the gap", r.restore(Point{Latest: true}), r.image())
	if _, err := Restore(r.rdir, testVolume, Point{Transid: gap}, t.TempDir()+"/x"); !errors.Is(err, ErrNotKept) {
		t.Fatalf("restore inside the gap: %v, want ErrNotKept", err)
	}
	t.Logf("journal stalls while out of sync: %d", stalls)
}

func TestHalfDuplexArrivesComplete(t *testing.T) {
	r := newRig(t, 16<<20, false)
	var last uint64
	for range 5 {
		last = r.write(20)
	}
	img := r.image()
	r.waitAcked(last) // sent, in half duplex
	if st := r.s.Stats(); st.LagBytes != 0 {
		t.Errorf("half duplex lag after everything was sent: %+v", st)
	}
	// The receiver stores all it was sent once the link closes: wait until
	// it has read the stream to its end (the connection is gone), since
	// stopping it cuts what it has not read yet, as it must.
	r.s.Close()
	r.eventually("the receiver to read the stream to its end", func() bool {
		r.rc.mu.Lock()
		defer r.rc.mu.Unlock()
		return len(r.rc.conns) == 0
	})
	r.s = nil
	r.stopReceiver()
	sameImage(t, "half-duplex mirror", r.mirror(), img)
	sameImage(t, "half-duplex restore", r.restore(Point{Transid: last}), img)
}

func TestReceiverDiskFull(t *testing.T) {
	r := &rig{t: t, vdir: t.TempDir() + "/vol", rdir: vfstestSmallFS(t, 40<<20), size: 16 << 20, timeout: time.Minute}
	r.rng = newRand(t)
	r.startReceiver()
	r.openVolume(true, "tcp://"+r.rc.addr())
	t.Cleanup(r.close)
	r.ready()
	type snap struct {
		id  uint64
		img []byte
	}
	var acked []snap
	for {
		id := r.write(32)
		img := r.image()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		done := make(chan error, 1)
		s := r.s
		go func() { done <- s.WaitAcked(ctx, id) }()
		full := false
		r.eventually("an ack or a refusal", func() bool {
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
				return true
			default:
			}
			full = strings.Contains(r.s.Stats().LastError, "receiver cannot")
			return full
		})
		cancel()
		if full {
			break
		}
		acked = append(acked, snap{id, img})
		if len(acked) > 100 {
			t.Fatal("the receiver's small disk never filled")
		}
	}
	t.Logf("receiver full after %d acknowledged rounds: %s", len(acked), r.s.Stats().LastError)
	if len(acked) == 0 {
		t.Fatal("nothing acknowledged before the disk filled")
	}
	r.s.Close()
	r.s = nil
	r.stopReceiver()
	for _, s := range acked[max(0, len(acked)-3):] {
		sameImage(t, "restored after the disk filled", r.restore(Point{Transid: s.id}), s.img)
	}
}
