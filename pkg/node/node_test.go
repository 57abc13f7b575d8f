package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
	"github.com/jvol-io/jvol/pkg/attach"
	"github.com/jvol-io/jvol/pkg/catalog"
	"github.com/jvol-io/jvol/pkg/sink"
	"github.com/jvol-io/jvol/pkg/volume"
)

func newNode(t *testing.T) *Node {
	t.Helper()
	n, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A volume that was made once is never made again empty: its images being
// gone (a disk not mounted, a wrong host path) is an error.
func TestEnsureDoesNotRemakeAMissingVolume(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	o := volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, false); !errors.Is(err, ErrMissing) {
		t.Fatalf("got %v, want ErrMissing", err)
	}
	if n.Exists("v") {
		t.Fatal("made anyway")
	}
	if size, err := n.Ensure(ctx, "v", o, true); err != nil || size != 8<<20 {
		t.Fatalf("create: %d %v", size, err)
	}
	o.Size = 16 << 20
	if size, err := n.Ensure(ctx, "v", o, false); err != nil || size != 16<<20 {
		t.Fatalf("grow: %d %v", size, err)
	}
}

func TestEnsureRecordsEngineSettingsForTheNextAttach(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	o := volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}
	if _, err := n.Ensure(ctx, "v", o, true); err != nil {
		t.Fatal(err)
	}
	o.FIFOSize, o.CommitInterval = 4<<20, 30*time.Second
	if _, err := n.Ensure(ctx, "v", o, false); err != nil {
		t.Fatal(err)
	}
	m, err := volume.ReadMeta(n.Path("v"))
	if err != nil || m.FIFOSize != 4<<20 || m.CommitInterval != "30s" {
		t.Errorf("metadata %+v %v", m, err)
	}
}

func TestEnsureStartsAnInterruptedCreateOver(t *testing.T) {
	n := newNode(t)
	dir := n.Path("v")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A create that died after the images and before the metadata file.
	for _, f := range []string{volume.DataFile, volume.JournalFile} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Ensure(context.Background(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
}

// A volume recorded as staged but not served (it could not be served again
// after a restart) can still be unstaged, and then removed.
func TestUnstageOfAVolumeNotServedAgain(t *testing.T) {
	n := newNode(t)
	if _, err := n.Ensure(context.Background(), "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	if err := n.writeStage("v", Stage{StagingPath: staging, Block: true}); err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("v"); !errors.Is(err, ErrStaged) {
		t.Fatalf("remove while recorded staged: %v", err)
	}
	if err := n.UnstageVolume("v", "/elsewhere"); !errors.Is(err, ErrConflict) {
		t.Errorf("unstage at another path: %v", err)
	}
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("v"); err != nil {
		t.Fatal(err)
	}
	if n.Exists("v") {
		t.Error("still there")
	}
}

// Regression: a volume recorded as staged whose serving again failed at the
// last restart, staged again by the kubelet, lost its publishes.
func TestStageServesARecordedVolumeAgain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches through FUSE and a loop device")
	}
	n := newNode(t)
	ctx := context.Background()
	if _, err := n.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging, target := t.TempDir(), filepath.Join(t.TempDir(), "dev")
	rec := Stage{StagingPath: staging, Block: true, Publishes: map[string]Publish{target: {}}}
	if err := n.writeStage("v", rec); err != nil {
		t.Fatal(err)
	}
	if err := n.StageVolume(ctx, "v", Stage{StagingPath: staging, Block: true}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := n.UnpublishVolume("v", target); err != nil {
			t.Error(err)
		}
		if err := n.UnstageVolume("v", staging); err != nil {
			t.Error(err)
		}
	}()
	st, ok := n.Staged("v")
	if !ok || len(st.Publishes) != 1 {
		t.Fatalf("staged %v: %+v", ok, st)
	}
	if mounted, err := n.mounter.IsMountPoint(target); err != nil || !mounted {
		t.Errorf("publish target not served again: %v %v", mounted, err)
	}
}

// secrets is a client.Reader of Secrets only.
type secrets map[client.ObjectKey]*corev1.Secret

func (s secrets) Get(_ context.Context, k client.ObjectKey, o client.Object, _ ...client.GetOption) error {
	sec, ok := s[k]
	if !ok {
		return apierrors.NewNotFound(corev1.Resource("secrets"), k.Name)
	}
	sec.DeepCopyInto(o.(*corev1.Secret))
	return nil
}

func (s secrets) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("secrets are not listed")
}

// newReconciler is a standalone reconciler on a temporary directory whose
// node stages volumes with their Journals' sinks.
func newReconciler(t *testing.T) (*Reconciler, *catalog.Files) {
	t.Helper()
	files, err := catalog.OpenFiles(filepath.Join(t.TempDir(), "journals"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Store: files, Volumes: newNode(t), NodeID: "n1"}
	NewLoop(r)
	return r, files
}

func createJournal(t *testing.T, files *catalog.Files, name string, change func(*v1.JournalSpec)) *v1.Journal {
	t.Helper()
	j := &v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.JournalSpec{Node: "n1", Capacity: resource.MustParse("8Mi")}}
	change(&j.Spec)
	if err := files.Create(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	return j
}

func TestSinkOptionsFromTheJournal(t *testing.T) {
	r, files := newReconciler(t)
	ctx := context.Background()
	creds := filepath.Join(r.Volumes.Path("v"), SinkCredentialsDir)
	secret := &corev1.Secret{Data: map[string][]byte{"token": []byte("s3cret\n"), "ca.crt": []byte("CA")}}
	r.Secrets = secrets{{Namespace: "backup", Name: "creds"}: secret}
	j := createJournal(t, files, "v", func(s *v1.JournalSpec) {
		s.Duplex = v1.Full
		s.Sink = &v1.SinkSpec{URL: "tls://sink.example:7070", CredentialsSecretRef: &v1.SecretReference{Name: "creds", Namespace: "backup"}}
	})
	so, err := r.Volumes.Sink(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	want := attach.SinkOptions{URL: "tls://sink.example:7070", Duplex: "Full",
		TokenFile: filepath.Join(creds, "token"), CAFile: filepath.Join(creds, "ca.crt")}
	if so == nil || *so != want {
		t.Fatalf("got %+v, want %+v", so, want)
	}
	for f, content := range map[string]string{so.TokenFile: "s3cret\n", so.CAFile: "CA"} {
		b, err := os.ReadFile(f)
		fi, serr := os.Stat(f)
		if err != nil || serr != nil || string(b) != content || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %q %v %v %v", f, b, fi.Mode(), err, serr)
		}
	}

	// A key taken out of the Secret is not used from the old file.
	secret.Data = map[string][]byte{"token": []byte("t2"), "tls.crt": []byte("C"), "tls.key": []byte("K")}
	if so, err = r.Volumes.Sink(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if so.CAFile != "" || so.CertFile == "" || so.KeyFile == "" {
		t.Errorf("after the Secret changed: %+v", so)
	}
	if _, err := os.Stat(filepath.Join(creds, "ca.crt")); !os.IsNotExist(err) {
		t.Errorf("ca.crt left behind: %v", err)
	}

	// Without credentials, and then without a sink: no files are kept, and
	// the empty URL removes the volume's sink.
	j.Spec.Sink.CredentialsSecretRef = nil
	if err := files.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if so, err = r.Volumes.Sink(ctx, "v"); err != nil || so.URL != "tls://sink.example:7070" || so.TokenFile != "" {
		t.Errorf("without credentials: %+v %v", so, err)
	}
	if _, err := os.Stat(creds); !os.IsNotExist(err) {
		t.Errorf("credentials kept: %v", err)
	}
	j.Spec.Sink, j.Spec.Duplex = nil, v1.Half
	if err := files.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if so, err = r.Volumes.Sink(ctx, "v"); err != nil || so == nil || *so != (attach.SinkOptions{}) {
		t.Errorf("without a sink: %+v %v", so, err)
	}

	// A Secret that is not there, or no API server to read it from.
	createJournal(t, files, "w", func(s *v1.JournalSpec) {
		s.Sink = &v1.SinkSpec{URL: "tcp://sink.example:7070", CredentialsSecretRef: &v1.SecretReference{Name: "gone", Namespace: "backup"}}
	})
	if _, err := r.Volumes.Sink(ctx, "w"); !apierrors.IsNotFound(err) {
		t.Errorf("missing Secret: %v", err)
	}
	r.Secrets = nil
	if _, err := r.Volumes.Sink(ctx, "w"); err == nil || !strings.Contains(err.Error(), "no API server") {
		t.Errorf("standalone: %v", err)
	}
}

func TestFiguresWithAndWithoutASink(t *testing.T) {
	var st v1.JournalStatus
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 7, FIFOUsed: 3 << 20})
	if st.BytesUnacked != 3<<20 || st.Lag != "3Mi" || st.SinkState != "" || st.LastAckTime == nil || len(st.Conditions) != 0 {
		t.Errorf("without a sink: %+v", st)
	}

	k := &attach.SinkStatus{URL: "tcp://sink:7070", Duplex: "Full", State: sink.CatchingUp, AckedTransid: 5,
		LagBytes: 2 << 20, LastAck: "2025-01-02T03:04:05.678Z"}
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5, FIFOUsed: 3 << 20, Sink: k})
	c := meta.FindStatusCondition(st.Conditions, ConditionSinkInSync)
	if st.SinkState != sink.CatchingUp || st.AckedTransid != 5 || st.BytesUnacked != 2<<20 || st.Lag != "2Mi" ||
		!st.LastAckTime.Equal(&metav1.Time{Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}) ||
		c == nil || c.Status != metav1.ConditionTrue || c.Reason != sink.CatchingUp {
		t.Errorf("catching up: %+v, condition %+v", st, c)
	}

	k.State, k.LastError = sink.OutOfSync, "the receiver lost transid 4"
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5, Sink: k})
	c = meta.FindStatusCondition(st.Conditions, ConditionSinkInSync)
	if st.SinkState != sink.OutOfSync || c == nil || c.Status != metav1.ConditionFalse || c.Reason != sink.OutOfSync ||
		!strings.Contains(c.Message, "the receiver lost transid 4") {
		t.Errorf("out of sync: %+v, condition %+v", st, c)
	}

	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5})
	if st.SinkState != "" || meta.FindStatusCondition(st.Conditions, ConditionSinkInSync) != nil {
		t.Errorf("sink removed: %+v", st)
	}
}

// A volume is staged with its Journal's sink, and a sink taken out of the
// Journal is taken off the volume at the next stage; a restart serves it
// again with the sink it had, whatever the Journal says meanwhile.
func TestStageWithTheJournalsSink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches through FUSE and a loop device")
	}
	r, files := newReconciler(t)
	n, ctx := r.Volumes, context.Background()
	// Nothing listens there: the sender keeps trying, the volume is served.
	createJournal(t, files, "v", func(s *v1.JournalSpec) { s.Sink = &v1.SinkSpec{URL: "tcp://127.0.0.1:1"} })
	if _, err := n.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	stage := Stage{StagingPath: staging, Block: true}
	sinkOf := func() *attach.SinkStatus {
		s, ok := n.Status("v")
		if !ok {
			t.Fatal("not attached")
		}
		return s.Sink
	}
	if err := n.StageVolume(ctx, "v", stage); err != nil {
		t.Fatal(err)
	}
	defer n.UnstageVolume("v", staging) // if the test stops early
	if k := sinkOf(); k == nil || k.URL != "tcp://127.0.0.1:1" || k.Duplex != "Half" {
		t.Fatalf("staged with sink %+v", k)
	}
	// The Journal's status shows the link.
	sinkInSync := func() (*v1.Journal, *metav1.Condition) {
		t.Helper()
		if _, err := r.Reconcile(ctx, "v"); err != nil {
			t.Fatal(err)
		}
		j, err := files.Get(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		return j, meta.FindStatusCondition(j.Status.Conditions, ConditionSinkInSync)
	}
	j, c := sinkInSync()
	if j.Status.SinkState != sink.Disconnected || c == nil || c.Status != metav1.ConditionFalse || c.Reason != sink.Disconnected {
		t.Errorf("status %+v, condition %+v", j.Status, c)
	}

	// A restart: the record stays, the attachment goes; the Journal loses
	// its sink meanwhile, which applies at the next stage, not here.
	if err := n.unstage("v", stage); err != nil {
		t.Fatal(err)
	}
	j.Spec.Sink = nil
	if err := files.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := n.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if k := sinkOf(); k == nil || k.URL != "tcp://127.0.0.1:1" {
		t.Fatalf("served again with sink %+v", k)
	}

	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	if err := n.StageVolume(ctx, "v", stage); err != nil {
		t.Fatal(err)
	}
	if k := sinkOf(); k != nil {
		t.Errorf("staged again with sink %+v after the Journal lost it", k)
	}
	if _, err := os.Stat(filepath.Join(n.Path("v"), attach.SinkFile)); !os.IsNotExist(err) {
		t.Errorf("sink settings kept: %v", err)
	}
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	if j, c := sinkInSync(); j.Status.SinkState != "" || c != nil {
		t.Errorf("unstaged: status %+v, condition %+v", j.Status, c)
	}
}
