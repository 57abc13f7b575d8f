package reconciler

import (
	"context"

	"k8s.io/client-go/util/workqueue"
)

// Changes queues the names of Journals that changed outside the store's
// watch: a volume staged, unstaged or grown on this node, or (standalone)
// a Journal written to the files catalog. Make it first and hand its Add to
// the volumes and the catalog; the loop that reconciles (RunStandalone or
// the manager's controller) drains it. Add never blocks, and a name queued
// twice before it is drained is reconciled once.
type Changes struct {
	q workqueue.TypedInterface[string]
}

// NewChanges returns an empty queue of changes.
func NewChanges() *Changes { return &Changes{q: workqueue.NewTyped[string]()} }

// Add queues the Journal called name.
func (c *Changes) Add(name string) { c.q.Add(name) }

// drain hands every change to add until ctx ends.
func (c *Changes) drain(ctx context.Context, add func(name string)) {
	go func() {
		<-ctx.Done()
		c.q.ShutDown()
	}()
	for {
		name, quit := c.q.Get()
		if quit {
			return
		}
		add(name)
		c.q.Done(name)
	}
}
