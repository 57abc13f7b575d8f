// Package drivertest holds what tests of the driver in more than one
// package share: the csi-sanity run, on fakes (internal/driver) and on the
// machine (test/).
package drivertest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// Sanity runs the CSI spec's conformance suite against the driver at
// endpoint, which keeps its state in stateDir, with target and staging
// paths in dir; then checks that every volume the suite made is gone again.
func Sanity(t *testing.T, endpoint, dir, stateDir string) {
	t.Helper()
	cfg := sanity.NewTestConfig()
	// csi-test's Connect (v5.4.0) waits for a change from the state it read
	// last; if the connection turns ready just after it read "connecting",
	// it waits for a minute and fails. Its unix dialer connects at once, so
	// the window is open whenever a CPU is slow to come: dial through a
	// passthrough address instead (Connect then adds no dialer of its own),
	// with a dialer that holds "connecting" long enough to be seen.
	cfg.Address = "passthrough:///" + strings.TrimPrefix(endpoint, "unix://")
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(func(ctx context.Context, path string) (net.Conn, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}))
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
