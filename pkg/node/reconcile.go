package node

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
	"github.com/jvol-io/jvol/pkg/catalog"
	"github.com/jvol-io/jvol/pkg/volume"
)

// Reasons of the Ready condition; the controller turns them into gRPC codes.
const (
	ReasonCreated    = "Created"
	ReasonOutOfSpace = "OutOfSpace"
	ReasonStaged     = "Staged"
	ReasonError      = "Error"
)

// DefaultRefresh is how often the figures of a staged volume are refreshed.
const DefaultRefresh = 5 * time.Second

// Reconciler brings the Journals of one node to their spec: it makes,
// grows and removes their images, and reports their state and figures.
type Reconciler struct {
	Store   catalog.Store
	Volumes *Node
	NodeID  string
	Refresh time.Duration
	// Fresh, if set, is Store reading from the API server itself rather
	// than a cache: Sync uses it.
	Fresh catalog.Store
}

// Reconcile acts on the Journal called name and returns when it wants to
// look again (0: when it changes).
func (r *Reconciler) Reconcile(ctx context.Context, name string) (time.Duration, error) {
	j, err := r.Store.Get(ctx, name)
	if apierrors.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if j.Spec.Node != r.NodeID {
		return 0, nil // another node's
	}
	// The volume's lock is held only around the work on this machine, never
	// across a call to the API server: CSI calls wait on it.
	if j.DeletionTimestamp != nil {
		return r.remove(ctx, j)
	}
	if controllerutil.AddFinalizer(j, v1.Finalizer) {
		if err := r.Store.Update(ctx, j); err != nil {
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
	start := time.Now()
	// Only a Journal never made may be made: one that was made and is gone
	// is an error to report, not an empty volume to serve.
	made := j.Status.Capacity != nil
	unlock := r.Volumes.Lock(name)
	size, err := r.Volumes.Ensure(ctx, name, o, !made)
	s, attached := r.Volumes.Status(name)
	recorded := r.Volumes.Recorded(name)
	unlock()
	klog.V(4).InfoS("Ensured volume", "volume", name, "size", size, "took", time.Since(start), "err", err)
	next := j.Status.DeepCopy()
	next.ObservedGeneration = j.Generation
	if err != nil {
		reason := ReasonError
		if errors.Is(err, syscall.ENOSPC) {
			reason = ReasonOutOfSpace
		}
		next.Phase = v1.PhaseFailed
		setReady(next, metav1.ConditionFalse, reason, err.Error())
		if uerr := r.setStatus(ctx, j, next); uerr != nil {
			return 0, uerr
		}
		return 0, fmt.Errorf("volume %s: %w", name, err)
	}
	next.Capacity = resource.NewQuantity(size, resource.BinarySI)
	setReady(next, metav1.ConditionTrue, ReasonCreated, fmt.Sprintf("images of %d bytes on node %s", size, r.NodeID))
	next.Phase, next.Device = v1.PhaseReady, ""
	again := time.Duration(0)
	if recorded && !attached {
		// Staged for the CO, but not served: it could not be served again
		// after a restart. Deleting it must wait for an unstage.
		next.Phase = v1.PhaseDegraded
	}
	if attached {
		next.Phase, next.Device = v1.PhaseAttached, s.Device
		next.FIFOSize, next.FIFOUsed, next.FIFOStalls = int64(s.FIFOSize), int64(s.FIFOUsed), int64(s.FIFOStalls)
		next.JournalUsed = int64(s.JournalUsed)
		next.Transid, next.AckedTransid = int64(s.Transid), int64(s.AckedTransid)
		if next.AckedTransid != j.Status.AckedTransid {
			now := metav1.Now()
			next.LastAckTime = &now
		}
		next.BytesUnacked = int64(s.FIFOUsed)
		next.Lag = resource.NewQuantity(next.BytesUnacked, resource.BinarySI).String()
		again = r.Refresh
		if again == 0 {
			again = DefaultRefresh
		}
	} else {
		next.FIFOSize, next.FIFOUsed, next.JournalUsed, next.BytesUnacked, next.Lag = 0, 0, 0, 0, ""
	}
	return again, r.setStatus(ctx, j, next)
}

func setReady(s *v1.JournalStatus, st metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&s.Conditions, metav1.Condition{Type: v1.ConditionReady, Status: st, Reason: reason, Message: msg})
}

// setStatus stores next unless nothing but the time would change.
func (r *Reconciler) setStatus(ctx context.Context, j *v1.Journal, next *v1.JournalStatus) error {
	next.Updated = j.Status.Updated
	if equality.Semantic.DeepEqual(&j.Status, next) {
		return nil
	}
	now := metav1.Now()
	next.Updated = &now
	j.Status = *next
	return r.Store.UpdateStatus(ctx, j)
}

func (r *Reconciler) remove(ctx context.Context, j *v1.Journal) (time.Duration, error) {
	if !controllerutil.ContainsFinalizer(j, v1.Finalizer) {
		return 0, nil
	}
	next := j.Status.DeepCopy()
	next.Phase = v1.PhaseDeleting
	unlock := r.Volumes.Lock(j.Name)
	err := r.Volumes.Remove(j.Name)
	unlock()
	if err != nil {
		reason := ReasonError
		if errors.Is(err, ErrStaged) {
			reason = ReasonStaged
		}
		setReady(next, metav1.ConditionFalse, reason, err.Error())
		if uerr := r.setStatus(ctx, j, next); uerr != nil {
			return 0, uerr
		}
		return 0, fmt.Errorf("remove volume %s: %w", j.Name, err)
	}
	klog.InfoS("Removed volume", "volume", j.Name)
	controllerutil.RemoveFinalizer(j, v1.Finalizer)
	return 0, r.Store.Update(ctx, j)
}

// Sync reconciles the Journal called name now, retrying while its copy is
// behind (a conflict), for callers that must not return before its status
// says what they did.
func (r *Reconciler) Sync(ctx context.Context, name string) error {
	fresh := *r
	if r.Fresh != nil {
		fresh.Store = r.Fresh
	}
	b := wait.Backoff{Duration: 10 * time.Millisecond, Factor: 2, Cap: time.Second, Steps: 10}
	return retry.OnError(b, apierrors.IsConflict, func() error {
		_, err := fresh.Reconcile(ctx, name)
		return err
	})
}
