package test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func dial(t *testing.T, endpoint string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func capability(block bool) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}
	}
	return c
}

// TestNodeRestartServesStagedVolumesAgain kills the node plugin (standalone)
// with SIGKILL while a file system volume and a block volume are staged and
// published, starts it again, and checks that both are served again at the
// same paths with every synced byte, before the plugin serves CSI.
func TestNodeRestartServesStagedVolumesAgain(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "csi.sock")
	s := startStandalone(t, state, sock)
	conn := dial(t, s.endpoint)
	defer conn.Close()
	cs, ns := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()

	type vol struct {
		id, staging, target string
		block               bool
	}
	var vols []vol
	for _, block := range []bool{false, true} {
		name := map[bool]string{false: "pvc-fs", true: "pvc-block"}[block]
		r, err := cs.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, VolumeCapabilities: []*csi.VolumeCapability{capability(block)},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: map[string]string{"journalSize": "64Mi"},
		})
		if err != nil {
			t.Fatal(err)
		}
		v := vol{id: r.GetVolume().GetVolumeId(), staging: filepath.Join(dir, name+"-staging"), target: filepath.Join(dir, "pods", name), block: block}
		if err := os.MkdirAll(v.staging, 0o750); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: capability(block)}); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: capability(block)}); err != nil {
			t.Fatal(err)
		}
		vols = append(vols, v)
	}
	fsFile := filepath.Join(vols[0].target, "data")
	want := bytes.Repeat([]byte("journaled "), 100000)
	writeSynced(t, fsFile, want, 0)
	writeSynced(t, vols[1].target, want, 4096)

	s.kill()
	s = startStandalone(t, state, sock)
	defer s.stop(t)
	conn2 := dial(t, s.endpoint)
	defer conn2.Close()
	cs, ns = csi.NewControllerClient(conn2), csi.NewNodeClient(conn2)

	// Served again, at the same paths, before CSI was: the pod's view.
	if got, err := os.ReadFile(fsFile); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file system volume after restart: %d bytes, %v", len(got), err)
	}
	got := make([]byte, len(want))
	f, err := os.Open(vols[1].target)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 4096)
	f.Close()
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("block volume after restart: %v", err)
	}
	writeSynced(t, filepath.Join(vols[0].target, "after"), []byte("still writable"), 0)

	// Stats: the file system's, and for the block volume what it holds.
	for _, v := range vols {
		st, err := ns.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: v.target})
		if err != nil {
			t.Fatal(err)
		}
		u := st.GetUsage()[0]
		if u.GetUsed() < int64(len(want)) || u.GetTotal() != 64<<20 && v.block || u.GetAvailable() != u.GetTotal()-u.GetUsed() && v.block {
			t.Errorf("stats of %s: %v", v.id, st.GetUsage())
		}
	}

	for _, v := range vols {
		if _, err := ns.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
			t.Fatal(err)
		}
		if _, err := ns.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			t.Fatal(err)
		}
	}
	noMountsUnder(t, dir)
}

// writeSynced writes b at off in the file at path (created if need be) and
// fsyncs it.
func writeSynced(t *testing.T, path string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}
