package reconciler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/sink"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// DefaultRefresh is how often the figures of a staged volume are refreshed.
const DefaultRefresh = 5 * time.Second

// Reconciler brings the Journals of one node to their spec: it makes,
// grows and removes their images, and reports their state and figures.
type Reconciler struct {
	Store catalog.Store
	// Snapshots keeps the JournalSnapshots; AllSnapshots, if set, reads
	// those of every node (Snapshots may see only this node's), for
	// volumes restored from a Sink snapshot taken elsewhere.
	Snapshots    catalog.Snapshots
	AllSnapshots catalog.Snapshots
	Volumes      *host.Volumes
	NodeID       string
	Refresh      time.Duration
	// Fresh, if set, is Store reading from the API server itself rather
	// than a cache: Sync uses it.
	Fresh catalog.Store
	// Secrets, if set, reads the sinks' credentials Secrets (standalone has
	// none: a Journal naming one cannot be staged there).
	Secrets client.Reader
	// Recorder, if set, records events on Journals.
	Recorder record.EventRecorder

	claims sync.Map // volume -> [2]string: its claim's namespace and name
}

// Claim returns the namespace and name of the claim the volume was made
// for, as its Journal says; empty if it does not, or was not reconciled.
func (r *Reconciler) Claim(volume string) (namespace, name string) {
	if c, ok := r.claims.Load(volume); ok {
		return c.([2]string)[0], c.([2]string)[1]
	}
	return "", ""
}

// Reconcile acts on the Journal called name and returns when it wants to
// look again (0: when it changes).
func (r *Reconciler) Reconcile(ctx context.Context, name string) (time.Duration, error) {
	return r.reconcile(ctx, r.Store, name)
}

// reconcile is Reconcile reading and writing the Journal in store.
func (r *Reconciler) reconcile(ctx context.Context, store catalog.Store, name string) (time.Duration, error) {
	j, err := store.Get(ctx, name)
	if apierrors.IsNotFound(err) {
		r.claims.Delete(name)
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if ns, claim := j.Annotations[catalog.ClaimNamespaceAnnotation], j.Annotations[catalog.ClaimNameAnnotation]; ns != "" && claim != "" {
		r.claims.Store(name, [2]string{ns, claim})
	}
	if j.Spec.Node != r.NodeID {
		return 0, nil // another node's
	}
	// The volume's lock is held only around the work on this machine, never
	// across a call to the API server: CSI calls wait on it.
	if j.DeletionTimestamp != nil {
		return r.remove(ctx, store, j)
	}
	if controllerutil.AddFinalizer(j, v1.Finalizer) {
		if err := store.Update(ctx, j); err != nil {
			return 0, err
		}
	}
	o := volume.Options{Size: j.Spec.Capacity.Value()}
	if q := j.Spec.JournalSize; q != nil {
		o.JournalSize = q.Value()
	}
	if q := j.Spec.FIFOSize; q != nil {
		o.FIFOSize = int(q.Value())
	}
	if d := j.Spec.CommitInterval; d != nil {
		o.CommitInterval = d.Duration
	}
	if p := j.Spec.Provisioning; p != "" {
		o.Provisioning = volume.Provisioning(strings.ToLower(string(p)))
	}
	start := time.Now()
	// Only a Journal never made may be made: one that was made and is gone
	// is an error to report, not an empty volume to serve.
	made := j.Status.Capacity != nil
	var size int64
	switch src := j.Spec.Source; {
	case !made && src != nil && src.Journal != "":
		size, err = r.Volumes.EnsureFrom(ctx, name, src.Journal, o)
	case !made && src != nil && src.Snapshot != "" && !r.Volumes.Exists(name):
		var done func()
		if o.From, done, err = r.snapshotImage(ctx, name, src.Snapshot); err == nil {
			defer done()
		}
	}
	unlock := r.Volumes.Lock(name)
	if err == nil && size == 0 {
		size, err = r.Volumes.Ensure(ctx, name, o, !made)
	}
	s, attached := r.Volumes.Status(name)
	recorded := r.Volumes.Recorded(name)
	unlock()
	klog.V(4).InfoS("Ensured volume", "volume", name, "size", size, "took", time.Since(start), "err", err)
	next := j.Status.DeepCopy()
	next.ObservedGeneration = j.Generation
	if err != nil {
		reason := reasonOf(err)
		next.Phase = v1.PhaseFailed
		setReady(next, metav1.ConditionFalse, reason, err.Error())
		r.changes(j, next)
		if uerr := setStatus(ctx, store, j, next); uerr != nil {
			return 0, uerr
		}
		return 0, fmt.Errorf("volume %s: %w", name, err)
	}
	next.Capacity = resource.NewQuantity(size, resource.BinarySI)
	next.Provisioning = v1.Thick
	if r.Volumes.Provisioning(name) == volume.Thin {
		next.Provisioning = v1.Thin
	}
	setReady(next, metav1.ConditionTrue, v1.ReasonCreated, fmt.Sprintf("images of %d bytes on node %s", size, r.NodeID))
	next.Phase, next.Device = v1.PhaseReady, ""
	again := time.Duration(0)
	if recorded && !attached {
		// Staged for the CO, but not served: it could not be served again
		// after a restart. Deleting it must wait for an unstage.
		next.Phase = v1.PhaseDegraded
	}
	if attached {
		next.Phase, next.Device = v1.PhaseAttached, s.Device
		setFigures(next, s)
		if next.SinkState == sink.OutOfSync {
			next.Phase = v1.PhaseDegraded
		}
		if want, held := r.Volumes.Held(name); want {
			setHeld(next, held)
		} else {
			meta.RemoveStatusCondition(&next.Conditions, v1.ConditionConnectionHeld)
		}
		again = r.Refresh
		if again == 0 {
			again = DefaultRefresh
		}
	} else {
		next.FIFOSize, next.FIFOUsed, next.JournalUsed, next.BytesUnacked, next.Lag = 0, 0, 0, 0, ""
		noSink(next)
		meta.RemoveStatusCondition(&next.Conditions, v1.ConditionConnectionHeld)
		meta.RemoveStatusCondition(&next.Conditions, v1.ConditionSpaceAvailable)
	}
	r.changes(j, next)
	return again, setStatus(ctx, store, j, next)
}

// changes logs and records an event for each change of j's status to next
// that a person wants to know of.
func (r *Reconciler) changes(j *v1.Journal, next *v1.JournalStatus) {
	event := func(typ, reason, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		klog.InfoS("Journal changed", "journal", j.Name, "event", reason, "message", msg)
		if r.Recorder != nil {
			r.Recorder.Event(j, typ, reason, msg)
		}
	}
	was := j.Status
	served := func(p v1.Phase) bool { return p == v1.PhaseAttached || p == v1.PhaseDegraded }
	switch {
	case next.Phase == v1.PhaseFailed && was.Phase != v1.PhaseFailed:
		event(corev1.EventTypeWarning, v1.EventFailed, "%s", said(next, v1.ConditionReady))
	case next.Device != "" && was.Device != next.Device:
		event(corev1.EventTypeNormal, v1.EventAttached, "served as %s on node %s", next.Device, r.NodeID)
	case next.Device == "" && was.Device != "" && served(was.Phase):
		event(corev1.EventTypeNormal, v1.EventDetached, "no longer served on node %s", r.NodeID)
	}
	switch {
	case next.SinkState == sink.OutOfSync && was.SinkState != sink.OutOfSync:
		// It needs a new baseline; until then the volume is not protected
		// off site.
		event(corev1.EventTypeWarning, v1.EventSinkOutOfSync, "the sink is out of sync: %s", said(next, v1.ConditionSinkInSync))
	case next.SinkState == sink.CatchingUp && was.SinkState != sink.CatchingUp:
		event(corev1.EventTypeNormal, v1.EventSinkCatchingUp, "the sink is being brought up to date")
	case next.SinkState == sink.Connected && was.SinkState == sink.CatchingUp:
		event(corev1.EventTypeNormal, v1.EventSinkInSync, "the sink has every write again")
	}
	if meta.IsStatusConditionFalse(next.Conditions, v1.ConditionConnectionHeld) && !meta.IsStatusConditionFalse(was.Conditions, v1.ConditionConnectionHeld) {
		event(corev1.EventTypeWarning, v1.EventHolderGone, "%s", said(next, v1.ConditionConnectionHeld))
	}
	if meta.IsStatusConditionFalse(next.Conditions, v1.ConditionSpaceAvailable) && !meta.IsStatusConditionFalse(was.Conditions, v1.ConditionSpaceAvailable) {
		event(corev1.EventTypeWarning, v1.EventSpaceLow, "%s", said(next, v1.ConditionSpaceAvailable))
	}
	if next.Device != "" && was.Device == next.Device && next.SpaceErrors > was.SpaceErrors {
		event(corev1.EventTypeWarning, v1.EventOutOfSpace,
			"%d writes or grows were refused since the last report: node %s has no space for them", next.SpaceErrors-was.SpaceErrors, r.NodeID)
	}
	if next.Device != "" && was.Device == next.Device && next.FIFOStalls > was.FIFOStalls {
		event(corev1.EventTypeWarning, v1.EventJournalFull,
			"writers waited %d times for room in the FIFO since the last report: the journal falls behind", next.FIFOStalls-was.FIFOStalls)
	}
}

// said is what a condition of s says: its reason and message.
func said(s *v1.JournalStatus, typ string) string {
	c := meta.FindStatusCondition(s.Conditions, typ)
	if c == nil {
		return ""
	}
	return c.Reason + ": " + c.Message
}

// setFigures sets next, a copy of the Journal's status, to the figures of
// the attached volume: with a sink, what is not at the sink yet is the lag.
func setFigures(next *v1.JournalStatus, s attach.Status) {
	if int64(s.AckedTransid) != next.AckedTransid {
		now := metav1.Now()
		next.LastAckTime = &now
	}
	next.FIFOSize, next.FIFOUsed, next.FIFOStalls = int64(s.FIFOSize), int64(s.FIFOUsed), int64(s.FIFOStalls)
	next.AllocatedBytes, next.SpaceErrors = s.Allocated, int64(s.SpaceErrors)
	setSpace(next, s)
	next.JournalUsed = int64(s.JournalUsed)
	next.Transid, next.AckedTransid = int64(s.Transid), int64(s.AckedTransid)
	next.BytesUnacked = int64(s.FIFOUsed)
	if k := s.Sink; k != nil {
		next.SinkState = k.State
		next.BytesUnacked = int64(k.LagBytes)
		if t, err := time.Parse(time.RFC3339Nano, k.LastAck); err == nil {
			// Whole seconds, as the API keeps it: the same ack is no change.
			at := metav1.NewTime(t.Truncate(time.Second))
			next.LastAckTime = &at
		}
		c := metav1.Condition{Type: v1.ConditionSinkInSync, Status: metav1.ConditionTrue, Reason: k.State,
			Message: fmt.Sprintf("%s duplex to %s", k.Duplex, k.URL)}
		if k.State != sink.Connected && k.State != sink.CatchingUp {
			c.Status = metav1.ConditionFalse
			if k.LastError != "" {
				c.Message = fmt.Sprintf("%s: %s", k.URL, k.LastError)
			}
		}
		meta.SetStatusCondition(&next.Conditions, c)
	} else {
		noSink(next)
	}
	next.Lag = resource.NewQuantity(next.BytesUnacked, resource.BinarySI).String()
}

// setSpace sets the SpaceAvailable condition of an attached thin volume:
// one low on space is Degraded.
func setSpace(next *v1.JournalStatus, s attach.Status) {
	if s.Provisioning != volume.Thin {
		meta.RemoveStatusCondition(&next.Conditions, v1.ConditionSpaceAvailable)
		return
	}
	c := metav1.Condition{Type: v1.ConditionSpaceAvailable, Status: metav1.ConditionTrue, Reason: v1.ReasonEnoughSpace,
		Message: fmt.Sprintf("the node's file system has %d bytes free; the data image holds %d of %d", s.Available, s.Allocated, s.Size)}
	if s.SpaceLow {
		c.Status, c.Reason = metav1.ConditionFalse, v1.ReasonSpaceLow
		c.Message = fmt.Sprintf("the node's file system has %d bytes free, and the data image holds %d of %d: writes fail when it is full", s.Available, s.Allocated, s.Size)
		next.Phase = v1.PhaseDegraded
	}
	meta.SetStatusCondition(&next.Conditions, c)
}

// noSink clears the sink's state: there is no link to report.
func noSink(s *v1.JournalStatus) {
	s.SinkState = ""
	meta.RemoveStatusCondition(&s.Conditions, v1.ConditionSinkInSync)
}

// setHeld sets the ConnectionHeld condition of an attached volume: one no
// holder keeps is Degraded.
func setHeld(next *v1.JournalStatus, held bool) {
	c := metav1.Condition{Type: v1.ConditionConnectionHeld, Status: metav1.ConditionTrue, Reason: v1.ReasonHeld,
		Message: "the node pod's holder keeps the FUSE connection: the volume's I/O outlives the node plugin"}
	if !held {
		c.Status, c.Reason = metav1.ConditionFalse, v1.ReasonHolderGone
		c.Message = "no holder keeps the FUSE connection: the node plugin's death would fail the volume's I/O"
		next.Phase = v1.PhaseDegraded
	}
	meta.SetStatusCondition(&next.Conditions, c)
}

// SinkOptions returns the sink settings the Journal called name is staged
// with: its spec's sink and duplex, and the keys of its
// credentials Secret written into the volume directory. The caller holds
// the volume's lock.
func (r *Reconciler) SinkOptions(ctx context.Context, name string) (*attach.SinkOptions, error) {
	j, err := r.Store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	dir := volume.Layout(r.Volumes.Path(name)).SinkCredentials()
	k := j.Spec.Sink
	if k == nil {
		// No sink (any more): the volume stops streaming and holding its
		// journal for one, and keeps no credentials.
		return &attach.SinkOptions{}, os.RemoveAll(dir)
	}
	d, err := journal.ParseDuplex(string(j.Spec.Duplex))
	if err != nil {
		return nil, err
	}
	so := &attach.SinkOptions{URL: k.URL, Duplex: d}
	ref := k.CredentialsSecretRef
	if ref == nil {
		return so, os.RemoveAll(dir)
	}
	if r.Secrets == nil {
		return nil, fmt.Errorf("sink credentials Secret %s/%s: no API server to read it from", ref.Namespace, ref.Name)
	}
	var sec corev1.Secret
	if err := r.Secrets.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &sec); err != nil {
		return nil, fmt.Errorf("sink credentials Secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	return so, writeSinkCredentials(dir, sec.Data, so)
}

// writeSinkCredentials writes the keys of a sink's credentials Secret into
// dir, one file each (mode 0600), and points so at those it has.
func writeSinkCredentials(dir string, data map[string][]byte, so *attach.SinkOptions) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for key, file := range map[string]*string{"token": &so.TokenFile, "ca.crt": &so.CAFile, "tls.crt": &so.CertFile, "tls.key": &so.KeyFile} {
		path := filepath.Join(dir, key)
		b, ok := data[key]
		if !ok {
			// A key taken out of the Secret is not used from an old file.
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		if err := vfs.WriteFileAtomic(vfs.OS, path, b); err != nil {
			return err
		}
		*file = path
	}
	return nil
}

func setReady(s *v1.JournalStatus, st metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: st, Reason: reason, Message: msg})
}

// setStatus stores next unless nothing but the time would change.
func setStatus(ctx context.Context, store catalog.Store, j *v1.Journal, next *v1.JournalStatus) error {
	next.Updated = j.Status.Updated
	if equality.Semantic.DeepEqual(&j.Status, next) {
		return nil
	}
	now := metav1.Now()
	next.Updated = &now
	j.Status = *next
	return store.ApplyStatus(ctx, j)
}

func (r *Reconciler) remove(ctx context.Context, store catalog.Store, j *v1.Journal) (time.Duration, error) {
	if !controllerutil.ContainsFinalizer(j, v1.Finalizer) {
		return 0, nil
	}
	next := j.Status.DeepCopy()
	next.Phase = v1.PhaseDeleting
	unlock := r.Volumes.Lock(j.Name)
	err := r.Volumes.Remove(j.Name)
	unlock()
	if err != nil {
		reason := v1.ReasonError
		if errors.Is(err, host.ErrStaged) {
			reason = v1.ReasonStaged
		}
		setReady(next, metav1.ConditionFalse, reason, err.Error())
		if uerr := setStatus(ctx, store, j, next); uerr != nil {
			return 0, uerr
		}
		return 0, fmt.Errorf("remove volume %s: %w", j.Name, err)
	}
	klog.InfoS("Removed volume", "volume", j.Name)
	controllerutil.RemoveFinalizer(j, v1.Finalizer)
	return 0, store.Update(ctx, j)
}

// Sync reconciles the Journal called name now, retrying while its copy is
// behind (a conflict), for callers that must not return before its status
// says what they did.
func (r *Reconciler) Sync(ctx context.Context, name string) error {
	fresh := r.Store
	if r.Fresh != nil {
		fresh = r.Fresh
	}
	b := wait.Backoff{Duration: 10 * time.Millisecond, Factor: 2, Cap: time.Second, Steps: 10}
	return retry.OnError(b, apierrors.IsConflict, func() error {
		_, err := r.reconcile(ctx, fresh, name)
		return err
	})
}
