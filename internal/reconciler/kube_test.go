package reconciler_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/driver"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/reconciler"
	"github.com/jvol-io/jvol/internal/volume"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// startAPIServer runs a real kube-apiserver and etcd (envtest) with the
// Journal CRD installed. KUBEBUILDER_ASSETS names their directory; `make
// test` builds them once with hack/envtest-assets.sh.
func startAPIServer(t *testing.T) (client.Client, *rest.Config) {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "charts", "jvol", "crds")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Error(err)
		}
	})
	c, err := client.New(cfg, client.Options{Scheme: catalog.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c, cfg
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func journal(name, node string, capacity string) *v1.Journal {
	return &v1.Journal{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{catalog.NodeLabel: node}},
		Spec:       v1.JournalSpec{Node: node, Capacity: resource.MustParse(capacity)},
	}
}

func q(s string) *resource.Quantity { x := resource.MustParse(s); return &x }

func TestSchemaRefusesBadJournals(t *testing.T) {
	c, _ := startAPIServer(t)
	ctx := context.Background()
	bad := []struct {
		name   string
		change func(*v1.JournalSpec)
		want   string
	}{
		{"no-node", func(s *v1.JournalSpec) { s.Node = "" }, "spec.node"},
		{"tiny", func(s *v1.JournalSpec) { s.Capacity = resource.MustParse("4Ki") }, "capacity must be at least 1Mi"},
		{"unaligned", func(s *v1.JournalSpec) { s.Capacity = resource.MustParse("1000001") }, "capacity must be a multiple of 4Ki"},
		{"small-journal", func(s *v1.JournalSpec) { s.JournalSize = q("1Mi") }, "journalSize must be at least 64Mi"},
		{"fifo-not-pow2", func(s *v1.JournalSpec) { s.FIFOSize = q("3Mi") }, "fifoSize must be a power of two from 1Mi to 1Gi"},
		{"fifo-too-big", func(s *v1.JournalSpec) { s.FIFOSize = q("2Gi") }, "fifoSize must be a power of two"},
		{"duplex", func(s *v1.JournalSpec) { s.Duplex = "Quarter" }, "spec.duplex"},
		{"full-duplex-without-sink", func(s *v1.JournalSpec) { s.Duplex = v1.Full }, "duplex Full needs a sink"},
		{"sink-url", func(s *v1.JournalSpec) { s.Sink = &v1.SinkSpec{URL: "http://sink.example/x"} }, "spec.sink.url"},
		{"commit-interval", func(s *v1.JournalSpec) { s.CommitInterval = &metav1.Duration{Duration: time.Millisecond} }, "commitInterval must be from 1s to 1h"},
		{"fs", func(s *v1.JournalSpec) { s.FSType = "btrfs" }, "spec.fsType"},
		{"provisioning", func(s *v1.JournalSpec) { s.Provisioning = "Thickish" }, "spec.provisioning"},
		{"empty-source", func(s *v1.JournalSpec) { s.Source = &v1.VolumeSource{} }, "source names exactly one of snapshot and journal"},
		{"two-sources", func(s *v1.JournalSpec) { s.Source = &v1.VolumeSource{Snapshot: "s", Journal: "j"} }, "source names exactly one"},
	}
	for _, b := range bad {
		j := journal(b.name, "node-a", "1Gi")
		b.change(&j.Spec)
		err := c.Create(ctx, j)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: got %v, want Invalid mentioning %q", b.name, err, b.want)
		}
		if verr := j.Spec.Validate(); verr == nil {
			t.Errorf("%s: the API server refuses it but Validate (standalone) accepts it", b.name)
		}
	}

	j := journal("good", "node-a", "1Gi")
	j.Spec.FIFOSize, j.Spec.JournalSize, j.Spec.Provisioning = q("16Mi"), q("128Mi"), v1.Thick
	j.Spec.Sink = &v1.SinkSpec{URL: "tls://sink.example:7070"}
	if err := c.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	if j.Spec.Duplex != v1.Half {
		t.Errorf("duplex defaulted to %q, want Half", j.Spec.Duplex)
	}
	updates := []struct {
		change func(*v1.JournalSpec)
		want   string
	}{
		{func(s *v1.JournalSpec) { s.Capacity = resource.MustParse("512Mi") }, "capacity never shrinks"},
		{func(s *v1.JournalSpec) { s.Node = "node-b" }, "node is immutable"},
		{func(s *v1.JournalSpec) { s.JournalSize = q("256Mi") }, "journalSize is immutable"},
		{func(s *v1.JournalSpec) { s.Provisioning = v1.Thin }, "provisioning is immutable"},
		{func(s *v1.JournalSpec) { s.Source = &v1.VolumeSource{Journal: "other"} }, "source is immutable"},
	}
	for _, u := range updates {
		k := j.DeepCopy()
		u.change(&k.Spec)
		err := c.Update(ctx, k)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), u.want) {
			t.Errorf("update: got %v, want Invalid mentioning %q", err, u.want)
		}
		if verr := k.Spec.ValidateUpdate(&j.Spec); verr == nil {
			t.Errorf("update %q: ValidateUpdate (standalone) accepts it", u.want)
		}
	}
	k := j.DeepCopy()
	k.Spec.Capacity = resource.MustParse("2Gi")
	if err := c.Update(ctx, k); err != nil {
		t.Errorf("growing: %v", err)
	}

	// A snapshot's spec is checked, defaulted and immutable.
	for _, spec := range []v1.JournalSnapshotSpec{{Node: "node-a"}, {Source: "good"}, {Source: "good", Node: "node-a", Kind: "Tape"},
		{Source: "good", Node: "node-a", Kind: v1.SinkKind},
		{Source: "good", Node: "node-a", Point: &v1.SnapshotPoint{Transid: 7}},
		{Source: "good", Node: "node-a", Kind: v1.SinkKind, Sink: &v1.SinkSpec{URL: "tcp://sink:7070"}, Point: &v1.SnapshotPoint{}},
		{Source: "good", Node: "node-a", Kind: v1.SinkKind, Sink: &v1.SinkSpec{URL: "tcp://sink:7070"}, Point: &v1.SnapshotPoint{Transid: 7, Time: &metav1.Time{Time: time.Unix(1e9, 0)}}},
		{Source: "good", Node: "node-a", Kind: v1.SinkKind, Sink: &v1.SinkSpec{URL: "http://sink/x"}},
	} {
		snap := &v1.JournalSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "bad-snapshot"}, Spec: spec}
		if err := c.Create(ctx, snap); !apierrors.IsInvalid(err) {
			t.Errorf("snapshot %+v: got %v, want Invalid", spec, err)
		}
		if spec.Validate() == nil {
			t.Errorf("snapshot %+v: the API server refuses it but Validate (standalone) accepts it", spec)
		}
	}
	snap := &v1.JournalSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "snap"}, Spec: v1.JournalSnapshotSpec{Source: "good", Node: "node-a"}}
	if err := c.Create(ctx, snap); err != nil || snap.Spec.Kind != v1.Local {
		t.Fatalf("snapshot: kind %q, %v", snap.Spec.Kind, err)
	}
	pinned := &v1.JournalSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "pinned"}, Spec: v1.JournalSnapshotSpec{Source: "good", Node: "node-a",
		Kind: v1.SinkKind, Sink: &v1.SinkSpec{URL: "tcp://sink:7070"}, Point: &v1.SnapshotPoint{Time: &metav1.Time{Time: time.Unix(1e9, 0)}}}}
	if err := c.Create(ctx, pinned); err != nil || pinned.Spec.Validate() != nil {
		t.Errorf("a Sink snapshot at a time: %v, Validate (standalone): %v", err, pinned.Spec.Validate())
	}
	moved := snap.DeepCopy()
	moved.Spec.Source = "other"
	if err := c.Update(ctx, moved); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec is immutable") {
		t.Errorf("changing a snapshot's source: %v", err)
	}
	if moved.Spec.ValidateUpdate(&snap.Spec) == nil {
		t.Error("changing a snapshot's source: ValidateUpdate (standalone) accepts it")
	}

	// Sizes compare as quantities, not strings: the Go client sends 65536Ki
	// back as 64Mi, which is no change.
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "jvol.io/v1alpha1", "kind": "Journal",
		"metadata": map[string]any{"name": "other-units"},
		"spec":     map[string]any{"node": "node-a", "capacity": int64(1 << 30), "journalSize": "65536Ki"},
	}}
	if err := c.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	var typed v1.Journal
	if err := c.Get(ctx, client.ObjectKey{Name: "other-units"}, &typed); err != nil {
		t.Fatal(err)
	}
	typed.Finalizers = []string{v1.Finalizer}
	if err := c.Update(ctx, &typed); err != nil {
		t.Errorf("update of a journal whose sizes were in other units: %v", err)
	}
}

// waitJournal polls the Journal until ok says so (an API object: there is
// nothing else to wait on).
func waitJournal(t *testing.T, c client.Client, name string, ok func(*v1.Journal) bool) *v1.Journal {
	t.Helper()
	var j v1.Journal
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, client.ObjectKey{Name: name}, &j)
		return err == nil && ok(&j), nil
	})
	if err != nil {
		t.Fatalf("journal %s: %v; last seen %+v", name, err, j.Status)
	}
	return &j
}

func TestNodeReconcilesItsJournals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: stages a volume through FUSE and a loop device")
	}
	c, cfg := startAPIServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := reconciler.NewChanges()
	volumes, err := host.New(host.Config{StateDir: t.TempDir(), Changed: changes.Add})
	if err != nil {
		t.Fatal(err)
	}
	// Count the node's writes that conflict: the node owns the status, so
	// it has nothing to conflict with (it once did with its own stale
	// cache, every few writes).
	var conflicts atomic.Int64
	nodeCfg := rest.CopyConfig(cfg)
	nodeCfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return roundTripper(func(req *http.Request) (*http.Response, error) {
			resp, err := rt.RoundTrip(req)
			if err == nil && resp.StatusCode == http.StatusConflict {
				conflicts.Add(1)
				t.Logf("conflict: %s %s", req.Method, req.URL.Path)
			}
			return resp, err
		})
	}
	defer func() {
		if n := conflicts.Load(); n != 0 {
			t.Errorf("%d writes of the node conflicted", n)
		}
	}()
	mgr, r, err := reconciler.NewManager(nodeCfg, reconciler.Options{NodeID: "node-a", Volumes: volumes, Changes: changes, Refresh: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	nodes := catalog.Nodes{Client: c}
	ctrl := &driver.Controller{Store: catalog.NewKube(c, nil), Snapshots: catalog.NewKubeSnapshots(c, nil), Capacity: nodes.Available, NodeGone: nodes.NodeGone}
	nodeA := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a", Annotations: map[string]string{catalog.AvailableAnnotation: "123456789"}}}
	if err := c.Create(ctx, nodeA); err != nil {
		t.Fatal(err)
	}
	capResp, err := ctrl.GetCapacity(ctx, &csispec.GetCapacityRequest{AccessibleTopology: &csispec.Topology{Segments: map[string]string{driver.TopologyKey: "node-a"}}})
	if err != nil || capResp.GetAvailableCapacity() != 123456789 {
		t.Errorf("capacity of node-a: %v %v", capResp, err)
	}
	caps := []*csispec.VolumeCapability{{
		AccessType: &csispec.VolumeCapability_Block{Block: &csispec.VolumeCapability_BlockVolume{}},
		AccessMode: &csispec.VolumeCapability_AccessMode{Mode: csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	top := &csispec.TopologyRequirement{Preferred: []*csispec.Topology{{Segments: map[string]string{driver.TopologyKey: "node-a"}}}}

	// Another node's Journal is not this node's business.
	other := journal("other", "node-b", "1Gi")
	if err := c.Create(ctx, other); err != nil {
		t.Fatal(err)
	}

	// Create: the images exist and the Journal is Ready.
	resp, err := ctrl.CreateVolume(ctx, &csispec.CreateVolumeRequest{
		Name: "pvc-1", VolumeCapabilities: caps, AccessibilityRequirements: top,
		CapacityRange: &csispec.CapacityRange{RequiredBytes: 100 << 20},
		Parameters:    map[string]string{"journalSize": "64Mi", "fifoSize": "2Mi"},
	})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	if id != "pvc-1" || resp.GetVolume().GetCapacityBytes() != 100<<20 {
		t.Fatalf("created %v", resp.GetVolume())
	}
	dir := volumes.Path(id)
	for _, f := range []string{volume.DataFile, volume.JournalFile, volume.MetaFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	j := waitJournal(t, c, id, func(j *v1.Journal) bool { return j.Status.Phase == v1.PhaseReady })
	if len(j.Finalizers) != 1 || j.Finalizers[0] != v1.Finalizer {
		t.Errorf("finalizers %v", j.Finalizers)
	}

	// Expand: spec grows, then the node grows the data image.
	exp, err := ctrl.ControllerExpandVolume(ctx, &csispec.ControllerExpandVolumeRequest{
		VolumeId: id, CapacityRange: &csispec.CapacityRange{RequiredBytes: 200 << 20}, VolumeCapability: caps[0],
	})
	if err != nil {
		t.Fatal(err)
	}
	if exp.GetCapacityBytes() != 200<<20 || exp.GetNodeExpansionRequired() {
		t.Errorf("expanded: %v", exp)
	}
	if fi, err := os.Stat(filepath.Join(dir, volume.DataFile)); err != nil || fi.Size() != 200<<20 {
		t.Errorf("data image after expand: %v %v", fi, err)
	}

	// Staged: Attached, with live figures that follow the writes.
	staging := t.TempDir()
	if err := volumes.StageVolume(id, host.Stage{StagingPath: staging, Block: true}, nil); err != nil {
		t.Fatal(err)
	}
	defer volumes.UnstageVolume(id, staging) // if the test stops early
	dev, _ := volumes.Device(id)
	j = waitJournal(t, c, id, func(j *v1.Journal) bool { return j.Status.Phase == v1.PhaseAttached && j.Status.Device == dev })
	before := j.Status.Transid
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	waitJournal(t, c, id, func(j *v1.Journal) bool {
		return j.Status.Transid > before && j.Status.AckedTransid >= j.Status.Transid && j.Status.LastAckTime != nil
	})

	// Delete while staged: refused with the reason; after unstaging it goes.
	if _, err := ctrl.DeleteVolume(ctx, &csispec.DeleteVolumeRequest{VolumeId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of a staged volume: %v, want FailedPrecondition", err)
	}
	if err := volumes.UnstageVolume(id, staging); err != nil {
		t.Fatal(err)
	}
	waitJournal(t, c, id, func(j *v1.Journal) bool { return j.Status.Phase == v1.PhaseReady })
	if _, err := ctrl.DeleteVolume(ctx, &csispec.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("volume directory after delete: %v", err)
	}
	if err := c.Get(ctx, client.ObjectKey{Name: id}, &v1.Journal{}); !apierrors.IsNotFound(err) {
		t.Errorf("journal after delete: %v", err)
	}

	// A volume with a sink: the node writes its credentials Secret's keys
	// into the volume directory, and the status shows the link (down:
	// nothing listens there).
	creds := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sink-creds", Namespace: "default"}, Data: map[string][]byte{"token": []byte("s3cret")}}
	if err := c.Create(ctx, creds); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.CreateVolume(ctx, &csispec.CreateVolumeRequest{
		Name: "pvc-2", VolumeCapabilities: caps, AccessibilityRequirements: top,
		CapacityRange: &csispec.CapacityRange{RequiredBytes: 8 << 20},
		Parameters:    map[string]string{"sinkURL": "tcp://127.0.0.1:1", "sinkSecretName": "sink-creds", "sinkSecretNamespace": "default"},
	}); err != nil {
		t.Fatal(err)
	}
	staging = t.TempDir()
	so, err := r.SinkOptions(ctx, "pvc-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := volumes.StageVolume("pvc-2", host.Stage{StagingPath: staging, Block: true}, so); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(volume.Layout(volumes.Path("pvc-2")).SinkCredentials(), "token")); err != nil || string(b) != "s3cret" {
		t.Errorf("sink token: %q %v", b, err)
	}
	waitJournal(t, c, "pvc-2", func(j *v1.Journal) bool {
		c := meta.FindStatusCondition(j.Status.Conditions, v1.ConditionSinkInSync)
		return j.Status.SinkState == "Disconnected" && c != nil && c.Status == metav1.ConditionFalse
	})
	if err := volumes.UnstageVolume("pvc-2", staging); err != nil {
		t.Fatal(err)
	}

	// A Journal whose node is gone for good does not hang in deletion.
	ghost := journal("ghost-volume", "ghost", "1Gi")
	ghost.Finalizers = []string{v1.Finalizer}
	if err := c.Create(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	ghost.Status.Phase, ghost.Status.Device = v1.PhaseAttached, "/dev/loop99" // last word from a node that crashed
	if err := c.Status().Update(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csispec.DeleteVolumeRequest{VolumeId: "ghost-volume"}); err != nil {
		t.Fatalf("delete of a gone node's volume: %v", err)
	}

	// Still nobody touched the other node's Journal.
	if err := c.Get(ctx, client.ObjectKey{Name: "other"}, other); err != nil {
		t.Fatal(err)
	}
	if len(other.Finalizers) != 0 || other.Status.Phase != "" {
		t.Errorf("another node's journal was touched: %v %+v", other.Finalizers, other.Status)
	}
	if _, err := os.Stat(volumes.Path("other")); !os.IsNotExist(err) {
		t.Errorf("another node's volume was made here: %v", err)
	}
}
