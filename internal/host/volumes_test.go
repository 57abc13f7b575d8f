package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/vfs/vfstest"
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

// A thick volume takes its size off what is available at once, and
// writing into it takes nothing more; a thin one takes only its journal,
// then what is written into it. On a file system of its own (tmpfs):
// other tests write on the shared one meanwhile.
func TestAvailableCountsThickVolumesWhole(t *testing.T) {
	n, err := New(Config{StateDir: vfstest.SmallFS(t, 3<<30)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const size, written, slack = 1 << 30, 64 << 20, 1 << 20
	for _, c := range []struct {
		p                 volume.Provisioning
		made, whenWritten int64 // what the volume takes off
	}{
		{volume.Thick, size + volume.MinJournalSize, size + volume.MinJournalSize},
		{volume.Thin, volume.MinJournalSize, volume.MinJournalSize + written},
	} {
		before, err := n.Available()
		if err != nil {
			t.Fatal(err)
		}
		name := string(c.p)
		if _, err := n.Ensure(ctx, name, volume.Options{Size: size, JournalSize: volume.MinJournalSize, Provisioning: c.p}, true); err != nil {
			t.Fatal(err)
		}
		made, err := n.Available()
		if err != nil {
			t.Fatal(err)
		}
		if d := before - made; d < c.made-slack || d > c.made+slack {
			t.Errorf("a %s volume of %d bytes took %d off, want %d", c.p, size, d, c.made)
		}
		f, err := os.OpenFile(volume.Layout(n.Path(name)).Data(), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(make([]byte, written), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		after, err := n.Available()
		if err != nil {
			t.Fatal(err)
		}
		if d := before - after; d < c.whenWritten-slack || d > c.whenWritten+slack {
			t.Errorf("with %d bytes written, a %s volume took %d off, want %d", written, c.p, d, c.whenWritten)
		}
	}
}

// A volume is not made, nor grown, past what is available.
func TestEnsureRefusesWhatTheDiskCannotGive(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	avail, err := n.Available()
	if err != nil {
		t.Fatal(err)
	}
	huge := (avail + 1<<30) &^ (1<<20 - 1)
	if _, err := n.Ensure(ctx, "big", volume.Options{Size: huge, JournalSize: volume.MinJournalSize}, true); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("a volume of %d bytes with %d available: %v, want ENOSPC", huge, avail, err)
	}
	if n.Exists("big") {
		t.Error("made anyway")
	}
	o := volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, true); err != nil {
		t.Fatal(err)
	}
	o.Size = huge
	if size, err := n.Ensure(ctx, "v", o, false); !errors.Is(err, syscall.ENOSPC) || size != 0 {
		t.Errorf("growing to %d bytes: %d, %v; want ENOSPC", huge, size, err)
	}
	if size, err := n.Size("v"); err != nil || size != 8<<20 {
		t.Errorf("size after the refused growth: %d, %v", size, err)
	}
}
