package reconciler

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/host"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// snapshotPrefix marks a JournalSnapshot's name in RunStandalone's queue,
// which Journals' names share: no Journal's name holds a "/".
const snapshotPrefix = "snapshot/"

// SnapshotKey is what a change to the JournalSnapshot called name is
// queued as in RunStandalone's Changes.
func SnapshotKey(name string) string { return snapshotPrefix + name }

// RunStandalone reconciles without an API server: it queues every Journal
// of r.Store and JournalSnapshot of r.Snapshots, then reconciles what is queued (and what changes queues)
// until ctx ends, with rate-limited retries.
func (r *Reconciler) RunStandalone(ctx context.Context, changes *Changes) error {
	q := workqueue.NewTypedRateLimitingQueue(retries[string]())
	js, err := r.Store.List(ctx)
	if err != nil {
		return err
	}
	for _, j := range js {
		q.Add(j.Name)
	}
	if r.Snapshots != nil {
		ss, err := r.Snapshots.List(ctx)
		if err != nil {
			return err
		}
		for _, s := range ss {
			q.Add(SnapshotKey(s.Name))
		}
	}
	go changes.drain(ctx, q.Add)
	go func() {
		<-ctx.Done()
		q.ShutDown()
	}()
	for {
		name, quit := q.Get()
		if quit {
			return nil
		}
		var again time.Duration
		if snap, ok := strings.CutPrefix(name, snapshotPrefix); ok {
			again, err = r.ReconcileSnapshot(ctx, snap)
		} else {
			again, err = r.Reconcile(ctx, name)
		}
		switch {
		case err != nil:
			klog.ErrorS(err, "Reconcile failed", "journal", name)
			q.AddRateLimited(name)
		case again > 0:
			q.Forget(name)
			q.AddAfter(name, again)
		default:
			q.Forget(name)
		}
		q.Done(name)
	}
}

// MaxRetryDelay is the longest a failed reconcile waits for its next try.
// client-go's default doubles up to 1000 s: a volume whose removal failed
// a dozen times while its node was busy would then wait many minutes after
// the cause went away, and its claim with it.
const MaxRetryDelay = 30 * time.Second

// retries is the queues' rate limiter: client-go's default, with failed
// items retried at most MaxRetryDelay apart.
func retries[T comparable]() workqueue.TypedRateLimiter[T] {
	return workqueue.NewTypedMaxOfRateLimiter(
		workqueue.NewTypedItemExponentialFailureRateLimiter[T](5*time.Millisecond, MaxRetryDelay),
		&workqueue.TypedBucketRateLimiter[T]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
	)
}

// setupWithManager runs r in a controller-runtime manager whose cache
// holds only this node's Journals (by their catalog.NodeLabel); changes
// come in as requests too.
func (r *Reconciler) setupWithManager(mgr ctrl.Manager, changes *Changes) error {
	if err := ctrl.NewControllerManagedBy(mgr).
		Named("journal").
		// One per manager; tests make more than one manager per process.
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true), RateLimiter: retries[reconcile.Request]()}).
		For(&v1.Journal{}, builder.WithPredicates(
			predicate.NewPredicateFuncs(func(o client.Object) bool {
				return o.GetLabels()[catalog.NodeLabel] == catalog.NodeLabelValue(r.NodeID)
			}),
			// Not its own status writes: the figures are refreshed by
			// RequeueAfter, not as fast as the API server answers.
			predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool { return !statusOnly(e.ObjectOld, e.ObjectNew) }},
		)).
		WatchesRawSource(source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			go changes.drain(ctx, func(name string) { q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Name: name}}) })
			return nil
		})).
		Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
			again, err := r.Reconcile(ctx, req.Name)
			return reconcile.Result{RequeueAfter: again}, err
		})); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("journalsnapshot").
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true), RateLimiter: retries[reconcile.Request]()}).
		For(&v1.JournalSnapshot{}, builder.WithPredicates(
			predicate.NewPredicateFuncs(func(o client.Object) bool {
				return o.GetLabels()[catalog.NodeLabel] == catalog.NodeLabelValue(r.NodeID)
			}),
			predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool { return !statusOnly(e.ObjectOld, e.ObjectNew) }},
		)).
		Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
			again, err := r.ReconcileSnapshot(ctx, req.Name)
			return reconcile.Result{RequeueAfter: again}, err
		}))
}

// statusOnly reports whether an update changed nothing the reconciler acts
// on: not the spec (generation), deletion, finalizers or labels.
func statusOnly(a, b client.Object) bool {
	return a.GetGeneration() == b.GetGeneration() &&
		(a.GetDeletionTimestamp() == nil) == (b.GetDeletionTimestamp() == nil) &&
		slices.Equal(a.GetFinalizers(), b.GetFinalizers()) &&
		maps.Equal(a.GetLabels(), b.GetLabels())
}

// Options of NewManager.
type Options struct {
	NodeID  string
	Volumes *host.Volumes
	// Changes are drained into the manager's queue.
	Changes *Changes
	// Refresh is how often an attached volume's figures are refreshed;
	// default DefaultRefresh.
	Refresh time.Duration
}

// NewManager returns a controller-runtime manager that reconciles the
// Journals of node o.NodeID, and only those (its cache selects them by
// catalog.NodeLabel), and the Reconciler it runs. Sinks' credentials
// Secrets are read from the API server itself, not cached. It logs through
// klog.
func NewManager(cfg *rest.Config, o Options) (ctrl.Manager, *Reconciler, error) {
	nodeID := o.NodeID
	ctrl.SetLogger(klog.NewKlogr())
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  catalog.Scheme(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&v1.Journal{}:         {Label: labels.SelectorFromSet(labels.Set{catalog.NodeLabel: catalog.NodeLabelValue(nodeID)})},
			&v1.JournalSnapshot{}: {Label: labels.SelectorFromSet(labels.Set{catalog.NodeLabel: catalog.NodeLabelValue(nodeID)})},
		}},
	})
	if err != nil {
		return nil, nil, err
	}
	r := &Reconciler{
		Store:        catalog.NewKube(mgr.GetClient(), nil),
		Fresh:        catalog.NewKube(mgr.GetClient(), mgr.GetAPIReader()),
		Snapshots:    catalog.NewKubeSnapshots(mgr.GetClient(), nil),
		AllSnapshots: catalog.NewKubeSnapshots(mgr.GetClient(), mgr.GetAPIReader()),
		Volumes:      o.Volumes,
		NodeID:       nodeID,
		Refresh:      o.Refresh,
		Secrets:      mgr.GetAPIReader(),
		Recorder:     mgr.GetEventRecorderFor("jvol-node"),
	}
	return mgr, r, r.setupWithManager(mgr, o.Changes)
}
