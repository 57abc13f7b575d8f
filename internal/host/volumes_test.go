package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/volume"
)

func newNode(t *testing.T) *Volumes {
	t.Helper()
	n, err := New(Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A volume that was made once is never made again empty: its images being
// gone (a disk not mounted, a wrong host path) is an error.
func TestEnsureDoesNotRemakeAMissingVolume(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	o := volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, false); !errors.Is(err, ErrMissing) {
		t.Fatalf("got %v, want ErrMissing", err)
	}
	if n.Exists("v") {
		t.Fatal("made anyway")
	}
	if size, err := n.Ensure(ctx, "v", o, true); err != nil || size != 8<<20 {
		t.Fatalf("create: %d %v", size, err)
	}
	o.Size = 16 << 20
	if size, err := n.Ensure(ctx, "v", o, false); err != nil || size != 16<<20 {
		t.Fatalf("grow: %d %v", size, err)
	}
}

func TestEnsureRecordsEngineSettingsForTheNextAttach(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	o := volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, true); err != nil {
		t.Fatal(err)
	}
	o.FIFOSize, o.CommitInterval = 4<<20, 30*time.Second
	if _, err := n.Ensure(ctx, "v", o, false); err != nil {
		t.Fatal(err)
	}
	m, err := volume.ReadMeta(n.Path("v"))
	if err != nil || m.FIFOSize != 4<<20 || m.CommitInterval != "30s" {
		t.Errorf("metadata %+v %v", m, err)
	}
}

func TestEnsureStartsAnInterruptedCreateOver(t *testing.T) {
	n := newNode(t)
	dir := n.Path("v")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A create that died after the images and before the metadata file.
	for _, f := range []string{volume.DataFile, volume.JournalFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Ensure(context.Background(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
}

// A volume recorded as staged but not served (it could not be served again
// after a restart) can still be unstaged, and then removed.
func TestUnstageOfAVolumeNotServedAgain(t *testing.T) {
	n := newNode(t)
	if _, err := n.Ensure(context.Background(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	if err := n.writeStage("v", Stage{StagingPath: staging, Block: true}); err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("v"); !errors.Is(err, ErrStaged) {
		t.Fatalf("remove while recorded staged: %v", err)
	}
	if err := n.UnstageVolume("v", "/elsewhere"); !errors.Is(err, ErrConflict) {
		t.Errorf("unstage at another path: %v", err)
	}
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("v"); err != nil {
		t.Fatal(err)
	}
	if n.Exists("v") {
		t.Error("still there")
	}
}

// Regression: a volume recorded as staged whose serving again failed at the
// last restart, staged again by the kubelet, lost its publishes.
func TestStageServesARecordedVolumeAgain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches through FUSE and a loop device")
	}
	n := newNode(t)
	ctx := context.Background()
	if _, err := n.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging, target := t.TempDir(), filepath.Join(t.TempDir(), "dev")
	rec := Stage{StagingPath: staging, Block: true, Publishes: map[string]Publish{target: {}}}
	if err := n.writeStage("v", rec); err != nil {
		t.Fatal(err)
	}
	if err := n.StageVolume("v", Stage{StagingPath: staging, Block: true}, nil); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.UnpublishVolume("v", target); err != nil {
			t.Error(err)
		}
		if err := n.UnstageVolume("v", staging); err != nil {
			t.Error(err)
		}
	}()
	st, ok := n.Staged("v")
	if !ok || len(st.Publishes) != 1 {
		t.Fatalf("staged %v: %+v", ok, st)
	}
	if mounted, err := n.os.Mounter.IsMountPoint(target); err != nil || !mounted {
		t.Errorf("publish target not served again: %v %v", mounted, err)
	}
}
