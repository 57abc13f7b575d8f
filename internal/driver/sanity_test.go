package driver

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/jvol-io/jvol/internal/driver/drivertest"
	"github.com/jvol-io/jvol/internal/host/hosttest"
)

// TestSanityOnFakes runs the CSI spec's conformance suite against a
// standalone driver in this process, on fake devices and mounts: every RPC
// with real volumes and journals, and no root needed. test/'s
// TestCSISanity runs it on the real ones.
func TestSanityOnFakes(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		Mode:     ModeStandalone,
		Endpoint: "unix://" + filepath.Join(dir, "csi.sock"),
		NodeID:   "node-1",
		StateDir: filepath.Join(dir, "state"),
		OS:       hosttest.OS(),
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	drivertest.Sanity(t, cfg.Endpoint, dir, cfg.StateDir)
}
