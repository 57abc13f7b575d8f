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
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/blockrec"
)

// Restores over the network (protocol version 2): a client opens a
// connection with a restore request instead of a hello; the receiver
// rebuilds the image at the point asked into a file of its own, sends the
// blocks that hold data and ends; the client writes them into a sparse
// file. A session carries one restore.
const (
	StreamRestoreRequest = 0x27 // client: the image of a volume at a point
	StreamRestoreBegin   = 0x28 // receiver: the image after transid follows
	StreamRestoreData    = 0x29 // receiver: one block-write sub-record of it
	StreamRestoreEnd     = 0x2A // receiver: that was all of it
	StreamRestoreRefused = 0x2B // receiver: why not (a code and a reason)
)

// RestoreVersion is the protocol version that brought restores; a stream
// session is unchanged and its hello still says ProtoVersion.
const RestoreVersion = 2

// RestoreRequest asks for an image.
//
//	0   4  magic "JVSK"
//	4   2  version (2)
//	6   2  flags: bit 0 latest (transid is then 0); others 0
//	8   8  transid: the image after every record up to it
//	16  2  volume id length n (1..253)
//	18  2  token length m (0..4096)
//	20  4  zero
//	24  n  volume id
//	24+n m token
type RestoreRequest struct {
	Point
	Volume string
	Token  []byte
}

const restoreRequestFixed = 24

// FlagLatest is RestoreRequest's flag for the newest point.
const FlagLatest = 1

// Encode returns the request's payload.
func (q *RestoreRequest) Encode() []byte {
	b := make([]byte, restoreRequestFixed+len(q.Volume)+len(q.Token))
	copy(b, ProtoMagic)
	binary.LittleEndian.PutUint16(b[4:], RestoreVersion)
	if q.Latest {
		binary.LittleEndian.PutUint16(b[6:], FlagLatest)
	}
	binary.LittleEndian.PutUint64(b[8:], q.Transid)
	binary.LittleEndian.PutUint16(b[16:], uint16(len(q.Volume)))
	binary.LittleEndian.PutUint16(b[18:], uint16(len(q.Token)))
	copy(b[restoreRequestFixed:], q.Volume)
	copy(b[restoreRequestFixed+len(q.Volume):], q.Token)
	return b
}

// DecodeRestoreRequest decodes and checks a request's payload.
func DecodeRestoreRequest(b []byte) (RestoreRequest, error) {
	if len(b) < restoreRequestFixed || string(b[:4]) != ProtoMagic {
		return RestoreRequest{}, fmt.Errorf("%w: not a restore request", ErrProto)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != RestoreVersion {
		return RestoreRequest{}, fmt.Errorf("%w %d of a restore request (this jvol speaks %d)", ErrVersion, v, RestoreVersion)
	}
	flags := binary.LittleEndian.Uint16(b[6:])
	n := int(binary.LittleEndian.Uint16(b[16:]))
	m := int(binary.LittleEndian.Uint16(b[18:]))
	q := RestoreRequest{Point: Point{Latest: flags&FlagLatest != 0, Transid: binary.LittleEndian.Uint64(b[8:])}}
	switch {
	case flags&^FlagLatest != 0 || binary.LittleEndian.Uint32(b[20:]) != 0:
		return RestoreRequest{}, fmt.Errorf("%w: restore request flags %#x", ErrProto, flags)
	case n == 0 || n > MaxVolumeID || m > MaxToken || len(b) != restoreRequestFixed+n+m:
		return RestoreRequest{}, fmt.Errorf("%w: restore request of %d bytes with a %d-byte volume id and a %d-byte token", ErrProto, len(b), n, m)
	case q.Latest && q.Transid != 0:
		return RestoreRequest{}, fmt.Errorf("%w: a restore of the latest point with transid %d", ErrProto, q.Transid)
	}
	q.Volume = string(b[restoreRequestFixed : restoreRequestFixed+n])
	if !ValidVolumeID(q.Volume) {
		return RestoreRequest{}, fmt.Errorf("%w: volume id %q", ErrProto, q.Volume)
	}
	q.Token = b[restoreRequestFixed+n:]
	return q, nil
}

// Why a receiver refuses a restore: the code of a StreamRestoreRefused
// record (u16), before its UTF-8 reason.
const (
	RefusedBadRequest     = 1 // a request it cannot read
	RefusedAuthentication = 2 // a wrong token
	RefusedNoVolume       = 3 // it keeps no stream of the volume
	RefusedNotKept        = 4 // not a point it keeps (the reason names those it does)
	RefusedFailed         = 5 // it could not rebuild the image
)

// Errors of RestoreFrom, as the receiver's refusal says; ErrNotKept too.
var (
	ErrNoVolume       = errors.New("sink: the receiver keeps no stream of the volume")
	ErrAuthentication = errors.New("sink: the receiver refused the credentials")
)

var refusedErrors = map[uint16]error{
	RefusedBadRequest: ErrProto, RefusedAuthentication: ErrAuthentication, RefusedNoVolume: ErrNoVolume,
	RefusedNotKept: ErrNotKept, RefusedFailed: ErrRefused,
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

// restorePiece is how much of the image one data record carries at most.
const restorePiece = 1 << 20

// serveRestore answers a restore request: an image of the volume at the
// point asked, only its blocks that hold data.
func (rc *Receiver) serveRestore(c net.Conn, payload []byte) (string, error) {
	out := &ackWriter{c: c}
	refuse := func(code uint16, err error) error {
		p := binary.LittleEndian.AppendUint16(nil, code)
		out.write(appendRecord(nil, StreamRestoreRefused, 0, append(p, err.Error()...)))
		return restoreRefusal{code, err}
	}
	q, err := DecodeRestoreRequest(payload)
	if err != nil {
		return "", refuse(RefusedBadRequest, err)
	}
	if len(rc.cfg.Token) > 0 && subtle.ConstantTimeCompare(q.Token, rc.cfg.Token) != 1 {
		return q.Volume, refuse(RefusedAuthentication, errors.New("authentication failed: wrong token"))
	}
	c.SetReadDeadline(time.Time{})
	start := time.Now()
	name := make([]byte, 8)
	rand.Read(name)
	tmp := rc.dir.volume(q.Volume).file(restorePrefix + hex.EncodeToString(name) + ".img")
	defer rc.cfg.FS.Remove(tmp)
	res, err := restore(rc.cfg.FS, rc.cfg.Dir, q.Volume, q.Point, tmp)
	switch {
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
	for off := int64(0); off < res.Size; off += restorePiece {
		p := piece[:min(restorePiece, res.Size-off)]
		if _, err := img.ReadAt(p, off); err != nil {
			return q.Volume, err
		}
		// Runs of blocks that are not all zeros, each a write sub-record.
		for i := 0; i < len(p); {
			for i < len(p) && zero(p[i:min(i+4096, len(p))]) {
				i += 4096
			}
			j := i
			for j < len(p) && !zero(p[j:min(j+4096, len(p))]) {
				j += 4096
			}
			if j > i {
				run := p[i:min(j, len(p))]
				payload := make([]byte, blockrec.WriteSize(len(run)))
				blockrec.PutWrite(payload, uint64(off)+uint64(i), run)
				rec = appendRecord(rec[:0], StreamRestoreData, res.Transid, payload)
				if err := out.write(rec); err != nil {
					return q.Volume, err
				}
				sent += uint64(len(run))
			}
			i = j
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

func zero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// RestoreClient reaches a receiver to restore from.
type RestoreClient struct {
	// URL is tcp://host:port or tls://host:port.
	URL string
	// TLS is the client configuration for tls:// (its ServerName defaults
	// to the URL's host).
	TLS   *tls.Config
	Token []byte
}

// RestoreFrom writes the image of volume vol at point p, as the receiver
// at rc.URL keeps it, into the file out (created or replaced): sparse,
// only the blocks that hold data are written. A refusal is ErrNoVolume,
// ErrNotKept (naming what the receiver keeps), ErrAuthentication, ErrProto
// or ErrRefused, with the receiver's reason.
func (rc *RestoreClient) RestoreFrom(ctx context.Context, vol string, p Point, out string) (Restored, error) {
	if !ValidVolumeID(vol) {
		return Restored{}, fmt.Errorf("%w: volume id %q", ErrProto, vol)
	}
	scheme, addr, err := ParseURL(rc.URL)
	if err != nil {
		return Restored{}, err
	}
	c, err := dialURL(ctx, scheme, addr, rc.TLS)
	if err != nil {
		return Restored{}, err
	}
	defer context.AfterFunc(ctx, func() { c.Close() })()
	defer c.Close()
	q := RestoreRequest{Point: p, Volume: vol, Token: rc.Token}
	if _, err := c.Write(appendRecord(nil, StreamRestoreRequest, 0, q.Encode())); err != nil {
		return Restored{}, err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	var buf []byte
	r, _, err := readRecord(br, &buf, MaxWireRecord)
	if err != nil {
		return Restored{}, err
	}
	switch {
	case r.ID() == StreamRestoreRefused && len(r.Payload) >= 2:
		code := binary.LittleEndian.Uint16(r.Payload)
		kind := refusedErrors[code]
		if kind == nil {
			kind = ErrRefused
		}
		return Restored{}, fmt.Errorf("%w: %s", kind, strings.TrimPrefix(string(r.Payload[2:]), "sink: "))
	case r.ID() == StreamRefuse: // a receiver of version 1
		return Restored{}, fmt.Errorf("%w: %s", ErrRefused, r.Payload)
	case r.ID() != StreamRestoreBegin || len(r.Payload) != restoreBeginSize:
		return Restored{}, fmt.Errorf("%w: answer of stream %#x to a restore request", ErrProto, r.ID())
	}
	res := Restored{Transid: r.Transid, Size: int64(binary.LittleEndian.Uint64(r.Payload))}
	if res.Size%4096 != 0 {
		return res, fmt.Errorf("%w: an image of %d bytes", ErrProto, res.Size)
	}
	f, err := os.OpenFile(out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return res, err
	}
	defer f.Close()
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
			return res, f.Sync()
		default:
			return res, fmt.Errorf("%w: record of stream %#x in a restore", ErrProto, r.ID())
		}
	}
}
