package host_test

import (
	"context"
	"errors"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/host/hosttest"
	"github.com/jvol-io/jvol/internal/volume"
)

// A staged volume that another plugin still serves (one that kept it
// when a handover failed) is not served again here, nor unstaged, and
// its mounts are left alone: they are live, not stale.
func TestAVolumeServedElsewhereIsLeftAlone(t *testing.T) {
	fakes := hosttest.New()
	dir := t.TempDir()
	before, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := before.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	if err := before.StageVolume("v", host.Stage{StagingPath: staging, FSType: "ext4"}, nil); err != nil {
		t.Fatal(err)
	}
	defer before.UnstageVolume("v", staging)

	next, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(ctx); !errors.Is(err, host.ErrConflict) {
		t.Errorf("restore: %v, want ErrConflict", err)
	}
	if err := next.UnstageVolume("v", staging); !errors.Is(err, host.ErrConflict) {
		t.Errorf("unstage: %v, want ErrConflict", err)
	}
	if m := fakes.Mounter.MountsAt(staging); len(m) != 1 {
		t.Errorf("mounts at the staging path: %v, want the one the other plugin made", m)
	}
	if _, ok := before.Status("v"); !ok {
		t.Error("the plugin before does not serve the volume any more")
	}
}

// A staged volume that another plugin served when this one restored (the
// plugin before, stopping with no successor) is served by a later Restore
// once that plugin has let go of it; a Restore never serves one unstaged
// meanwhile.
func TestAVolumeServedElsewhereIsServedOnceFree(t *testing.T) {
	fakes := hosttest.New()
	dir := t.TempDir()
	before, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	staging := t.TempDir()
	for _, name := range []string{"v", "w"} {
		if _, err := before.Ensure(ctx, name, volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
			t.Fatal(err)
		}
		if err := before.StageVolume(name, host.Stage{StagingPath: filepath.Join(staging, name), FSType: "ext4"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	next, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(ctx); !errors.Is(err, host.ErrElsewhere) {
		t.Fatalf("restore: %v, want ErrElsewhere", err)
	}
	// The plugin before stops (its records stay), and w is unstaged.
	for _, name := range []string{"v", "w"} {
		if err := before.Release(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := before.UnstageVolume("w", filepath.Join(staging, "w")); err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(ctx); err != nil {
		t.Fatalf("restore once free: %v", err)
	}
	if _, ok := next.Status("v"); !ok {
		t.Error("v is not served once free")
	}
	if _, ok := next.Status("w"); ok {
		t.Error("w is served, though it was unstaged")
	}
}

// A stage already under way when Retire is called (it holds the volume's
// lock) is waited for: the volume it serves is handed over with the rest.
func TestRetireWaitsForAStageUnderWay(t *testing.T) {
	fakes := hosttest.New()
	n, err := host.New(host.Config{StateDir: t.TempDir(), OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Ensure(context.Background(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	unlock := n.Lock("v") // a NodeStageVolume past its check of Retired
	retired := make(chan []string, 1)
	go func() { retired <- n.Retire() }()
	for !n.Retired() {
		runtime.Gosched()
	}
	staging := t.TempDir()
	if err := n.StageVolume("v", host.Stage{StagingPath: staging, FSType: "ext4"}, nil); err != nil {
		t.Fatal(err)
	}
	unlock()
	if names := <-retired; len(names) != 1 || names[0] != "v" {
		t.Errorf("Retire returned %v, want the volume staged meanwhile", names)
	}
	n.Unretire()
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Error(err)
	}
}
