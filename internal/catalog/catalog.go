// Package catalog keeps Journal objects: in the Kubernetes API (Kube), or,
// without an API server, as files in a directory (Files) that behave like
// it: resource versions, generations, finalizers and API errors.
package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// NodeLabel carries NodeLabelValue(spec.node), so that a node can watch
// only its own Journals.
const NodeLabel = "jvol.io/node"

// NodeLabelValue is the NodeLabel value for a node: its name when that fits
// a label value (63 characters), else "h-" and a hash of it.
func NodeLabelValue(node string) string {
	if len(node) <= 63 {
		return node
	}
	h := sha256.Sum256([]byte(node))
	return "h-" + hex.EncodeToString(h[:16])
}

// NameAnnotation carries the CSI volume name a Journal was created for.
const NameAnnotation = "jvol.io/csi-name"

// The claim a Journal was made for, when the provisioner said
// (--extra-create-metadata): its namespace and name.
const (
	ClaimNamespaceAnnotation = "jvol.io/pvc-namespace"
	ClaimNameAnnotation      = "jvol.io/pvc-name"
)

// Store is where Journals are kept. Errors are the API's
// (k8s.io/apimachinery/pkg/api/errors): test them with IsNotFound,
// IsAlreadyExists, IsConflict; a refused spec is Invalid from the API
// server, BadRequest from Files.
type Store interface {
	Get(ctx context.Context, name string) (*v1.Journal, error)
	List(ctx context.Context) ([]v1.Journal, error)
	// Create stores a new Journal and fills in its metadata.
	Create(ctx context.Context, j *v1.Journal) error
	// Update stores j's metadata and spec if j.ResourceVersion is current.
	Update(ctx context.Context, j *v1.Journal) error
	// UpdateStatus stores j's status if j.ResourceVersion is current.
	UpdateStatus(ctx context.Context, j *v1.Journal) error
	// ApplyStatus stores j's status as the node's, whatever
	// j.ResourceVersion: the node owns the status once it has made the
	// volume, so its writes never conflict, and what it no longer sets
	// is removed.
	ApplyStatus(ctx context.Context, j *v1.Journal) error
	// Delete marks the Journal deleted; it goes once it has no finalizers.
	Delete(ctx context.Context, name string) error
}

var journals = schema.GroupResource{Group: v1.GroupVersion.Group, Resource: "journals"}

// Scheme returns a scheme with the Kubernetes types and the Journal.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(v1.AddToScheme(s))
	return s
}
