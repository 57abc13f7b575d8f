package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
)

// standalone is a running `jvol standalone`.
type standalone struct {
	cmd      *exec.Cmd
	endpoint string
	stderr   *syncBuffer
}

// startStandalone runs `jvol standalone` on stateDir and waits until it
// serves its CSI socket.
func startStandalone(t *testing.T, stateDir, sock string) *standalone {
	t.Helper()
	s := &standalone{endpoint: "unix://" + sock, stderr: &syncBuffer{}}
	s.cmd = exec.Command(jvolBin, "standalone", "--endpoint", s.endpoint, "--state-dir", stateDir, "--node-id", "node-1", "-v", "4")
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !s.stderr.waitFor("Serving CSI", 2*time.Minute) {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		t.Fatalf("jvol standalone did not start:\n%s", s.stderr)
	}
	return s
}

// stop stops it with SIGTERM and checks that it exits 0.
func (s *standalone) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := s.cmd.Wait(); err != nil {
		t.Errorf("jvol standalone: %v\n%s", err, s.stderr)
	}
}

// TestCSISanity runs the CSI spec's conformance suite against jvol
// standalone, with real FUSE, loop devices, mkfs and mounts.
func TestCSISanity(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	s := startStandalone(t, filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock"))
	defer func() {
		s.stop(t)
		if t.Failed() {
			t.Logf("jvol standalone log:\n%s", s.stderr)
		}
	}()
	cfg := sanity.NewTestConfig()
	cfg.Address = s.endpoint
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 96 << 20
	cfg.IdempotentCount = 3
	cfg.TestVolumeParameters = map[string]string{"journalSize": "64Mi", "fifoSize": "4Mi", "commitInterval": "2s"}
	sanity.Test(t, cfg)
	// Every volume the suite made is gone again.
	left, _ := os.ReadDir(filepath.Join(dir, "state", "volumes"))
	for _, e := range left {
		t.Errorf("volume left behind: %s", e.Name())
	}
}

// kill kills it with SIGKILL.
func (s *standalone) kill() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}
