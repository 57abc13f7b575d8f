package node

import (
	"context"

	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
	"github.com/jvol-io/jvol/pkg/catalog"
)

// Loop runs a Reconciler without an API server (standalone): Changed
// queues a Journal, Run works the queue, with rate-limited retries.
type Loop struct {
	r *Reconciler
	q workqueue.TypedRateLimitingInterface[string]
}

// NewLoop returns a loop over r.
func NewLoop(r *Reconciler) *Loop {
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
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("journal").
		For(&v1.Journal{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetLabels()[catalog.NodeLabel] == r.NodeID
		}))).
		Complete(reconcile.Func(func(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
			again, err := r.Reconcile(ctx, req.Name)
			return reconcile.Result{RequeueAfter: again}, err
		}))
}
