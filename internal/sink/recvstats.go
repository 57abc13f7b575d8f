package sink

import (
	"errors"
	"maps"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jvol-io/jvol/internal/hist"
)

// Reasons a receiver cuts a sender off, as its figures count them.
const (
	CutAuthentication = "authentication" // a wrong token
	CutProtocol       = "protocol"       // a stream the receiver refuses
	CutStorage        = "storage"        // the receiver cannot store or sync it
	CutConnection     = "connection"     // the connection failed (a timeout, say)
)

// CutReasons are every reason, in the order VolumeStats.CutOff has them.
var CutReasons = [...]string{CutAuthentication, CutProtocol, CutStorage, CutConnection}

// recvStats are one volume's figures at the receiver: atomics, updated on
// the stream's path.
type recvStats struct {
	stored, segments, synced atomic.Uint64
	restores, restoredBytes  atomic.Uint64
	syncs                    hist.Durations
	cut                      [len(CutReasons)]atomic.Uint64
}

// VolumeStats are a volume's figures at the receiver since it started.
type VolumeStats struct {
	Volume    string
	Connected bool
	// StoredBytes of stream stored; Segments begun; SyncedTransid, the
	// last id synced (acknowledged, in full duplex).
	StoredBytes, Segments, SyncedTransid uint64
	// Syncs are how long the segment's syncs took.
	Syncs hist.Snapshot
	// CutOff counts senders cut off, by reason (CutReasons).
	CutOff [len(CutReasons)]uint64
	// Restores served over the network, and the bytes of data they sent.
	Restores, RestoredBytes uint64
}

// stats returns the figures of vol, made on first use.
func (rc *Receiver) stats(vol string) *recvStats {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	st := rc.figures[vol]
	if st == nil {
		st = &recvStats{}
		rc.figures[vol] = st
	}
	return st
}

// cutOffStats returns the figures a cut-off of a sender that named vol
// counts in: vol's if the receiver keeps it or has served it, else those
// of "" (any peer can name any volume: its figures must not grow a label
// per name).
func (rc *Receiver) cutOffStats(vol string) *recvStats {
	rc.mu.Lock()
	_, known := rc.figures[vol]
	rc.mu.Unlock()
	if !known && ValidVolumeID(vol) {
		_, err := rc.dir.fs.List(rc.dir.volume(vol).path)
		known = err == nil
	}
	if !known {
		vol = ""
	}
	return rc.stats(vol)
}

// Stats returns the figures of every volume that has connected since the
// receiver started, by name.
func (rc *Receiver) Stats() []VolumeStats {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var all []VolumeStats
	for _, vol := range slices.Sorted(maps.Keys(rc.figures)) {
		st := rc.figures[vol]
		v := VolumeStats{Volume: vol, Connected: rc.vols[vol] != nil, StoredBytes: st.stored.Load(), Segments: st.segments.Load(),
			SyncedTransid: st.synced.Load(), Syncs: st.syncs.Snapshot(), Restores: st.restores.Load(), RestoredBytes: st.restoredBytes.Load()}
		for i := range v.CutOff {
			v.CutOff[i] = st.cut[i].Load()
		}
		all = append(all, v)
	}
	return all
}

// cutOff counts a sender of vol cut off for err.
func (st *recvStats) cutOff(err error) {
	reason := CutProtocol
	var pe peerError
	var ne net.Error
	switch {
	case errors.As(err, &pe):
		reason = pe.reason
	case errors.Is(err, ErrProto), errors.Is(err, ErrVersion):
	case errors.As(err, &ne):
		reason = CutConnection
	}
	st.cut[slices.Index(CutReasons[:], reason)].Add(1)
}

// timeSync runs sync, counting how long it took.
func (st *recvStats) timeSync(sync func() error) error {
	start := time.Now()
	err := sync()
	st.syncs.Observe(time.Since(start))
	return err
}

// restored counts a restore served, which sent n bytes of data.
func (st *recvStats) restored(n uint64) {
	st.restores.Add(1)
	st.restoredBytes.Add(n)
}
