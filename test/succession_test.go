package test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/jvol-io/jvol/internal/fdpass"
	"github.com/jvol-io/jvol/internal/writecheck"
)

// startHolder runs `jvol holder` at sock until the test ends.
func startHolder(t *testing.T, sock string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(jvolBin, "holder", "--socket", sock)
	out := &syncBuffer{}
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !out.waitFor("Holding FUSE connections", time.Minute) {
		t.Fatalf("jvol holder did not start:\n%s", out)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestPluginKillAndSuccessionFailNoWrite: a verifying writer (direct I/O,
// random 4 KiB writes, fsync batches) on a published block volume of the
// node plugin (standalone) while the plugin is killed with SIGKILL (its
// holder keeps the FUSE connection; the restarted plugin serves it again),
// and then, told to stop (as a deleted pod's), it serves on until a second
// plugin with a holder of its own (a new pod) takes the volume over from
// it (succession), and exits. The first time the successor asks, the
// handover fails before any volume (as when the plugin cannot give one):
// the successor asks again. No write may fail, every block holds its last
// completed write, and the volume unstages cleanly from the successor.
func TestPluginKillAndSuccessionFailNoWrite(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock")
	// The plugin before listens at before; the successor asks at
	// succession, where the test refuses it once and then relays.
	succession, before := filepath.Join(state, "succession.sock"), filepath.Join(dir, "before.sock")
	plugin := func(holderSock, successionSock string) *standalone {
		t.Helper()
		s := startStandalone(t, state, sock, "--holder-socket", holderSock, "--succession-socket", successionSock, "--succession-wait", "30s")
		t.Cleanup(func() { s.cmd.Process.Kill() }) // if the test stops early
		return s
	}
	holderA := filepath.Join(dir, "a", "holder.sock")
	startHolder(t, holderA)
	s := plugin(holderA, before)
	conn := dial(t, s.endpoint)
	cs, ns := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	r, err := cs.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-live", VolumeCapabilities: []*csi.VolumeCapability{capability(true)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: map[string]string{"journalSize": "64Mi", "commitInterval": "1s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id, staging, target := r.GetVolume().GetVolumeId(), filepath.Join(dir, "staging"), filepath.Join(dir, "pods", "dev")
	os.MkdirAll(staging, 0o750)
	if _, err := ns.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capability(true)}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capability(true)}); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	w, err := writecheck.Open(target, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	progress, stopWriter := w.Start(7)
	wait := func() { // a few hundred more writes
		from := <-progress + 300
		for seq := range progress {
			if seq >= from {
				return
			}
		}
	}

	wait()
	s.kill()
	s = plugin(holderA, before)
	if !s.stderr.waitFor("Serving a volume again whose connection outlived its server", time.Second) {
		t.Fatalf("the restarted plugin did not take the held connection:\n%s", s.stderr)
	}
	wait()
	// As a deleted pod's: told to stop, the plugin serves on and waits for
	// its successor.
	s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.stderr.waitFor("Waiting for a successor", time.Minute) {
		t.Fatalf("the plugin did not wait for a successor:\n%s", s.stderr)
	}
	wait()
	holderB := filepath.Join(dir, "b", "holder.sock")
	startHolder(t, holderB)
	refuseOnceThenRelay(t, succession, before)
	next := plugin(holderB, succession)
	defer next.stop(t)
	if !next.stderr.waitFor("Took the volumes over from the plugin before", 30*time.Second) {
		t.Fatalf("the successor took nothing:\n%s", next.stderr)
	}
	if !strings.Contains(next.stderr.String(), "will be asked again") {
		t.Errorf("the successor took the volumes without being refused first:\n%s", next.stderr)
	}
	wait()
	if err := s.cmd.Wait(); err != nil { // retired, it exits and leaves the volume alone
		t.Errorf("the plugin before: %v\n%s", err, s.stderr)
	}
	wait()
	if err := stopWriter(); err != nil {
		t.Fatalf("a write failed: %v", err)
	}
	t.Logf("%d writes to %d blocks; the longest write (or write and fsync) took %v", w.Writes(), w.Blocks(), w.Longest())
	if err := w.Verify(); err != nil {
		t.Fatal(err)
	}
	w.Close()

	conn = dial(t, next.endpoint)
	defer conn.Close()
	cs, ns = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	if _, err := ns.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	noMountsUnder(t, dir)
}

// refuseOnceThenRelay listens at path for successors. It answers the first
// with the end of a handover that stopped before any volume ('E' and a
// reason: what a plugin whose Give failed sends), and relays the next one
// to the plugin listening at to, messages and files both ways.
func refuseOnceThenRelay(t *testing.T, path, to string) {
	t.Helper()
	l, err := fdpass.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	refused := false
	go l.Serve(ctx, func(c *net.UnixConn) bool {
		defer c.Close()
		if !refused {
			refused = true
			if m, err := fdpass.Recv(c); err == nil && m.File != nil {
				m.File.Close()
			}
			fdpass.Send(c, fdpass.Msg{Type: 'E', Name: "refused by the test"})
			return false
		}
		p, err := fdpass.Dial(to)
		if err != nil {
			t.Errorf("relaying to the plugin before: %v", err)
			return true
		}
		defer p.Close()
		var wg sync.WaitGroup
		wg.Go(func() { relay(p, c) })
		relay(c, p)
		wg.Wait()
		return true
	})
}

// relay sends on to every message received on from, until from ends.
func relay(from, to *net.UnixConn) {
	for {
		m, err := fdpass.Recv(from)
		if err != nil {
			return
		}
		err = fdpass.Send(to, m)
		if m.File != nil {
			m.File.Close()
		}
		if err != nil {
			return
		}
	}
}
