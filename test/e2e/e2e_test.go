//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	jvolv1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// storageClass makes a StorageClass of jvol with params, removed at the
// end of the test.
func storageClass(t *testing.T, name string, params map[string]string) {
	t.Helper()
	bind := storagev1.VolumeBindingWaitForFirstConsumer
	expand := true
	sc := &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: name},
		Provisioner:          "jvol.io",
		Parameters:           params,
		VolumeBindingMode:    &bind,
		AllowVolumeExpansion: &expand,
	}
	if _, err := kube.StorageV1().StorageClasses().Create(t.Context(), sc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := kube.StorageV1().StorageClasses().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})
}

const (
	// writeFile writes 8 MiB of random bytes to /data/f, fsyncs, and prints their md5.
	writeFile = "dd if=/dev/urandom of=/data/f bs=1M count=8 conv=fsync 2>/dev/null\nmd5sum /data/f | cut -d' ' -f1"
	readFile  = "md5sum /data/f | cut -d' ' -f1"
	// The same for a block device at /data.
	writeBlock = "dd if=/dev/urandom of=/tmp/r bs=1M count=8 2>/dev/null\ndd if=/tmp/r of=/data bs=1M conv=fsync 2>/dev/null\nmd5sum /tmp/r | cut -d' ' -f1"
	readBlock  = "dd if=/data bs=1M count=8 2>/dev/null | md5sum | cut -d' ' -f1"
)

// TestDataOutlivesItsPod: on ext4, xfs and a raw block volume, a pod writes
// and fsyncs, is deleted, and a new pod reads the same bytes.
func TestDataOutlivesItsPod(t *testing.T) {
	storageClass(t, "journal-xfs", map[string]string{"csi.storage.k8s.io/fstype": "xfs"})
	for _, c := range []struct {
		name, class   string
		block         bool
		write, verify string
	}{
		{"ext4", "journal", false, writeFile, readFile},
		{"xfs", "journal-xfs", false, writeFile, readFile},
		{"block", "journal", true, writeBlock, readBlock},
	} {
		t.Run(c.name, func(t *testing.T) {
			claim := "data-" + c.name
			pvc(t, claim, c.class, "512Mi", c.block)
			wrote := runPod(t, "writer-"+c.name, claim, c.block, c.write)
			volume := volumeOf(t, claim)
			read := runPod(t, "reader-"+c.name, claim, c.block, c.verify)
			if strings.TrimSpace(wrote) == "" || wrote != read {
				t.Errorf("wrote md5 %q, read %q", wrote, read)
			}
			if !c.block {
				fs := runPod(t, "fstype-"+c.name, claim, false, "awk '$2==\"/data\" {print $3}' /proc/mounts")
				if strings.TrimSpace(fs) != c.name {
					t.Errorf("file system %q, want %s", fs, c.name)
				}
			}
			deleteClaim(t, claim, volume)
		})
	}
}

// sizeKiB is, in a running pod, the size of the file system at /data, or
// of the block device at /data.
func sizeKiB(t *testing.T, pod string, block bool) int64 {
	t.Helper()
	cmd := "df -k /data | awk 'NR==2 {print $2}'"
	if block {
		cmd = "echo $(( $(blockdev --getsize64 /data) / 1024 ))"
	}
	out := kubectl(t, "exec", pod, "--", "sh", "-c", cmd)
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("size: %q", out)
	}
	return n
}

// capSysResource says whether this machine can grant CAP_SYS_RESOURCE (it
// is in the bounding set), which growing a mounted ext4 takes (the
// EXT4_IOC_RESIZE_FS ioctl).
func capSysResource(t *testing.T) bool {
	in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, unix.CAP_SYS_RESOURCE, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return in == 1
}

// claimCapacity waits for claim's status to say it has size.
func claimCapacity(t *testing.T, claim, size string) {
	t.Helper()
	eventually(t, waitLong, "the claim's capacity "+size, func(ctx context.Context) (bool, string) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got := c.Status.Capacity[corev1.ResourceStorage]
		return got.Cmp(resource.MustParse(size)) == 0, got.String()
	})
}

// TestOnlineExpansion grows claims while their pods run: the file system or
// the block device the pod sees grows, without a restart.
func TestOnlineExpansion(t *testing.T) {
	storageClass(t, "journal-xfs-grow", map[string]string{"csi.storage.k8s.io/fstype": "xfs"})
	for _, c := range []struct {
		name, class string
		block       bool
	}{
		{"xfs", "journal-xfs-grow", false},
		{"ext4", "journal", false},
		{"block", "journal", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "ext4" && !capSysResource(t) {
				t.Skip("this machine withholds CAP_SYS_RESOURCE from everyone (bounding set), and the kernel grows a mounted ext4 only with it")
			}
			name := "grow-" + c.name
			pvc(t, name, c.class, "512Mi", c.block)
			startPod(t, name, name, c.block, "")
			volume := volumeOf(t, name)
			before := sizeKiB(t, name, c.block)
			patch := `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`
			if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Patch(t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, waitLong, "the pod's view grown", func(ctx context.Context) (bool, string) {
				after := sizeKiB(t, name, c.block)
				return after > before*3, fmt.Sprintf("%d KiB, was %d", after, before)
			})
			claimCapacity(t, name, "2Gi")
			if got := journal(t, volume).Spec.Capacity; got.Cmp(resource.MustParse("2Gi")) != 0 {
				t.Errorf("Journal capacity %s, want 2Gi", got.String())
			}
			// The new space is usable: more than the old size fits now.
			dst := "/data/big"
			if c.block {
				dst = "/data"
			}
			kubectl(t, "exec", name, "--", "sh", "-c", "dd if=/dev/zero of="+dst+" bs=1M count=1024 conv=fsync 2>/dev/null")
			deletePod(t, name)
			deleteClaim(t, name, volume)
		})
	}
}

// TestOfflineExpansion grows claims while no pod uses them: the next pod
// sees the grown file system, and what was written before. An ext4 is
// grown before it is mounted, which takes no capability (growing a
// mounted one takes CAP_SYS_RESOURCE); an xfs grows once mounted.
func TestOfflineExpansion(t *testing.T) {
	storageClass(t, "journal-xfs-offline", map[string]string{"csi.storage.k8s.io/fstype": "xfs"})
	for _, c := range []struct{ name, class string }{{"ext4", "journal"}, {"xfs", "journal-xfs-offline"}} {
		t.Run(c.name, func(t *testing.T) {
			name := "offline-" + c.name
			pvc(t, name, c.class, "512Mi", false)
			wrote := runPod(t, name+"-a", name, false, writeFile)
			volume := volumeOf(t, name)
			unstaged(t, volume)
			patch := `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`
			if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Patch(t.Context(), name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, waitLong, "the volume's images grown to 2Gi", func(ctx context.Context) (bool, string) {
				got := journal(t, volume).Status.Capacity
				return got != nil && got.Cmp(resource.MustParse("2Gi")) == 0, fmt.Sprint(got)
			})
			startPod(t, name+"-b", name, false, "")
			if read := strings.TrimSpace(kubectl(t, "exec", name+"-b", "--", "sh", "-c", readFile)); read != strings.TrimSpace(wrote) {
				t.Errorf("read %q after the growth, wrote %q", read, wrote)
			}
			eventually(t, waitLong, "the pod's file system grown", func(ctx context.Context) (bool, string) {
				kib := sizeKiB(t, name+"-b", false)
				return kib > 3<<19, fmt.Sprintf("%d KiB", kib) // 1.5 GiB
			})
			claimCapacity(t, name, "2Gi")
			deletePod(t, name+"-b")
			deleteClaim(t, name, volume)
		})
	}
}

// unschedulable waits for the scheduler to say, in a FailedScheduling event
// on pod, that it was not placed for reason.
func unschedulable(t *testing.T, pod, reason string) {
	t.Helper()
	eventually(t, waitLong, "a FailedScheduling event on "+pod+" saying "+reason, func(ctx context.Context) (bool, string) {
		ev, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod + ",reason=FailedScheduling"})
		if err != nil {
			return false, err.Error()
		}
		var said []string
		for _, e := range ev.Items {
			if strings.Contains(e.Message, reason) {
				return true, ""
			}
			said = append(said, e.Message)
		}
		return false, fmt.Sprint(said)
	})
}

// TestReadWriteOncePod: a claim of ReadWriteOncePod is provisioned and
// used by one pod; a second pod on it stays Pending with the scheduler's
// reason, and runs once the first is gone.
func TestReadWriteOncePod(t *testing.T) {
	pvcOf(t, "rwop", "journal", "256Mi", false, corev1.ReadWriteOncePod)
	wrote := strings.TrimSpace(runPod(t, "rwop-a", "rwop", false, writeFile))
	startPod(t, "rwop-b", "rwop", false, "")
	pod(t, "rwop-c", "rwop", false, false, "")
	unschedulable(t, "rwop-c", "ReadWriteOncePod")
	if p, err := kube.CoreV1().Pods(ns).Get(t.Context(), "rwop-c", metav1.GetOptions{}); err != nil || p.Status.Phase != corev1.PodPending {
		t.Errorf("the second pod: %v %v", p.Status.Phase, err)
	}
	deletePod(t, "rwop-b")
	kubectl(t, "wait", "--for=condition=Ready", "pod/rwop-c", "--timeout="+waitLong.String())
	if read := strings.TrimSpace(kubectl(t, "exec", "rwop-c", "--", "sh", "-c", readFile)); read != wrote {
		t.Errorf("read %q, wrote %q", read, wrote)
	}
	volume := volumeOf(t, "rwop")
	deletePod(t, "rwop-c")
	deleteClaim(t, "rwop", volume)
}

// TestVolumeLimit: with node.maxVolumes 2, the node's CSINode says 2, and
// a pod with a third volume stays Pending with the scheduler's reason until
// a pod with one of the others is gone.
func TestVolumeLimit(t *testing.T) {
	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "node.maxVolumes=2", "--wait", "--timeout", "3m")
	defer helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "node.maxVolumes=0", "--wait", "--timeout", "3m")
	node := nodePod(t).Spec.NodeName
	eventually(t, waitLong, "the CSINode's count 2", func(ctx context.Context) (bool, string) {
		n, err := kube.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == "jvol.io" && d.Allocatable != nil && d.Allocatable.Count != nil {
				return *d.Allocatable.Count == 2, fmt.Sprint(*d.Allocatable.Count)
			}
		}
		return false, "no count for jvol.io"
	})
	for _, name := range []string{"limit-a", "limit-b", "limit-c"} {
		pvc(t, name, "journal", "64Mi", false)
	}
	startPod(t, "limit-a", "limit-a", false, "")
	startPod(t, "limit-b", "limit-b", false, "")
	pod(t, "limit-c", "limit-c", false, false, "")
	unschedulable(t, "limit-c", "max volume count")
	deletePod(t, "limit-a")
	kubectl(t, "wait", "--for=condition=Ready", "pod/limit-c", "--timeout="+waitLong.String())
	for _, name := range []string{"limit-b", "limit-c"} {
		deletePod(t, name)
	}
	for _, name := range []string{"limit-a", "limit-b", "limit-c"} {
		deleteClaim(t, name, volumeOf(t, name))
	}
}

// TestCapacity: csi-provisioner publishes the node's capacity for the
// journal class; a new volume takes its size off it; a claim larger than
// the node can give leaves its pod Pending with the scheduler's reason,
// and no Journal is made for it.
func TestCapacity(t *testing.T) {
	node := nodePod(t).Spec.NodeName
	capacity := func(ctx context.Context) (int64, string) {
		l, err := kube.StorageV1().CSIStorageCapacities("kube-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return -1, err.Error()
		}
		for _, c := range l.Items {
			if c.StorageClassName == "journal" && c.NodeTopology != nil && c.NodeTopology.MatchLabels["topology.jvol.io/node"] == node && c.Capacity != nil {
				return c.Capacity.Value(), c.Capacity.String()
			}
		}
		return -1, fmt.Sprintf("none of %d for the journal class on %s", len(l.Items), node)
	}
	var before int64
	eventually(t, waitLong, "the node's capacity for the journal class", func(ctx context.Context) (bool, string) {
		var s string
		before, s = capacity(ctx)
		return before > 0, s
	})
	t.Logf("capacity before: %d bytes", before)

	pvc(t, "cap-a", "journal", "2Gi", false)
	startPod(t, "cap-a", "cap-a", false, "")
	eventually(t, waitLong, "the capacity less the new volume", func(ctx context.Context) (bool, string) {
		now, s := capacity(ctx)
		return now >= 0 && now <= before-(2<<30)+(64<<20), s
	})

	huge := fmt.Sprintf("%dGi", before>>30+16)
	c := pvc(t, "cap-huge", "journal", huge, false)
	pod(t, "cap-huge", "cap-huge", false, false, "")
	unschedulable(t, "cap-huge", "enough free storage")
	if err := ctrl.Get(t.Context(), client.ObjectKey{Name: "pvc-" + string(c.UID)}, &jvolv1.Journal{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Journal exists for the claim too large: %v", err)
	}
	deletePod(t, "cap-huge")
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), "cap-huge", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	volume := volumeOf(t, "cap-a")
	deletePod(t, "cap-a")
	deleteClaim(t, "cap-a", volume)
}

// TestBadStorageClassParameters: a claim of a class whose parameters jvol
// refuses gets an event saying why, and nothing is made.
func TestBadStorageClassParameters(t *testing.T) {
	storageClass(t, "journal-bad", map[string]string{"fifoSize": "3Mi"})
	pvc(t, "bad", "journal-bad", "256Mi", false)
	pod(t, "bad", "bad", false, true, "true")
	var message string
	eventually(t, waitLong, "a ProvisioningFailed event on the claim", func(ctx context.Context) (bool, string) {
		ev, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=PersistentVolumeClaim,involvedObject.name=bad,reason=ProvisioningFailed"})
		if err != nil || len(ev.Items) == 0 {
			return false, fmt.Sprint("no event yet ", err)
		}
		message = ev.Items[0].Message
		return true, ""
	})
	t.Logf("event: %s", message)
	if !strings.Contains(message, "InvalidArgument") || !strings.Contains(message, "fifoSize") {
		t.Errorf("the event does not say what is wrong: %s", message)
	}
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), "bad", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Status.Phase != corev1.ClaimPending || c.Spec.VolumeName != "" {
		t.Errorf("claim %s bound to %q", c.Status.Phase, c.Spec.VolumeName)
	}
	// The provisioner names the volume after the claim's uid.
	err = ctrl.Get(t.Context(), client.ObjectKey{Name: "pvc-" + string(c.UID)}, &jvolv1.Journal{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("a Journal exists for the claim: %v", err)
	}
	deletePod(t, "bad")
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// metricsAt returns what /metrics at addr (host:port) serves.
func metricsAt(addr string) (string, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestJournalsShowLiveValues: `kubectl get journals` lists the volume with
// its node, capacity, FIFO and phase, `kubectl describe` its Attached
// event, its figures (and the node plugin's metrics of it) move as the pod
// writes, and an edited fifoSize takes effect.
func TestJournalsShowLiveValues(t *testing.T) {
	pvc(t, "live", "journal", "256Mi", false)
	startPod(t, "live", "live", false, "")
	volume := volumeOf(t, "live")
	node := journal(t, volume).Spec.Node

	table := kubectl(t, "get", "journals")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != "NAME NODE CAPACITY FIFO DUPLEX SINK PHASE LAG AGE" {
		t.Errorf("columns %q", got)
	}
	row := ""
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, volume+" ") {
			row = l
		}
	}
	if f := strings.Fields(row); len(f) < 7 || f[1] != node || f[2] != "256Mi" || f[3] != "16Mi" || f[4] != "Half" || f[5] != "Attached" {
		t.Errorf("row %q of\n%s", row, table)
	}

	eventually(t, waitLong, "an Attached event in kubectl describe journal", func(ctx context.Context) (bool, string) {
		out := kubectl(t, "describe", "journal", volume)
		return regexp.MustCompile(`\bNormal\s+` + jvolv1.EventAttached + `\s`).MatchString(out), out
	})

	before := journal(t, volume).Status
	kubectl(t, "exec", "live", "--", "sh", "-c", writeFile)
	eventually(t, waitLong, "the Journal's figures moved", func(ctx context.Context) (bool, string) {
		s := journal(t, volume).Status
		return s.Transid > before.Transid && s.AckedTransid > before.AckedTransid && s.Updated != nil &&
				(before.Updated == nil || s.Updated.After(before.Updated.Time)),
			fmt.Sprintf("transid %d acked %d, were %d %d", s.Transid, s.AckedTransid, before.Transid, before.AckedTransid)
	})
	// And so do its metrics, on the node plugin's health port (the chart's
	// node.healthPort, on the host network here).
	written := fmt.Sprintf(`jvol_volume_written_bytes_total{namespace=%q,persistentvolumeclaim="live",volume=%q} `, ns, volume)
	eventually(t, waitLong, "the node plugin's metrics of the volume", func(ctx context.Context) (bool, string) {
		out, err := metricsAt("127.0.0.1:9809")
		if err != nil {
			return false, err.Error()
		}
		for line := range strings.Lines(out) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), written); ok {
				n, err := strconv.ParseFloat(v, 64)
				return err == nil && n >= 8<<20, line
			}
		}
		return false, "no " + written
	})
	// With the reconciler's, and the controller's own.
	for addr, want := range map[string]string{"127.0.0.1:9809": "controller_runtime_reconcile_total", "127.0.0.1:9808": "process_cpu_seconds_total"} {
		if out, err := metricsAt(addr); err != nil || !strings.Contains(out, "\n"+want) {
			t.Errorf("metrics at %s: no %s (%v)", addr, want, err)
		}
	}

	// A FIFO is sized when the volume is staged: the edit applies at the
	// next stage, here when the pod is replaced.
	if got := journal(t, volume).Status.FIFOSize; got != 16<<20 {
		t.Errorf("status.fifoSize %d, want 16Mi", got)
	}
	kubectl(t, "patch", "journal", volume, "--type=merge", "-p", `{"spec":{"fifoSize":"32Mi"}}`)
	if got := strings.TrimSpace(kubectl(t, "get", "journal", volume, "-o", "jsonpath={.spec.fifoSize}")); got != "32Mi" {
		t.Fatalf("fifoSize %q after the edit", got)
	}
	deletePod(t, "live")
	unstaged(t, volume)
	startPod(t, "live", "live", false, "")
	eventually(t, waitLong, "the volume served with the new FIFO", func(ctx context.Context) (bool, string) {
		j := journal(t, volume)
		return j.Status.FIFOSize == 32<<20 && j.Status.ObservedGeneration == j.Generation,
			fmt.Sprintf("status.fifoSize %d, generation %d observed %d", j.Status.FIFOSize, j.Generation, j.Status.ObservedGeneration)
	})
	if got := strings.TrimSpace(kubectl(t, "exec", "live", "--", "sh", "-c", readFile)); got == "" {
		t.Error("nothing read after the re-stage")
	}

	deletePod(t, "live")
	deleteClaim(t, "live", volume)
}

// TestNodePluginRestart: the node plugin's pod is deleted while a volume is
// staged and in use. Its DaemonSet starts a new one, which serves the
// staged volume again before it reports ready; the data written before is
// there and pods keep writing.
func TestNodePluginRestart(t *testing.T) {
	pvc(t, "restart", "journal", "256Mi", false)
	startPod(t, "restart-a", "restart", false, "")
	volume := volumeOf(t, "restart")
	wrote := kubectl(t, "exec", "restart-a", "--", "sh", "-c", writeFile)
	if strings.TrimSpace(wrote) == "" {
		t.Fatal("the write printed no md5")
	}

	old := nodePod(t)
	if err := kube.CoreV1().Pods(old.Namespace).Delete(t.Context(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, waitLong, "a new node plugin, ready", func(ctx context.Context) (bool, string) {
		p := nodePod(t)
		return p.UID != old.UID && ready(p), p.Name + " " + string(p.Status.Phase)
	})
	// A second pod on the same node shares the staged volume.
	if read := runPod(t, "restart-b", "restart", false, readFile+"\n"+writeFile+" >/dev/null"); read != wrote {
		t.Errorf("read %q after the restart, wrote %q", read, wrote)
	}
	deletePod(t, "restart-a")
	unstaged(t, volume)
	// And once the first is gone, a pod stages it anew.
	if read := runPod(t, "restart-c", "restart", false, readFile); read == "" || read == wrote {
		t.Errorf("read %q, want what restart-b wrote", read)
	}
	deleteClaim(t, "restart", volume)
}

// unstaged waits until the node has unstaged volume (the kubelet unstages
// some time after the last pod using it is gone), so the next pod stages it
// anew.
func unstaged(t *testing.T, volume string) {
	t.Helper()
	eventually(t, waitLong, "volume "+volume+" unstaged", func(ctx context.Context) (bool, string) {
		p := journal(t, volume).Status.Phase
		return p == jvolv1.PhaseReady, string(p)
	})
}

func nodePod(t *testing.T) *corev1.Pod {
	t.Helper()
	l, err := kube.CoreV1().Pods("kube-system").List(t.Context(), metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/instance=" + release + ",app.kubernetes.io/component=node",
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Items {
		if l.Items[i].DeletionTimestamp == nil {
			return &l.Items[i]
		}
	}
	return &corev1.Pod{}
}

func ready(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// TestHelmUpgradeAndUninstall runs last: an upgrade rolls jvol's pods and
// volumes keep working; uninstall removes everything the chart made.
func TestHelmUpgradeAndUninstall(t *testing.T) {
	pvc(t, "upgrade", "journal", "256Mi", false)
	wrote := runPod(t, "before-upgrade", "upgrade", false, writeFile)
	volume := volumeOf(t, "upgrade")

	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "logLevel=4", "--wait", "--timeout", "3m")
	if !strings.Contains(kubectl(t, "-n", "kube-system", "get", "daemonset", release+"-node", "-o", "yaml"), "-v=4") {
		t.Error("the upgrade did not reach the DaemonSet")
	}
	kubectl(t, "-n", "kube-system", "rollout", "status", "daemonset/"+release+"-node", "--timeout=3m")
	kubectl(t, "-n", "kube-system", "rollout", "status", "deployment/"+release+"-controller", "--timeout=3m")
	if read := runPod(t, "after-upgrade", "upgrade", false, readFile); read != wrote {
		t.Errorf("read %q after the upgrade, wrote %q", read, wrote)
	}
	deleteClaim(t, "upgrade", volume)

	helm(t, "uninstall", release, "--namespace", "kube-system", "--wait", "--timeout", "3m")
	sel := "app.kubernetes.io/instance=" + release
	eventually(t, waitLong, "everything of the release gone", func(ctx context.Context) (bool, string) {
		var left string
		for _, kind := range []string{"all", "serviceaccounts", "roles", "rolebindings"} {
			left += kubectl(t, "get", kind, "-A", "-l", sel, "-o", "name")
		}
		for _, kind := range []string{"clusterroles", "clusterrolebindings", "csidrivers", "storageclasses", "volumesnapshotclasses"} {
			left += kubectl(t, "get", kind, "-l", sel, "-o", "name")
		}
		if out, _ := tryRun("pgrep", "-a", "-x", "jvol"); out != "" {
			left += "process " + out
		}
		return left == "", left
	})
	// Helm keeps the CRDs of crds/ on uninstall (its documented policy), and
	// so every Journal: there must be none left to keep.
	var journals jvolv1.JournalList
	if err := ctrl.List(t.Context(), &journals); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if len(journals.Items) != 0 {
		t.Errorf("%d Journals left", len(journals.Items))
	}
	var snapshots jvolv1.JournalSnapshotList
	if err := ctrl.List(t.Context(), &snapshots); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if len(snapshots.Items) != 0 {
		t.Errorf("%d JournalSnapshots left", len(snapshots.Items))
	}
	entries, err := os.ReadDir(stateDir + "/volumes")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%d volume directories left in %s", len(entries), stateDir)
	}
}
