package faultfs

import (
	"bytes"
	"io"

	"github.com/jvol-io/jvol/internal/vfs"
)

// SectorModel is the oracle of crash tests: it knows, for every sector of a
// file or device, what it held at the last sync and what was written to it
// since. After a power cut or a crash each sector must hold one of those:
// a write is atomic per sector and no more, and nothing synced is lost.
type SectorModel struct {
	synced [][]byte
	later  [][][]byte
}

// NewSectorModel models size bytes of zeros, all synced.
func NewSectorModel(size int64) *SectorModel {
	m := &SectorModel{synced: make([][]byte, size/SectorSize), later: make([][][]byte, size/SectorSize)}
	zero := make([]byte, SectorSize)
	for i := range m.synced {
		m.synced[i] = zero
	}
	return m
}

// Wrote records a write of p (whole sectors) at off. Record a write before
// its outcome is known: a write that failed may still have landed.
func (m *SectorModel) Wrote(p []byte, off int64) {
	for k := int64(0); k < int64(len(p)); k += SectorSize {
		i := (off + k) / SectorSize
		m.later[i] = append(m.later[i], bytes.Clone(p[k:k+SectorSize]))
	}
}

// Synced records a completed sync: the last write to each sector stays.
func (m *SectorModel) Synced() {
	for i, l := range m.later {
		if len(l) > 0 {
			m.synced[i], m.later[i] = l[len(l)-1], nil
		}
	}
}

// Check reads r whole and returns the sectors that hold neither their
// synced data nor a later write. Then what it read becomes the synced state:
// the crash has chosen among the candidates.
func (m *SectorModel) Check(r io.ReaderAt) (bad []int, err error) {
	buf := vfs.AlignedBuffer(1 << 20) // direct I/O, where r needs it
	size := int64(len(m.synced)) * SectorSize
	for off := int64(0); off < size; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), size-off)]
		if _, err := r.ReadAt(b, off); err != nil {
			return bad, err
		}
		for k := 0; k < len(b); k += SectorSize {
			i := int(off/SectorSize) + k/SectorSize
			got := b[k : k+SectorSize]
			ok := bytes.Equal(got, m.synced[i])
			for _, l := range m.later[i] {
				ok = ok || bytes.Equal(got, l)
			}
			if !ok {
				bad = append(bad, i)
			}
			m.synced[i], m.later[i] = bytes.Clone(got), nil
		}
	}
	return bad, nil
}
