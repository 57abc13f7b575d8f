package catalog

import (
	"context"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// Files behaves as the API server does for what jvol uses of it.
func TestFilesBehaveLikeTheAPI(t *testing.T) {
	var changed []string
	f, err := OpenFiles(t.TempDir(), func(name string) { changed = append(changed, name) })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	j := &v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: "v"}, Spec: v1.JournalSpec{Node: "n", Capacity: resource.MustParse("1Gi")}}
	if err := f.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	if j.Generation != 1 || j.ResourceVersion == "" || j.UID == "" || j.Spec.Duplex != v1.Half {
		t.Errorf("created %+v", j.ObjectMeta)
	}
	if err := f.Create(ctx, j.DeepCopy()); !apierrors.IsAlreadyExists(err) {
		t.Errorf("second create: %v", err)
	}
	bad := &v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: "Bad/Name"}, Spec: j.Spec}
	if err := f.Create(ctx, bad); !apierrors.IsBadRequest(err) {
		t.Errorf("create with a path for a name: %v", err)
	}
	if _, err := f.Get(ctx, "../v"); !apierrors.IsNotFound(err) {
		t.Errorf("get of a path: %v", err)
	}

	stale := j.DeepCopy()
	j.Spec.Capacity = resource.MustParse("2Gi")
	if err := f.Update(ctx, j); err != nil || j.Generation != 2 {
		t.Fatalf("grow: generation %d, %v", j.Generation, err)
	}
	stale.Finalizers = []string{v1.Finalizer}
	if err := f.Update(ctx, stale); !apierrors.IsConflict(err) {
		t.Errorf("update of a stale copy: %v", err)
	}
	j.Spec.Capacity = resource.MustParse("1Gi")
	if err := f.Update(ctx, j.DeepCopy()); !apierrors.IsBadRequest(err) {
		t.Errorf("shrink: %v", err)
	}

	n := len(changed)
	j.Status.Phase = v1.PhaseReady
	if err := f.UpdateStatus(ctx, j); err != nil {
		t.Fatal(err)
	}
	if len(changed) != n {
		t.Error("a status update is reported as a change")
	}
	if got, _ := f.Get(ctx, "v"); got.Status.Phase != v1.PhaseReady || got.Generation != 2 {
		t.Errorf("after status update: %+v gen %d", got.Status, got.Generation)
	}

	// Deletion waits for the finalizers.
	j, _ = f.Get(ctx, "v")
	j.Finalizers = []string{v1.Finalizer}
	if err := f.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if err := f.Delete(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	j, err = f.Get(ctx, "v")
	if err != nil || j.DeletionTimestamp == nil {
		t.Fatalf("deleting: %v %v", j, err)
	}
	j.Finalizers = nil
	if err := f.Update(ctx, j); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Get(ctx, "v"); !apierrors.IsNotFound(err) {
		t.Errorf("after the last finalizer: %v", err)
	}
	if js, err := f.List(ctx); err != nil || len(js) != 0 {
		t.Errorf("list: %v %v", js, err)
	}
}
