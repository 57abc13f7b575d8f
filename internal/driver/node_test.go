package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The Node service's RPCs on fake devices and mounts (hosttest), without
// root: each case brings a volume of its own to a state through the RPCs,
// makes one call and checks its code and what it did.

var blockCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: mountCap.AccessMode,
}

// fsCap is a mount capability with file system fs.
func fsCap(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: mountCap.AccessMode,
	}
}

// singleWriterCap is a mount capability of ReadWriteOncePod.
var singleWriterCap = &csi.VolumeCapability{
	AccessType: mountCap.AccessType,
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER},
}

var multiNodeCap = &csi.VolumeCapability{
	AccessType: mountCap.AccessType,
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
}

// state is how far a test volume is brought before the call.
type state int

const (
	isUnknown   state = iota // never made
	isMade                   // made, not staged
	isStaged                 // staged at its staging path
	isPublished              // and published at its target
)

// vol is a test volume: its id, where it is staged and published, and how.
type vol struct {
	id, staging, target string
	cap                 *csi.VolumeCapability
}

func (v vol) stageReq() *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.cap}
}

func (v vol) unstageReq() *csi.NodeUnstageVolumeRequest {
	return &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}
}

func (v vol) publishReq() *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.cap}
}

func (v vol) unpublishReq() *csi.NodeUnpublishVolumeRequest {
	return &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}
}

func (v vol) statsReq(path string) *csi.NodeGetVolumeStatsRequest {
	return &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: path}
}

func (v vol) expandReq(size int64) *csi.NodeExpandVolumeRequest {
	return &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: size}}
}

const volSize = 8 << 20

// volumeAt makes a volume of its own for the test (named after it) and
// brings it to state at, with capability c. The test's cleanup tears down
// and deletes it, and checks that no device is left.
func (d *driver) volumeAt(t *testing.T, at state, c *csi.VolumeCapability) vol {
	t.Helper()
	ctx := context.Background()
	v := vol{id: "pvc-unknown", staging: t.TempDir(), target: filepath.Join(t.TempDir(), "target"), cap: c}
	if at == isUnknown {
		return v
	}
	r, err := d.c.CreateVolume(ctx, createReq(t.Name(), volSize, map[string]string{"fifoSize": "1Mi"}))
	if err != nil {
		t.Fatal(err)
	}
	v.id = r.GetVolume().GetVolumeId()
	t.Cleanup(func() { d.remove(t, v.id) })
	if at >= isStaged {
		if _, err := d.n.NodeStageVolume(ctx, v.stageReq()); err != nil {
			t.Fatal(err)
		}
	}
	if at >= isPublished {
		if _, err := d.n.NodePublishVolume(ctx, v.publishReq()); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// remove unpublishes, unstages and deletes a volume, wherever the test
// left it.
func (d *driver) remove(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	if st, ok := d.n.Volumes.Staged(id); ok {
		for target := range st.Publishes {
			if _, err := d.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
		if _, err := d.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: st.StagingPath}); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	if devs := d.fakes.Frontends.Devices(); len(devs) > 0 {
		t.Errorf("devices left after teardown: %v", devs)
	}
	if _, err := d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("teardown: %v", err)
	}
}

// device returns the volume's block device, failing the test if it has
// none or it is not there.
func (d *driver) device(t *testing.T, v vol) string {
	t.Helper()
	dev, ok := d.n.Volumes.Device(v.id)
	if !ok {
		t.Fatal("no device")
	}
	if _, err := os.Stat(dev); err != nil {
		t.Fatalf("device: %v", err)
	}
	return dev
}

// wantMounts checks how many mounts are stacked at path and returns them.
func (d *driver) wantMounts(t *testing.T, path string, n int) []string {
	t.Helper()
	mps := d.fakes.Mounter.MountsAt(path)
	if len(mps) != n {
		t.Fatalf("%d mounts at %s, want %d: %+v", len(mps), path, n, mps)
	}
	var opts []string
	for _, mp := range mps {
		opts = append(opts, mp.Opts...)
		opts = append(opts, "type="+mp.Type, "device="+mp.Device)
	}
	return opts
}

// wantUnstaged checks that the volume has no block device and nothing is
// mounted at its staging path.
func (d *driver) wantUnstaged(t *testing.T, v vol) {
	t.Helper()
	if dev, ok := d.n.Volumes.Device(v.id); ok {
		t.Errorf("device %s still attached", dev)
	}
	if devs := d.fakes.Frontends.Devices(); len(devs) > 0 {
		t.Errorf("devices open: %v", devs)
	}
	d.wantMounts(t, v.staging, 0)
}

// nodeCase is one call of a Node RPC on a volume brought to a state.
type nodeCase[Req, Resp any] struct {
	name string
	at   state
	cap  *csi.VolumeCapability // nil: mountCap
	// before, if set, runs just before the call (the fakes are told to
	// succeed again after it).
	before func(t *testing.T, d *driver, v vol)
	// busy: another call on the volume is in flight meanwhile.
	busy  bool
	req   func(v vol) Req
	code  codes.Code
	check func(t *testing.T, d *driver, v vol, resp Resp)
}

// testNodeRPC runs each case on one driver.
func testNodeRPC[Req, Resp any](t *testing.T, rpc func(*Node, context.Context, Req) (Resp, error), cases []nodeCase[Req, Resp]) {
	d := newDriver(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.cap == nil {
				c.cap = mountCap
			}
			v := d.volumeAt(t, c.at, c.cap)
			if c.before != nil {
				c.before(t, d, v)
			}
			if c.busy {
				done, err := d.n.calls.try(v.id)
				if err != nil {
					t.Fatal(err)
				}
				defer done()
			}
			resp, err := rpc(d.n, context.Background(), c.req(v))
			d.fakes.Mounter.FailFormat(nil)
			d.fakes.Resizer.Fail(nil)
			if status.Code(err) != c.code {
				t.Fatalf("got %v, want code %s", err, c.code)
			}
			if c.check != nil {
				c.check(t, d, v, resp)
			}
		})
	}
}

// edited is a request builder: base's request, edited.
func edited[Req any](base func(vol) Req, edit func(Req)) func(vol) Req {
	return func(v vol) Req {
		r := base(v)
		edit(r)
		return r
	}
}

var errFake = errors.New("fake failure")

func TestNodeStageVolume(t *testing.T) {
	wantStaged := func(t *testing.T, d *driver, v vol, _ *csi.NodeStageVolumeResponse) {
		dev := d.device(t, v)
		if opts := d.wantMounts(t, v.staging, 1); !slices.Contains(opts, "type=ext4") || !slices.Contains(opts, "device="+dev) {
			t.Errorf("staging mount %v, want ext4 on %s", opts, dev)
		}
	}
	testNodeRPC(t, (*Node).NodeStageVolume, []nodeCase[*csi.NodeStageVolumeRequest, *csi.NodeStageVolumeResponse]{
		{name: "staging a volume mounts a file system on its device at the staging path",
			at: isMade, req: vol.stageReq, check: wantStaged},
		{name: "staging with no file system named mounts ext4",
			at: isMade, cap: fsCap(""), req: vol.stageReq, check: wantStaged},
		{name: "staging a block volume makes its device and mounts nothing",
			at: isMade, cap: blockCap, req: vol.stageReq,
			check: func(t *testing.T, d *driver, v vol, _ *csi.NodeStageVolumeResponse) {
				d.device(t, v)
				d.wantMounts(t, v.staging, 0)
			}},
		{name: "staging a staged volume again the same way succeeds and mounts nothing more",
			at: isStaged, req: vol.stageReq, check: wantStaged},
		{name: "staging a staged volume at another path is AlreadyExists",
			at: isStaged, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath += "-other" }), code: codes.AlreadyExists},
		{name: "staging a volume staged with a file system as block is AlreadyExists",
			at: isStaged, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = blockCap }), code: codes.AlreadyExists},
		{name: "staging a volume staged with ext4 with xfs is AlreadyExists",
			at: isStaged, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = fsCap("xfs") }), code: codes.AlreadyExists},
		{name: "a request without a volume id is InvalidArgument",
			at: isMade, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument},
		{name: "a request without a staging path is InvalidArgument",
			at: isMade, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.StagingTargetPath = "" }), code: codes.InvalidArgument},
		{name: "a request without a capability is InvalidArgument",
			at: isMade, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = nil }), code: codes.InvalidArgument},
		{name: "a multi-node access mode is InvalidArgument",
			at: isMade, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = multiNodeCap }), code: codes.InvalidArgument},
		{name: "a file system other than ext4 or xfs is InvalidArgument",
			at: isMade, req: edited(vol.stageReq, func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = fsCap("btrfs") }), code: codes.InvalidArgument},
		{name: "staging an unknown volume is NotFound",
			at: isUnknown, req: vol.stageReq, code: codes.NotFound},
		{name: "a file system that cannot be made is Internal and leaves no device",
			at: isMade, before: func(_ *testing.T, d *driver, _ vol) { d.fakes.Mounter.FailFormat(errFake) },
			req: vol.stageReq, code: codes.Internal,
			check: func(t *testing.T, d *driver, v vol, _ *csi.NodeStageVolumeResponse) { d.wantUnstaged(t, v) }},
		{name: "staging while another call on the volume runs is Aborted",
			at: isMade, busy: true, req: vol.stageReq, code: codes.Aborted},
	})
}

func TestNodeUnstageVolume(t *testing.T) {
	wantUnstaged := func(t *testing.T, d *driver, v vol, _ *csi.NodeUnstageVolumeResponse) { d.wantUnstaged(t, v) }
	testNodeRPC(t, (*Node).NodeUnstageVolume, []nodeCase[*csi.NodeUnstageVolumeRequest, *csi.NodeUnstageVolumeResponse]{
		{name: "unstaging unmounts the staging path and removes the device",
			at: isStaged, req: vol.unstageReq, check: wantUnstaged},
		{name: "unstaging a block volume removes its device",
			at: isStaged, cap: blockCap, req: vol.unstageReq, check: wantUnstaged},
		{name: "unstaging a volume not staged (again) succeeds",
			at: isMade, req: vol.unstageReq, check: wantUnstaged},
		{name: "unstaging a volume that is gone succeeds",
			at: isUnknown, req: vol.unstageReq},
		{name: "a stale mount at the staging path of a volume not staged is unmounted",
			at: isMade, before: func(t *testing.T, d *driver, v vol) {
				if err := d.fakes.Mounter.Mount("/dev/gone", v.staging, "ext4", nil); err != nil {
					t.Fatal(err)
				}
			},
			req: vol.unstageReq, check: wantUnstaged},
		{name: "unstaging a published volume is FailedPrecondition and leaves it mounted",
			at: isPublished, req: vol.unstageReq, code: codes.FailedPrecondition,
			check: func(t *testing.T, d *driver, v vol, _ *csi.NodeUnstageVolumeResponse) {
				d.device(t, v)
				d.wantMounts(t, v.staging, 1)
				d.wantMounts(t, v.target, 1)
			}},
		{name: "unstaging at another path than the staging path is AlreadyExists",
			at: isStaged, req: edited(vol.unstageReq, func(r *csi.NodeUnstageVolumeRequest) { r.StagingTargetPath += "-other" }), code: codes.AlreadyExists},
		{name: "a request without a volume id is InvalidArgument",
			at: isStaged, req: edited(vol.unstageReq, func(r *csi.NodeUnstageVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument},
		{name: "a request without a staging path is InvalidArgument",
			at: isStaged, req: edited(vol.unstageReq, func(r *csi.NodeUnstageVolumeRequest) { r.StagingTargetPath = "" }), code: codes.InvalidArgument},
		{name: "unstaging while another call on the volume runs is Aborted",
			at: isStaged, busy: true, req: vol.unstageReq, code: codes.Aborted},
	})
}

func TestNodePublishVolume(t *testing.T) {
	// wantPublished checks a bind mount at the target, whose options hold
	// want, and that target is a directory or, for a block volume, a file.
	wantPublished := func(want ...string) func(t *testing.T, d *driver, v vol, _ *csi.NodePublishVolumeResponse) {
		return func(t *testing.T, d *driver, v vol, _ *csi.NodePublishVolumeResponse) {
			opts := d.wantMounts(t, v.target, 1)
			for _, o := range append(want, "bind", "device="+d.device(t, v)) {
				if !slices.Contains(opts, o) {
					t.Errorf("target mount %v, want %s", opts, o)
				}
			}
			fi, err := os.Stat(v.target)
			if err != nil || fi.IsDir() != (v.cap.GetBlock() == nil) {
				t.Errorf("target %v %v", fi, err)
			}
			if st, _ := d.n.Volumes.Staged(v.id); len(st.Publishes) == 0 {
				t.Error("publish not recorded")
			}
		}
	}
	readOnly := edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.Readonly = true })
	testNodeRPC(t, (*Node).NodePublishVolume, []nodeCase[*csi.NodePublishVolumeRequest, *csi.NodePublishVolumeResponse]{
		{name: "publishing bind-mounts the staged file system at the target",
			at: isStaged, req: vol.publishReq, check: wantPublished()},
		{name: "publishing a block volume bind-mounts its device onto a file at the target",
			at: isStaged, cap: blockCap, req: vol.publishReq, check: wantPublished()},
		{name: "publishing read-only mounts read-only",
			at: isStaged, req: readOnly, check: wantPublished("ro")},
		{name: "publishing a published volume again the same way succeeds and mounts nothing more",
			at: isPublished, req: vol.publishReq, check: wantPublished()},
		{name: "publishing a published volume at a second target succeeds",
			at: isPublished, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.TargetPath += "-2" }),
			check: func(t *testing.T, d *driver, v vol, _ *csi.NodePublishVolumeResponse) {
				d.wantMounts(t, v.target, 1)
				d.wantMounts(t, v.target+"-2", 1)
			}},
		{name: "publishing a single-writer volume at a second target is FailedPrecondition",
			at: isPublished, cap: singleWriterCap, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.TargetPath += "-2" }),
			code: codes.FailedPrecondition},
		{name: "publishing a single-writer volume again at its target succeeds",
			at: isPublished, cap: singleWriterCap, req: vol.publishReq, check: wantPublished()},
		{name: "publishing a published volume again read-only is AlreadyExists",
			at: isPublished, req: readOnly, code: codes.AlreadyExists},
		{name: "publishing a volume not staged is FailedPrecondition",
			at: isMade, req: vol.publishReq, code: codes.FailedPrecondition},
		{name: "publishing from another staging path than the volume's is FailedPrecondition",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.StagingTargetPath += "-other" }), code: codes.FailedPrecondition},
		{name: "a request without a staging path is FailedPrecondition",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.StagingTargetPath = "" }), code: codes.FailedPrecondition},
		{name: "publishing a volume staged with a file system as block is InvalidArgument",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = blockCap }), code: codes.InvalidArgument},
		{name: "a request without a volume id is InvalidArgument",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument},
		{name: "a request without a target path is InvalidArgument",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.TargetPath = "" }), code: codes.InvalidArgument},
		{name: "a request without a capability is InvalidArgument",
			at: isStaged, req: edited(vol.publishReq, func(r *csi.NodePublishVolumeRequest) { r.VolumeCapability = nil }), code: codes.InvalidArgument},
		{name: "publishing an unknown volume is NotFound",
			at: isUnknown, req: vol.publishReq, code: codes.NotFound},
		{name: "publishing while another call on the volume runs is Aborted",
			at: isStaged, busy: true, req: vol.publishReq, code: codes.Aborted},
	})
}

func TestNodeUnpublishVolume(t *testing.T) {
	wantUnpublished := func(t *testing.T, d *driver, v vol, _ *csi.NodeUnpublishVolumeResponse) {
		d.wantMounts(t, v.target, 0)
		if _, err := os.Stat(v.target); !os.IsNotExist(err) {
			t.Errorf("target still there: %v", err)
		}
		if st, _ := d.n.Volumes.Staged(v.id); len(st.Publishes) != 0 {
			t.Errorf("still recorded: %v", st.Publishes)
		}
	}
	testNodeRPC(t, (*Node).NodeUnpublishVolume, []nodeCase[*csi.NodeUnpublishVolumeRequest, *csi.NodeUnpublishVolumeResponse]{
		{name: "unpublishing unmounts the target and removes it",
			at: isPublished, req: vol.unpublishReq, check: wantUnpublished},
		{name: "unpublishing a block volume unmounts its target file and removes it",
			at: isPublished, cap: blockCap, req: vol.unpublishReq, check: wantUnpublished},
		{name: "unpublishing a volume not published (again) succeeds",
			at: isStaged, req: vol.unpublishReq, check: wantUnpublished},
		{name: "unpublishing a volume that is gone succeeds",
			at: isUnknown, req: vol.unpublishReq},
		{name: "a request without a volume id is InvalidArgument",
			at: isPublished, req: edited(vol.unpublishReq, func(r *csi.NodeUnpublishVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument},
		{name: "a request without a target path is InvalidArgument",
			at: isPublished, req: edited(vol.unpublishReq, func(r *csi.NodeUnpublishVolumeRequest) { r.TargetPath = "" }), code: codes.InvalidArgument},
		{name: "unpublishing while another call on the volume runs is Aborted",
			at: isPublished, busy: true, req: vol.unpublishReq, code: codes.Aborted},
	})
}

func TestNodeGetVolumeStats(t *testing.T) {
	atStaging := func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq(v.staging) }
	fsStats := func(t *testing.T, _ *driver, _ vol, r *csi.NodeGetVolumeStatsResponse) {
		u := r.GetUsage()
		if len(u) != 2 || u[0].GetUnit() != csi.VolumeUsage_BYTES || u[1].GetUnit() != csi.VolumeUsage_INODES || u[0].GetTotal() <= 0 || u[1].GetTotal() <= 0 {
			t.Errorf("usage %v, want bytes and inodes", u)
		}
	}
	testNodeRPC(t, (*Node).NodeGetVolumeStats, []nodeCase[*csi.NodeGetVolumeStatsRequest, *csi.NodeGetVolumeStatsResponse]{
		{name: "a staged file system's stats are its bytes and inodes",
			at: isStaged, req: atStaging, check: fsStats},
		{name: "a published file system's stats at its target are its bytes and inodes",
			at: isPublished, req: func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq(v.target) }, check: fsStats},
		{name: "a block volume's stats are its size and the bytes its image holds",
			at: isStaged, cap: blockCap, req: atStaging,
			check: func(t *testing.T, _ *driver, _ vol, r *csi.NodeGetVolumeStatsResponse) {
				u := r.GetUsage()
				if len(u) != 1 || u[0].GetTotal() != volSize || u[0].GetUsed()+u[0].GetAvailable() != volSize {
					t.Errorf("usage %v, want %d bytes in all", u, volSize)
				}
			}},
		{name: "a staged block volume's stats answer at a target it is being unpublished from",
			at: isPublished, cap: blockCap, before: func(t *testing.T, d *driver, v vol) {
				if _, err := d.n.NodeUnpublishVolume(context.Background(), v.unpublishReq()); err != nil {
					t.Fatal(err)
				}
			},
			req: func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq(v.target) },
			check: func(t *testing.T, _ *driver, _ vol, r *csi.NodeGetVolumeStatsResponse) {
				if u := r.GetUsage(); len(u) != 1 || u[0].GetTotal() != volSize {
					t.Errorf("usage %v, want %d bytes in all", u, volSize)
				}
			}},
		{name: "a path the volume is not at is NotFound",
			at: isStaged, req: func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq(v.staging + "-other") }, code: codes.NotFound},
		{name: "a volume not staged is NotFound",
			at: isMade, req: atStaging, code: codes.NotFound},
		{name: "a published target that is gone is NotFound",
			at: isPublished, before: func(t *testing.T, _ *driver, v vol) {
				if err := os.Remove(v.target); err != nil {
					t.Fatal(err)
				}
			},
			req: func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq(v.target) }, code: codes.NotFound},
		{name: "an unknown volume is NotFound",
			at: isUnknown, req: atStaging, code: codes.NotFound},
		{name: "a request without a volume id is InvalidArgument",
			at: isStaged, req: func(v vol) *csi.NodeGetVolumeStatsRequest {
				return &csi.NodeGetVolumeStatsRequest{VolumePath: v.staging}
			}, code: codes.InvalidArgument},
		{name: "a request without a volume path is InvalidArgument",
			at: isStaged, req: func(v vol) *csi.NodeGetVolumeStatsRequest { return v.statsReq("") }, code: codes.InvalidArgument},
	})
}

func TestNodeExpandVolume(t *testing.T) {
	to := func(size int64) func(v vol) *csi.NodeExpandVolumeRequest {
		return func(v vol) *csi.NodeExpandVolumeRequest { return v.expandReq(size) }
	}
	// wantGrown checks the size returned, how often the device was told it
	// grew, and whether the file system was.
	wantGrown := func(size int64, deviceResizes int, fsResized bool) func(t *testing.T, d *driver, v vol, r *csi.NodeExpandVolumeResponse) {
		return func(t *testing.T, d *driver, v vol, r *csi.NodeExpandVolumeResponse) {
			if r.GetCapacityBytes() != size {
				t.Errorf("capacity %d, want %d", r.GetCapacityBytes(), size)
			}
			if n := d.fakes.Frontends.Resizes(d.device(t, v)); n != deviceResizes {
				t.Errorf("device told of %d resizes, want %d", n, deviceResizes)
			}
			if got := slices.Contains(d.fakes.Resizer.Resized(), v.staging); got != fsResized {
				t.Errorf("file system grown: %v, want %v", got, fsResized)
			}
		}
	}
	testNodeRPC(t, (*Node).NodeExpandVolume, []nodeCase[*csi.NodeExpandVolumeRequest, *csi.NodeExpandVolumeResponse]{
		{name: "expanding grows the volume, its device and its file system",
			at: isStaged, req: to(2 * volSize), check: wantGrown(2*volSize, 1, true)},
		{name: "expanding a block volume grows the volume and its device only",
			at: isStaged, cap: blockCap, req: to(2 * volSize), check: wantGrown(2*volSize, 1, false)},
		{name: "expanding to the size the volume has (again) grows its file system only",
			at: isStaged, req: to(volSize), check: wantGrown(volSize, 0, true)},
		{name: "expanding with no size grows the file system to the device",
			at: isStaged, req: to(0), check: wantGrown(volSize, 0, true)},
		{name: "a file system that cannot be grown is Internal",
			at: isStaged, before: func(_ *testing.T, d *driver, _ vol) { d.fakes.Resizer.Fail(errFake) },
			req: to(2 * volSize), code: codes.Internal},
		{name: "a limit under the size required is OutOfRange",
			at: isStaged, req: edited(to(2*volSize), func(r *csi.NodeExpandVolumeRequest) { r.CapacityRange.LimitBytes = volSize }), code: codes.OutOfRange},
		{name: "expanding a volume not staged is FailedPrecondition",
			at: isMade, req: to(2 * volSize), code: codes.FailedPrecondition},
		{name: "a volume path that does not exist is NotFound",
			at: isStaged, req: edited(to(2*volSize), func(r *csi.NodeExpandVolumeRequest) { r.VolumePath += "-gone" }), code: codes.NotFound},
		{name: "expanding an unknown volume is NotFound",
			at: isUnknown, req: to(2 * volSize), code: codes.NotFound},
		{name: "a request without a volume id is InvalidArgument",
			at: isStaged, req: edited(to(2*volSize), func(r *csi.NodeExpandVolumeRequest) { r.VolumeId = "" }), code: codes.InvalidArgument},
		{name: "a request without a volume path is InvalidArgument",
			at: isStaged, req: edited(to(2*volSize), func(r *csi.NodeExpandVolumeRequest) { r.VolumePath = "" }), code: codes.InvalidArgument},
		{name: "expanding while another call on the volume runs is Aborted",
			at: isStaged, busy: true, req: to(2 * volSize), code: codes.Aborted},
	})
}

func TestNodeGetInfo(t *testing.T) {
	testNodeRPC(t, (*Node).NodeGetInfo, []nodeCase[*csi.NodeGetInfoRequest, *csi.NodeGetInfoResponse]{
		{name: "the node's id is its topology segment, with its most volumes",
			req: func(vol) *csi.NodeGetInfoRequest { return &csi.NodeGetInfoRequest{} },
			check: func(t *testing.T, _ *driver, _ vol, r *csi.NodeGetInfoResponse) {
				if r.GetNodeId() != "n1" || r.GetAccessibleTopology().GetSegments()[TopologyKey] != "n1" || len(r.GetAccessibleTopology().GetSegments()) != 1 ||
					r.GetMaxVolumesPerNode() != 7 {
					t.Errorf("info %v", r)
				}
			}},
	})
}

func TestNodeGetCapabilities(t *testing.T) {
	testNodeRPC(t, (*Node).NodeGetCapabilities, []nodeCase[*csi.NodeGetCapabilitiesRequest, *csi.NodeGetCapabilitiesResponse]{
		{name: "the node stages, expands and reports stats",
			req: func(vol) *csi.NodeGetCapabilitiesRequest { return &csi.NodeGetCapabilitiesRequest{} },
			check: func(t *testing.T, _ *driver, _ vol, r *csi.NodeGetCapabilitiesResponse) {
				var got []csi.NodeServiceCapability_RPC_Type
				for _, c := range r.GetCapabilities() {
					got = append(got, c.GetRpc().GetType())
				}
				want := []csi.NodeServiceCapability_RPC_Type{
					csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
					csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
					csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
					csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
				}
				if !slices.Equal(got, want) {
					t.Errorf("capabilities %v, want %v", got, want)
				}
			}},
	})
}

func TestDefaultMaxVolumes(t *testing.T) {
	for _, c := range []struct{ mem, want int64 }{
		{0, 1}, {64 << 20, 1}, {1 << 30, 8}, {4 << 30, 32}, {16 << 30, 128}, {64 << 30, 256}, {1 << 40, 256},
	} {
		if got := DefaultMaxVolumes(c.mem); got != c.want {
			t.Errorf("%d bytes of memory: %d volumes, want %d", c.mem, got, c.want)
		}
	}
}

func TestParseMemTotal(t *testing.T) {
	if got, err := parseMemTotal([]byte("MemTotal:        8029876 kB\nMemFree:         1180000 kB\n")); err != nil || got != 8029876<<10 {
		t.Errorf("got %d, %v", got, err)
	}
	for _, bad := range []string{"", "MemFree: 1 kB\n", "MemTotal: 1 MB\n", "MemTotal: x kB\n", "MemTotal: -1 kB\n", "MemTotal: 99999999999999999 kB\n"} {
		if _, err := parseMemTotal([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func FuzzParseMemTotal(f *testing.F) {
	f.Add([]byte("MemTotal:        8029876 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := parseMemTotal(b); err == nil && n < 0 {
			t.Errorf("%d from %q", n, b)
		}
	})
}
