package reconciler

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/sink"
	"github.com/jvol-io/jvol/internal/volume"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

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
	files, err := catalog.OpenFiles(filepath.Join(t.TempDir(), "journals"), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Store: files, Volumes: newVolumes(t), NodeID: "n1"}
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
	creds := volume.Layout(r.Volumes.Path("v")).SinkCredentials()
	secret := &corev1.Secret{Data: map[string][]byte{"token": []byte("s3cret\n"), "ca.crt": []byte("CA")}}
	r.Secrets = secrets{{Namespace: "backup", Name: "creds"}: secret}
	j := createJournal(t, files, "v", func(s *v1.JournalSpec) {
		s.Duplex = v1.Full
		s.Sink = &v1.SinkSpec{URL: "tls://sink.example:7070", CredentialsSecretRef: &v1.SecretReference{Name: "creds", Namespace: "backup"}}
	})
	so, err := r.SinkOptions(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	want := attach.SinkOptions{URL: "tls://sink.example:7070", Duplex: journal.Full,
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
	if so, err = r.SinkOptions(ctx, "v"); err != nil {
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
	if so, err = r.SinkOptions(ctx, "v"); err != nil || so.URL != "tls://sink.example:7070" || so.TokenFile != "" {
		t.Errorf("without credentials: %+v %v", so, err)
	}
	if _, err := os.Stat(creds); !os.IsNotExist(err) {
		t.Errorf("credentials kept: %v", err)
	}
	j.Spec.Sink, j.Spec.Duplex = nil, v1.Half
	if err := files.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if so, err = r.SinkOptions(ctx, "v"); err != nil || so == nil || *so != (attach.SinkOptions{}) {
		t.Errorf("without a sink: %+v %v", so, err)
	}

	// A Secret that is not there, or no API server to read it from.
	createJournal(t, files, "w", func(s *v1.JournalSpec) {
		s.Sink = &v1.SinkSpec{URL: "tcp://sink.example:7070", CredentialsSecretRef: &v1.SecretReference{Name: "gone", Namespace: "backup"}}
	})
	if _, err := r.SinkOptions(ctx, "w"); !apierrors.IsNotFound(err) {
		t.Errorf("missing Secret: %v", err)
	}
	r.Secrets = nil
	if _, err := r.SinkOptions(ctx, "w"); err == nil || !strings.Contains(err.Error(), "no API server") {
		t.Errorf("standalone: %v", err)
	}
}

func TestFiguresWithAndWithoutASink(t *testing.T) {
	var st v1.JournalStatus
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 7, FIFOUsed: 3 << 20})
	if st.BytesUnacked != 3<<20 || st.Lag != "3Mi" || st.SinkState != "" || st.LastAckTime == nil || len(st.Conditions) != 0 {
		t.Errorf("without a sink: %+v", st)
	}

	k := &attach.SinkStatus{URL: "tcp://sink:7070", Duplex: journal.Full, State: sink.CatchingUp, AckedTransid: 5,
		LagBytes: 2 << 20, LastAck: "2025-01-02T03:04:05.678Z"}
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5, FIFOUsed: 3 << 20, Sink: k})
	c := meta.FindStatusCondition(st.Conditions, v1.ConditionSinkInSync)
	if st.SinkState != sink.CatchingUp || st.AckedTransid != 5 || st.BytesUnacked != 2<<20 || st.Lag != "2Mi" ||
		!st.LastAckTime.Equal(&metav1.Time{Time: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}) ||
		c == nil || c.Status != metav1.ConditionTrue || c.Reason != sink.CatchingUp {
		t.Errorf("catching up: %+v, condition %+v", st, c)
	}

	k.State, k.LastError = sink.OutOfSync, "the receiver lost transid 4"
	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5, Sink: k})
	c = meta.FindStatusCondition(st.Conditions, v1.ConditionSinkInSync)
	if st.SinkState != sink.OutOfSync || c == nil || c.Status != metav1.ConditionFalse || c.Reason != sink.OutOfSync ||
		!strings.Contains(c.Message, "the receiver lost transid 4") {
		t.Errorf("out of sync: %+v, condition %+v", st, c)
	}

	setFigures(&st, attach.Status{Transid: 9, AckedTransid: 5})
	if st.SinkState != "" || meta.FindStatusCondition(st.Conditions, v1.ConditionSinkInSync) != nil {
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
	stage := host.Stage{StagingPath: staging, Block: true}
	sinkOf := func() *attach.SinkStatus {
		s, ok := n.Status("v")
		if !ok {
			t.Fatal("not attached")
		}
		return s.Sink
	}
	// Staged as the CSI node service stages it: with the Journal's sink.
	stageWithSink := func() error {
		so, err := r.SinkOptions(ctx, "v")
		if err != nil {
			return err
		}
		return n.StageVolume("v", stage, so)
	}
	if err := stageWithSink(); err != nil {
		t.Fatal(err)
	}
	defer n.UnstageVolume("v", staging) // if the test stops early
	if k := sinkOf(); k == nil || k.URL != "tcp://127.0.0.1:1" || k.Duplex != journal.Half {
		t.Fatalf("staged with sink %+v", k)
	}
	// The Journal's status shows the link.
	sinkInSync := func() (*v1.Journal, *metav1.Condition) {
		t.Helper()
		j := reconciled(t, r, files, "v")
		return j, meta.FindStatusCondition(j.Status.Conditions, v1.ConditionSinkInSync)
	}
	j, c := sinkInSync()
	if j.Status.SinkState != sink.Disconnected || c == nil || c.Status != metav1.ConditionFalse || c.Reason != sink.Disconnected {
		t.Errorf("status %+v, condition %+v", j.Status, c)
	}

	// A restart: the record stays, the attachment goes; the Journal loses
	// its sink meanwhile, which applies at the next stage, not here.
	if err := n.Release("v"); err != nil {
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
	if err := stageWithSink(); err != nil {
		t.Fatal(err)
	}
	if k := sinkOf(); k != nil {
		t.Errorf("staged again with sink %+v after the Journal lost it", k)
	}
	if _, err := os.Stat(volume.Layout(n.Path("v")).Sink()); !os.IsNotExist(err) {
		t.Errorf("sink settings kept: %v", err)
	}
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	if j, c := sinkInSync(); j.Status.SinkState != "" || c != nil {
		t.Errorf("unstaged: status %+v, condition %+v", j.Status, c)
	}
}

// reconciled reconciles the Journal called name and returns it.
func reconciled(t *testing.T, r *Reconciler, files *catalog.Files, name string) *v1.Journal {
	t.Helper()
	if _, err := r.Reconcile(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	j, err := files.Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func newVolumes(t *testing.T) *host.Volumes {
	t.Helper()
	v, err := host.New(host.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// holderFake keeps connections, or refuses them with err.
type holderFake struct{ err error }

func (h holderFake) Put(string, *os.File) error { return h.err }
func (h holderFake) Drop(string) error          { return nil }

// An attached volume's Journal says whether a holder keeps its FUSE
// connection: the holder's death makes it Degraded with one Warning event,
// a holder that takes the connection again makes it Attached.
func TestJournalSaysWhetherItsConnectionIsHeld(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches through FUSE and a loop device")
	}
	files, err := catalog.OpenFiles(filepath.Join(t.TempDir(), "journals"), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := host.New(host.Config{StateDir: t.TempDir(), Holder: holderFake{}})
	if err != nil {
		t.Fatal(err)
	}
	events := record.NewFakeRecorder(10)
	r := &Reconciler{Store: files, Volumes: n, NodeID: "n1", Recorder: events}
	ctx := context.Background()
	createJournal(t, files, "v", func(*v1.JournalSpec) {})
	if _, err := n.Ensure(ctx, "v", volume.Options{Size: 8 << 20, JournalSize: volume.MinJournalSize}, true); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	if err := n.StageVolume("v", host.Stage{StagingPath: staging, Block: true}, nil); err != nil {
		t.Fatal(err)
	}
	defer n.UnstageVolume("v", staging)
	// check reconciles, and wants the phase, the condition, and the events
	// (type and reason) recorded since the last check.
	check := func(when string, phase v1.Phase, status metav1.ConditionStatus, reason string, want ...string) {
		t.Helper()
		j := reconciled(t, r, files, "v")
		c := meta.FindStatusCondition(j.Status.Conditions, v1.ConditionConnectionHeld)
		if j.Status.Phase != phase || (c == nil) != (status == "") || c != nil && (c.Status != status || c.Reason != reason) {
			t.Errorf("%s: phase %s, condition %+v; want %s, %s %s", when, j.Status.Phase, c, phase, status, reason)
		}
		if got := recorded(events); !slices.Equal(got, want) {
			t.Errorf("%s: events %q, want %q", when, got, want)
		}
	}
	check("held", v1.PhaseAttached, metav1.ConditionTrue, v1.ReasonHeld, "Normal "+v1.EventAttached)
	n.HolderGone()
	check("holder gone", v1.PhaseDegraded, metav1.ConditionFalse, v1.ReasonHolderGone, "Warning "+v1.EventHolderGone)
	check("still gone", v1.PhaseDegraded, metav1.ConditionFalse, v1.ReasonHolderGone)
	n.SetHolder(holderFake{})
	check("a holder again", v1.PhaseAttached, metav1.ConditionTrue, v1.ReasonHeld)
	n.SetHolder(holderFake{err: errors.New("refused")})
	check("a holder that refuses", v1.PhaseDegraded, metav1.ConditionFalse, v1.ReasonHolderGone, "Warning "+v1.EventHolderGone)
	if err := n.UnstageVolume("v", staging); err != nil {
		t.Fatal(err)
	}
	check("unstaged", v1.PhaseReady, "", "", "Normal "+v1.EventDetached)
}

// recorded returns the type and reason of each event recorded, and takes
// them.
func recorded(events *record.FakeRecorder) []string {
	var got []string
	for {
		select {
		case e := <-events.Events:
			f := strings.Fields(e)
			got = append(got, strings.Join(f[:min(2, len(f))], " "))
		default:
			return got
		}
	}
}

// staleStore reads an old copy of the Journal, as the node's cache does
// just after something wrote it.
type staleStore struct {
	catalog.Store
	stale *v1.Journal
}

func (s staleStore) Get(context.Context, string) (*v1.Journal, error) { return s.stale.DeepCopy(), nil }

// The node writes the status from what may be an old read (its cache):
// the write must not fail for it, since the node owns the status.
func TestStatusFromAStaleReadIsWritten(t *testing.T) {
	r, files := newReconciler(t)
	ctx := context.Background()
	j := createJournal(t, files, "v", func(*v1.JournalSpec) {})
	j.Finalizers = []string{v1.Finalizer} // as the controller makes it
	if err := files.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	stale := j.DeepCopy()
	// Someone else writes it meanwhile: the controller's Pending, say.
	j.Status.Phase = v1.PhasePending
	if err := files.UpdateStatus(ctx, j); err != nil {
		t.Fatal(err)
	}
	r.Store = staleStore{Store: files, stale: stale}
	if _, err := r.Reconcile(ctx, "v"); err != nil {
		t.Fatalf("reconcile from a stale read: %v", err)
	}
	if j, err := files.Get(ctx, "v"); err != nil || j.Status.Phase != v1.PhaseReady {
		t.Errorf("status %+v, %v; want Ready", j.Status, err)
	}
}

// Each change a person wants to know of is one event.
func TestChangesAreEvents(t *testing.T) {
	events := record.NewFakeRecorder(10)
	r := &Reconciler{NodeID: "n1", Recorder: events}
	attached := v1.JournalStatus{Phase: v1.PhaseAttached, Device: "/dev/loop3", FIFOStalls: 2}
	for _, c := range []struct {
		name      string
		was, next v1.JournalStatus
		want      []string
	}{
		{"attached", v1.JournalStatus{Phase: v1.PhaseReady}, attached, []string{"Normal " + v1.EventAttached}},
		{"detached", attached, v1.JournalStatus{Phase: v1.PhaseReady}, []string{"Normal " + v1.EventDetached}},
		{"no change", attached, attached, nil},
		{"writers waited", attached, func() v1.JournalStatus { s := attached; s.FIFOStalls = 5; return s }(), []string{"Warning " + v1.EventJournalFull}},
		{"stalls of a server before", attached, func() v1.JournalStatus { s := attached; s.FIFOStalls = 0; return s }(), nil},
		{"sink catching up", func() v1.JournalStatus { s := attached; s.SinkState = sink.OutOfSync; return s }(),
			func() v1.JournalStatus { s := attached; s.SinkState = sink.CatchingUp; return s }(), []string{"Normal " + v1.EventSinkCatchingUp}},
		{"sink in sync", func() v1.JournalStatus { s := attached; s.SinkState = sink.CatchingUp; return s }(),
			func() v1.JournalStatus { s := attached; s.SinkState = sink.Connected; return s }(), []string{"Normal " + v1.EventSinkInSync}},
		{"sink out of sync", attached, func() v1.JournalStatus { s := attached; s.SinkState = sink.OutOfSync; return s }(),
			[]string{"Warning " + v1.EventSinkOutOfSync}},
		{"holder gone", attached, func() v1.JournalStatus {
			s := attached
			s.Conditions = []metav1.Condition{{Type: v1.ConditionConnectionHeld, Status: metav1.ConditionFalse, Reason: v1.ReasonHolderGone}}
			return s
		}(), []string{"Warning " + v1.EventHolderGone}},
		{"failed", v1.JournalStatus{Phase: v1.PhaseReady}, v1.JournalStatus{Phase: v1.PhaseFailed}, []string{"Warning " + v1.EventFailed}},
		{"space low", attached, func() v1.JournalStatus {
			s := attached
			s.Conditions = []metav1.Condition{{Type: v1.ConditionSpaceAvailable, Status: metav1.ConditionFalse, Reason: v1.ReasonSpaceLow}}
			return s
		}(), []string{"Warning " + v1.EventSpaceLow}},
		{"writes refused", attached, func() v1.JournalStatus { s := attached; s.SpaceErrors = 3; return s }(), []string{"Warning " + v1.EventOutOfSpace}},
	} {
		r.changes(&v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: "v"}, Status: c.was}, &c.next)
		if got := recorded(events); !slices.Equal(got, c.want) {
			t.Errorf("%s: events %q, want %q", c.name, got, c.want)
		}
	}
}

// A volume the node cannot make is Failed, with a Warning event saying
// why, once.
func TestFailureIsAnEvent(t *testing.T) {
	r, files := newReconciler(t)
	events := record.NewFakeRecorder(10)
	r.Recorder = events
	createJournal(t, files, "v", func(s *v1.JournalSpec) { s.Capacity = resource.MustParse("1Pi") })
	for i, want := range [][]string{{"Warning " + v1.EventFailed}, nil} {
		if _, err := r.Reconcile(context.Background(), "v"); err == nil {
			t.Fatal("a volume of 1 PiB was made")
		}
		if got := recorded(events); !slices.Equal(got, want) {
			t.Errorf("reconcile %d: events %q, want %q", i, got, want)
		}
	}
}

// An attached thin volume low on space is Degraded, with the reason; a
// thick one never has the condition.
func TestSpaceLowDegradesAThinVolume(t *testing.T) {
	for _, c := range []struct {
		s     attach.Status
		cond  metav1.ConditionStatus // "": none
		phase v1.Phase
	}{
		{attach.Status{Provisioning: volume.Thick, SpaceLow: true}, "", v1.PhaseAttached},
		{attach.Status{Provisioning: volume.Thin}, metav1.ConditionTrue, v1.PhaseAttached},
		{attach.Status{Provisioning: volume.Thin, SpaceLow: true}, metav1.ConditionFalse, v1.PhaseDegraded},
	} {
		next := v1.JournalStatus{Phase: v1.PhaseAttached}
		setSpace(&next, c.s)
		got := metav1.ConditionStatus("")
		if cond := meta.FindStatusCondition(next.Conditions, v1.ConditionSpaceAvailable); cond != nil {
			got = cond.Status
		}
		if got != c.cond || next.Phase != c.phase {
			t.Errorf("%s, low %v: condition %q, phase %s; want %q, %s", c.s.Provisioning, c.s.SpaceLow, got, next.Phase, c.cond, c.phase)
		}
	}
}

// A Sink snapshot of a point before its volume was made is not kept (a
// receiver given a volume never written would restore it all zeros),
// whatever the receiver says: it is not asked.
func TestASinkPointBeforeTheVolumeIsNotKept(t *testing.T) {
	r, files := newReconciler(t)
	j := createJournal(t, files, "v", func(s *v1.JournalSpec) { s.Sink = &v1.SinkSpec{URL: "tcp://127.0.0.1:1"} })
	made := j.CreationTimestamp.Time
	for _, p := range []v1.SnapshotPoint{
		{Time: &metav1.Time{Time: made.Add(-24 * time.Hour)}},
		{Transid: int64(journal.ClockTransid(made.Add(-time.Second)))},
	} {
		s := &v1.JournalSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "early"},
			Spec: v1.JournalSnapshotSpec{Source: "v", Node: "n1", Kind: v1.SinkKind, Sink: j.Spec.Sink, Point: &p}}
		_, err := r.pinSnapshot(context.Background(), s)
		if !errors.Is(err, sink.ErrNotKept) || reasonOf(err) != v1.ReasonNotKept || !strings.Contains(err.Error(), "before volume v was made") {
			t.Errorf("point %+v: %v (reason %s)", p, err, reasonOf(err))
		}
	}
}
