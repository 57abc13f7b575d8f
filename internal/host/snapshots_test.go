package host

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/jvol-io/jvol/internal/volume"
)

// write writes b at off into the detached volume name, durably.
func write(t *testing.T, n *Volumes, name string, b []byte, off int64) {
	t.Helper()
	d, err := volume.OpenDir(n.Path(name), volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Volume.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := d.Volume.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// read returns the detached volume's whole content.
func read(t *testing.T, n *Volumes, name string) []byte {
	t.Helper()
	d, err := volume.OpenDir(n.Path(name), volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	b := make([]byte, d.Volume.Size())
	if _, err := d.Volume.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// A snapshot holds the volume as it was when taken, outlives it, and
// makes volumes; a clone is a copy of a volume; both are independent of
// their sources.
func TestSnapshotsAndClones(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	const mib = 1 << 20
	o := volume.Options{Size: 8 * mib, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, true); err != nil {
		t.Fatal(err)
	}
	first := bytes.Repeat([]byte{1}, mib)
	write(t, n, "v", first, 2*mib)
	s, err := n.TakeSnapshot(ctx, "v", "s")
	if err != nil {
		t.Fatal(err)
	}
	if s.Source != "v" || s.Size != 8*mib || s.Transid == 0 || s.TakenAt.IsZero() {
		t.Errorf("snapshot %+v", s)
	}
	if again, err := n.TakeSnapshot(ctx, "v", "s"); err != nil || again != s {
		t.Errorf("taken again: %+v %v, want %+v", again, err, s)
	}
	if got, err := n.Snapshot("s"); err != nil || got != s {
		t.Errorf("Snapshot: %+v %v", got, err)
	}
	want := read(t, n, "v")
	write(t, n, "v", bytes.Repeat([]byte{2}, mib), 2*mib)

	// A clone has the source as it is now.
	if size, err := n.EnsureFrom(ctx, "clone", "v", volume.Options{JournalSize: volume.MinJournalSize}); err != nil || size != 8*mib {
		t.Fatalf("clone: %d %v", size, err)
	}
	if !bytes.Equal(read(t, n, "clone"), read(t, n, "v")) {
		t.Error("the clone differs from its source")
	}
	if left, _ := os.ReadDir(filepath.Dir(filepath.Dir(n.SnapshotImage("x")))); len(left) != 1 {
		t.Errorf("snapshots directory holds %d entries, want the snapshot alone", len(left))
	}

	// The source goes; a volume from the snapshot, larger, has its data.
	if err := n.Remove("v"); err != nil {
		t.Fatal(err)
	}
	o.Size, o.From = 12*mib, n.SnapshotImage("s")
	if _, err := n.Ensure(ctx, "restored", o, true); err != nil {
		t.Fatal(err)
	}
	got := read(t, n, "restored")
	if !bytes.Equal(got[:8*mib], want) || bytes.Count(got[8*mib:], []byte{0}) != 4*mib {
		t.Error("the volume made from the snapshot does not hold the snapshot's data")
	}

	if _, err := n.EnsureFrom(ctx, "orphan", "v", volume.Options{JournalSize: volume.MinJournalSize}); !errors.Is(err, ErrNotFound) || n.Exists("orphan") {
		t.Errorf("clone of a volume that is gone: %v", err)
	}
	if _, err := n.TakeSnapshot(ctx, "v", "s2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("snapshot of a volume that is gone: %v", err)
	}
	if _, err := n.Snapshot("s2"); !errors.Is(err, ErrNoSnapshot) {
		t.Errorf("the failed snapshot left %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := n.RemoveSnapshot("s"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Dir(n.SnapshotImage("s"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("removed snapshot: %v", err)
	}
}

// A snapshot whose taking died (an image, no snapshot.json) is no
// snapshot, and is taken again whole.
func TestSnapshotTakenAgainAfterACrash(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	if _, err := n.Ensure(ctx, "v", volume.Options{Size: 4 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	write(t, n, "v", bytes.Repeat([]byte{5}, 4096), 0)
	dir := filepath.Dir(n.SnapshotImage("s"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(n.SnapshotImage("s"), []byte("half a copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Snapshot("s"); !errors.Is(err, ErrNoSnapshot) {
		t.Fatalf("half a snapshot: %v", err)
	}
	s, err := n.TakeSnapshot(ctx, "v", "s")
	if err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(n.SnapshotImage("s"))
	if err != nil || int64(len(img)) != s.Size || img[0] != 5 || img[4096] != 0 {
		t.Errorf("image taken again: %d bytes, %v", len(img), err)
	}
}
