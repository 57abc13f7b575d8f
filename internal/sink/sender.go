package sink

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// Link states, as the status shows them.
const (
	Disconnected = "Disconnected"
	Connected    = "Connected"
	CatchingUp   = "CatchingUp"
	OutOfSync    = "OutOfSync"
)

// SenderConfig configures a sender.
type SenderConfig struct {
	// URL is tcp://host:port or tls://host:port.
	URL string
	// Volume is the id the receiver keeps the stream under.
	Volume string
	// Full waits for acknowledgements before the journal frees records;
	// half duplex frees them once sent.
	Duplex journal.Duplex
	// TLS is the client configuration for tls:// (its ServerName defaults
	// to the URL's host).
	TLS *tls.Config
	// Token is sent in the hello.
	Token []byte
	// MinBackoff and MaxBackoff bound the wait between connection attempts
	// (default 100ms and 30s), doubled after each failure.
	MinBackoff, MaxBackoff time.Duration
	// Resync says that the stream has a gap the ids do not show (the
	// volume's server died with writes that never reached the journal):
	// the receiver gets a baseline copy whatever it has. Resynced is
	// called once it has the copy (acknowledged, in full duplex).
	Resync   bool
	Resynced func()
}

// ParseURL checks a sink URL and returns its scheme and address.
func ParseURL(s string) (scheme, addr string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", err
	}
	if (u.Scheme != "tcp" && u.Scheme != "tls") || u.Host == "" || u.Port() == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return "", "", fmt.Errorf("sink URL %q: want tcp://host:port or tls://host:port", s)
	}
	return u.Scheme, u.Host, nil
}

// Sender streams a volume's journal to a receiver: records from the
// journal ring, once synced, in order, over one connection at a time,
// reconnecting with capped exponential back-off. A hold on the volume
// keeps every record not yet sent (half duplex) or acknowledged (full
// duplex) in the journal, across restarts.
type Sender struct {
	cfg    SenderConfig
	scheme string
	addr   string
	v      *volume.Volume
	j      *journal.Journal

	mu         sync.Mutex
	linkUp     bool
	inBaseline bool
	sentPos    uint64 // ring position sent up to
	outOfSync  bool
	resync     bool   // a baseline is due whatever the receiver has
	resyncAt   uint64 // the id a baseline sent for it is consistent at
	acked      uint64 // the last id the receiver has (or was sent, half duplex)
	ackedPos   uint64 // ring position after it
	lastAck    time.Time
	ackedCh    chan struct{} // closed and replaced when acked moves
	lastErr    string
	cancel     context.CancelFunc // ends the current session
	connects   uint64             // handshakes done
	baselines  uint64             // baselines begun

	ctx  context.Context // ended by Close
	stop context.CancelFunc
	done chan struct{}
}

// StartSender starts streaming v's journal. The volume should have been
// opened with Config.Hold, so that records from before this run are kept.
func StartSender(v *volume.Volume, cfg SenderConfig) (*Sender, error) {
	scheme, addr, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if !ValidVolumeID(cfg.Volume) {
		return nil, fmt.Errorf("sink: volume id %q: want lowercase letters, digits, '-' and '.'", cfg.Volume)
	}
	if len(cfg.Token) > MaxToken {
		return nil, fmt.Errorf("sink: token longer than %d bytes", MaxToken)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	s := &Sender{
		cfg: cfg, scheme: scheme, addr: addr, v: v, j: v.Journal(),
		ackedCh: make(chan struct{}), done: make(chan struct{}), resync: cfg.Resync, outOfSync: cfg.Resync,
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.ackedPos, s.acked = v.Hold(s.dropped)
	go s.run()
	return s, nil
}

// Close stops the sender. The hold stays: what was not sent or
// acknowledged is still in the journal for the next sender.
func (s *Sender) Close() {
	s.stop()
	<-s.done
}

// dropped is called when the volume drops the hold because the spool is
// full: the stream has a gap now, so the session (if any) ends, and the
// receiver gets a baseline copy when it is reached again.
func (s *Sender) dropped() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.outOfSync {
		klog.InfoS("Sink out of sync: the journal cannot hold more of the stream; the volume goes on, and a baseline copy follows when the receiver is reached", "volume", s.cfg.Volume, "url", s.cfg.URL)
	}
	s.outOfSync = true
	if s.cancel != nil {
		s.cancel()
	}
}

// SenderStats is what the status shows of the link.
type SenderStats struct {
	State        string
	AckedTransid uint64
	LagBytes     uint64
	LagSeconds   float64
	LastAck      time.Time
	LastError    string
	// Connects counts the handshakes done, Baselines the baselines begun,
	// since the sender started.
	Connects, Baselines uint64
}

// Stats returns the link's figures.
func (s *Sender) Stats() SenderStats {
	js := s.j.Stats()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SenderStats{State: Disconnected, AckedTransid: s.acked, LastAck: s.lastAck, LastError: s.lastErr,
		Connects: s.connects, Baselines: s.baselines}
	switch {
	case s.outOfSync:
		st.State = OutOfSync
	case !s.linkUp:
	case s.inBaseline || js.Durable > s.sentPos+catchUpLag:
		st.State = CatchingUp
	default:
		st.State = Connected
	}
	if js.Durable > s.ackedPos {
		st.LagBytes = js.Durable - s.ackedPos
		if js.DurableTransid > s.acked && s.acked != 0 {
			st.LagSeconds = TransidTime(js.DurableTransid).Sub(TransidTime(s.acked)).Seconds()
		}
	}
	return st
}

// WaitAcked returns once the receiver has every record up to id (has been
// sent it, in half duplex).
func (s *Sender) WaitAcked(ctx context.Context, id uint64) error {
	for {
		s.mu.Lock()
		acked, ch := s.acked, s.ackedCh
		s.mu.Unlock()
		if acked >= id {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("sink: waiting for id %d, acknowledged %d: %w", id, acked, ctx.Err())
		}
	}
}

// catchUpLag is how far the sender may be behind the journal's durable
// end and still call itself Connected rather than CatchingUp.
const catchUpLag = 2 * readChunk

func (s *Sender) set(f func()) {
	s.mu.Lock()
	f()
	s.mu.Unlock()
}

// advance records that the receiver has every record up to id, and lets
// the journal free the ring before position pos, whose last record has id
// posID.
func (s *Sender) advance(pos, posID, id uint64) {
	s.v.MoveHold(pos, posID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resync && s.resyncAt != 0 && id >= s.resyncAt {
		s.resync = false
		if s.cfg.Resynced != nil {
			s.cfg.Resynced()
		}
	}
	if id > s.acked || pos > s.ackedPos {
		s.acked, s.ackedPos = max(s.acked, id), max(s.ackedPos, pos)
		s.lastAck = time.Now()
		close(s.ackedCh)
		s.ackedCh = make(chan struct{})
	}
}

func (s *Sender) run() {
	defer close(s.done)
	backoff := s.cfg.MinBackoff
	for {
		ctx, cancel := context.WithCancel(s.ctx)
		s.mu.Lock()
		s.cancel = cancel
		gap := s.outOfSync
		s.mu.Unlock()
		// Out of sync, nothing needs holding until a baseline begins.
		var oldest uint64
		if gap {
			oldest = s.j.Stats().CheckpointTransid
		} else {
			_, oldest = s.v.Hold(s.dropped)
		}
		connected, err := s.session(ctx, oldest)
		cancel()
		s.set(func() {
			s.linkUp, s.inBaseline, s.cancel = false, false, nil
			if err != nil {
				s.lastErr = err.Error()
			}
		})
		if s.ctx.Err() != nil {
			return
		}
		klog.InfoS("Sink link down", "volume", s.cfg.Volume, "url", s.cfg.URL, "reason", fmt.Sprint(err), "retryIn", backoff)
		if connected {
			backoff = s.cfg.MinBackoff
		}
		// Jitter, so that many volumes do not reconnect in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

func (s *Sender) dial(ctx context.Context) (net.Conn, error) {
	return dialURL(ctx, s.scheme, s.addr, s.cfg.TLS)
}

// dialURL connects to a receiver at addr, with TLS (cfg, its ServerName
// the host by default) for the scheme tls.
func dialURL(ctx context.Context, scheme, addr string, tc *tls.Config) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	if scheme == "tls" {
		cfg := &tls.Config{}
		if tc != nil {
			cfg = tc.Clone()
		}
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			cfg.ServerName = host
		}
		td := tls.Dialer{NetDialer: &d, Config: cfg}
		return td.DialContext(ctx, "tcp", addr)
	}
	return d.DialContext(ctx, "tcp", addr)
}

// session runs one connection: the handshake, a baseline if the receiver
// needs one, then the stream until something fails. connected says that
// the handshake succeeded.
func (s *Sender) session(ctx context.Context, oldest uint64) (bool, error) {
	c, err := s.dial(ctx)
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()

	_, newest := s.j.Durable()
	h := Hello{Full: s.cfg.Duplex == journal.Full, Size: uint64(s.v.Size()), Epoch: s.j.UUID(), Oldest: oldest, Newest: max(newest, oldest), Volume: s.cfg.Volume, Token: s.cfg.Token}
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Write(appendRecord(nil, StreamHello, 0, h.Encode())); err != nil {
		return false, err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	var buf []byte
	r, _, err := readRecord(br, &buf, 64<<10)
	if err != nil {
		return false, fmt.Errorf("handshake: %w", err)
	}
	if r.ID() == StreamRefuse {
		return false, fmt.Errorf("%w: %s", ErrRefused, r.Payload)
	}
	if r.ID() != StreamWelcome {
		return false, fmt.Errorf("%w: answer of stream %#x to a hello", ErrProto, r.ID())
	}
	w, err := DecodeWelcome(r.Payload)
	if err != nil {
		return false, err
	}
	c.SetDeadline(time.Time{})

	// Acknowledgements (and a refusal) arrive on their own goroutine.
	acks := newAckTracker()
	var readErr error
	readDone := make(chan struct{})
	go func() {
		readErr = s.readAcks(br, acks)
		close(readDone)
	}()

	s.set(func() { s.linkUp, s.connects = true, s.connects+1 })
	// pos is where sending starts and posID the id of the last record
	// before it (what a hold there names); after is what the receiver has.
	var pos, posID, after uint64
	s.mu.Lock()
	resync := s.resync
	s.mu.Unlock()
	if w.Mode == ModeResume {
		// Resume only if the journal holds every record after After (out
		// of sync, the sender held nothing until now).
		pos, posID = s.v.Hold(s.dropped)
		if posID > w.After || resync {
			w.Mode = ModeBaseline
		}
	}
	if w.Mode == ModeResume {
		// Nothing was lost: the receiver has every record up to After,
		// and the journal every record after it.
		after = w.After
		s.set(func() { s.outOfSync, s.sentPos = false, pos })
		s.advance(pos, posID, after)
	} else {
		s.set(func() { s.inBaseline, s.baselines = true, s.baselines+1 })
		if pos, after, err = s.baseline(ctx, c); err != nil {
			return true, fmt.Errorf("baseline: %w", err)
		}
		posID = after
		s.set(func() {
			s.inBaseline, s.outOfSync, s.sentPos = false, false, pos
			if s.resync {
				s.resyncAt = after
			}
		})
		// The copy holds every record up to after: acknowledged (or sent)
		// as such.
		if s.cfg.Duplex == journal.Full {
			acks.sent(after, pos)
		} else {
			s.advance(pos, after, after)
		}
	}
	err = s.stream(ctx, c, pos, posID, after, w, acks, readDone)
	// A refusal says why better than the broken pipe it causes.
	c.Close()
	<-readDone
	if err == nil || errors.Is(readErr, ErrRefused) {
		err = readErr
	}
	return true, err
}

// ErrRefused is the receiver cutting the link, with its reason.
var ErrRefused = errors.New("receiver cut the link")

// readAcks reads what the receiver sends after the welcome.
func (s *Sender) readAcks(br *bufio.Reader, acks *ackTracker) error {
	var buf []byte
	for {
		r, raw, err := readRecord(br, &buf, 64<<10)
		if err != nil {
			return err
		}
		switch r.ID() {
		case StreamRefuse:
			return fmt.Errorf("%w: %s", ErrRefused, r.Payload)
		case StreamAck:
			id, err := DecodeAck(raw)
			if err != nil {
				return err
			}
			pos, last := acks.ack(id)
			s.advance(pos, last, id)
		default:
			return fmt.Errorf("%w: receiver sent a record of stream %#x", ErrProto, r.ID())
		}
	}
}

// ackTracker maps acknowledged ids to ring positions: one entry per write
// to the connection, holding the last id written and where it ends.
type ackTracker struct {
	mu      sync.Mutex
	pending []ackPoint
	wake    chan struct{}
}

type ackPoint struct{ id, pos uint64 }

func newAckTracker() *ackTracker { return &ackTracker{wake: make(chan struct{}, 1)} }

func (a *ackTracker) sent(id, pos uint64) {
	a.mu.Lock()
	a.pending = append(a.pending, ackPoint{id, pos})
	a.mu.Unlock()
}

// ack returns the furthest point that id covers (zeros if none).
func (a *ackTracker) ack(id uint64) (pos, last uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := 0
	for i < len(a.pending) && a.pending[i].id <= id {
		pos, last = a.pending[i].pos, a.pending[i].id
		i++
	}
	a.pending = a.pending[i:]
	return pos, last
}

// baselineChunk is the piece of the data image one baseline record holds.
const baselineChunk = 1 << 20

// baseline sends a copy of the data image, consistent with the stream
// that follows it: the journal is held from its durable end P0 before the
// copy is read, so every write the copy may miss is in the records after
// P0; the copy ends with the id Y that every write the copy may have seen
// is at or below (a flush after the read makes them all durable). The
// receiver's image is the volume's from Y on.
func (s *Sender) baseline(ctx context.Context, c net.Conn) (pos, after uint64, err error) {
	s.v.Hold(s.dropped) // out of sync, the sender held nothing
	p0, x0 := s.j.Durable()
	s.v.MoveHold(p0, x0)
	if hp, _ := s.v.Hold(s.dropped); hp != p0 {
		return 0, 0, fmt.Errorf("the journal could not be held at %d (held at %d)", p0, hp)
	}
	size := s.v.Size()
	bw := bufio.NewWriterSize(c, 2<<20)
	bb := BaselineBegin{Epoch: s.j.UUID(), Size: uint64(size)}
	if _, err := bw.Write(appendRecord(nil, StreamBaselineBegin, x0, bb.Encode())); err != nil {
		return 0, 0, err
	}
	data := vfs.AlignedBuffer(baselineChunk)
	rec := make([]byte, journal.AlignedSize(blockrec.WriteSize(baselineChunk)))
	var sub [blockrec.DiscardSize]byte
	for off := int64(0); off < size; off += baselineChunk {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		n := min(int64(baselineChunk), size-off)
		if _, err := s.v.ReadAt(data[:n], off); err != nil {
			return 0, 0, err
		}
		var payload []byte
		if vfs.IsZero(data[:n]) {
			blockrec.PutDiscard(sub[:], uint64(off), uint64(n))
			payload = sub[:]
		} else {
			m := blockrec.PutWrite(rec[journal.HeaderSize:], uint64(off), data[:n])
			payload = rec[journal.HeaderSize : journal.HeaderSize+m]
		}
		k := journal.EncodeRecord(rec, StreamBaselineData|journal.FlagBegin|journal.FlagEnd, x0, payload)
		if _, err := bw.Write(rec[:k]); err != nil {
			return 0, 0, err
		}
	}
	if err := s.v.Flush(ctx); err != nil {
		return 0, 0, err
	}
	_, y := s.j.Durable()
	if _, err := bw.Write(appendRecord(nil, StreamBaselineEnd, max(y, x0), nil)); err != nil {
		return 0, 0, err
	}
	if err := bw.Flush(); err != nil {
		return 0, 0, err
	}
	klog.InfoS("Sent a baseline copy", "volume", s.cfg.Volume, "size", size, "from", x0, "consistentAt", y)
	return p0, x0, nil
}

// readChunk is how much of the ring one read takes.
const readChunk = 4 << 20

// stream sends the synced records from ring position pos on, skipping
// pads and ids at or below after, until ctx ends or the link fails.
func (s *Sender) stream(ctx context.Context, c net.Conn, pos, posID, after uint64, w Welcome, acks *ackTracker, readDone <-chan struct{}) error {
	buf := vfs.AlignedBuffer(readChunk + vfs.BlockSize)
	var runs [][]byte
	for {
		changed := s.j.DurableChanged()
		b, err := s.j.ReadDurable(buf, pos)
		if err != nil {
			return err
		}
		if len(b) == 0 {
			select {
			case <-changed: // more, or the journal failed: the read says
			case <-readDone:
				return nil // the reader's error says why
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		// Walk the whole records in b into runs to send; a pad ends a run.
		runs = runs[:0]
		i, runStart := 0, 0
		for i+journal.HeaderSize <= len(b) {
			n := int(binary.LittleEndian.Uint32(b[i+4:]))
			n = journal.Align(max(n, journal.HeaderSize))
			if i+n > len(b) {
				if i == 0 && n > len(buf)-vfs.BlockSize {
					if n > journal.MaxRecordSize {
						return fmt.Errorf("journal record of %d bytes at %d", n, pos)
					}
					buf = vfs.AlignedBuffer(n + vfs.BlockSize)
				}
				break
			}
			r, err := journal.DecodeRecord(b[i : i+n])
			if err != nil {
				return fmt.Errorf("journal record at %d: %w", pos+uint64(i), err)
			}
			if !r.IsPad() {
				// The hold and acks name positions by the record before
				// them, repeats included.
				posID = r.Transid
			}
			if r.IsPad() || r.Transid <= after {
				runs = append(runs, b[runStart:i])
				runStart = i + n
			} else if int(r.Size) > int(w.MaxRecord) {
				return fmt.Errorf("journal record %d of %d bytes is larger than the receiver takes (%d)", r.Transid, r.Size, w.MaxRecord)
			}
			i += n
		}
		runs = append(runs, b[runStart:i])
		pos += uint64(i)
		after = max(after, posID)
		// Known before it is sent: its acknowledgement may come at once.
		if s.cfg.Duplex == journal.Full {
			acks.sent(posID, pos)
		}
		for _, run := range runs {
			if err := s.write(c, run); err != nil {
				return err
			}
		}
		s.set(func() { s.sentPos = pos })
		if s.cfg.Duplex != journal.Full {
			s.advance(pos, posID, after)
		}
	}
}

func (s *Sender) write(c net.Conn, b []byte) error {
	if len(b) == 0 {
		return nil
	}
	c.SetWriteDeadline(time.Now().Add(time.Minute))
	_, err := c.Write(b)
	return err
}
