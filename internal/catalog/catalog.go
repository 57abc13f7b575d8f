// Package catalog keeps Journal and JournalSnapshot objects: in the
// Kubernetes API (Kube), or, without an API server, as files in a directory
// (Files) that behave like it: resource versions, generations, finalizers
// and API errors.
package catalog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"reflect"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

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

// Table is where objects of one kind are kept. Errors are the API's
// (k8s.io/apimachinery/pkg/api/errors): test them with IsNotFound,
// IsAlreadyExists, IsConflict; a refused spec is Invalid from the API
// server, BadRequest from Files.
type Table[T any, P Object[T]] interface {
	Get(ctx context.Context, name string) (P, error)
	List(ctx context.Context) ([]T, error)
	// Create stores a new object and fills in its metadata.
	Create(ctx context.Context, o P) error
	// Update stores o's metadata and spec if o.ResourceVersion is current.
	Update(ctx context.Context, o P) error
	// UpdateStatus stores o's status if o.ResourceVersion is current.
	UpdateStatus(ctx context.Context, o P) error
	// ApplyStatus stores o's status as the node's, whatever
	// o.ResourceVersion: the node owns the status once it has acted on
	// the object, so its writes never conflict, and what it no longer
	// sets is removed.
	ApplyStatus(ctx context.Context, o P) error
	// Delete marks the object deleted; it goes once it has no finalizers.
	Delete(ctx context.Context, name string) error
}

// Object is a pointer to a kind a Table keeps.
type Object[T any] interface {
	*T
	client.Object
}

// Store keeps Journals; Snapshots keeps JournalSnapshots.
type (
	Store     = Table[v1.Journal, *v1.Journal]
	Snapshots = Table[v1.JournalSnapshot, *v1.JournalSnapshot]
)

// kind is what a Table needs to know of the kind it keeps beyond
// client.Object: its spec and status, and the checks of its schema.
type kind[T any, P Object[T]] struct {
	resource       schema.GroupResource
	name           string      // Kind
	spec, status   func(P) any // pointers to them
	validate       func(P) error
	validateUpdate func(next, old P) error
	defaults       func(P)
}

// set copies what field returns (a pointer) from src to dst.
func set[P any](field func(P) any, dst, src P) {
	reflect.ValueOf(field(dst)).Elem().Set(reflect.ValueOf(field(src)).Elem())
}

var journalKind = kind[v1.Journal, *v1.Journal]{
	resource:       schema.GroupResource{Group: v1.GroupVersion.Group, Resource: "journals"},
	name:           "Journal",
	spec:           func(j *v1.Journal) any { return &j.Spec },
	status:         func(j *v1.Journal) any { return &j.Status },
	validate:       func(j *v1.Journal) error { return j.Spec.Validate() },
	validateUpdate: func(j, old *v1.Journal) error { return j.Spec.ValidateUpdate(&old.Spec) },
	defaults: func(j *v1.Journal) {
		if j.Spec.Duplex == "" {
			j.Spec.Duplex = v1.Half
		}
	},
}

var snapshotKind = kind[v1.JournalSnapshot, *v1.JournalSnapshot]{
	resource:       schema.GroupResource{Group: v1.GroupVersion.Group, Resource: "journalsnapshots"},
	name:           "JournalSnapshot",
	spec:           func(s *v1.JournalSnapshot) any { return &s.Spec },
	status:         func(s *v1.JournalSnapshot) any { return &s.Status },
	validate:       func(s *v1.JournalSnapshot) error { return s.Spec.Validate() },
	validateUpdate: func(s, old *v1.JournalSnapshot) error { return s.Spec.ValidateUpdate(&old.Spec) },
	defaults: func(s *v1.JournalSnapshot) {
		if s.Spec.Kind == "" {
			s.Spec.Kind = v1.Local
		}
	},
}

// Scheme returns a scheme with the Kubernetes types and the Journal.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(v1.AddToScheme(s))
	return s
}
