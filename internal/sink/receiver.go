package sink

import (
	"bufio"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// ReceiverConfig configures a receiver.
type ReceiverConfig struct {
	// Dir holds one directory per volume.
	Dir string
	// Token, if set, must be what every hello and request carries.
	Token []byte
	// ClientCertificates says that the listener requires client
	// certificates (checked by TLS). Requests, which read what the
	// receiver keeps, are served only with a Token or these.
	ClientCertificates bool
	// Retain is how long the stream is kept for restore; zero keeps it all.
	Retain time.Duration
	// SegmentSize is when a segment is closed (DefaultSegmentSize if zero).
	SegmentSize int64
	// HandshakeTimeout bounds the wait for a hello (10s if zero).
	HandshakeTimeout time.Duration
	// FS is where Dir is (the host's if nil).
	FS vfs.FS
}

// Receiver stores the streams of many volumes.
type Receiver struct {
	cfg  ReceiverConfig
	dir  recvDir
	lock *vfs.Lock

	mu      sync.Mutex
	vols    map[string]*volConn // the connection serving each volume
	figures map[string]*recvStats
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup

	restoring chan struct{} // a token per restore being served
}

type volConn struct {
	conn net.Conn
	done chan struct{}
}

// NewReceiver opens the receiver's directory, which one receiver at a
// time may use.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	if cfg.SegmentSize <= 0 {
		cfg.SegmentSize = DefaultSegmentSize
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.FS == nil {
		cfg.FS = vfs.OS
	}
	d := recvDir{fs: cfg.FS, path: cfg.Dir}
	if err := d.fs.MkdirAll(d.path); err != nil {
		return nil, err
	}
	lock, err := d.fs.Lock(d.lock(), false, false)
	if err != nil {
		return nil, fmt.Errorf("sink: %s is in use by another receiver: %w", cfg.Dir, err)
	}
	d.removeRestoreLeftovers()
	return &Receiver{cfg: cfg, dir: d, lock: lock, restoring: make(chan struct{}, MaxRestores), vols: map[string]*volConn{}, figures: map[string]*recvStats{}, conns: map[net.Conn]struct{}{}}, nil
}

// Serve accepts senders on l until Close; each is served on its own.
func (rc *Receiver) Serve(l net.Listener) error {
	for {
		c, err := l.Accept()
		if err != nil {
			rc.mu.Lock()
			closed := rc.closed
			rc.mu.Unlock()
			if closed {
				return nil
			}
			return err
		}
		rc.mu.Lock()
		if rc.closed {
			rc.mu.Unlock()
			c.Close()
			return nil
		}
		rc.conns[c] = struct{}{}
		rc.wg.Add(1)
		rc.mu.Unlock()
		go func() {
			defer rc.wg.Done()
			rc.serve(c)
			rc.mu.Lock()
			delete(rc.conns, c)
			rc.mu.Unlock()
		}()
	}
}

// Close cuts every connection, waits for them to store what they have
// and releases the directory. The listener is the caller's to close.
func (rc *Receiver) Close() error {
	rc.mu.Lock()
	rc.closed = true
	for c := range rc.conns {
		c.Close()
	}
	rc.mu.Unlock()
	rc.wg.Wait()
	return rc.lock.Unlock()
}

// peerError is a reason to cut a sender off (one of CutReasons).
type peerError struct {
	reason string
	err    error
}

func (e peerError) Error() string { return e.err.Error() }
func (e peerError) Unwrap() error { return e.err }

func (rc *Receiver) serve(c net.Conn) {
	remote := c.RemoteAddr().String()
	volID, err := rc.session(c)
	var refused restoreRefusal
	var failed requestFailed
	switch {
	case errors.As(err, &refused):
		klog.InfoS("Refused a request", "remote", remote, "volume", volID, "reason", err.Error())
		if refused.code == RefusedAuthentication {
			rc.cutOffStats(volID).cutOff(peerError{CutAuthentication, err})
		}
	case errors.As(err, &failed):
		klog.InfoS("A request failed", "remote", remote, "volume", volID, "err", err.Error())
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		klog.V(2).InfoS("Sender gone", "remote", remote, "volume", volID)
	default:
		klog.InfoS("Cut off sender", "remote", remote, "volume", volID, "reason", err.Error())
		rc.cutOffStats(volID).cutOff(err)
		var pe peerError
		if errors.As(err, &pe) || errors.Is(err, ErrProto) || errors.Is(err, ErrVersion) {
			// Tell it why, best effort: it may be gone already.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(appendRecord(nil, StreamRefuse, 0, []byte(err.Error())))
		}
	}
	c.Close()
}

// session serves one connection: the handshake, then the stream.
func (rc *Receiver) session(c net.Conn) (string, error) {
	br := bufio.NewReaderSize(c, 64<<10) // large records bypass it, read straight into the batch
	var buf []byte
	c.SetReadDeadline(time.Now().Add(rc.cfg.HandshakeTimeout))
	r, _, err := readRecord(br, &buf, 64<<10)
	if err != nil {
		return "", err
	}
	switch r.ID() {
	case StreamRestoreRequest, StreamPinRequest, StreamUnpinRequest:
		return rc.serveRequest(c, r.ID(), r.Payload)
	}
	if r.ID() != StreamHello {
		return "", fmt.Errorf("%w: first record of stream %#x, want a hello or a restore request", ErrProto, r.ID())
	}
	h, err := DecodeHello(r.Payload)
	if err != nil {
		return "", err
	}
	if len(rc.cfg.Token) > 0 && subtle.ConstantTimeCompare(h.Token, rc.cfg.Token) != 1 {
		return h.Volume, peerError{CutAuthentication, errors.New("authentication failed: wrong token")}
	}
	c.SetReadDeadline(time.Time{})

	release, err := rc.claim(h.Volume, c)
	if err != nil {
		return h.Volume, err
	}
	defer release()
	s, err := openStore(rc.dir.volume(h.Volume), rc.cfg.Retain, rc.cfg.SegmentSize)
	if err != nil {
		return h.Volume, peerError{CutStorage, fmt.Errorf("receiver cannot open the volume's store: %w", err)}
	}
	defer func() {
		if err := s.close(); err != nil {
			klog.ErrorS(err, "Closing a volume's store", "volume", h.Volume)
		}
	}()
	w := Welcome{Mode: ModeBaseline, MaxRecord: MaxWireRecord}
	if s.st.Epoch == h.Epoch && s.st.Consistent && !s.st.InBaseline && s.st.Last >= h.Oldest && s.st.Last <= h.Newest {
		w = Welcome{Mode: ModeResume, After: s.st.Last, MaxRecord: MaxWireRecord}
	}
	klog.InfoS("Sender connected", "remote", c.RemoteAddr().String(), "volume", h.Volume, "full", h.Full,
		"mode", map[uint16]string{ModeResume: "resume", ModeBaseline: "baseline"}[w.Mode], "after", w.After)
	out := &ackWriter{c: c}
	if err := out.write(appendRecord(nil, StreamWelcome, 0, w.Encode())); err != nil {
		return h.Volume, err
	}
	return h.Volume, rc.stream(br, s, h, w, out, rc.stats(h.Volume))
}

// claim makes c the volume's connection: an earlier one (a link the sender
// has given up on) is cut and waited for.
func (rc *Receiver) claim(vol string, c net.Conn) (func(), error) {
	me := &volConn{conn: c, done: make(chan struct{})}
	for {
		rc.mu.Lock()
		old := rc.vols[vol]
		if old == nil {
			rc.vols[vol] = me
			rc.mu.Unlock()
			return func() {
				rc.mu.Lock()
				delete(rc.vols, vol)
				rc.mu.Unlock()
				close(me.done)
			}, nil
		}
		rc.mu.Unlock()
		old.conn.Close()
		<-old.done
	}
}

// ackWriter serialises what the receiver writes to a sender.
type ackWriter struct {
	mu sync.Mutex
	c  net.Conn
}

func (a *ackWriter) write(b []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := a.c.Write(b)
	return err
}

// batchSize is how many received bytes are written to the segment at once.
const batchSize = 1 << 20

// stream receives records, checks each before it is stored, appends them
// to the segment, applies them to the mirror, and has them synced (and, in
// full duplex, acknowledged) by a syncer running beside it: a sync covers
// everything written before it began, so the stream never waits for one.
func (rc *Receiver) stream(br *bufio.Reader, s *store, h Hello, w Welcome, out *ackWriter, st *recvStats) error {
	sy := newSyncer(s, h.Full, out, st)
	defer sy.stop()
	batch := make([]byte, 0, 2*batchSize)
	// A resumed sender may begin with records the receiver has: dropped,
	// until the first new one.
	repeats := w.Mode == ModeResume
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := s.append(batch)
		if err == nil {
			st.stored.Add(uint64(len(batch)))
		}
		batch = batch[:0]
		if err != nil {
			return peerError{CutStorage, fmt.Errorf("receiver cannot store the stream (nothing stored is lost; not acknowledging): %w", err)}
		}
		sy.mu.Lock()
		sy.pending = true
		if !s.st.InBaseline {
			// During a baseline, Last is where it began: not yet had.
			sy.written = s.st.Last
		}
		sy.mu.Unlock()
		sy.kick()
		if s.segOff >= s.segMax {
			sy.segMu.Lock()
			err := s.rotate()
			sy.segMu.Unlock()
			if err != nil {
				return peerError{CutStorage, fmt.Errorf("receiver cannot begin a segment: %w", err)}
			}
			st.segments.Add(1)
		}
		return nil
	}
	for {
		if br.Buffered() == 0 || len(batch) >= batchSize {
			if err := flush(); err != nil {
				return err
			}
		}
		if err := sy.failed(); err != nil {
			return err
		}
		// Straight into the batch: a record is copied once, to the disk.
		r, raw, err := readRecord(br, &batch, int(w.MaxRecord))
		if err != nil {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			return err
		}
		if repeats && r.ID() >= journal.StreamFirstTx && r.Transid <= w.After {
			continue // a repeat of what is stored: the sender resent from an earlier point
		}
		repeats = false
		if err := accept(s, h, r); err != nil {
			// Store the good records before the bad one.
			if ferr := flush(); ferr != nil {
				return ferr
			}
			return err
		}
		batch = batch[:len(batch)+len(raw)]
	}
}

// accept checks record r against the stream so far and applies it to the
// mirror; a record it refuses changes nothing.
func accept(s *store, h Hello, r journal.Record) error {
	next := s.st
	changes, err := next.step(r)
	if err != nil {
		return err
	}
	if r.ID() == StreamBaselineBegin && next.Epoch != h.Epoch {
		return fmt.Errorf("%w: baseline of epoch %x in a stream of epoch %x", ErrProto, next.Epoch, h.Epoch)
	}
	if changes {
		if err := s.mirror.check(r); err != nil {
			return err
		}
		if err := s.mirror.apply(r, &next); err != nil {
			return peerError{CutStorage, fmt.Errorf("receiver cannot write its mirror: %w", err)}
		}
	}
	s.st = next
	return nil
}

// syncer syncs the current segment and acknowledges what it holds.
type syncer struct {
	s    *store
	full bool
	out  *ackWriter
	st   *recvStats

	segMu   sync.Mutex // held to sync the segment or to replace it
	mu      sync.Mutex
	written uint64 // the id of the last record written to the segment
	pending bool
	acked   uint64 // owned by the syncer's goroutine

	wake  chan struct{}
	quit  chan struct{}
	done  chan struct{}
	errMu sync.Mutex
	err   error
}

func newSyncer(s *store, full bool, out *ackWriter, st *recvStats) *syncer {
	sy := &syncer{s: s, full: full, out: out, st: st, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go sy.run()
	return sy
}

func (sy *syncer) kick() {
	select {
	case sy.wake <- struct{}{}:
	default:
	}
}

func (sy *syncer) failed() error {
	sy.errMu.Lock()
	defer sy.errMu.Unlock()
	return sy.err
}

func (sy *syncer) run() {
	defer close(sy.done)
	for {
		select {
		case <-sy.wake:
		case <-sy.quit:
			sy.syncOnce() // what the last flush wrote
			return
		}
		if err := sy.syncOnce(); err != nil {
			sy.errMu.Lock()
			sy.err = err
			sy.errMu.Unlock()
			return
		}
	}
}

func (sy *syncer) syncOnce() error {
	// segMu only keeps a rotation from closing the file under the sync;
	// the stream goes on appending meanwhile.
	sy.segMu.Lock()
	sy.mu.Lock()
	id, pending := sy.written, sy.pending
	sy.pending = false
	sy.mu.Unlock()
	if !pending {
		sy.segMu.Unlock()
		return nil
	}
	err := sy.st.timeSync(sy.s.seg.Sync)
	sy.segMu.Unlock()
	if err != nil {
		return peerError{CutStorage, fmt.Errorf("receiver cannot sync the stream (not acknowledging): %w", err)}
	}
	sy.st.synced.Store(id)
	if sy.full && id > sy.acked {
		sy.acked = id
		return sy.out.write(appendRecord(nil, StreamAck, id, nil))
	}
	return nil
}

func (sy *syncer) stop() {
	close(sy.quit)
	<-sy.done
}
