package reconciler

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/jvol-io/jvol/internal/host"
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
		if err := r.Volumes.RemoveSnapshot(name); err != nil {
			return 0, fmt.Errorf("remove snapshot %s: %w", name, err)
		}
		klog.InfoS("Removed snapshot", "snapshot", name)
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
	snap, err := r.Volumes.Snapshot(name)
	switch {
	case errors.Is(err, host.ErrNoSnapshot) && s.Status.ReadyToUse:
		err = fmt.Errorf("its image is gone from node %s", r.NodeID)
	case errors.Is(err, host.ErrNoSnapshot):
		snap, err = r.Volumes.TakeSnapshot(ctx, s.Spec.Source, name)
		if err == nil {
			klog.InfoS("Took snapshot", "snapshot", name, "volume", s.Spec.Source, "transid", snap.Transid, "took", time.Since(start))
		}
	}
	if err != nil {
		reason := v1.ReasonError
		switch {
		case errors.Is(err, syscall.ENOSPC):
			reason = v1.ReasonOutOfSpace
		case errors.Is(err, host.ErrNotFound):
			reason = v1.ReasonSourceNotFound
		}
		next.Phase, next.ReadyToUse = v1.PhaseFailed, false
		meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionFalse, Reason: reason, Message: err.Error()})
		if s.Status.Phase != v1.PhaseFailed && r.Recorder != nil {
			r.Recorder.Event(s, corev1.EventTypeWarning, v1.EventFailed, err.Error())
		}
		if uerr := r.setSnapshotStatus(ctx, s, next); uerr != nil {
			return 0, uerr
		}
		if reason == v1.ReasonSourceNotFound {
			return 0, nil // until the spec changes, which it cannot
		}
		return 0, fmt.Errorf("snapshot %s: %w", name, err)
	}
	taken := metav1.NewTime(snap.TakenAt)
	next.Phase, next.ReadyToUse = v1.PhaseReady, true
	next.Size = resource.NewQuantity(snap.Size, resource.BinarySI)
	next.Transid = int64(snap.Transid)
	next.TakenAt = &taken
	next.AllocatedBytes = r.Volumes.SnapshotAllocated(name)
	meta.SetStatusCondition(&next.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: metav1.ConditionTrue, Reason: v1.ReasonCreated,
		Message: fmt.Sprintf("an image of %s at transaction id %d on node %s", s.Spec.Source, snap.Transid, r.NodeID)})
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
