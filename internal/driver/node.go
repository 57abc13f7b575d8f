package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/volume"
)

// Node is the CSI Node service.
type Node struct {
	csi.UnimplementedNodeServer
	Volumes *host.Volumes
	NodeID  string
	// MaxVolumes is the most volumes the node takes; 0: no limit.
	MaxVolumes int64
	// Journals, if set, says how a volume streams to its sink and brings
	// its Journal's status up to date; without it a volume keeps the sink
	// settings it has.
	Journals Journals

	calls inflight
}

// Journals is what the Node service needs of the node's reconciler.
type Journals interface {
	// SinkOptions returns the sink settings the Journal called name is
	// staged with.
	SinkOptions(ctx context.Context, name string) (*attach.SinkOptions, error)
	// Sync brings the Journal's status up to date.
	Sync(ctx context.Context, name string) error
}

// nodeError turns an error of pkg/node into a gRPC status.
func nodeError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, host.ErrBadName), errors.Is(err, host.ErrNotFound):
		return errorf(codes.NotFound, "%v", err)
	case errors.Is(err, host.ErrRetired):
		return errorf(codes.Unavailable, "%v", err)
	case errors.Is(err, host.ErrConflict):
		return errorf(codes.AlreadyExists, "%v", err)
	case errors.Is(err, host.ErrNotStaged), errors.Is(err, host.ErrStaged), errors.Is(err, host.ErrPublished):
		return errorf(codes.FailedPrecondition, "%v", err)
	case errors.Is(err, volume.ErrInUse):
		return errorf(codes.Aborted, "%v", err)
	case errors.Is(err, syscall.ENOSPC):
		return errorf(codes.ResourceExhausted, "%v", err)
	}
	return errorf(codes.Internal, "%v", err)
}

// begin checks the volume id, takes the volume's lock and checks that the
// volume exists.
func (n *Node) begin(id string) (func(), error) { return n.lock(id, true) }

// beginTeardown is begin for unpublish and unstage, which must succeed on a
// volume that is gone (a retry after the volume was deleted): they clean
// up the path they are given and return.
func (n *Node) beginTeardown(id string) (func(), error) { return n.lock(id, false) }

func (n *Node) lock(id string, mustExist bool) (func(), error) {
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	if err := host.CheckName(id); err != nil {
		return nil, nodeError(err)
	}
	// Another CSI call on the volume: Aborted, the CO retries. The node's
	// reconciler: wait, it holds the volume only for a moment.
	done, err := n.calls.try(id)
	if err != nil {
		return nil, err
	}
	unlock := n.Volumes.Lock(id)
	if n.Volumes.Retired() {
		unlock()
		done()
		return nil, nodeError(host.ErrRetired)
	}
	if mustExist {
		if err := n.exists(id); err != nil {
			unlock()
			done()
			return nil, err
		}
	}
	return func() {
		unlock()
		done()
	}, nil
}

func (n *Node) exists(id string) error {
	if !n.Volumes.Exists(id) {
		return errorf(codes.NotFound, "volume %s not found on node %s", id, n.NodeID)
	}
	return nil
}

func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             n.NodeID,
		MaxVolumesPerNode:  n.MaxVolumes,
		AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: n.NodeID}},
	}, nil
}

// Per-volume memory DefaultMaxVolumes counts: an attached volume holds its
// FIFO (16 MiB by default), its FUSE server's request buffers and the
// engine's, about 8 MiB together, and the loop device's queue; 32 MiB
// leaves room for a FIFO a little larger.
const (
	volumeMemory   = 32 << 20
	maxVolumesCeil = 256
)

// DefaultMaxVolumes is the most volumes a node with mem bytes of memory
// takes: as many as a quarter of its memory holds at volumeMemory each
// (a node runs its pods too), at least 1 and at most 256.
func DefaultMaxVolumes(mem int64) int64 {
	return min(max(mem/4/volumeMemory, 1), maxVolumesCeil)
}

// memTotal is the machine's memory in bytes.
func memTotal() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	return parseMemTotal(b)
}

// parseMemTotal reads the line "MemTotal: N kB" of /proc/meminfo.
func parseMemTotal(meminfo []byte) (int64, error) {
	for line := range strings.Lines(string(meminfo)) {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/meminfo: %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || kb < 0 || kb > 1<<53 {
				return 0, fmt.Errorf("/proc/meminfo: %q", line)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo has no MemTotal")
}

func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, errorf(codes.InvalidArgument, "staging target path missing")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}
	unlock, err := n.begin(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	st := host.Stage{StagingPath: req.GetStagingTargetPath(), Block: req.GetVolumeCapability().GetBlock() != nil}
	if m := req.GetVolumeCapability().GetMount(); m != nil {
		st.FSType, st.MountFlags = m.GetFsType(), m.GetMountFlags()
		if st.FSType == "" {
			st.FSType = "ext4"
		}
	}
	var so *attach.SinkOptions
	if n.Journals != nil {
		if so, err = n.Journals.SinkOptions(ctx, req.GetVolumeId()); err != nil {
			err = fmt.Errorf("sink settings of volume %s: %w", req.GetVolumeId(), err)
		}
	}
	if err == nil {
		err = n.Volumes.StageVolume(req.GetVolumeId(), st, so)
	}
	unlock()
	if err != nil {
		return nil, nodeError(err)
	}
	n.sync(ctx, req.GetVolumeId())
	return &csi.NodeStageVolumeResponse{}, nil
}

// sync brings the volume's Journal status up to date before a stage or
// unstage returns, so that the controller never acts on a phase that is
// behind (a DeleteVolume right after an unstage, say).
func (n *Node) sync(ctx context.Context, id string) {
	if n.Journals == nil {
		return
	}
	if err := n.Journals.Sync(ctx, id); err != nil {
		klog.ErrorS(err, "Could not update the volume's status; the reconciler will", "volume", id)
	}
}

func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetStagingTargetPath() == "" && req.GetVolumeId() != "" {
		return nil, errorf(codes.InvalidArgument, "staging target path missing")
	}
	unlock, err := n.beginTeardown(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	err = n.Volumes.UnstageVolume(req.GetVolumeId(), req.GetStagingTargetPath())
	unlock()
	if err != nil {
		return nil, nodeError(err)
	}
	n.sync(ctx, req.GetVolumeId())
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (n *Node) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	case req.GetTargetPath() == "":
		return nil, errorf(codes.InvalidArgument, "target path missing")
	}
	if err := checkCapability(req.GetVolumeCapability()); err != nil {
		return nil, errorf(codes.InvalidArgument, "%v", err)
	}
	if req.GetStagingTargetPath() == "" {
		return nil, errorf(codes.FailedPrecondition, "staging target path missing: the volume must be staged first")
	}
	unlock, err := n.begin(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, ok := n.Volumes.Staged(req.GetVolumeId())
	if !ok || st.StagingPath != req.GetStagingTargetPath() {
		return nil, errorf(codes.FailedPrecondition, "volume %s is not staged at %s", req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if st.Block != (req.GetVolumeCapability().GetBlock() != nil) {
		return nil, errorf(codes.InvalidArgument, "volume %s is staged as block=%v", req.GetVolumeId(), st.Block)
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		// Published once as read/write at any time (ReadWriteOncePod).
		for target, p := range st.Publishes {
			if target != req.GetTargetPath() && !(p.ReadOnly && req.GetReadonly()) {
				return nil, errorf(codes.FailedPrecondition, "volume %s is single-writer and published at %s already", req.GetVolumeId(), target)
			}
		}
	}
	err = n.Volumes.PublishVolume(req.GetVolumeId(), req.GetTargetPath(), req.GetReadonly())
	return &csi.NodePublishVolumeResponse{}, nodeError(err)
}

func (n *Node) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetTargetPath() == "" && req.GetVolumeId() != "" {
		return nil, errorf(codes.InvalidArgument, "target path missing")
	}
	unlock, err := n.beginTeardown(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	return &csi.NodeUnpublishVolumeResponse{}, nodeError(n.Volumes.UnpublishVolume(req.GetVolumeId(), req.GetTargetPath()))
}

func (n *Node) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if path == "" && id != "" {
		return nil, errorf(codes.InvalidArgument, "volume path missing")
	}
	if id == "" {
		return nil, errorf(codes.InvalidArgument, "volume id missing")
	}
	if err := n.exists(id); err != nil {
		return nil, err
	}
	st, ok := n.Volumes.Staged(id)
	if !ok {
		return nil, errorf(codes.NotFound, "volume %s is not staged", id)
	}
	if st.Block {
		// Whatever the path (the kubelet asks at one it is unpublishing):
		// the figures are the device's while it is staged.
		size, err := n.Volumes.Size(id)
		if err != nil {
			return nil, nodeError(err)
		}
		// A block volume's use is what its data image holds: blocks
		// written and not discarded.
		used := min(n.Volumes.Written(id), size)
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: size, Used: used, Available: size - used},
		}}, nil
	}
	if _, published := st.Publishes[path]; path != st.StagingPath && !published {
		return nil, errorf(codes.NotFound, "volume %s is not at %s", id, path)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, errorf(codes.NotFound, "volume %s: %v", id, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := fs.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs, Used: int64(fs.Blocks-fs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}}, nil
}

func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() != "" && req.GetVolumePath() == "" {
		return nil, errorf(codes.InvalidArgument, "volume path missing")
	}
	unlock, err := n.begin(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	size, err := capacity(req.GetCapacityRange())
	if err != nil {
		return nil, errorf(codes.OutOfRange, "%v", err)
	}
	if req.GetCapacityRange().GetRequiredBytes() == 0 {
		size = 0 // grow the file system to the device, whatever its size
	}
	if _, err := os.Stat(filepath.Clean(req.GetVolumePath())); err != nil {
		return nil, errorf(codes.NotFound, "volume path %s: %v", req.GetVolumePath(), err)
	}
	got, err := n.Volumes.ExpandVolume(ctx, req.GetVolumeId(), size)
	if err != nil {
		return nil, nodeError(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: got}, nil
}
