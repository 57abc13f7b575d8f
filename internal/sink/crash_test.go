package sink

import (
	"bufio"
	"bytes"
	"errors"
	"maps"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// cut is the receiver's disk after a power cut, and the last id that had
// been acknowledged before it.
type cut struct {
	fs    *faultfs.FS
	acked uint64
}

// crashSender is a sender that writes records of a small volume to a
// receiver storing on a faultfs, keeps the image at each id, and reads the
// acks beside.
type crashSender struct {
	t      *testing.T
	c      net.Conn
	rng    *rand.Rand
	img    []byte
	images map[uint64][]byte
	next   uint64 // the id of the next record
	acked  atomic.Uint64
	acks   chan uint64
}

const crashVolumeSize = 64 << 10

func (cs *crashSender) send(stream uint16, id uint64, payload []byte) {
	cs.t.Helper()
	if _, err := cs.c.Write(appendRecord(nil, stream, id, payload)); err != nil {
		cs.t.Fatal(err)
	}
}

// baseline sends a baseline of random contents, consistent at its id.
func (cs *crashSender) baseline() uint64 {
	id := cs.next
	cs.next++
	bb := BaselineBegin{Epoch: [16]byte{7}, Size: crashVolumeSize}
	cs.send(StreamBaselineBegin, id, bb.Encode())
	for i := range cs.img {
		cs.img[i] = byte(cs.rng.Uint32())
	}
	for off := 0; off < len(cs.img); off += 16 << 10 {
		cs.send(StreamBaselineData, id, writeRecord(uint64(off), cs.img[off:off+16<<10]))
	}
	cs.send(StreamBaselineEnd, id, nil)
	cs.images[id] = bytes.Clone(cs.img)
	return id
}

// write sends a journal record writing a random block.
func (cs *crashSender) write() uint64 {
	id := cs.next
	cs.next++
	off := cs.rng.IntN(crashVolumeSize/4096) * 4096
	b := cs.img[off : off+4096]
	for i := range b {
		b[i] = byte(cs.rng.Uint32())
	}
	cs.send(journal.StreamFirstTx, id, writeRecord(uint64(off), b))
	cs.images[id] = bytes.Clone(cs.img)
	return id
}

func (cs *crashSender) waitAcked(id uint64) {
	cs.t.Helper()
	timeout := time.After(time.Minute)
	for cs.acked.Load() < id {
		select {
		case _, ok := <-cs.acks:
			if !ok {
				cs.t.Fatalf("the receiver cut the link before acknowledging %d", id)
			}
		case <-timeout:
			cs.t.Fatalf("no ack of %d", id)
		}
	}
}

// readAcks reads what the receiver sends until the link closes.
func (cs *crashSender) readAcks(br *bufio.Reader) {
	defer close(cs.acks)
	var buf []byte
	for {
		r, _, err := readRecord(br, &buf, 1<<20)
		if err != nil || r.ID() != StreamAck {
			return
		}
		cs.acked.Store(r.Transid) // before it is handed on: a cut sees no more than this
		cs.acks <- r.Transid
	}
}

// The receiver's disk after a power cut at any step of storing the stream
// (appending a batch, syncing it, acknowledging, rotating, checkpointing
// the mirror, folding into the base) holds everything acknowledged before
// the cut: reopened, the store stands at or after the last ack, and restore
// rebuilds the image at each acknowledged id still kept.
func TestReceiverSurvivesAPowerCutAtEveryStep(t *testing.T) {
	cases := []struct {
		name   string
		retain time.Duration
		stream func(cs *crashSender)
	}{
		{"records acknowledged one at a time", 0, func(cs *crashSender) {
			cs.waitAcked(cs.baseline())
			for range 12 {
				cs.waitAcked(cs.write())
			}
		}},
		{"records acknowledged in runs that fill segments", 0, func(cs *crashSender) {
			cs.baseline()
			for range 4 {
				var id uint64
				for range 6 {
					id = cs.write()
				}
				cs.waitAcked(id)
			}
		}},
		{"old segments folded into the base as the stream goes on", time.Minute, func(cs *crashSender) {
			cs.waitAcked(cs.baseline())
			for range 24 {
				cs.waitAcked(cs.write())
			}
		}},
		{"a second baseline in the middle of the stream", 0, func(cs *crashSender) {
			cs.waitAcked(cs.baseline())
			for range 6 {
				cs.waitAcked(cs.write())
			}
			cs.waitAcked(cs.baseline())
			for range 10 {
				cs.waitAcked(cs.write())
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			rng := rand.New(rand.NewPCG(seed, 11))
			tear := rand.New(rand.NewPCG(seed, 12))
			fsys := faultfs.NewFS()
			cs := &crashSender{t: t, rng: rng, img: make([]byte, crashVolumeSize), images: map[uint64][]byte{}, acks: make(chan uint64, 1024),
				next: journal.ClockTransid(time.Now().Add(-time.Hour))} // old enough to fold
			var mu sync.Mutex
			var cuts []cut
			fsys.After = func() {
				acked := cs.acked.Load() // first: what the cut must hold
				mu.Lock()
				defer mu.Unlock()
				cuts = append(cuts, cut{fsys.PowerCut(faultfs.TearRandomly(tear)), acked})
			}
			cfg := ReceiverConfig{Dir: "/r", FS: fsys, Retain: c.retain, SegmentSize: 16 << 10}
			rc := startReceiver(t, cfg, nil)
			conn, err := net.Dial("tcp", rc.addr())
			if err != nil {
				t.Fatal(err)
			}
			cs.c = conn
			br := bufio.NewReader(conn)
			h := Hello{Full: true, Size: crashVolumeSize, Epoch: [16]byte{7}, Oldest: 1, Newest: 1, Volume: testVolume}
			cs.send(StreamHello, 0, h.Encode())
			var buf []byte
			if r, _, err := readRecord(br, &buf, 1<<20); err != nil || r.ID() != StreamWelcome {
				t.Fatalf("no welcome: %v", err)
			}
			go cs.readAcks(br)
			c.stream(cs)
			conn.Close()
			rc.stop()

			mu.Lock()
			defer mu.Unlock()
			t.Logf("%d steps, last ack %d", len(cuts), cs.acked.Load())
			for i, k := range cuts {
				checkCut(t, i+1, k, cfg, cs.images)
			}
		})
	}
}

// checkCut reopens the store on the disk k left, appends one more record
// to it, and restores the images acknowledged before the cut and the one
// after the record.
func checkCut(t *testing.T, step int, k cut, cfg ReceiverConfig, images map[uint64][]byte) {
	t.Helper()
	vd := recvDir{fs: k.fs, path: cfg.Dir}.volume(testVolume)
	s, err := openStore(vd, cfg.Retain, cfg.SegmentSize)
	if err != nil {
		t.Fatalf("power cut after step %d: reopening: %v", step, err)
	}
	last := s.st.Last
	if last < k.acked {
		t.Fatalf("power cut after step %d: the store ends at %d, before the acknowledged %d", step, last, k.acked)
	}
	if _, ok := s.st.interval(); ok {
		// The stream goes on after a recovery.
		images = maps.Clone(images)
		last++
		images[last] = bytes.Clone(images[last-1])
		blk := images[last][4096:8192]
		for i := range blk {
			blk[i] ^= 0xa5
		}
		raw := appendRecord(nil, journal.StreamFirstTx, last, writeRecord(4096, blk))
		r, err := journal.DecodeRecord(raw)
		if err == nil {
			err = accept(s, Hello{Epoch: s.st.Epoch}, r)
		}
		if err == nil {
			err = s.append(raw)
		}
		if err == nil {
			err = s.seg.Sync()
		}
		if err != nil {
			t.Fatalf("power cut after step %d: appending after the recovery: %v", step, err)
		}
		k.acked = max(k.acked, last)
	}
	if err := s.close(); err != nil {
		t.Fatalf("power cut after step %d: closing: %v", step, err)
	}
	if k.acked == 0 {
		return
	}
	restored := func(p Point) (Restored, []byte, error) {
		res, err := restore(k.fs, cfg.Dir, testVolume, p, "/restored.img", nil)
		if err != nil {
			return res, nil, err
		}
		b, err := vfs.ReadFile(k.fs, "/restored.img")
		if err != nil {
			t.Fatal(err)
		}
		return res, b, nil
	}
	res, img, err := restored(Point{Latest: true})
	if err != nil || res.Transid < k.acked || !bytes.Equal(img, images[res.Transid]) {
		t.Fatalf("power cut after step %d: the latest restored is %d (acknowledged %d), %v, equal %v", step, res.Transid, k.acked, err, err == nil && bytes.Equal(img, images[res.Transid]))
	}
	for id, want := range images {
		if id > k.acked {
			continue
		}
		_, img, err := restored(Point{Transid: id})
		if errors.Is(err, ErrNotKept) && len(res.Kept) > 0 && id < res.Kept[0].From {
			continue // folded away
		}
		if err != nil || !bytes.Equal(img, want) {
			t.Fatalf("power cut after step %d: restoring acknowledged id %d: %v (kept %v)", step, id, err, res.Kept)
		}
	}
}
