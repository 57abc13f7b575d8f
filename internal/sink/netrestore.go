package sink

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
)

// Requests over the network (protocol version 2): a client opens a
// connection with a request instead of a hello. For a restore, the
// receiver rebuilds the image at the point asked into a file of its own,
// sends the blocks that hold data and ends; the client writes them into a
// sparse file. A pin or unpin is answered with done. A connection carries
// one request.
const (
	StreamRestoreRequest = 0x27 // client: the image of a volume at a point
	StreamRestoreBegin   = 0x28 // receiver: the image after transid follows
	StreamRestoreData    = 0x29 // receiver: one block-write sub-record of it
	StreamRestoreEnd     = 0x2A // receiver: that was all of it
	StreamRestoreRefused = 0x2B // receiver: why a request is refused (a code and a reason)
	StreamPinRequest     = 0x2C // client: keep a point under a name (Pin)
	StreamUnpinRequest   = 0x2D // client: let it go (Unpin)
	StreamDone           = 0x2E // receiver: done; transid is the id pinned
)

// RequestVersion is the protocol version that brought requests; a
// stream session is unchanged and its hello still says ProtoVersion.
const RequestVersion = 2

// Request is a restore, pin or unpin request (the record's stream says
// which).
//
//	0     4  magic "JVSK"
//	4     2  version (2)
//	6     2  flags: bit 0 latest (transid is then 0); others 0
//	8     8  transid: the image after every record up to it
//	16    2  volume id length n (1..253)
//	18    2  token length m (0..4096)
//	20    2  pin name length k (1..253 for a pin or unpin, 0 for a restore)
//	22    2  zero
//	24    n  volume id
//	24+n  m  token
//	24+n+m k pin name: lowercase letters, digits, '-' and '.'
type Request struct {
	Point
	Volume string
	Token  []byte
	Name   string
}

const requestFixed = 24

// FlagLatest is Request's flag for the newest point.
const FlagLatest = 1

// Encode returns the request's payload.
func (q *Request) Encode() []byte {
	b := make([]byte, requestFixed+len(q.Volume)+len(q.Token)+len(q.Name))
	copy(b, ProtoMagic)
	binary.LittleEndian.PutUint16(b[4:], RequestVersion)
	if q.Latest {
		binary.LittleEndian.PutUint16(b[6:], FlagLatest)
	}
	binary.LittleEndian.PutUint64(b[8:], q.Transid)
	binary.LittleEndian.PutUint16(b[16:], uint16(len(q.Volume)))
	binary.LittleEndian.PutUint16(b[18:], uint16(len(q.Token)))
	binary.LittleEndian.PutUint16(b[20:], uint16(len(q.Name)))
	i := copy(b[requestFixed:], q.Volume) + requestFixed
	i += copy(b[i:], q.Token)
	copy(b[i:], q.Name)
	return b
}

// DecodeRequest decodes and checks a request's payload.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < requestFixed || string(b[:4]) != ProtoMagic {
		return Request{}, fmt.Errorf("%w: not a request", ErrProto)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != RequestVersion {
		return Request{}, fmt.Errorf("%w %d of a request (this jvol speaks %d)", ErrVersion, v, RequestVersion)
	}
	flags := binary.LittleEndian.Uint16(b[6:])
	n := int(binary.LittleEndian.Uint16(b[16:]))
	m := int(binary.LittleEndian.Uint16(b[18:]))
	k := int(binary.LittleEndian.Uint16(b[20:]))
	q := Request{Point: Point{Latest: flags&FlagLatest != 0, Transid: binary.LittleEndian.Uint64(b[8:])}}
	switch {
	case flags&^FlagLatest != 0 || binary.LittleEndian.Uint16(b[22:]) != 0:
		return Request{}, fmt.Errorf("%w: request flags %#x", ErrProto, flags)
	case n == 0 || n > MaxVolumeID || m > MaxToken || k > MaxVolumeID || len(b) != requestFixed+n+m+k:
		return Request{}, fmt.Errorf("%w: request of %d bytes with a %d-byte volume id, a %d-byte token and a %d-byte name", ErrProto, len(b), n, m, k)
	case q.Latest && q.Transid != 0:
		return Request{}, fmt.Errorf("%w: a request of the latest point with transid %d", ErrProto, q.Transid)
	}
	q.Volume = string(b[requestFixed : requestFixed+n])
	q.Token = b[requestFixed+n : requestFixed+n+m]
	q.Name = string(b[requestFixed+n+m:])
	if !ValidVolumeID(q.Volume) || k > 0 && !ValidVolumeID(q.Name) {
		return Request{}, fmt.Errorf("%w: volume id %q, name %q", ErrProto, q.Volume, q.Name)
	}
	return q, nil
}

// Why a receiver refuses a restore: the code of a StreamRestoreRefused
// record (u16), before its UTF-8 reason.
const (
	RefusedBadRequest     = 1 // a request it cannot read
	RefusedAuthentication = 2 // a wrong token
	RefusedNoVolume       = 3 // it keeps no stream of the volume
	RefusedNotKept        = 4 // not a point it keeps (the reason names those it does)
	RefusedFailed         = 5 // it could not do it
	RefusedPinExists      = 6 // the pin's name holds another point
)

// Errors of RestoreFrom, as the receiver's refusal says; ErrNotKept too.
var (
	ErrNoVolume       = errors.New("sink: the receiver keeps no stream of the volume")
	ErrAuthentication = errors.New("sink: the receiver refused the credentials")
)

var refusedErrors = map[uint16]error{
	RefusedBadRequest: ErrProto, RefusedAuthentication: ErrAuthentication, RefusedNoVolume: ErrNoVolume,
	RefusedNotKept: ErrNotKept, RefusedFailed: ErrRefused, RefusedPinExists: ErrPinExists,
}

// RestoreBegin's payload: the image's size (u64) and 8 zero bytes; its
// record's transid is the point the image is at.
const restoreBeginSize = 16

// RestoreEnd's payload: the bytes of data sent (u64), for the client to
// check against what it received.
const restoreEndSize = 8

// restoreRefusal is a restore refused, with its code: the client has
// been told why.
type restoreRefusal struct {
	code uint16
	err  error
}

func (e restoreRefusal) Error() string { return e.err.Error() }
func (e restoreRefusal) Unwrap() error { return e.err }

// requestFailed is a request that failed after it was accepted.
type requestFailed struct{ err error }

func (e requestFailed) Error() string { return e.err.Error() }
func (e requestFailed) Unwrap() error { return e.err }

// MaxRestores is how many restores a receiver serves at once; more wait.
// Each rebuilds an image on the receiver's disk, and holds its volume's
// folding off.
const MaxRestores = 2

// restorePiece is how much of the image one data record carries at most.
const restorePiece = 1 << 20

// serveRequest answers a request of stream id.
func (rc *Receiver) serveRequest(c net.Conn, id uint16, payload []byte) (string, error) {
	out := &ackWriter{c: c}
	refuse := func(code uint16, err error) error {
		p := binary.LittleEndian.AppendUint16(nil, code)
		out.write(appendRecord(nil, StreamRestoreRefused, 0, append(p, err.Error()...)))
		return restoreRefusal{code, err}
	}
	q, err := DecodeRequest(payload)
	switch {
	case err != nil:
		return "", refuse(RefusedBadRequest, err)
	case (q.Name != "") != (id != StreamRestoreRequest):
		return q.Volume, refuse(RefusedBadRequest, fmt.Errorf("%w: a request of stream %#x with name %q", ErrProto, id, q.Name))
	case len(rc.cfg.Token) > 0 && subtle.ConstantTimeCompare(q.Token, rc.cfg.Token) != 1:
		return q.Volume, refuse(RefusedAuthentication, errors.New("authentication failed: wrong token"))
	case len(rc.cfg.Token) == 0 && !rc.cfg.ClientCertificates:
		// What a receiver keeps is read only by clients it knows.
		return q.Volume, refuse(RefusedAuthentication, errors.New("the receiver serves requests only to authenticated clients: start it with --token-file or --client-ca"))
	}
	c.SetReadDeadline(time.Time{})
	if id == StreamRestoreRequest {
		vol, err := rc.serveRestore(c, out, q, refuse)
		var refused restoreRefusal
		if err != nil && !errors.As(err, &refused) {
			err = requestFailed{err} // the client gone, say: no sender cut off
		}
		return vol, err
	}
	var pinned uint64
	if id == StreamPinRequest {
		pinned, err = pin(rc.cfg.FS, rc.cfg.Dir, q.Volume, q.Name, q.Point)
	} else {
		err = unpin(rc.cfg.FS, rc.cfg.Dir, q.Volume, q.Name)
	}
	switch {
	case errors.Is(err, ErrNoVolume):
		return q.Volume, refuse(RefusedNoVolume, err)
	case errors.Is(err, ErrNotKept):
		return q.Volume, refuse(RefusedNotKept, err)
	case errors.Is(err, ErrPinExists):
		return q.Volume, refuse(RefusedPinExists, err)
	case err != nil:
		return q.Volume, refuse(RefusedFailed, err)
	}
	klog.InfoS(map[bool]string{true: "Pinned a point", false: "Unpinned a point"}[id == StreamPinRequest],
		"remote", c.RemoteAddr().String(), "volume", q.Volume, "name", q.Name, "transid", pinned)
	return q.Volume, out.write(appendRecord(nil, StreamDone, pinned, nil))
}

// serveRestore answers a restore request: an image of the volume at the
// point asked, only its blocks that hold data.
func (rc *Receiver) serveRestore(c net.Conn, out *ackWriter, q Request, refuse func(uint16, error) error) (string, error) {
	for waiting := true; waiting; {
		select {
		case rc.restoring <- struct{}{}:
			waiting = false
		case <-time.After(time.Second):
			if err := peerGone(c); err != nil {
				return q.Volume, err
			}
		}
	}
	defer func() { <-rc.restoring }()
	start := time.Now()
	name := make([]byte, 8)
	rand.Read(name)
	tmp := rc.dir.volume(q.Volume).file(restorePrefix + hex.EncodeToString(name) + ".img")
	defer rc.cfg.FS.Remove(tmp)
	res, err := restore(rc.cfg.FS, rc.cfg.Dir, q.Volume, q.Point, tmp, func() error { return peerGone(c) })
	switch {
	case errors.Is(err, ErrPeerGone):
		return q.Volume, err
	case errors.Is(err, ErrNoVolume):
		return q.Volume, refuse(RefusedNoVolume, err)
	case errors.Is(err, ErrNotKept):
		return q.Volume, refuse(RefusedNotKept, err)
	case err != nil:
		return q.Volume, refuse(RefusedFailed, fmt.Errorf("receiver cannot rebuild the image: %w", err))
	}
	img, err := rc.cfg.FS.Open(tmp)
	if err != nil {
		return q.Volume, refuse(RefusedFailed, err)
	}
	defer img.Close()
	begin := binary.LittleEndian.AppendUint64(make([]byte, 0, restoreBeginSize), uint64(res.Size))
	if err := out.write(appendRecord(nil, StreamRestoreBegin, res.Transid, append(begin, make([]byte, 8)...))); err != nil {
		return q.Volume, err
	}
	piece := make([]byte, restorePiece)
	var rec []byte
	sent := uint64(0)
	send := func(p []byte, off int64) error {
		// Runs of blocks that are not all zeros, each a write sub-record.
		return vfs.DataRuns(p, func(i, j int) error {
			run := p[i:j]
			payload := make([]byte, blockrec.WriteSize(len(run)))
			blockrec.PutWrite(payload, uint64(off)+uint64(i), run)
			rec = appendRecord(rec[:0], StreamRestoreData, res.Transid, payload)
			sent += uint64(len(run))
			return out.write(rec)
		})
	}
	// Over the image's data only, in whole blocks: reading its holes would
	// fill memory with zeros for nothing.
	for off := int64(0); off < res.Size; {
		data, hole, ok, err := vfs.NextData(img, off, res.Size)
		if err != nil {
			return q.Volume, err
		}
		if !ok {
			break
		}
		hole = min((hole+4095)&^4095, res.Size)
		for off = data &^ 4095; off < hole; {
			p := piece[:min(restorePiece, hole-off)]
			if _, err := img.ReadAt(p, off); err != nil {
				return q.Volume, err
			}
			if err := send(p, off); err != nil {
				return q.Volume, err
			}
			off += int64(len(p))
		}
	}
	if err := out.write(appendRecord(nil, StreamRestoreEnd, res.Transid, binary.LittleEndian.AppendUint64(nil, sent))); err != nil {
		return q.Volume, err
	}
	rc.stats(q.Volume).restored(sent)
	klog.InfoS("Served a restore", "remote", c.RemoteAddr().String(), "volume", q.Volume, "transid", res.Transid,
		"size", res.Size, "sent", sent, "took", time.Since(start))
	return q.Volume, nil
}

// ErrPeerGone: the client of a request closed its connection, or the
// receiver did, before the answer was whole.
var ErrPeerGone = errors.New("sink: the client went away")

// peerGone says, without waiting, whether c was closed by its peer or by
// the receiver (Close). A client sends nothing after its request, so
// anything to read (an end of file, a TLS close_notify) means it is gone.
// A connection without a socket to peek at is never gone.
func peerGone(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPeerGone, err)
	}
	n, rerr := 0, error(nil)
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	})
	switch {
	case err != nil:
		return fmt.Errorf("%w: %v", ErrPeerGone, err)
	case rerr == unix.EAGAIN:
		return nil
	case rerr != nil:
		return fmt.Errorf("%w: %v", ErrPeerGone, rerr)
	case n == 0:
		return fmt.Errorf("%w: it closed the connection", ErrPeerGone)
	}
	return fmt.Errorf("%w: it sent more after its request", ErrPeerGone)
}

// restorePrefix names the receiver's images being served, in the volume's
// directory; one left by a receiver that died is removed when it starts.
const restorePrefix = "restore-"

// removeRestoreLeftovers removes the images of restores a receiver that
// died was serving.
func (d recvDir) removeRestoreLeftovers() {
	vols, err := d.fs.List(d.path)
	if err != nil {
		return
	}
	for _, v := range vols {
		if !ValidVolumeID(v) {
			continue
		}
		vd := d.volume(v)
		names, err := d.fs.List(vd.path)
		if err != nil {
			continue
		}
		for _, n := range names {
			if strings.HasPrefix(n, restorePrefix) {
				d.fs.Remove(vd.file(n))
			}
		}
	}
}

// Client reaches a receiver with requests: restores and pins.
type Client struct {
	// URL is tcp://host:port or tls://host:port.
	URL string
	// TLS is the client configuration for tls:// (its ServerName defaults
	// to the URL's host).
	TLS   *tls.Config
	Token []byte
}

// answer is a request's connection and the receiver's first answer.
type answer struct {
	c     net.Conn
	br    *bufio.Reader
	first journal.Record
	buf   []byte
	stop  func() bool // the close on the context's end
}

func (a *answer) close() {
	a.stop()
	a.c.Close()
}

// request sends the request q on stream id over a new connection, closed
// if ctx ends, and returns the receiver's first answer, which is not a
// refusal: a refusal is ErrNoVolume, ErrNotKept (naming what the receiver
// keeps), ErrAuthentication, ErrPinExists, ErrProto or ErrRefused, with
// the receiver's reason. The caller closes the answer.
func (cl *Client) request(ctx context.Context, id uint16, q Request) (*answer, error) {
	if !ValidVolumeID(q.Volume) || q.Name != "" && !ValidVolumeID(q.Name) {
		return nil, fmt.Errorf("%w: volume id %q, name %q", ErrProto, q.Volume, q.Name)
	}
	scheme, addr, err := ParseURL(cl.URL)
	if err != nil {
		return nil, err
	}
	c, err := dialURL(ctx, scheme, addr, cl.TLS)
	if err != nil {
		return nil, err
	}
	a := &answer{c: c, br: bufio.NewReaderSize(c, 64<<10), stop: context.AfterFunc(ctx, func() { c.Close() })}
	q.Token = cl.Token
	if _, err = c.Write(appendRecord(nil, id, 0, q.Encode())); err == nil {
		a.first, _, err = readRecord(a.br, &a.buf, MaxWireRecord)
	}
	r := a.first
	switch {
	case err != nil:
	case r.ID() == StreamRestoreRefused && len(r.Payload) >= 2:
		kind := refusedErrors[binary.LittleEndian.Uint16(r.Payload)]
		if kind == nil {
			kind = ErrRefused
		}
		err = fmt.Errorf("%w: %s", kind, strings.TrimPrefix(string(r.Payload[2:]), "sink: "))
	case r.ID() == StreamRefuse: // a receiver of version 1
		err = fmt.Errorf("%w: %s", ErrRefused, r.Payload)
	}
	if err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// Pin keeps point p of volume vol at the receiver under name until Unpin
// (see Pin), and returns the id pinned.
func (cl *Client) Pin(ctx context.Context, vol, name string, p Point) (uint64, error) {
	a, err := cl.request(ctx, StreamPinRequest, Request{Point: p, Volume: vol, Name: name})
	if err != nil {
		return 0, err
	}
	defer a.close()
	if a.first.ID() != StreamDone {
		return 0, fmt.Errorf("%w: answer of stream %#x to a pin", ErrProto, a.first.ID())
	}
	return a.first.Transid, nil
}

// Unpin lets the point pinned under name go (see Unpin).
func (cl *Client) Unpin(ctx context.Context, vol, name string) error {
	a, err := cl.request(ctx, StreamUnpinRequest, Request{Volume: vol, Name: name})
	if err != nil {
		return err
	}
	defer a.close()
	if a.first.ID() != StreamDone {
		return fmt.Errorf("%w: answer of stream %#x to an unpin", ErrProto, a.first.ID())
	}
	return nil
}

// RestoreFrom writes the image of volume vol at point p, as the receiver
// keeps it, into the file out (created or replaced): sparse, only the
// blocks that hold data are written. Refusals are as request says.
func (cl *Client) RestoreFrom(ctx context.Context, vol string, p Point, out string) (Restored, error) {
	a, err := cl.request(ctx, StreamRestoreRequest, Request{Point: p, Volume: vol})
	if err != nil {
		return Restored{}, err
	}
	defer a.close()
	r, br, buf := a.first, a.br, a.buf
	if r.ID() != StreamRestoreBegin || len(r.Payload) != restoreBeginSize {
		return Restored{}, fmt.Errorf("%w: answer of stream %#x to a restore request", ErrProto, r.ID())
	}
	res := Restored{Transid: r.Transid, Size: int64(binary.LittleEndian.Uint64(r.Payload))}
	if res.Size%4096 != 0 {
		return res, fmt.Errorf("%w: an image of %d bytes", ErrProto, res.Size)
	}
	// Into a file beside out, renamed over it once whole: a restore cut
	// short leaves nothing that looks like an image.
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
	if err != nil {
		return res, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name()) // gone already, once renamed
	}()
	if err := f.Truncate(res.Size); err != nil {
		return res, err
	}
	got := uint64(0)
	for {
		buf = buf[:0]
		r, _, err := readRecord(br, &buf, MaxWireRecord)
		if err != nil {
			return res, fmt.Errorf("restore of %s cut short: %w", vol, err)
		}
		if r.Transid != res.Transid {
			return res, fmt.Errorf("%w: record of id %d in a restore at %d", ErrProto, r.Transid, res.Transid)
		}
		switch r.ID() {
		case StreamRestoreData:
			_, err := blockrec.Decode(r.Payload, uint64(res.Size), func(op blockrec.Op) error {
				if op.Kind != blockrec.Write {
					return fmt.Errorf("%w: a restore carries writes only", ErrProto)
				}
				got += uint64(len(op.Data))
				_, err := f.WriteAt(op.Data, int64(op.Off))
				return err
			})
			if err != nil {
				return res, err
			}
		case StreamRestoreEnd:
			if len(r.Payload) != restoreEndSize || binary.LittleEndian.Uint64(r.Payload) != got {
				return res, fmt.Errorf("%w: restore ended with %d bytes received", ErrProto, got)
			}
			if err := f.Sync(); err != nil {
				return res, err
			}
			return res, os.Rename(f.Name(), out)
		default:
			return res, fmt.Errorf("%w: record of stream %#x in a restore", ErrProto, r.ID())
		}
	}
}
