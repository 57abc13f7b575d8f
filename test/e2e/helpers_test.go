//go:build e2e

// Package e2e tests jvol on a real single-node cluster that hack/e2e.sh
// brings up (hack/cluster.sh), with jvol installed by Helm from charts/jvol
// as a user would. The tests run in order and share the cluster; each
// removes what it made. Run them with `make test` (root), or against a
// cluster from `make up` with
//
//	KUBECONFIG=... KUBECTL=... HELM=hack/helm.sh go test -tags e2e ./test/e2e
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/jvol-io/jvol/internal/catalog"
	jvolv1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

const (
	ns        = "default"
	release   = "jvol"
	chart     = "../../charts/jvol"
	stateDir  = "/var/lib/jvol" // the chart's node.stateDir
	busybox   = "localhost/busybox:e2e"
	waitLong  = 3 * time.Minute
	pollEvery = 500 * time.Millisecond
)

var (
	kube *kubernetes.Clientset
	ctrl client.Client
)

func TestMain(m *testing.M) {
	for _, v := range []string{"KUBECONFIG", "KUBECTL", "HELM"} {
		if os.Getenv(v) == "" {
			fmt.Fprintf(os.Stderr, "e2e: %s is not set; run `make test` (root), which brings a cluster up\n", v)
			os.Exit(1)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err == nil {
		// Polls are not throttled to client-go's 5 a second: a waiting
		// test would otherwise report the limiter, not what it waits for.
		cfg.QPS, cfg.Burst = 50, 100
		kube, err = kubernetes.NewForConfig(cfg)
	}
	if err == nil {
		ctrl, err = client.New(cfg, client.Options{Scheme: catalog.Scheme()})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// run runs a command and returns its standard output; it fails the test
// with both outputs if the command fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := tryRun(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func tryRun(name string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s%s", err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, os.Getenv("KUBECTL"), args...)
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, os.Getenv("HELM"), args...)
}

// eventually polls cond until it holds, failing the test with cond's last
// word after d.
func eventually(t *testing.T, d time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, d, true, func(ctx context.Context) (bool, error) {
		ok, why := cond(ctx)
		if ctx.Err() == nil { // a poll cut short by the deadline says nothing
			last = why
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: not after %v: %s", what, d, last)
	}
}

// pvc makes a claim of class sc; block claims have volumeMode Block.
func pvc(t *testing.T, name, sc, size string, block bool) *corev1.PersistentVolumeClaim {
	t.Helper()
	return pvcOf(t, name, sc, size, block, corev1.ReadWriteOnce)
}

// pvcOf is pvc with access mode access.
func pvcOf(t *testing.T, name, sc, size string, block bool, access corev1.PersistentVolumeAccessMode) *corev1.PersistentVolumeClaim {
	t.Helper()
	mode := corev1.PersistentVolumeFilesystem
	if block {
		mode = corev1.PersistentVolumeBlock
	}
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{access},
			StorageClassName: &sc,
			VolumeMode:       &mode,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			},
		},
	}
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(t.Context(), c, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pod starts a busybox pod running script with the claim at /data (a
// directory, or a block device for block claims). once pods run the script
// and end; the others keep running after it.
func pod(t *testing.T, name, claim string, block, once bool, script string) {
	t.Helper()
	c := corev1.Container{
		Name:            "c",
		Image:           busybox,
		ImagePullPolicy: corev1.PullNever,
		Command:         []string{"sh", "-c", "set -e\n" + script},
	}
	if !once {
		c.Command[2] += "\ntrap 'exit 0' TERM\nwhile true; do sleep 1; done"
	}
	if block {
		c.VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/data"}}
	} else {
		c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	grace := int64(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
			}}},
		},
	}
	if _, err := kube.CoreV1().Pods(ns).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runPod runs script once in a pod on claim and returns what it printed.
func runPod(t *testing.T, name, claim string, block bool, script string) string {
	t.Helper()
	pod(t, name, claim, block, true, script)
	eventually(t, waitLong, "pod "+name+" done", func(ctx context.Context) (bool, string) {
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		if p.Status.Phase == corev1.PodFailed {
			t.Fatalf("pod %s failed: %s", name, kubectl(t, "logs", name))
		}
		return p.Status.Phase == corev1.PodSucceeded, podState(ctx, p)
	})
	out := kubectl(t, "logs", name)
	deletePod(t, name)
	return out
}

// startPod starts a long-running pod and waits until it is ready.
func startPod(t *testing.T, name, claim string, block bool, script string) {
	t.Helper()
	pod(t, name, claim, block, false, script)
	kubectl(t, "wait", "--for=condition=Ready", "pod/"+name, "--timeout="+waitLong.String())
}

// podState says why a pod is not there yet: its phase and its events.
func podState(ctx context.Context, p *corev1.Pod) string {
	ev, _ := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
	s := string(p.Status.Phase)
	for _, e := range ev.Items {
		s += fmt.Sprintf("; %s: %s", e.Reason, e.Message)
	}
	return s
}

func deletePod(t *testing.T, name string) {
	t.Helper()
	err := kube.CoreV1().Pods(ns).Delete(t.Context(), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	eventually(t, waitLong, "pod "+name+" gone", func(ctx context.Context) (bool, string) {
		_, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// volumeOf waits for claim to be bound and returns its volume (the Journal's
// name).
func volumeOf(t *testing.T, claim string) string {
	t.Helper()
	var pv string
	eventually(t, waitLong, "claim "+claim+" bound", func(ctx context.Context) (bool, string) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		pv = c.Spec.VolumeName
		return c.Status.Phase == corev1.ClaimBound, string(c.Status.Phase)
	})
	v, err := kube.CoreV1().PersistentVolumes().Get(t.Context(), pv, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return v.Spec.CSI.VolumeHandle
}

func journal(t *testing.T, name string) *jvolv1.Journal {
	t.Helper()
	j := &jvolv1.Journal{}
	if err := ctrl.Get(t.Context(), client.ObjectKey{Name: name}, j); err != nil {
		t.Fatal(err)
	}
	return j
}

// deleteClaim deletes a claim and waits until its PV and Journal are gone,
// and with them the volume's directory, loop device and mounts on the node.
func deleteClaim(t *testing.T, claim, volume string) {
	t.Helper()
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(t.Context(), claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(t.Context(), claim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, waitLong, "claim, volume and Journal of "+claim+" gone", func(ctx context.Context) (bool, string) {
		if c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("claim: %v %s", err, objectState(&c.ObjectMeta, string(c.Status.Phase)))
		}
		if v, err := kube.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return false, fmt.Sprintf("volume %s: %v %s", c.Spec.VolumeName, err, objectState(&v.ObjectMeta, string(v.Status.Phase)+" "+v.Status.Message))
		}
		j := &jvolv1.Journal{}
		err := ctrl.Get(ctx, client.ObjectKey{Name: volume}, j)
		return apierrors.IsNotFound(err), fmt.Sprintf("Journal %s: %v %s %v", volume, err, objectState(&j.ObjectMeta, string(j.Status.Phase)), j.Status.Conditions)
	})
	t.Logf("claim %s and its volume deleted in %v", claim, time.Since(start).Round(time.Millisecond))
	noTrace(t, volume)
}

// objectState says what keeps an object that is being deleted: its
// deletion time, its finalizers and its phase.
func objectState(m *metav1.ObjectMeta, phase string) string {
	return fmt.Sprintf("(deleted %v, finalizers %v, phase %s)", m.DeletionTimestamp, m.Finalizers, phase)
}

// noTrace checks that the node keeps nothing of volume: no directory, no
// loop device over its image, no mount naming it.
func noTrace(t *testing.T, volume string) {
	t.Helper()
	if _, err := os.Stat(stateDir + "/volumes/" + volume); !os.IsNotExist(err) {
		t.Errorf("the volume's directory is still there: %v", err)
	}
	if l := run(t, "losetup", "-l", "-n", "-O", "NAME,BACK-FILE"); strings.Contains(l, volume) {
		t.Errorf("a loop device still serves the volume:\n%s", l)
	}
	m, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(m), "\n") {
		if strings.Contains(l, volume) {
			t.Errorf("still mounted: %s", l)
		}
	}
}
