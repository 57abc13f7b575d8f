//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

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

// lap has the writer pod name print the longest its writes waited since
// its last lap, and returns it.
func lap(t *testing.T, name string) time.Duration {
	t.Helper()
	laps := func() []string {
		var l []string
		for _, line := range strings.Split(kubectl(t, "logs", name), "\n") {
			if strings.HasPrefix(line, `{"lapMs":`) {
				l = append(l, line)
			}
		}
		return l
	}
	n := len(laps())
	kubectl(t, "exec", name, "--", "jvol", "writecheck", "--lap")
	var last string
	eventually(t, waitLong, "writer "+name+"'s lap", func(context.Context) (bool, string) {
		l := laps()
		if len(l) > n {
			last = l[n]
		}
		return len(l) > n, fmt.Sprint(len(l), " laps")
	})
	var v struct{ LapMs float64 }
	if err := json.Unmarshal([]byte(last), &v); err != nil {
		t.Fatalf("writer %s: %v: %s", name, err, last)
	}
	return time.Duration(v.LapMs * float64(time.Millisecond))
}

// sinkPort is where the suite's receiver listens, on the node's network.
const sinkPort = "17070"

// sinkPod runs `jvol sink` on the node's network, keeping what it receives
// in a directory of this machine, which it returns.
func sinkPod(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	dirOrCreate := corev1.HostPathDirectoryOrCreate
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sink", Namespace: ns},
		Spec: corev1.PodSpec{
			HostNetwork:   true,
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "sink", Image: jvolImage, ImagePullPolicy: corev1.PullNever,
				Args:         []string{"sink", "--listen", "127.0.0.1:" + sinkPort, "--dir", "/sink"},
				VolumeMounts: []corev1.VolumeMount{{Name: "sink", MountPath: "/sink"}},
			}},
			Volumes: []corev1.Volume{{Name: "sink", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &dirOrCreate},
			}}},
		},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // t.Context() is done by now
		ctx := context.Background()
		if err := kube.CoreV1().Pods(ns).Delete(ctx, "sink", metav1.DeleteOptions{}); err != nil {
			t.Error(err)
			return
		}
		err := wait.PollUntilContextTimeout(ctx, pollEvery, waitLong, true, func(ctx context.Context) (bool, error) {
			_, err := kube.CoreV1().Pods(ns).Get(ctx, "sink", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("the sink pod not gone: %v", err)
		}
	})
	kubectl(t, "wait", "--for=condition=Ready", "pod/sink", "--timeout="+waitLong.String())
	return dir
}

// differ says where two files first differ, or "" if they are the same.
func differ(a, b string) string {
	fa, err := os.Open(a)
	if err != nil {
		return err.Error()
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err.Error()
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Sprintf("they differ in the MiB at %d (%d and %d bytes read)", off, na, nb)
		}
		if ea != nil || eb != nil { // both at their end, or a read error
			if (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF) {
				return ""
			}
			return fmt.Sprintf("at %d: %v, %v", off, ea, eb)
		}
	}
}

// holderRestarts is the restart count of the node pod's holder container.
func holderRestarts(p *corev1.Pod) int32 {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == "holder" {
			return s.RestartCount
		}
	}
	return -1
}

// TestPodsWriteOnThroughPluginDeathAndReplacement: pods on an ext4 volume
// and on a Block volume streamed to a sink in full duplex write (direct
// I/O, fsync batches) while the node pod's holder is killed with SIGKILL,
// then the node plugin's jvol, the chart is upgraded to an image of another
// tag, and the node plugin's pod is deleted. No write fails, every block
// holds its last completed write, the Journals stay Attached (Degraded
// while the holder is gone, with an event, and while the sink takes the
// baseline a crash calls for), the file system is clean and the sink's
// mirror is the volume.
func TestPodsWriteOnThroughPluginDeathAndReplacement(t *testing.T) {
	sinkDir := sinkPod(t)
	storageClass(t, "journal-full", map[string]string{"sinkURL": "tcp://127.0.0.1:" + sinkPort, "duplex": "full"})
	claims := []struct {
		name, class string
		block       bool
	}{{"live-ext4", "journal", false}, {"live-block", "journal-full", true}}
	for _, c := range claims {
		pvc(t, c.name, c.class, "256Mi", c.block)
		writerPod(t, c.name, c.name, c.block)
	}
	phase := func(want jvolv1.Phase, held metav1.ConditionStatus) func(context.Context) (bool, string) {
		return func(context.Context) (bool, string) {
			var got []string
			for _, c := range claims {
				j := journal(t, volumeOf(t, c.name))
				h := meta.FindStatusCondition(j.Status.Conditions, jvolv1.ConditionConnectionHeld)
				if j.Status.Phase != want || h == nil || h.Status != held {
					got = append(got, fmt.Sprintf("%s: %s, %v", c.name, j.Status.Phase, h))
				}
			}
			return len(got) == 0, strings.Join(got, "; ")
		}
	}
	// After a crash the sink needs a baseline: until it has it, the Block
	// volume is Degraded.
	attached := func(when string) {
		t.Helper()
		eventually(t, waitLong, "the Journals Attached and held "+when, phase(jvolv1.PhaseAttached, metav1.ConditionTrue))
	}
	attached("before")

	for _, e := range []struct {
		name string
		do   func()
	}{
		{"kill -9 of the holder", func() {
			old := nodePod(t)
			before := holderRestarts(old)
			run(t, "pkill", "-KILL", "-f", "^/usr/local/bin/jvol holder ")
			for _, c := range claims {
				volume := volumeOf(t, c.name)
				eventually(t, waitLong, "a HolderGone event on "+volume, func(ctx context.Context) (bool, string) {
					ev, err := kube.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + volume + ",reason=" + jvolv1.EventHolderGone})
					return err == nil && len(ev.Items) > 0, fmt.Sprint(err)
				})
			}
			nodeReady(t, "the holder restarted", func(p *corev1.Pod) bool { return p.UID == old.UID && holderRestarts(p) > before })
		}},
		{"kill -9 of jvol", func() {
			old := nodePod(t)
			before := jvolRestarts(old)
			run(t, "pkill", "-KILL", "-f", "^/usr/local/bin/jvol node ")
			nodeReady(t, "the node plugin's jvol restarted", func(p *corev1.Pod) bool { return p.UID == old.UID && jvolRestarts(p) > before })
		}},
		{"an upgrade", func() {
			run(t, "ctr", "--address", os.Getenv("JVOL_CLUSTER")+"/run/containerd.sock", "-n", "k8s.io", "images", "tag", "--force", jvolImage, jvolImage+"-next")
			old := nodePod(t)
			helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "image.tag=0.1.0-next", "--wait", "--timeout", "3m")
			kubectl(t, "-n", "kube-system", "rollout", "status", "daemonset/"+release+"-node", "--timeout=3m")
			nodeReady(t, "the upgraded node plugin", func(p *corev1.Pod) bool { return p.UID != old.UID })
		}},
		{"the node pod's deletion", func() {
			old := nodePod(t)
			if err := kube.CoreV1().Pods(old.Namespace).Delete(t.Context(), old.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			nodeReady(t, "a node plugin after the deletion", func(p *corev1.Pod) bool { return p.UID != old.UID })
		}},
	} {
		for _, c := range claims {
			lap(t, c.name)
		}
		e.do()
		attached("after " + e.name)
		for _, c := range claims {
			t.Logf("%s: %s: the longest write (with its fsync) took %v", e.name, c.name, lap(t, c.name))
		}
	}

	for _, c := range claims {
		r := stopWriter(t, c.name)
		t.Logf("%s: %d writes to %d blocks; the longest write (with its fsync) took %.0f ms", c.name, r.Writes, r.Blocks, r.LongestMs)
		if r.WriteErr != "" || r.VerifyErr != "" || r.Writes == 0 {
			t.Errorf("%s: %+v", c.name, r)
		}
	}
	ext4, block := volumeOf(t, "live-ext4"), volumeOf(t, "live-block")
	unstaged(t, ext4)
	if out, err := exec.Command("e2fsck", "-fn", stateDir+"/volumes/"+ext4+"/data.img").CombinedOutput(); err != nil {
		t.Errorf("e2fsck of the ext4 volume: %v\n%s", err, out)
	}
	unstaged(t, block)
	eventually(t, waitLong, "the sink's mirror equal to the Block volume", func(context.Context) (bool, string) {
		d := differ(filepath.Join(sinkDir, block, "mirror.img"), stateDir+"/volumes/"+block+"/data.img")
		return d == "", d
	})
	for _, c := range claims {
		deleteClaim(t, c.name, volumeOf(t, c.name))
	}
	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "image.tag=0.1.0", "--wait", "--timeout", "3m")
}
