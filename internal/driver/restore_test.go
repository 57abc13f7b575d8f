package driver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/host/hosttest"
	"github.com/jvol-io/jvol/internal/volume"
)

// TestRestoreWhenFree: a staged volume the plugin before still served
// when this one started (it was stopping, with no successor) is served
// here once that plugin lets go of it.
func TestRestoreWhenFree(t *testing.T) {
	fakes := hosttest.New()
	dir := t.TempDir()
	before, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := before.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	if err := before.StageVolume("v", host.Stage{StagingPath: t.TempDir(), FSType: "ext4"}, nil); err != nil {
		t.Fatal(err)
	}
	next, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(ctx); !errors.Is(err, host.ErrElsewhere) {
		t.Fatalf("restore: %v, want ErrElsewhere", err)
	}
	defer func(d time.Duration) { RestoreRetry = d }(RestoreRetry)
	RestoreRetry = time.Millisecond
	done := make(chan struct{})
	go func() {
		restoreWhenFree(ctx, next)
		close(done)
	}()
	if err := before.Release("v"); err != nil { // the plugin before exits
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("restoreWhenFree did not end")
	}
	if _, ok := next.Status("v"); !ok {
		t.Error("v is not served once the plugin before let go of it")
	}
}

// TestRestoreWhenFreeEndsWithItsContext: a volume that stays served
// elsewhere is asked for until the plugin stops.
func TestRestoreWhenFreeEndsWithItsContext(t *testing.T) {
	fakes := hosttest.New()
	dir := t.TempDir()
	before, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := before.Ensure(t.Context(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	if err := before.StageVolume("v", host.Stage{StagingPath: t.TempDir(), FSType: "ext4"}, nil); err != nil {
		t.Fatal(err)
	}
	defer before.Release("v")
	next, err := host.New(host.Config{StateDir: dir, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { RestoreRetry = d }(RestoreRetry)
	RestoreRetry = time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		restoreWhenFree(ctx, next)
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("restoreWhenFree did not end with its context")
	}
	if _, ok := next.Status("v"); ok {
		t.Error("v is served here while the plugin before serves it")
	}
}
