package reconciler

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/sink"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// ReconcileSnapshot acts on the JournalSnapshot called name: takes it
// once, reports it, and removes its image when it is deleted.
func (r *Reconciler) ReconcileSnapshot(ctx context.Context, name string) (time.Duration, error) {
	s, err := r.Snapshots.Get(ctx, name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if s.Spec.Node != r.NodeID {
		return 0, nil
	}
	if s.DeletionTimestamp != nil {
		if !controllerutil.ContainsFinalizer(s, v1.SnapshotFinalizer) {
			return 0, nil
		}
		if s.Spec.Kind == v1.SinkKind {
			if err := r.unpinSnapshot(ctx, s); err != nil {
				return 0, fmt.Errorf("unpin snapshot %s: %w", name, err)
			}
		} else if err := r.Volumes.RemoveSnapshot(name); err != nil {
			return 0, fmt.Errorf("remove snapshot %s: %w", name, err)
		}
		klog.InfoS("Removed snapshot", "snapshot", name, "kind", s.Spec.Kind)
		controllerutil.RemoveFinalizer(s, v1.SnapshotFinalizer)
		return 0, r.Snapshots.Update(ctx, s)
	}
	if controllerutil.AddFinalizer(s, v1.SnapshotFinalizer) {
		if err := r.Snapshots.Update(ctx, s); err != nil {
			return 0, err
		}
	}
	next := s.Status.DeepCopy()
	next.ObservedGeneration = s.Generation
	start := time.Now()
	var snap host.Snapshot
	if s.Spec.Kind == v1.SinkKind {
		if s.Status.ReadyToUse {
			return 0, nil // pinned: nothing changes it
		}
		snap, err = r.pinSnapshot(ctx, s)
		if err == nil {
			klog.InfoS("Pinned snapshot at the receiver", "snapshot", name, "volume", s.Spec.Source, "sink", s.Spec.Sink.URL, "transid", snap.Transid, "took", time.Since(start))
		}
	} else {
		snap, err = r.Volumes.Snapshot(name)
	}
	switch {
	case s.Spec.Kind == v1.SinkKind:
	case errors.Is(err, host.ErrNoSnapshot) && s.Status.ReadyToUse:
		err = fmt.Errorf("its image is gone from node %s", r.NodeID)
	case errors.Is(err, host.ErrNoSnapshot):
		snap, err = r.Volumes.TakeSnapshot(ctx, s.Spec.Source, name)
		if err == nil {
			klog.InfoS("Took snapshot", "snapshot", name, "volume", s.Spec.Source, "transid", snap.Transid, "took", time.Since(start))
		}
	}
	if errors.Is(err, errBehind) {
		// Not a failure: the receiver is catching up (or still copying its
		// baseline). The controller waits on.
		next.Phase = v1.PhasePending
		meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: v1.ReasonCatchingUp, Message: err.Error()})
		return time.Second, r.setSnapshotStatus(ctx, s, next)
	}
	if err != nil {
		reason := reasonOf(err)
		next.Phase, next.ReadyToUse = v1.PhaseFailed, false
		meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: err.Error()})
		if s.Status.Phase != v1.PhaseFailed && r.Recorder != nil {
			r.Recorder.Event(s, corev1.EventTypeWarning, v1.EventFailed, err.Error())
		}
		if uerr := r.setSnapshotStatus(ctx, s, next); uerr != nil {
			return 0, uerr
		}
		if reason == v1.ReasonSourceNotFound || reason == v1.ReasonNotKept {
			return 0, nil // until the spec changes, which it cannot
		}
		return 0, fmt.Errorf("snapshot %s: %w", name, err)
	}
	taken := metav1.NewTime(snap.TakenAt)
	next.Phase, next.ReadyToUse = v1.PhaseReady, true
	next.Size = resource.NewQuantity(snap.Size, resource.BinarySI)
	next.Transid = int64(snap.Transid)
	next.TakenAt = &taken
	msg := fmt.Sprintf("an image of %s at transaction id %d on node %s", s.Spec.Source, snap.Transid, r.NodeID)
	if s.Spec.Kind == v1.SinkKind {
		msg = fmt.Sprintf("transaction id %d of %s pinned at %s", snap.Transid, s.Spec.Source, s.Spec.Sink.URL)
	} else {
		next.AllocatedBytes = r.Volumes.SnapshotAllocated(name)
	}
	meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonCreated, Message: msg})
	return 0, r.setSnapshotStatus(ctx, s, next)
}

// setSnapshotStatus stores next unless nothing would change.
func (r *Reconciler) setSnapshotStatus(ctx context.Context, s *v1.JournalSnapshot, next *v1.JournalSnapshotStatus) error {
	if equality.Semantic.DeepEqual(&s.Status, next) {
		return nil
	}
	s.Status = *next
	return r.Snapshots.ApplyStatus(ctx, s)
}

// errBehind: the receiver does not have every write acknowledged before
// a Sink snapshot was asked for yet; the snapshot is tried again.
var errBehind = errors.New("the receiver does not have the stream that far yet")

// pinSnapshot pins a Sink snapshot's point at its receiver under the
// snapshot's name: its spec's point, or the newest the receiver has once
// that holds every id the source (if staged here) had handed out. It
// returns the id pinned and the source's size.
func (r *Reconciler) pinSnapshot(ctx context.Context, s *v1.JournalSnapshot) (host.Snapshot, error) {
	snap := host.Snapshot{Source: s.Spec.Source, TakenAt: time.Now().UTC()}
	j, err := r.Store.Get(ctx, s.Spec.Source)
	if apierrors.IsNotFound(err) {
		return snap, fmt.Errorf("%w: %s", host.ErrNotFound, s.Spec.Source)
	}
	if err != nil {
		return snap, err
	}
	var want uint64
	p := sink.Point{Latest: true}
	switch pt := s.Spec.Point; {
	case pt != nil && pt.Time != nil:
		p = sink.AtTime(pt.Time.Time)
	case pt != nil:
		p = sink.Point{Transid: uint64(pt.Transid)}
	default:
		if st, ok := r.Volumes.Status(s.Spec.Source); ok {
			want = st.Transid
		}
	}
	// A receiver given a volume never written keeps every point before
	// it: all zeros. A point before the volume was made is no point of it.
	if made := j.CreationTimestamp.Time; !p.Latest && sink.TransidTime(p.Transid).Before(made) {
		return snap, fmt.Errorf("%w: %s is before volume %s was made (%s); the receiver keeps no point before that",
			sink.ErrNotKept, sink.TransidTime(p.Transid).Format(time.RFC3339Nano), s.Spec.Source, made.UTC().Format(time.RFC3339))
	}
	if j.Status.Capacity == nil {
		return snap, fmt.Errorf("%w: %s", host.ErrNotFound, s.Spec.Source)
	}
	snap.Size = j.Status.Capacity.Value()
	err = r.withSink(ctx, "snapshot-"+s.Name, s.Spec.Sink, func(cl *sink.Client) error {
		t, err := cl.Pin(ctx, s.Spec.Source, s.Name, p)
		if p.Latest && errors.Is(err, sink.ErrNotKept) { // no whole image yet
			return fmt.Errorf("%w: %w", errBehind, err)
		}
		if err == nil && t < want {
			err = errors.Join(fmt.Errorf("%w: it has id %d, not yet %d", errBehind, t, want), cl.Unpin(ctx, s.Spec.Source, s.Name))
		}
		snap.Transid = t
		return err
	})
	return snap, err
}

func (r *Reconciler) unpinSnapshot(ctx context.Context, s *v1.JournalSnapshot) error {
	return r.withSink(ctx, "snapshot-"+s.Name, s.Spec.Sink, func(cl *sink.Client) error {
		return cl.Unpin(ctx, s.Spec.Source, s.Name)
	})
}

// withSink calls f with a client of the receiver k names, its credentials
// Secret's keys written into a work directory called work for the time
// of the call.
func (r *Reconciler) withSink(ctx context.Context, work string, k *v1.SinkSpec, f func(*sink.Client) error) error {
	so := &attach.SinkOptions{URL: k.URL}
	if ref := k.CredentialsSecretRef; ref != nil {
		if r.Secrets == nil {
			return fmt.Errorf("the sink's credentials Secret %s/%s cannot be read here (standalone)", ref.Namespace, ref.Name)
		}
		var sec corev1.Secret
		if err := r.Secrets.Get(ctx, client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}, &sec); err != nil {
			return fmt.Errorf("sink credentials Secret %s/%s: %w", ref.Namespace, ref.Name, err)
		}
		dir, done, err := r.Volumes.WorkDir(work)
		if err != nil {
			return err
		}
		defer done()
		if err := writeSinkCredentials(dir, sec.Data, so); err != nil {
			return err
		}
	}
	cl, err := so.Client()
	if err != nil {
		return err
	}
	return f(cl)
}

// restoreFrom restores the image of a Sink snapshot from its receiver into
// a work directory for the volume name, and returns its path and the
// directory's removal.
func (r *Reconciler) restoreFrom(ctx context.Context, name string, s *v1.JournalSnapshot) (string, func(), error) {
	dir, done, err := r.Volumes.WorkDir("restore-" + name)
	if err != nil {
		return "", nil, err
	}
	img := filepath.Join(dir, "image")
	start := time.Now()
	err = r.withSink(ctx, "restore-creds-"+name, s.Spec.Sink, func(cl *sink.Client) error {
		_, err := cl.RestoreFrom(ctx, s.Spec.Source, sink.Point{Transid: uint64(s.Status.Transid)}, img)
		return err
	})
	if err != nil {
		done()
		return "", nil, fmt.Errorf("restoring snapshot %s from %s: %w", s.Name, s.Spec.Sink.URL, err)
	}
	klog.InfoS("Restored a snapshot from the receiver", "volume", name, "snapshot", s.Name, "transid", s.Status.Transid, "took", time.Since(start))
	return img, done, nil
}

// snapshotImage returns the image a new volume called name starts as, and
// its removal when done: a local snapshot's on this node, or a Sink
// snapshot's restored from its receiver.
func (r *Reconciler) snapshotImage(ctx context.Context, name, snapshot string) (string, func(), error) {
	_, err := r.Volumes.Snapshot(snapshot)
	if err == nil {
		return r.Volumes.SnapshotImage(snapshot), func() {}, nil
	}
	if !errors.Is(err, host.ErrNoSnapshot) {
		return "", nil, err
	}
	all := r.AllSnapshots
	if all == nil {
		all = r.Snapshots
	}
	s, gerr := all.Get(ctx, snapshot)
	switch {
	case apierrors.IsNotFound(gerr):
		return "", nil, err
	case gerr != nil:
		return "", nil, gerr
	case s.Spec.Kind != v1.SinkKind:
		return "", nil, fmt.Errorf("%w: %s is a local snapshot on node %s", host.ErrNoSnapshot, snapshot, s.Spec.Node)
	case !s.Status.ReadyToUse:
		return "", nil, fmt.Errorf("snapshot %s is not pinned at its receiver yet", snapshot)
	}
	return r.restoreFrom(ctx, name, s)
}

// reasonOf is the reason of the Ready condition of what failed with err;
// the controller turns it into a gRPC code.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, syscall.ENOSPC):
		return v1.ReasonOutOfSpace
	case errors.Is(err, host.ErrNotFound), errors.Is(err, host.ErrNoSnapshot), errors.Is(err, sink.ErrNoVolume):
		return v1.ReasonSourceNotFound
	case errors.Is(err, sink.ErrNotKept):
		return v1.ReasonNotKept
	case errors.Is(err, sink.ErrAuthentication):
		return v1.ReasonRefused
	}
	return v1.ReasonError
}
