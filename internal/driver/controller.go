package driver

import (
	"context"
	"errors"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/jvol-io/jvol/internal/catalog"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// Controller is the CSI Controller service. A volume is a Journal; the
// node named in it makes the images and says so in the Journal's status,
// which the calls here wait for.
type Controller struct {
	csi.UnimplementedControllerServer
	Store catalog.Store
	// Snapshots keeps the JournalSnapshots; nil: no snapshots.
	Snapshots catalog.Snapshots
	// DefaultNode holds volumes whose request names no node (standalone);
	// empty in a cluster, where topology must name one.
	DefaultNode string
	// Capacity returns the bytes free for volumes on a node; nil if unknown.
	Capacity func(ctx context.Context, node string) (int64, error)
	// NodeGone reports whether a node is gone for good (its Node object
	// deleted): its Journals' images went with it, and nobody else would
	// ever remove their finalizer. Nil: nodes never go (standalone).
	NodeGone func(ctx context.Context, node string) (bool, error)

	locks inflight
}

func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	types := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod) and
		// SINGLE_NODE_MULTI_WRITER: a volume lives on one node anyway.
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	}
	if c.Snapshots != nil {
		types = append(types, csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT, csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS)
	}
	if c.Capacity != nil {
		types = append(types, csi.ControllerServiceCapability_RPC_GET_CAPACITY)
	}
	var caps []*csi.ControllerServiceCapability
	for _, t := range types {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, errorf(codes.InvalidArgument, "name missing")
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}
	size, err := capacity(req.GetCapacityRange())
	if err != nil {
		return nil, errorf(codes.OutOfRange, "%v", err)
	}
	spec, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if fs := vc.GetMount().GetFsType(); fs != "" {
			spec.FSType = fs
		}
	}
	spec.Node = nodeFromTopology(req.GetAccessibilityRequirements())
	if spec.Node == "" {
		spec.Node = c.DefaultNode
	}
	spec.Capacity = *resource.NewQuantity(size, resource.BinarySI)
	src, node, need, err := c.volumeSource(ctx, req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if src != nil {
		if err := withSource(&spec, req, src, node, need); err != nil {
			return nil, err
		}
	}
	if spec.Node == "" {
		return nil, errorf(codes.InvalidArgument, "no node in the accessibility requirements (%s): use volumeBindingMode WaitForFirstConsumer", TopologyKey)
	}
	if err := spec.Validate(); err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}

	id := volumeID(name)
	unlock, err := c.locks.try(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := c.Store.Get(ctx, id)
	created := false
	switch {
	case apierrors.IsNotFound(err):
		j = &v1.Journal{
			ObjectMeta: metav1.ObjectMeta{
				Name:        id,
				Labels:      map[string]string{catalog.NodeLabel: catalog.NodeLabelValue(spec.Node)},
				Annotations: claimAnnotations(name, req.GetParameters()),
				// The node's, set here so that the node need not add it
				// to a Journal the controller may still be writing.
				Finalizers: []string{v1.Finalizer},
			},
			Spec: spec,
		}
		if err := c.Store.Create(ctx, j); err != nil {
			return nil, apiError(err)
		}
		created = true
		// Pending until its node says otherwise; if the node was quicker,
		// this loses the race (a conflict) and that is right.
		j.Status.Phase = v1.PhasePending
		c.Store.UpdateStatus(ctx, j)
	case err != nil:
		return nil, apiError(err)
	default:
		if err := sameVolume(j, name, spec, req.GetCapacityRange()); err != nil {
			return nil, err
		}
	}
	j, err = c.waitFor(ctx, id, func(j *v1.Journal) bool { return ready(j) && atLeast(j, j.Spec.Capacity.Value()) })
	if err != nil {
		var nf *nodeFailure
		if errors.As(err, &nf) && (created || !nf.made) {
			// The node could not make it: leave no Journal behind for a
			// volume the CO never learns of. (Never for one that was made
			// once: that one holds data.)
			c.remove(context.Background(), id)
		}
		return nil, err
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           id,
		CapacityBytes:      j.Status.Capacity.Value(),
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{TopologyKey: j.Spec.Node}}},
		ContentSource:      req.GetVolumeContentSource(),
	}}, nil
}

// sameVolume checks that an existing Journal is what a repeated
// CreateVolume asks for.
func sameVolume(j *v1.Journal, name string, want v1.JournalSpec, r *csi.CapacityRange) error {
	have := j.Spec
	size := have.Capacity.Value()
	switch {
	case j.Annotations[catalog.NameAnnotation] != name:
		return errorf(codes.AlreadyExists, "volume id %s belongs to another name", j.Name)
	case j.DeletionTimestamp != nil:
		return errorf(codes.Aborted, "volume %s is being deleted", j.Name)
	case size < r.GetRequiredBytes() || r.GetLimitBytes() > 0 && size > r.GetLimitBytes():
		return errorf(codes.AlreadyExists, "volume %s exists with capacity %d", j.Name, size)
	case have.Node != want.Node && len(want.Node) > 0:
		return errorf(codes.AlreadyExists, "volume %s exists on node %s", j.Name, have.Node)
	}
	want.Node, want.Capacity = have.Node, have.Capacity
	if have.Provisioning == "" { // made before there was a choice
		want.Provisioning = ""
	}
	if !equality.Semantic.DeepEqual(have, want) { // quantities compare by value
		return errorf(codes.AlreadyExists, "volume %s exists with other parameters", j.Name)
	}
	return nil
}

func ready(j *v1.Journal) bool {
	return j.Status.ObservedGeneration >= j.Generation &&
		(j.Status.Phase == v1.PhaseReady || j.Status.Phase == v1.PhaseAttached || j.Status.Phase == v1.PhaseDegraded)
}

func atLeast(j *v1.Journal, size int64) bool {
	return j.Status.Capacity != nil && j.Status.Capacity.Value() >= size
}

// waitFor polls the Journal until done says so, its node reports it
// Failed, or ctx ends (waitUntil).
func (c *Controller) waitFor(ctx context.Context, id string, done func(*v1.Journal) bool) (*v1.Journal, error) {
	return waitUntil(ctx, c.Store, id, done, func(j *v1.Journal) error {
		if j.Status.Phase == v1.PhaseFailed && j.Status.ObservedGeneration >= j.Generation && j.DeletionTimestamp == nil {
			return &nodeFailure{node: j.Spec.Node, what: "volume " + j.Name, conditions: j.Status.Conditions, made: j.Status.Capacity != nil}
		}
		return nil
	})
}

// waitUntil polls the object id of table, with capped back-off, until done
// says so, failed returns an error, or ctx ends.
func waitUntil[T any, P catalog.Object[T]](ctx context.Context, table catalog.Table[T, P], id string, done func(P) bool, failed func(P) error) (P, error) {
	ctx, cancel := context.WithTimeout(ctx, MaxWait)
	defer cancel()
	b := wait.Backoff{Duration: 20 * time.Millisecond, Factor: 2, Cap: 2 * time.Second, Steps: 1 << 30}
	for {
		o, err := table.Get(ctx, id)
		if err != nil {
			return nil, apiError(err)
		}
		if done(o) {
			return o, nil
		}
		if err := failed(o); err != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-time.After(b.Step()):
		}
	}
}

// MaxWait bounds how long a call waits for the node: the CO retries.
var MaxWait = 2 * time.Minute

// nodeFailure is an object its node reports Failed; its gRPC status comes
// from the reason of its Ready condition.
type nodeFailure struct {
	node, what string // "volume NAME"
	conditions []metav1.Condition
	made       bool // a volume that was made once: it holds data
}

func (f *nodeFailure) Error() string { return f.GRPCStatus().Message() }

func (f *nodeFailure) GRPCStatus() *status.Status {
	c := meta.FindStatusCondition(f.conditions, v1.ConditionReady)
	if c == nil {
		return status.Newf(codes.Internal, "node %s failed %s", f.node, f.what)
	}
	code := codes.Internal
	switch c.Reason {
	case v1.ReasonOutOfSpace:
		code = codes.ResourceExhausted
	case v1.ReasonStaged:
		code = codes.FailedPrecondition
	case v1.ReasonSourceNotFound:
		code = codes.NotFound
	case v1.ReasonNotKept:
		code = codes.OutOfRange
	case v1.ReasonRefused:
		code = codes.FailedPrecondition
	}
	return status.Newf(code, "node %s: %s: %s", f.node, f.what, c.Message)
}

// apiError turns an error of the Journal store into a gRPC status.
func apiError(err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return errorf(codes.NotFound, "%v", err)
	case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
		return errorf(codes.Aborted, "%v; try again", err)
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return errorf(codes.InvalidArgument, "%v", err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.FromContextError(err).Err()
	}
	return errorf(codes.Unavailable, "%v", err)
}

func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	unlock, err := c.locks.try(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := c.Store.Get(ctx, id)
	if apierrors.IsNotFound(err) {
		return &csi.DeleteVolumeResponse{}, nil
	} else if err != nil {
		return nil, apiError(err)
	}
	// In use: refuse before deleting, so that nothing changes, unless its
	// node is gone for good. (If it is staged after all, the node keeps it
	// until it is unstaged.)
	if j.DeletionTimestamp == nil && staged(j) {
		if gone, err := c.nodeGone(ctx, j.Spec.Node); err != nil || !gone {
			return nil, errorf(codes.FailedPrecondition, "volume %s is staged on node %s (%s)", id, j.Spec.Node, j.Status.Device)
		}
	}
	if err := c.remove(ctx, id); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// remove deletes the Journal and waits until its node has removed the
// images and let it go; if the node is gone, lets it go itself.
func (c *Controller) remove(ctx context.Context, id string) error {
	if err := c.Store.Delete(ctx, id); err != nil && !apierrors.IsNotFound(err) {
		return apiError(err)
	}
	if err := releaseOrphan(ctx, c, c.Store, id, func(j *v1.Journal) string { return j.Spec.Node }, v1.Finalizer); err != nil {
		return err
	}
	_, err := c.waitFor(ctx, id, func(*v1.Journal) bool { return false })
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, errorf(codes.InvalidArgument, "capacity range missing")
	}
	size, err := capacity(req.GetCapacityRange())
	if err != nil {
		return nil, errorf(codes.OutOfRange, "%v", err)
	}
	unlock, err := c.locks.try(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, apiError(err)
	}
	if j.Spec.Capacity.Value() < size {
		j.Spec.Capacity = *resource.NewQuantity(size, resource.BinarySI)
		if err := c.Store.Update(ctx, j); err != nil {
			return nil, apiError(err)
		}
	}
	want := j.Spec.Capacity.Value()
	j, err = c.waitFor(ctx, id, func(j *v1.Journal) bool { return ready(j) && atLeast(j, want) })
	if err != nil {
		return nil, err
	}
	block := req.GetVolumeCapability().GetBlock() != nil
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: j.Status.Capacity.Value(), NodeExpansionRequired: !block}, nil
}

func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, errorf(codes.InvalidArgument, "volume capabilities missing")
	}
	if _, err := c.Store.Get(ctx, id); err != nil {
		return nil, apiError(err)
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if c.Capacity == nil {
		return nil, errorf(codes.Unimplemented, "capacity is not known")
	}
	if caps := req.GetVolumeCapabilities(); len(caps) > 0 {
		if err := checkCapabilities(caps); err != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	node := req.GetAccessibleTopology().GetSegments()[TopologyKey]
	if node == "" {
		node = c.DefaultNode
	}
	if node == "" {
		return nil, errorf(codes.InvalidArgument, "accessible topology must name a node (%s)", TopologyKey)
	}
	n, err := c.Capacity(ctx, node)
	if err != nil {
		return nil, errorf(codes.Unavailable, "capacity of node %s: %v", node, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: n}, nil
}

// staged reports whether the node last said the volume is staged.
func staged(j *v1.Journal) bool {
	return j.Status.Phase == v1.PhaseAttached || j.Status.Phase == v1.PhaseDegraded || j.Status.Device != ""
}

func (c *Controller) nodeGone(ctx context.Context, node string) (bool, error) {
	if c.NodeGone == nil {
		return false, nil
	}
	return c.NodeGone(ctx, node)
}

// claimAnnotations are a new Journal's annotations: the CSI name, and the
// claim's namespace and name if the provisioner passed them.
func claimAnnotations(name string, params map[string]string) map[string]string {
	a := map[string]string{catalog.NameAnnotation: name}
	ns, claim := params["csi.storage.k8s.io/pvc/namespace"], params["csi.storage.k8s.io/pvc/name"]
	if ns != "" && claim != "" {
		a[catalog.ClaimNamespaceAnnotation], a[catalog.ClaimNameAnnotation] = ns, claim
	}
	return a
}
