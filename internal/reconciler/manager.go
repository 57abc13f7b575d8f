package reconciler

import (
	"context"
	"maps"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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
	"sigs.k8s.io/controller-runtime/pkg/handler"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/jvol-io/jvol/internal/catalog"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// Loop runs a Reconciler without an API server (standalone): Changed
// queues a Journal, Run works the queue, with rate-limited retries.
type Loop struct {
	r *Reconciler
	q workqueue.TypedRateLimitingInterface[string]
}

// NewLoop returns a loop over r; r.Volumes stages volumes with the sinks
// their Journals name.
func NewLoop(r *Reconciler) *Loop {
	r.Volumes.Sink = r.sinkOptions
	return &Loop{r: r, q: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
}

// Changed queues the Journal called name.
func (l *Loop) Changed(name string) { l.q.Add(name) }

// Run queues every Journal, then reconciles what is queued until ctx ends.
func (l *Loop) Run(ctx context.Context) error {
	js, err := l.r.Store.List(ctx)
	if err != nil {
		return err
	}
	for _, j := range js {
		l.q.Add(j.Name)
	}
	go func() {
		<-ctx.Done()
		l.q.ShutDown()
	}()
	for {
		name, quit := l.q.Get()
		if quit {
			return nil
		}
		again, err := l.r.Reconcile(ctx, name)
		switch {
		case err != nil:
			klog.ErrorS(err, "Reconcile failed", "journal", name)
			l.q.AddRateLimited(name)
		case again > 0:
			l.q.Forget(name)
			l.q.AddAfter(name, again)
		default:
			l.q.Forget(name)
		}
		l.q.Done(name)
	}
}

// SetupWithManager runs r in a controller-runtime manager whose cache
// holds only this node's Journals (by their catalog.NodeLabel).
// Changes of a volume on the node (staged, unstaged) come in as events too.
// r.Volumes stages volumes with the sinks their Journals name.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	ch := make(chan event.TypedGenericEvent[*v1.Journal])
	r.Volumes.Sink = r.sinkOptions
	r.Volumes.Changed = func(name string) {
		go func() {
			ch <- event.TypedGenericEvent[*v1.Journal]{Object: &v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: name}}}
		}()
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("journal").
		// One per manager; tests make more than one manager per process.
		WithOptions(controller.Options{SkipNameValidation: ptr.To(true)}).
		For(&v1.Journal{}, builder.WithPredicates(
			predicate.NewPredicateFuncs(func(o client.Object) bool {
				return o.GetLabels()[catalog.NodeLabel] == catalog.NodeLabelValue(r.NodeID)
			}),
			// Not its own status writes: the figures are refreshed by
			// RequeueAfter, not as fast as the API server answers.
			predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool { return !statusOnly(e.ObjectOld, e.ObjectNew) }},
		)).
		WatchesRawSource(source.Channel(ch, &handler.TypedEnqueueRequestForObject[*v1.Journal]{})).
		Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
			again, err := r.Reconcile(ctx, req.Name)
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

// NewManager returns a controller-runtime manager that runs r (its Store
// set to the manager's client) over the Journals of node r.NodeID, and
// only those: its cache selects them by catalog.NodeLabel. Sinks'
// credentials Secrets are read from the API server itself, not cached.
// It logs through klog.
func NewManager(cfg *rest.Config, r *Reconciler) (ctrl.Manager, error) {
	ctrl.SetLogger(klog.NewKlogr())
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  catalog.Scheme(),
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{ByObject: map[client.Object]cache.ByObject{
			&v1.Journal{}: {Label: labels.SelectorFromSet(labels.Set{catalog.NodeLabel: catalog.NodeLabelValue(r.NodeID)})},
		}},
	})
	if err != nil {
		return nil, err
	}
	r.Store = catalog.Kube{Client: mgr.GetClient()}
	r.Fresh = catalog.Kube{Client: mgr.GetClient(), Reader: mgr.GetAPIReader()}
	r.Secrets = mgr.GetAPIReader()
	r.Recorder = mgr.GetEventRecorderFor("jvol-node")
	return mgr, r.SetupWithManager(mgr)
}
