package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// KubeOf keeps objects of one kind in the Kubernetes API.
type KubeOf[T any, P Object[T]] struct {
	Client client.Client
	// Reader, if set, serves Get instead of Client (the API server itself
	// where Client reads a cache).
	Reader client.Reader
	kind   kind[T, P]
	items  func(context.Context, client.Client) ([]T, error)
}

// Kube keeps Journals, KubeSnapshots JournalSnapshots.
type (
	Kube          = KubeOf[v1.Journal, *v1.Journal]
	KubeSnapshots = KubeOf[v1.JournalSnapshot, *v1.JournalSnapshot]
)

// NewKube keeps Journals through c; reader, if not nil, serves Get.
func NewKube(c client.Client, reader client.Reader) *Kube {
	return &Kube{Client: c, Reader: reader, kind: journalKind, items: func(ctx context.Context, c client.Client) ([]v1.Journal, error) {
		var l v1.JournalList
		err := c.List(ctx, &l)
		return l.Items, err
	}}
}

// NewKubeSnapshots keeps JournalSnapshots through c; reader, if not nil,
// serves Get.
func NewKubeSnapshots(c client.Client, reader client.Reader) *KubeSnapshots {
	return &KubeSnapshots{Client: c, Reader: reader, kind: snapshotKind, items: func(ctx context.Context, c client.Client) ([]v1.JournalSnapshot, error) {
		var l v1.JournalSnapshotList
		err := c.List(ctx, &l)
		return l.Items, err
	}}
}

func (k *KubeOf[T, P]) Get(ctx context.Context, name string) (P, error) {
	var r client.Reader = k.Client
	if k.Reader != nil {
		r = k.Reader
	}
	o := P(new(T))
	if err := r.Get(ctx, client.ObjectKey{Name: name}, o); err != nil {
		return nil, err
	}
	return o, nil
}

func (k *KubeOf[T, P]) List(ctx context.Context) ([]T, error) { return k.items(ctx, k.Client) }

func (k *KubeOf[T, P]) Create(ctx context.Context, o P) error { return k.Client.Create(ctx, o) }
func (k *KubeOf[T, P]) Update(ctx context.Context, o P) error { return k.Client.Update(ctx, o) }

func (k *KubeOf[T, P]) UpdateStatus(ctx context.Context, o P) error {
	return k.Client.Status().Update(ctx, o)
}

// NodeFieldOwner is the field manager of the node's status writes.
const NodeFieldOwner = "jvol-node"

// ApplyStatus sets o's status by server-side apply as NodeFieldOwner,
// forcing ownership (of the phase the controller sets at creation).
func (k *KubeOf[T, P]) ApplyStatus(ctx context.Context, o P) error {
	apply := map[string]any{
		"apiVersion": v1.GroupVersion.String(),
		"kind":       k.kind.name,
		"metadata":   map[string]string{"name": o.GetName()},
		"status":     k.kind.status(o),
	}
	body, err := json.Marshal(apply)
	if err != nil {
		return err
	}
	return k.Client.Status().Patch(ctx, o, client.RawPatch(types.ApplyPatchType, body), client.FieldOwner(NodeFieldOwner), client.ForceOwnership)
}

func (k *KubeOf[T, P]) Delete(ctx context.Context, name string) error {
	o := P(new(T))
	o.SetName(name)
	return k.Client.Delete(ctx, o)
}

// AvailableAnnotation is where a node plugin publishes, on its Node, the
// bytes free for volumes.
const AvailableAnnotation = "jvol.io/available-bytes"

// Available returns the bytes free for volumes on a node, as its node
// plugin last published them.
// Nodes reads what node plugins publish on their Nodes.
type Nodes struct{ Client client.Client }

func (k Nodes) Available(ctx context.Context, node string) (int64, error) {
	var n corev1.Node
	if err := k.Client.Get(ctx, client.ObjectKey{Name: node}, &n); err != nil {
		return 0, err
	}
	v, ok := n.Annotations[AvailableAnnotation]
	if !ok {
		return 0, fmt.Errorf("node %s has no %s annotation: is the jvol node plugin running there?", node, AvailableAnnotation)
	}
	return strconv.ParseInt(v, 10, 64)
}

// NodeGone reports whether a node's Node object is gone.
func (k Nodes) NodeGone(ctx context.Context, node string) (bool, error) {
	err := k.Client.Get(ctx, client.ObjectKey{Name: node}, &corev1.Node{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	return false, err
}
