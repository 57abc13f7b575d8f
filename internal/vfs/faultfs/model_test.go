package faultfs

import (
	"bytes"
	"testing"
)

func TestSectorModelTellsLostFromTornWrites(t *testing.T) {
	f := New(4 * SectorSize)
	m := NewSectorModel(4 * SectorSize)
	write := func(b byte, off int64) {
		p := bytes.Repeat([]byte{b}, 2*SectorSize)
		m.Wrote(p, off)
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	write(1, 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	m.Synced()
	write(2, SectorSize) // unsynced, over sectors 1 and 2
	cut := f.PowerCut(func(off int64) bool { return off == SectorSize })
	if bad, err := m.Check(cut); err != nil || len(bad) != 0 {
		t.Fatalf("a torn write taken for a loss: %v %v", bad, err)
	}
	// The check took what the cut left as synced; now sector 0, synced as
	// 1s, reads as zeros: a lost write.
	if _, err := cut.WriteAt(make([]byte, SectorSize), 0); err != nil {
		t.Fatal(err)
	}
	if bad, err := m.Check(cut); err != nil || len(bad) != 1 || bad[0] != 0 {
		t.Fatalf("bad %v, err %v; want sector 0", bad, err)
	}
}
