package driver

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/host/hosttest"
	"github.com/jvol-io/jvol/internal/reconciler"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// driver is a standalone driver on a temporary directory: Journals in
// files, the reconciler running, devices and mounts fakes (no root needed).
type driver struct {
	c     *Controller
	n     *Node
	dir   string
	fakes *hosttest.Fakes
}

func newDriver(t *testing.T) *driver { return newDriverIn(t, t.TempDir()) }

func newDriverIn(t *testing.T, dir string) *driver {
	t.Helper()
	changes := reconciler.NewChanges()
	files, err := catalog.OpenFiles(filepath.Join(dir, "journals"), changes.Add)
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := catalog.OpenSnapshotFiles(filepath.Join(dir, "journalsnapshots"), func(name string) { changes.Add(reconciler.SnapshotKey(name)) })
	if err != nil {
		t.Fatal(err)
	}
	fakes := hosttest.New()
	volumes, err := host.New(host.Config{StateDir: dir, Changed: changes.Add, OS: fakes.OS()})
	if err != nil {
		t.Fatal(err)
	}
	r := &reconciler.Reconciler{Store: files, Snapshots: snaps, Volumes: volumes, NodeID: "n1"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.RunStandalone(ctx, changes) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return &driver{c: &Controller{Store: files, Snapshots: snaps, DefaultNode: "n1"}, n: &Node{Volumes: volumes, NodeID: "n1", Journals: r, MaxVolumes: 7}, dir: dir, fakes: fakes}
}

var mountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func createReq(name string, size int64, params map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: params,
	}
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: %v, want %s", what, err, want)
	}
}

func TestCreateVolumeRefusesBadRequests(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	r := createReq("v", 8<<20, nil)
	r.Name = ""
	_, err := d.c.CreateVolume(ctx, r)
	wantCode(t, "no name", err, codes.InvalidArgument)

	r = createReq("v", 8<<20, nil)
	r.VolumeCapabilities = nil
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "no capabilities", err, codes.InvalidArgument)

	r = createReq("v", 8<<20, nil)
	r.VolumeCapabilities = []*csi.VolumeCapability{{AccessType: mountCap.AccessType,
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "multi-node", err, codes.InvalidArgument)

	_, err = d.c.CreateVolume(ctx, createReq("v", 8<<20, map[string]string{"fifoSize": "3Mi"}))
	wantCode(t, "fifo not a power of two", err, codes.InvalidArgument)

	_, err = d.c.CreateVolume(ctx, createReq("v", 8<<20, map[string]string{"color": "blue"}))
	wantCode(t, "unknown parameter", err, codes.InvalidArgument)

	_, err = d.c.CreateVolume(ctx, createReq("v", 8<<20, map[string]string{"duplex": "full"}))
	wantCode(t, "full duplex without a sink", err, codes.InvalidArgument)

	_, err = d.c.CreateVolume(ctx, createReq("v", 8<<20, map[string]string{"sinkURL": "udp://sink.example:7070"}))
	wantCode(t, "bad sink URL", err, codes.InvalidArgument)

	r = createReq("v", 8<<20, nil)
	r.CapacityRange.LimitBytes = 4 << 20
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "limit under required", err, codes.OutOfRange)

	r = createReq("v", 8<<20, nil)
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "x"}}}
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "clone of no volume", err, codes.NotFound)

	cluster := &Controller{Store: d.c.Store}
	_, err = cluster.CreateVolume(ctx, createReq("v", 8<<20, nil))
	wantCode(t, "no node in a cluster", err, codes.InvalidArgument)

	if js, _ := d.c.Store.List(ctx); len(js) != 0 {
		t.Errorf("refused requests left journals: %v", js)
	}
}

func TestCreateVolumeIsIdempotent(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	params := map[string]string{"journalSize": "64Mi"}
	a, err := d.c.CreateVolume(ctx, createReq("pvc-a", 8<<20, params))
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.c.CreateVolume(ctx, createReq("pvc-a", 8<<20, params))
	if err != nil || b.GetVolume().GetVolumeId() != a.GetVolume().GetVolumeId() {
		t.Fatalf("again: %v %v", b, err)
	}
	_, err = d.c.CreateVolume(ctx, createReq("pvc-a", 16<<20, params))
	wantCode(t, "same name, larger", err, codes.AlreadyExists)
	_, err = d.c.CreateVolume(ctx, createReq("pvc-a", 8<<20, map[string]string{"journalSize": "128Mi"}))
	wantCode(t, "same name, other parameters", err, codes.AlreadyExists)

	// A second call on a volume while one is running is Aborted.
	unlock, err := d.c.locks.try("pvc-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.c.CreateVolume(ctx, createReq("pvc-a", 8<<20, params))
	wantCode(t, "concurrent create", err, codes.Aborted)
	_, err = d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-a"})
	wantCode(t, "concurrent delete", err, codes.Aborted)
	unlock()

	for range 2 {
		if _, err := d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "pvc-a"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(d.dir, "volumes", "pvc-a")); !os.IsNotExist(err) {
		t.Errorf("images after delete: %v", err)
	}
}

// The sink parameters end up in the Journal, where the node reads them.
func TestCreateVolumeWithASink(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	params := map[string]string{"sinkURL": "tls://sink.example:7070", "duplex": "full",
		"sinkSecretName": "creds", "sinkSecretNamespace": "backup"}
	if _, err := d.c.CreateVolume(ctx, createReq("pvc-s", 8<<20, params)); err != nil {
		t.Fatal(err)
	}
	j, err := d.c.Store.Get(ctx, "pvc-s")
	if err != nil {
		t.Fatal(err)
	}
	if k := j.Spec.Sink; j.Spec.Duplex != v1.Full || k == nil || k.URL != "tls://sink.example:7070" ||
		k.CredentialsSecretRef == nil || *k.CredentialsSecretRef != (v1.SecretReference{Name: "creds", Namespace: "backup"}) {
		t.Errorf("spec %+v, sink %+v", j.Spec, j.Spec.Sink)
	}
	if _, err := d.c.CreateVolume(ctx, createReq("pvc-s", 8<<20, params)); err != nil {
		t.Errorf("again: %v", err)
	}
	delete(params, "sinkSecretName")
	delete(params, "sinkSecretNamespace")
	_, err = d.c.CreateVolume(ctx, createReq("pvc-s", 8<<20, params))
	wantCode(t, "same name, other sink credentials", err, codes.AlreadyExists)
}

func TestCreateVolumeOutOfSpace(t *testing.T) {
	d := newDriverIn(t, vfstest.SmallFS(t, 32<<20))
	_, err := d.c.CreateVolume(context.Background(), createReq("pvc-big", 8<<20, map[string]string{"journalSize": "64Mi"}))
	wantCode(t, "journal larger than the disk", err, codes.ResourceExhausted)
	// Nothing is left behind for a volume the CO never got.
	if js, _ := d.c.Store.List(context.Background()); len(js) != 0 {
		t.Errorf("journal left behind: %v", js[0].Name)
	}
}

// A thick volume the node cannot hold whole is refused; thin, it is made.
func TestCreateVolumeThickNeedsItsWholeSize(t *testing.T) {
	d := newDriverIn(t, vfstest.SmallFS(t, 128<<20))
	ctx := context.Background()
	params := map[string]string{"journalSize": "64Mi"}
	_, err := d.c.CreateVolume(ctx, createReq("pvc-thick", 96<<20, params))
	wantCode(t, "thick volume and journal larger than the disk", err, codes.ResourceExhausted)
	if js, _ := d.c.Store.List(ctx); len(js) != 0 {
		t.Errorf("journal left behind: %v", js[0].Name)
	}
	if ents, _ := os.ReadDir(filepath.Join(d.dir, "volumes")); len(ents) != 0 {
		t.Errorf("volume directory left behind: %v", ents)
	}
	params[ParamProvisioning] = "thin"
	v, err := d.c.CreateVolume(ctx, createReq("pvc-thin", 96<<20, params))
	if err != nil {
		t.Fatal(err)
	}
	j, err := d.c.Store.Get(ctx, v.GetVolume().GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	if j.Spec.Provisioning != v1.Thin || j.Status.Provisioning != v1.Thin {
		t.Errorf("thin volume: spec %q, status %q", j.Spec.Provisioning, j.Status.Provisioning)
	}
	params[ParamProvisioning] = "thinnish"
	_, err = d.c.CreateVolume(ctx, createReq("pvc-bad", 8<<20, params))
	wantCode(t, "provisioning=thinnish", err, codes.InvalidArgument)
}

func TestVolumeIDsAreNeverPaths(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	victim := filepath.Join(d.dir, "victim")
	if err := os.Mkdir(victim, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"../victim", "..", "a/b", "/etc"} {
		if _, err := d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("delete %q: %v (an id that cannot exist is deleted already)", id, err)
		}
		_, err := d.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: t.TempDir(), VolumeCapability: mountCap})
		wantCode(t, "stage "+id, err, codes.NotFound)
		_, err = d.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: t.TempDir()})
		wantCode(t, "unpublish "+id, err, codes.NotFound)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("a path id reached the file system: %v", err)
	}
}

func TestExpandAndValidate(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	_, err := d.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{CapacityRange: &csi.CapacityRange{RequiredBytes: 1}})
	wantCode(t, "expand without id", err, codes.InvalidArgument)
	_, err = d.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x"})
	wantCode(t, "expand without range", err, codes.InvalidArgument)
	_, err = d.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}})
	wantCode(t, "expand unknown", err, codes.NotFound)
	_, err = d.c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-x", VolumeCapabilities: []*csi.VolumeCapability{mountCap}})
	wantCode(t, "validate unknown", err, codes.NotFound)

	if _, err := d.c.CreateVolume(ctx, createReq("pvc-x", 8<<20, nil)); err != nil {
		t.Fatal(err)
	}
	r, err := d.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: &csi.CapacityRange{RequiredBytes: 20 << 20}})
	if err != nil || r.GetCapacityBytes() != 20<<20 || !r.GetNodeExpansionRequired() {
		t.Fatalf("expand: %v %v", r, err)
	}
	if fi, err := os.Stat(filepath.Join(d.dir, "volumes", "pvc-x", "data.img")); err != nil || fi.Size() != 20<<20 {
		t.Errorf("data image: %v %v", fi, err)
	}
	// Asking for less never shrinks.
	r, err = d.c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "pvc-x", CapacityRange: &csi.CapacityRange{RequiredBytes: 10 << 20}})
	if err != nil || r.GetCapacityBytes() != 20<<20 {
		t.Errorf("smaller expand: %v %v", r, err)
	}
	v, err := d.c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "pvc-x",
		VolumeCapabilities: []*csi.VolumeCapability{{AccessType: mountCap.AccessType,
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}})
	if err != nil || v.GetConfirmed() != nil || v.GetMessage() == "" {
		t.Errorf("multi-node confirmed: %v %v", v, err)
	}

	// The node side: not staged yet.
	_, err = d.n.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "pvc-x", TargetPath: t.TempDir(), StagingTargetPath: t.TempDir(), VolumeCapability: mountCap})
	wantCode(t, "publish before stage", err, codes.FailedPrecondition)
	_, err = d.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "pvc-x", VolumePath: t.TempDir()})
	wantCode(t, "stats before stage", err, codes.NotFound)
	if _, err := d.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "pvc-x", StagingTargetPath: t.TempDir()}); err != nil {
		t.Errorf("unstage of what is not staged: %v", err)
	}
	_, err = d.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "pvc-x", VolumePath: t.TempDir()})
	wantCode(t, "node expand before stage", err, codes.FailedPrecondition)
}

// A kubelet retrying an unpublish or unstage after the volume was deleted
// must be told it is done, or it retries forever.
func TestTeardownOfADeletedVolumeSucceeds(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	if _, err := d.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "pvc-gone", TargetPath: filepath.Join(t.TempDir(), "target")}); err != nil {
		t.Errorf("unpublish: %v", err)
	}
	if _, err := d.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "pvc-gone", StagingTargetPath: t.TempDir()}); err != nil {
		t.Errorf("unstage: %v", err)
	}
	_, err := d.n.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "pvc-gone", StagingTargetPath: t.TempDir(), VolumeCapability: mountCap})
	wantCode(t, "stage", err, codes.NotFound)
}

// A volume the provisioner names a claim for knows it: its Journal's
// annotations, and the node's reconciler (the metrics' labels).
func TestCreateVolumeRecordsTheClaim(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	r, err := d.c.CreateVolume(ctx, createReq("pvc-claimed", 8<<20, map[string]string{
		"fifoSize": "1Mi", "csi.storage.k8s.io/pvc/namespace": "apps", "csi.storage.k8s.io/pvc/name": "data"}))
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	j, err := d.c.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if a := j.Annotations; a[catalog.ClaimNamespaceAnnotation] != "apps" || a[catalog.ClaimNameAnnotation] != "data" || a[catalog.NameAnnotation] != "pvc-claimed" {
		t.Errorf("annotations %v", a)
	}
	if ns, name := d.n.Journals.(*reconciler.Reconciler).Claim(id); ns != "apps" || name != "data" {
		t.Errorf("the reconciler says the claim is %s/%s", ns, name)
	}
	if _, err := d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func TestSnapshotRequestsGetTheRightCodes(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	v, err := d.c.CreateVolume(ctx, createReq("v", 8<<20, nil))
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	_, err = d.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"kind": "tape"}})
	wantCode(t, "unknown kind", err, codes.InvalidArgument)
	_, err = d.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"colour": "blue"}})
	wantCode(t, "unknown parameter", err, codes.InvalidArgument)
	_, err = d.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "gone"})
	wantCode(t, "of no volume", err, codes.NotFound)
	_, err = d.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"kind": "sink"}})
	wantCode(t, "sink snapshot of a volume without a sink", err, codes.FailedPrecondition)

	// Points in time: of a volume that does not exist, of one without a
	// sink, and a handle whose point is neither a time nor an id.
	r0 := createReq("p", 8<<20, nil)
	r0.VolumeContentSource = snapshotSource("gone@2026-12-01T10:00:00Z")
	_, err = d.c.CreateVolume(ctx, r0)
	wantCode(t, "a point of no volume", err, codes.NotFound)
	r0.VolumeContentSource = snapshotSource(id + "@12345")
	_, err = d.c.CreateVolume(ctx, r0)
	wantCode(t, "a point of a volume without a sink", err, codes.FailedPrecondition)
	r0.VolumeContentSource = snapshotSource(id + "@yesterday")
	_, err = d.c.CreateVolume(ctx, r0)
	wantCode(t, "a point that is neither", err, codes.InvalidArgument)
	if l, err := d.c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: id + "@12345"}); err != nil || len(l.GetEntries()) != 0 {
		t.Errorf("a point of a volume without a sink is listed: %v %v", l, err)
	}
	s, err := d.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id, Parameters: map[string]string{"kind": "local"}})
	if err != nil || !s.GetSnapshot().GetReadyToUse() || s.GetSnapshot().GetSizeBytes() != 8<<20 {
		t.Fatalf("snapshot: %v %v", s, err)
	}
	sid := s.GetSnapshot().GetSnapshotId()

	r := createReq("small", 4<<20, nil)
	r.CapacityRange.LimitBytes = 4 << 20
	r.VolumeContentSource = snapshotSource(sid)
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "a snapshot larger than the limit", err, codes.OutOfRange)

	r = createReq("elsewhere", 8<<20, nil)
	r.VolumeContentSource = snapshotSource(sid)
	r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "n2"}}}}
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "a snapshot on another node", err, codes.ResourceExhausted)

	// The snapshot's size is the least the volume gets.
	r = createReq("restored", 4<<20, nil)
	r.VolumeContentSource = snapshotSource(sid)
	got, err := d.c.CreateVolume(ctx, r)
	if err != nil || got.GetVolume().GetCapacityBytes() != 8<<20 || got.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId() != sid {
		t.Errorf("volume from the snapshot: %v %v", got, err)
	}

	// The snapshot's image is gone from the node: it fails, and says so.
	if err := os.RemoveAll(filepath.Join(d.dir, "snapshots", sid)); err != nil {
		t.Fatal(err)
	}
	r = createReq("lost", 8<<20, nil)
	r.VolumeContentSource = snapshotSource(sid)
	_, err = d.c.CreateVolume(ctx, r)
	wantCode(t, "a snapshot whose image is gone", err, codes.NotFound)

	if _, err := d.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sid}); err != nil {
		t.Fatal(err)
	}
	if l, err := d.c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(l.GetEntries()) != 0 {
		t.Errorf("after the delete: %v %v", l, err)
	}
}

func TestPointHandles(t *testing.T) {
	for h, want := range map[string]string{
		"pvc-1@2026-12-03T10:00:00Z":        "pvc-1 time 2026-12-03T10:00:00Z",
		"pvc-1@2026-12-03T10:00:00.5+01:00": "pvc-1 time 2026-12-03T09:00:00.5Z",
		"pvc-1@1796292000000000000":         "pvc-1 transid 1796292000000000000",
		"pvc-1":                             "",
		"@12":                               "",
		"pvc-1@":                            "",
		"pvc-1@0":                           "",
		"pvc-1@-5":                          "",
		"pvc-1@tuesday":                     "",
	} {
		vol, p, ok := parsePointHandle(h)
		got := ""
		switch {
		case ok && p.Time != nil:
			got = vol + " time " + p.Time.UTC().Format(time.RFC3339Nano)
		case ok:
			got = vol + " transid " + strconv.FormatInt(p.Transid, 10)
		}
		if got != want {
			t.Errorf("%q: %q, want %q", h, got, want)
		}
	}
}
