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

// Kube keeps Journals in the Kubernetes API.
type Kube struct {
	Client client.Client
	// Reader, if set, serves Get instead of Client (the API server itself
	// where Client reads a cache).
	Reader client.Reader
}

func (k Kube) Get(ctx context.Context, name string) (*v1.Journal, error) {
	var r client.Reader = k.Client
	if k.Reader != nil {
		r = k.Reader
	}
	var j v1.Journal
	if err := r.Get(ctx, client.ObjectKey{Name: name}, &j); err != nil {
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

// NodeFieldOwner is the field manager of the node's status writes.
const NodeFieldOwner = "jvol-node"

// ApplyStatus sets j's status by server-side apply as NodeFieldOwner,
// forcing ownership (of the phase the controller sets at creation).
func (k Kube) ApplyStatus(ctx context.Context, j *v1.Journal) error {
	var apply struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Status v1.JournalStatus `json:"status"`
	}
	apply.APIVersion, apply.Kind = v1.GroupVersion.String(), "Journal"
	apply.Metadata.Name, apply.Status = j.Name, j.Status
	body, err := json.Marshal(&apply)
	if err != nil {
		return err
	}
	return k.Client.Status().Patch(ctx, j, client.RawPatch(types.ApplyPatchType, body), client.FieldOwner(NodeFieldOwner), client.ForceOwnership)
}

func (k Kube) Delete(ctx context.Context, name string) error {
	return k.Client.Delete(ctx, &v1.Journal{ObjectMeta: metaName(name)})
}

// AvailableAnnotation is where a node plugin publishes, on its Node, the
// bytes free for volumes.
const AvailableAnnotation = "jvol.io/available-bytes"

// Available returns the bytes free for volumes on a node, as its node
// plugin last published them.
func (k Kube) Available(ctx context.Context, node string) (int64, error) {
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
func (k Kube) NodeGone(ctx context.Context, node string) (bool, error) {
	err := k.Client.Get(ctx, client.ObjectKey{Name: node}, &corev1.Node{})
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	return false, err
}
