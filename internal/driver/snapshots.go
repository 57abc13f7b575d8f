package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/sink"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// A snapshot is a JournalSnapshot; the source volume's node takes it and
// says so in its status, which the calls here wait for.

// SnapshotKindParameter is the VolumeSnapshotClass parameter that chooses
// a snapshot's kind: "local" (the default) or "sink".
const SnapshotKindParameter = "kind"

func parseSnapshotParams(p map[string]string) (v1.SnapshotKind, error) {
	kind := v1.Local
	for k, val := range p {
		switch {
		case strings.HasPrefix(k, "csi.storage.k8s.io/"):
		case k == SnapshotKindParameter && val == "local":
		case k == SnapshotKindParameter && val == "sink":
			kind = v1.SinkKind
		case k == SnapshotKindParameter:
			return "", fmt.Errorf("parameter %s: %q: want local or sink", k, val)
		default:
			return "", fmt.Errorf("unknown parameter %q: the snapshot class takes %s", k, SnapshotKindParameter)
		}
	}
	return kind, nil
}

func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if c.Snapshots == nil {
		return nil, errorf(codes.Unimplemented, "snapshots are not kept here")
	}
	name, source := req.GetName(), req.GetSourceVolumeId()
	switch {
	case name == "":
		return nil, errorf(codes.InvalidArgument, "name missing")
	case source == "":
		return nil, errorf(codes.InvalidArgument, "source volume id missing")
	}
	kind, err := parseSnapshotParams(req.GetParameters())
	if err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}
	id := volumeID(name)
	unlock, err := c.locks.try("snapshot/" + id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s, err := c.Snapshots.Get(ctx, id)
	switch {
	case apierrors.IsNotFound(err):
		j, err := c.Store.Get(ctx, source)
		if apierrors.IsNotFound(err) {
			return nil, errorf(codes.NotFound, "source volume %s not found", source)
		} else if err != nil {
			return nil, apiError(err)
		}
		if j.DeletionTimestamp != nil {
			return nil, errorf(codes.FailedPrecondition, "source volume %s is being deleted", source)
		}
		if kind == v1.SinkKind && j.Spec.Sink == nil {
			return nil, errorf(codes.FailedPrecondition, "volume %s streams to no sink: its StorageClass names none, so it has no sink snapshots", source)
		}
		s = &v1.JournalSnapshot{
			ObjectMeta: metav1.ObjectMeta{
				Name:        id,
				Labels:      map[string]string{catalog.NodeLabel: catalog.NodeLabelValue(j.Spec.Node)},
				Annotations: map[string]string{catalog.NameAnnotation: name},
				Finalizers:  []string{v1.SnapshotFinalizer},
			},
			Spec: v1.JournalSnapshotSpec{Source: source, Node: j.Spec.Node, Kind: kind},
		}
		if kind == v1.SinkKind {
			s.Spec.Sink = j.Spec.Sink.DeepCopy()
		}
		if err := c.Snapshots.Create(ctx, s); err != nil {
			return nil, apiError(err)
		}
	case err != nil:
		return nil, apiError(err)
	case s.Annotations[catalog.NameAnnotation] != name:
		return nil, errorf(codes.AlreadyExists, "snapshot id %s belongs to another name", id)
	case s.Spec.Source != source:
		return nil, errorf(codes.AlreadyExists, "snapshot %s exists of another volume, %s", name, s.Spec.Source)
	case s.Spec.Kind != kind:
		return nil, errorf(codes.AlreadyExists, "snapshot %s exists of another kind, %s", name, s.Spec.Kind)
	case s.DeletionTimestamp != nil:
		return nil, errorf(codes.Aborted, "snapshot %s is being deleted", name)
	}
	s, err = c.waitForSnapshot(ctx, id, func(s *v1.JournalSnapshot) bool { return s.Status.ReadyToUse })
	if err != nil {
		return nil, err
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

func (c *Controller) waitForSnapshot(ctx context.Context, id string, done func(*v1.JournalSnapshot) bool) (*v1.JournalSnapshot, error) {
	return waitUntil(ctx, c.Snapshots, id, done, func(s *v1.JournalSnapshot) error {
		if s.Status.Phase == v1.PhaseFailed && s.Status.ObservedGeneration >= s.Generation && s.DeletionTimestamp == nil {
			return &nodeFailure{node: s.Spec.Node, what: "snapshot " + s.Name + " of volume " + s.Spec.Source, conditions: s.Status.Conditions}
		}
		return nil
	})
}

func csiSnapshot(s *v1.JournalSnapshot) *csi.Snapshot {
	taken := s.CreationTimestamp
	if s.Status.TakenAt != nil {
		taken = *s.Status.TakenAt
	}
	var size int64
	if s.Status.Size != nil {
		size = s.Status.Size.Value()
	}
	return &csi.Snapshot{
		SnapshotId:     s.Name,
		SourceVolumeId: s.Spec.Source,
		SizeBytes:      size,
		CreationTime:   timestamppb.New(taken.Time),
		ReadyToUse:     s.Status.ReadyToUse,
	}
}

func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if c.Snapshots == nil {
		return nil, errorf(codes.Unimplemented, "snapshots are not kept here")
	}
	id := req.GetSnapshotId()
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "snapshot id missing")
	}
	if _, _, ok := parsePointHandle(id); ok {
		id = pointSnapshotName(id)
	}
	unlock, err := c.locks.try("snapshot/" + id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Snapshots.Delete(ctx, id); apierrors.IsNotFound(err) {
		return &csi.DeleteSnapshotResponse{}, nil
	} else if err != nil {
		return nil, apiError(err)
	}
	if err := releaseOrphan(ctx, c, c.Snapshots, id, func(s *v1.JournalSnapshot) string { return s.Spec.Node }, v1.SnapshotFinalizer); err != nil {
		return nil, err
	}
	_, err = c.waitForSnapshot(ctx, id, func(*v1.JournalSnapshot) bool { return false })
	if status.Code(err) != codes.NotFound {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if c.Snapshots == nil {
		return nil, errorf(codes.Unimplemented, "snapshots are not kept here")
	}
	if req.GetMaxEntries() < 0 {
		return nil, errorf(codes.InvalidArgument, "max_entries %d is negative", req.GetMaxEntries())
	}
	var all []v1.JournalSnapshot
	if vol, p, ok := parsePointHandle(req.GetSnapshotId()); ok {
		return c.listPoint(ctx, req.GetSnapshotId(), vol, p, req.GetSourceVolumeId())
	}
	if id := req.GetSnapshotId(); id != "" {
		s, err := c.Snapshots.Get(ctx, id)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, apiError(err)
		}
		if err == nil {
			all = append(all, *s)
		}
	} else {
		var err error
		if all, err = c.Snapshots.List(ctx); err != nil {
			return nil, apiError(err)
		}
	}
	all = slices.DeleteFunc(all, func(s v1.JournalSnapshot) bool {
		src := req.GetSourceVolumeId()
		return s.DeletionTimestamp != nil || src != "" && s.Spec.Source != src
	})
	slices.SortFunc(all, func(a, b v1.JournalSnapshot) int { return strings.Compare(a.Name, b.Name) })
	start := 0
	if t := req.GetStartingToken(); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 || n > len(all) {
			return nil, errorf(codes.Aborted, "starting token %q is not one ListSnapshots gave", t)
		}
		start = n
	}
	end := len(all)
	if m := int(req.GetMaxEntries()); m > 0 && start+m < end {
		end = start + m
	}
	resp := &csi.ListSnapshotsResponse{}
	for i := start; i < end; i++ {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(&all[i])})
	}
	if end < len(all) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

// volumeSource checks what CreateVolume asks a volume to start as and
// returns it, with the node it must be made on (none: any) and the least
// size it needs; nil if it asks for none.
func (c *Controller) volumeSource(ctx context.Context, cs *csi.VolumeContentSource) (src *v1.VolumeSource, node string, size int64, err error) {
	switch {
	case cs == nil:
		return nil, "", 0, nil
	case cs.GetSnapshot() != nil:
		id := cs.GetSnapshot().GetSnapshotId()
		if c.Snapshots == nil {
			return nil, "", 0, errorf(codes.InvalidArgument, "snapshots are not kept here")
		}
		if strings.Contains(id, "@") {
			vol, p, err := parsePoint(id)
			if err != nil {
				return nil, "", 0, errorf(codes.InvalidArgument, "%v", err)
			}
			s, err := c.pinPoint(ctx, id, vol, p)
			if err != nil {
				return nil, "", 0, err
			}
			return &v1.VolumeSource{Snapshot: s.Name}, "", s.Status.Size.Value(), nil
		}
		s, err := c.Snapshots.Get(ctx, id)
		switch {
		case apierrors.IsNotFound(err) || err == nil && s.DeletionTimestamp != nil:
			return nil, "", 0, errorf(codes.NotFound, "snapshot %s not found", id)
		case err != nil:
			return nil, "", 0, apiError(err)
		case !s.Status.ReadyToUse || s.Status.Size == nil:
			return nil, "", 0, errorf(codes.Unavailable, "snapshot %s is not ready to use yet", id)
		}
		node := s.Spec.Node
		if s.Spec.Kind == v1.SinkKind {
			node = "" // restored from the receiver, on any node
		}
		return &v1.VolumeSource{Snapshot: id}, node, s.Status.Size.Value(), nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		j, err := c.Store.Get(ctx, id)
		switch {
		case apierrors.IsNotFound(err) || err == nil && j.DeletionTimestamp != nil:
			return nil, "", 0, errorf(codes.NotFound, "source volume %s not found", id)
		case err != nil:
			return nil, "", 0, apiError(err)
		case j.Status.Capacity == nil:
			return nil, "", 0, errorf(codes.Unavailable, "source volume %s is not made yet", id)
		}
		return &v1.VolumeSource{Journal: id}, j.Spec.Node, j.Status.Capacity.Value(), nil
	}
	return nil, "", 0, errorf(codes.InvalidArgument, "volume content source of an unknown type")
}

// withSource puts a volume's source in spec: its node, and a size that
// holds the source within the capacity range.
func withSource(spec *v1.JournalSpec, req *csi.CreateVolumeRequest, src *v1.VolumeSource, node string, need int64) error {
	if want := spec.Node; node != "" && want != "" && want != node && !topologyAllows(req.GetAccessibilityRequirements(), node) {
		return errorf(codes.ResourceExhausted, "the source of the volume is on node %s, not among the nodes asked for (%s): the volume must be on that node", node, want)
	}
	if node != "" {
		spec.Node = node
	}
	spec.Source = src
	if need > spec.Capacity.Value() {
		if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && need > lim {
			return errorf(codes.OutOfRange, "the source holds %d bytes, more than limit bytes %d", need, lim)
		}
		spec.Capacity = *resource.NewQuantity(need, resource.BinarySI)
	}
	return nil
}

// topologyAllows reports whether node is among those a topology
// requirement names, or it names none.
func topologyAllows(t *csi.TopologyRequirement, node string) bool {
	any := false
	for _, list := range [][]*csi.Topology{t.GetPreferred(), t.GetRequisite()} {
		for _, top := range list {
			if n, ok := top.GetSegments()[TopologyKey]; ok {
				any = true
				if n == node {
					return true
				}
			}
		}
	}
	return !any
}

// releaseOrphan removes the finalizer of a deleted object whose node is
// gone, so that it does not hang in deletion forever.
func releaseOrphan[T any, P catalog.Object[T]](ctx context.Context, c *Controller, table catalog.Table[T, P], id string, node func(P) string, finalizer string) error {
	o, err := table.Get(ctx, id)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return apiError(err)
	}
	gone, err := c.nodeGone(ctx, node(o))
	if err != nil {
		return errorf(codes.Unavailable, "is node %s still there: %v", node(o), err)
	}
	if !gone || !controllerutil.RemoveFinalizer(o, finalizer) {
		return nil
	}
	klog.InfoS("Node is gone: releasing what it kept", "kind", o.GetObjectKind().GroupVersionKind().Kind, "name", id, "node", node(o))
	if err := table.Update(ctx, o); err != nil && !apierrors.IsNotFound(err) {
		return apiError(err)
	}
	return nil
}

// A point-in-time snapshot handle names a volume streamed to a receiver
// and a point of its stream: VOLUME@TIME (RFC 3339) or VOLUME@TRANSID. A
// pre-provisioned VolumeSnapshotContent carries one; a volume made from
// it pins that point first, as a Sink snapshot would.
func parsePointHandle(h string) (volume string, p v1.SnapshotPoint, ok bool) {
	volume, p, err := parsePoint(h)
	return volume, p, err == nil
}

// parsePoint parses a handle that holds an @ as a point-in-time handle.
func parsePoint(h string) (volume string, p v1.SnapshotPoint, err error) {
	volume, point, _ := strings.Cut(h, "@")
	if volume == "" || point == "" {
		return "", p, fmt.Errorf("snapshot handle %q: want VOLUME@TIME (RFC 3339) or VOLUME@TRANSID", h)
	}
	if n, err := strconv.ParseInt(point, 10, 64); err == nil && n > 0 {
		return volume, v1.SnapshotPoint{Transid: n}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, point)
	if err != nil {
		return "", p, fmt.Errorf("snapshot handle %q: %q is neither an RFC 3339 time nor a transaction id", h, point)
	}
	mt := metav1.NewTime(t)
	return volume, v1.SnapshotPoint{Time: &mt}, nil
}

// pointSnapshotName is the name of the JournalSnapshot a point-in-time
// handle is pinned as.
func pointSnapshotName(handle string) string { return volumeID("point:" + handle) }

// listPoint is ListSnapshots of a point-in-time handle: the point of the
// volume, ready (whether its receiver keeps it, a volume made from it
// finds out), if the volume exists.
func (c *Controller) listPoint(ctx context.Context, handle, vol string, p v1.SnapshotPoint, source string) (*csi.ListSnapshotsResponse, error) {
	j, err := c.Store.Get(ctx, vol)
	switch {
	case apierrors.IsNotFound(err) || err == nil && (j.Spec.Sink == nil || j.Status.Capacity == nil) || source != "" && source != vol:
		return &csi.ListSnapshotsResponse{}, nil
	case err != nil:
		return nil, apiError(err)
	}
	at := sink.TransidTime(uint64(p.Transid))
	if p.Time != nil {
		at = p.Time.Time
	}
	return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: &csi.Snapshot{
		SnapshotId: handle, SourceVolumeId: vol, SizeBytes: j.Status.Capacity.Value(),
		CreationTime: timestamppb.New(at), ReadyToUse: true,
	}}}}, nil
}

// pinPoint pins the point a handle names at its volume's receiver, as a
// Sink JournalSnapshot, and returns it; one the receiver cannot pin is
// removed again, and its error (a point not kept: OutOfRange, naming
// what is kept) returned.
func (c *Controller) pinPoint(ctx context.Context, handle, vol string, p v1.SnapshotPoint) (*v1.JournalSnapshot, error) {
	id := pointSnapshotName(handle)
	if _, err := c.Snapshots.Get(ctx, id); apierrors.IsNotFound(err) {
		j, err := c.Store.Get(ctx, vol)
		switch {
		case apierrors.IsNotFound(err):
			return nil, errorf(codes.NotFound, "snapshot %s: volume %s not found", handle, vol)
		case err != nil:
			return nil, apiError(err)
		case j.Spec.Sink == nil:
			return nil, errorf(codes.FailedPrecondition, "snapshot %s: volume %s streams to no sink", handle, vol)
		}
		s := &v1.JournalSnapshot{
			ObjectMeta: metav1.ObjectMeta{
				Name:        id,
				Labels:      map[string]string{catalog.NodeLabel: catalog.NodeLabelValue(j.Spec.Node)},
				Annotations: map[string]string{catalog.NameAnnotation: handle},
				Finalizers:  []string{v1.SnapshotFinalizer},
			},
			Spec: v1.JournalSnapshotSpec{Source: vol, Node: j.Spec.Node, Kind: v1.SinkKind, Sink: j.Spec.Sink.DeepCopy(), Point: &p},
		}
		if err := c.Snapshots.Create(ctx, s); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, apiError(err)
		}
	} else if err != nil {
		return nil, apiError(err)
	}
	s, err := c.waitForSnapshot(ctx, id, func(s *v1.JournalSnapshot) bool { return s.Status.ReadyToUse })
	if err != nil {
		var nf *nodeFailure
		if errors.As(err, &nf) {
			c.Snapshots.Delete(context.WithoutCancel(ctx), id) // it pinned nothing
		}
		return nil, err
	}
	return s, nil
}
