//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	jvolv1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// jvolImage is the image the chart installs (repository and appVersion).
const jvolImage = "ghcr.io/jvol-io/jvol:0.1.0"

// writerPod starts a pod running `jvol writecheck` on claim: random 4 KiB
// direct writes with fsync batches until it is told to stop, then every
// block read back.
func writerPod(t *testing.T, name, claim string, block bool) {
	t.Helper()
	path := "/data/f"
	if block {
		path = "/data"
	}
	c := corev1.Container{
		Name: "c", Image: jvolImage, ImagePullPolicy: corev1.PullNever,
		Args: []string{"writecheck", "--path", path, "--size", "64Mi"},
	}
	if block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/data"}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
			}}},
		},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubectl(t, "wait", "--for=condition=Ready", "pod/"+name, "--timeout="+waitLong.String())
}

// writerReport stops a writer pod and returns its report.
type writerReport struct {
	Writes    uint64  `json:"writes"`
	Blocks    int     `json:"blocks"`
	LongestMs float64 `json:"longestMs"`
	WriteErr  string  `json:"writeError"`
	VerifyErr string  `json:"verifyError"`
}

func stopWriter(t *testing.T, name string) writerReport {
	t.Helper()
	kubectl(t, "exec", name, "--", "jvol", "writecheck", "--stop")
	eventually(t, waitLong, "writer "+name+" done", func(ctx context.Context) (bool, string) {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, podState(ctx, p)
	})
	out := kubectl(t, "logs", name)
	var r writerReport
	if err := json.Unmarshal([]byte(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]), &r); err != nil {
		t.Fatalf("writer %s: %v: %s", name, err, out)
	}
	deletePod(t, name)
	return r
}

// nodeReady waits for a ready node plugin pod that is not old (a new pod,
// or the same one with its jvol container restarted).
func nodeReady(t *testing.T, what string, isNew func(*corev1.Pod) bool) {
	t.Helper()
	eventually(t, waitLong, what, func(ctx context.Context) (bool, string) {
		p := nodePod(t)
		return isNew(p) && ready(p), p.Name + " " + string(p.Status.Phase)
	})
}

func jvolRestarts(p *corev1.Pod) int32 {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "jvol" {
			return s.RestartCount
		}
	}
	return -1
}

// TestPodsWriteOnThroughPluginDeathAndReplacement: pods on an ext4 and a
// Block volume write (direct I/O, fsync batches) while the node plugin's
// jvol is killed with SIGKILL in its container, the chart is upgraded to
// an image of another tag, and the node plugin's pod is deleted. No write
// fails, every block holds its last completed write, the Journals stay
// Attached, and the file system is clean.
func TestPodsWriteOnThroughPluginDeathAndReplacement(t *testing.T) {
	for _, c := range []struct {
		name  string
		block bool
	}{{"live-ext4", false}, {"live-block", true}} {
		pvc(t, c.name, "journal", "256Mi", c.block)
		writerPod(t, c.name, c.name, c.block)
	}
	attached := func(when string) {
		t.Helper()
		for _, claim := range []string{"live-ext4", "live-block"} {
			if p := journal(t, volumeOf(t, claim)).Status.Phase; p != jvolv1.PhaseAttached {
				t.Errorf("%s: the Journal of %s is %s", when, claim, p)
			}
		}
	}
	attached("before")

	// (a) kill -9 of jvol in the node plugin's container.
	old := nodePod(t)
	before := jvolRestarts(old)
	run(t, "pkill", "-KILL", "-f", "^/usr/local/bin/jvol node ")
	nodeReady(t, "the node plugin's jvol restarted", func(p *corev1.Pod) bool { return p.UID == old.UID && jvolRestarts(p) > before })
	attached("after kill -9")

	// (b) an upgrade to an image of another tag.
	run(t, "ctr", "--address", os.Getenv("JVOL_CLUSTER")+"/run/containerd.sock", "-n", "k8s.io", "images", "tag", "--force", jvolImage, jvolImage+"-next")
	old = nodePod(t)
	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "image.tag=0.1.0-next", "--wait", "--timeout", "3m")
	kubectl(t, "-n", "kube-system", "rollout", "status", "daemonset/"+release+"-node", "--timeout=3m")
	nodeReady(t, "the upgraded node plugin", func(p *corev1.Pod) bool { return p.UID != old.UID })
	attached("after the upgrade")

	// (c) deletion of the node plugin's pod.
	old = nodePod(t)
	if err := kube.CoreV1().Pods(old.Namespace).Delete(t.Context(), old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	nodeReady(t, "a node plugin after the deletion", func(p *corev1.Pod) bool { return p.UID != old.UID })
	attached("after the pod's deletion")

	for _, claim := range []string{"live-ext4", "live-block"} {
		r := stopWriter(t, claim)
		t.Logf("%s: %d writes to %d blocks; the longest write (with its fsync) took %.0f ms", claim, r.Writes, r.Blocks, r.LongestMs)
		if r.WriteErr != "" || r.VerifyErr != "" || r.Writes == 0 {
			t.Errorf("%s: %+v", claim, r)
		}
	}
	volume := volumeOf(t, "live-ext4")
	unstaged(t, volume)
	if out, err := exec.Command("e2fsck", "-fn", stateDir+"/volumes/"+volume+"/data.img").CombinedOutput(); err != nil {
		t.Errorf("e2fsck of the ext4 volume: %v\n%s", err, out)
	}
	for _, claim := range []string{"live-ext4", "live-block"} {
		deleteClaim(t, claim, volumeOf(t, claim))
	}
	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "image.tag=0.1.0", "--wait", "--timeout", "3m")
}
