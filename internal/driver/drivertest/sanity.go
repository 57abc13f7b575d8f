// Package drivertest holds what tests of the driver in more than one
// package share: the csi-sanity run, on fakes (internal/driver) and on the
// machine (test/).
package drivertest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// Sanity runs the CSI spec's conformance suite against the driver at
// endpoint, which keeps its state in stateDir, with target and staging
// paths in dir; then checks that every volume the suite made is gone again.
func Sanity(t *testing.T, endpoint, dir, stateDir string) {
	t.Helper()
	cfg := sanity.NewTestConfig()
	cfg.Address = endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 96 << 20
	cfg.IdempotentCount = 3
	cfg.TestVolumeParameters = map[string]string{"journalSize": "64Mi", "fifoSize": "4Mi", "commitInterval": "2s"}
	sanity.Test(t, cfg)
	left, _ := os.ReadDir(filepath.Join(stateDir, "volumes"))
	for _, e := range left {
		t.Errorf("volume left behind: %s", e.Name())
	}
}
