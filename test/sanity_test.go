package test

import (
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/driver/drivertest"
)

// standalone is a running `jvol standalone`.
type standalone struct {
	cmd      *exec.Cmd
	endpoint string
	stderr   *syncBuffer
}

// startStandalone runs `jvol standalone` on stateDir and waits until it
// serves its CSI socket.
func startStandalone(t *testing.T, stateDir, sock string, flags ...string) *standalone {
	t.Helper()
	s := &standalone{endpoint: "unix://" + sock, stderr: &syncBuffer{}}
	s.cmd = exec.Command(jvolBin, append([]string{"standalone", "--endpoint", s.endpoint, "--state-dir", stateDir, "--node-id", "node-1", "-v", "4"}, flags...)...)
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
	drivertest.Sanity(t, s.endpoint, dir, filepath.Join(dir, "state"))
}

// kill kills it with SIGKILL.
func (s *standalone) kill() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}
