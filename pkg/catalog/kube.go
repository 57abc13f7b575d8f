package catalog

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// Kube keeps Journals in the Kubernetes API.
type Kube struct{ Client client.Client }

func (k Kube) Get(ctx context.Context, name string) (*v1.Journal, error) {
	var j v1.Journal
	if err := k.Client.Get(ctx, client.ObjectKey{Name: name}, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

func (k Kube) List(ctx context.Context) ([]v1.Journal, error) {
	var l v1.JournalList
	if err := k.Client.List(ctx, &l); err != nil {
		return nil, err
	}
	return l.Items, nil
}

func (k Kube) Create(ctx context.Context, j *v1.Journal) error { return k.Client.Create(ctx, j) }
func (k Kube) Update(ctx context.Context, j *v1.Journal) error { return k.Client.Update(ctx, j) }

func (k Kube) UpdateStatus(ctx context.Context, j *v1.Journal) error {
	return k.Client.Status().Update(ctx, j)
}

func (k Kube) Delete(ctx context.Context, name string) error {
	return k.Client.Delete(ctx, &v1.Journal{ObjectMeta: metaName(name)})
}
