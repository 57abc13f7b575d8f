package volume

import (
	"math/rand/v2"
	"testing"

	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

// A power cut at any step of WriteMeta leaves volume.json the old one or
// the new one, whole; once WriteMeta has returned, the new one.
func TestWriteMetaSurvivesAPowerCutAtEveryStep(t *testing.T) {
	old := Meta{Version: MetaVersion, Name: "v", Size: 1 << 20, JournalSize: MinJournalSize, CommitInterval: "1s"}
	next := old
	next.Size, next.CommitInterval = 2<<20, "2s"
	rng := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		name string
		keep func(off int64) bool
	}{
		{"a power cut that loses every unsynced write", nil},
		{"a power cut that keeps every unsynced write", func(int64) bool { return true }},
		{"a power cut that tears unsynced writes sector by sector", faultfs.TearRandomly(rng)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := faultfs.NewFS()
			if err := fsys.MkdirAll("/vol"); err != nil {
				t.Fatal(err)
			}
			if err := writeMeta(fsys, "/vol", old); err != nil {
				t.Fatal(err)
			}
			var cuts []*faultfs.FS
			fsys.After = func() { cuts = append(cuts, fsys.PowerCut(c.keep)) }
			if err := writeMeta(fsys, "/vol", next); err != nil {
				t.Fatal(err)
			}
			fsys.After = nil
			if len(cuts) < 4 { // write, sync, rename, directory sync
				t.Fatalf("only %d steps", len(cuts))
			}
			for i, cut := range cuts {
				m, err := readMeta(cut, "/vol")
				if err != nil || m != old && m != next {
					t.Fatalf("power cut after step %d: %+v, %v; want the old or the new metadata", i+1, m, err)
				}
			}
			if m, err := readMeta(fsys.PowerCut(c.keep), "/vol"); err != nil || m != next {
				t.Fatalf("power cut after WriteMeta returned: %+v, %v; want the new metadata", m, err)
			}
		})
	}
}
