//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jvolv1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// The chart's VolumeSnapshotClasses.
const (
	localClass = "journal-local"
	sinkClass  = "journal-sink"
)

// volumeSnapshot takes a VolumeSnapshot of class of claim, waits until it
// is ready and returns its JournalSnapshot's name.
func volumeSnapshot(t *testing.T, name, class, claim string) string {
	t.Helper()
	kubectlApply(t, fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: %s, namespace: %s}
spec:
  volumeSnapshotClassName: %s
  source: {persistentVolumeClaimName: %s}
`, name, ns, class, claim))
	kubectl(t, "wait", "--for=jsonpath={.status.readyToUse}=true", "volumesnapshot/"+name, "--timeout="+waitLong.String())
	content := strings.TrimSpace(kubectl(t, "get", "volumesnapshot", name, "-o", "jsonpath={.status.boundVolumeSnapshotContentName}"))
	return strings.TrimSpace(kubectl(t, "get", "volumesnapshotcontent", content, "-o", "jsonpath={.status.snapshotHandle}"))
}

// claimFrom makes a claim whose data source is a VolumeSnapshot or a
// PersistentVolumeClaim (a clone).
func claimFrom(t *testing.T, name, class, size, kind, source string, block bool) {
	t.Helper()
	mode, group := "Filesystem", ""
	if block {
		mode = "Block"
	}
	if kind == "VolumeSnapshot" {
		group = "apiGroup: snapshot.storage.k8s.io, "
	}
	kubectlApply(t, fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s, namespace: %s}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %s
  volumeMode: %s
  resources: {requests: {storage: %s}}
  dataSource: {%skind: %s, name: %s}
`, name, ns, class, mode, size, group, kind, source))
}

func kubectlApply(t *testing.T, yaml string) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(yaml); err != nil {
		t.Fatal(err)
	}
	f.Close()
	kubectl(t, "apply", "-f", f.Name())
}

// TestSnapshotsAndClones: on ext4, xfs and a Block volume, a local
// VolumeSnapshot holds what was written before it, a clone what the
// source holds when cloned; the snapshot outlives its source, and its
// deletion frees its space on the node.
func TestSnapshotsAndClones(t *testing.T) {
	storageClass(t, "journal-xfs", map[string]string{"csi.storage.k8s.io/fstype": "xfs"})
	for _, c := range []struct {
		name, class, size string
		block             bool
		write, verify     string
	}{
		{"ext4", "journal", "64Mi", false, writeFile, readFile},
		{"xfs", "journal-xfs", "320Mi", false, writeFile, readFile}, // XFS wants 300 MB
		{"block", "journal", "64Mi", true, writeBlock, readBlock},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, snap := "src-"+c.name, "snap-"+c.name
			pvc(t, src, c.class, c.size, c.block)
			first := runPod(t, "first-"+c.name, src, c.block, c.write)
			volume := volumeOf(t, src)
			handle := volumeSnapshot(t, snap, localClass, src)
			if _, err := os.Stat(stateDir + "/snapshots/" + handle + "/image"); err != nil {
				t.Errorf("the snapshot's image on the node: %v", err)
			}
			second := runPod(t, "second-"+c.name, src, c.block, c.write)
			if first == second {
				t.Fatal("the second write wrote what the first did")
			}

			clone := "clone-" + c.name
			claimFrom(t, clone, c.class, c.size, "PersistentVolumeClaim", src, c.block)
			if got := runPod(t, "read-"+clone, clone, c.block, c.verify); got != second {
				t.Errorf("the clone holds %q, want the source's %q", got, second)
			}
			deleteClaim(t, clone, volumeOf(t, clone))

			// The source goes (and its node volume): the snapshot stays.
			deleteClaim(t, src, volume)
			restored := "restored-" + c.name
			claimFrom(t, restored, c.class, c.size, "VolumeSnapshot", snap, c.block)
			if got := runPod(t, "read-"+restored, restored, c.block, c.verify); got != first {
				t.Errorf("the volume from the snapshot holds %q, want what was written before it, %q", got, first)
			}
			deleteClaim(t, restored, volumeOf(t, restored))

			kubectl(t, "delete", "volumesnapshot", snap, "--wait", "--timeout="+waitLong.String())
			eventually(t, waitLong, "JournalSnapshot "+handle+" and its image gone", func(ctx context.Context) (bool, string) {
				err := ctrl.Get(ctx, client.ObjectKey{Name: handle}, &jvolv1.JournalSnapshot{})
				if !apierrors.IsNotFound(err) {
					return false, fmt.Sprintf("JournalSnapshot: %v", err)
				}
				_, err = os.Stat(stateDir + "/snapshots/" + handle)
				return os.IsNotExist(err), fmt.Sprintf("image: %v", err)
			})
		})
	}
}

// provisioningFailed waits for a ProvisioningFailed event on claim and
// returns its message.
func provisioningFailed(t *testing.T, claim string) string {
	t.Helper()
	var message string
	eventually(t, waitLong, "a ProvisioningFailed event on claim "+claim, func(ctx context.Context) (bool, string) {
		ev, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=" + claim + ",reason=ProvisioningFailed"})
		if err != nil || len(ev.Items) == 0 {
			return false, fmt.Sprint("no event yet ", err)
		}
		message = ev.Items[0].Message
		return true, ""
	})
	return message
}

// pointSnapshot binds a VolumeSnapshot to a pre-provisioned content whose
// handle is handle (a point in time of a volume).
func pointSnapshot(t *testing.T, name, handle string) {
	t.Helper()
	kubectlApply(t, fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotContent
metadata: {name: %[1]s-content}
spec:
  driver: jvol.io
  deletionPolicy: Delete
  source: {snapshotHandle: %[2]q}
  volumeSnapshotRef: {name: %[1]s, namespace: %[3]s}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: %[1]s, namespace: %[3]s}
spec:
  source: {volumeSnapshotContentName: %[1]s-content}
`, name, handle, ns))
	kubectl(t, "wait", "--for=jsonpath={.status.readyToUse}=true", "volumesnapshot/"+name, "--timeout="+waitLong.String())
}
