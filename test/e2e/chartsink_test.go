//go:build e2e

package e2e

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/jvol-io/jvol/internal/sink"
	jvolv1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// (This file's name sorts before e2e_test.go, whose last test uninstalls.)
//
// TestInClusterReceiver: the chart's receiver (sink.enabled) takes a Block
// volume's stream in full duplex over TLS with the token of its client
// Secret; its metrics count the volume; and the images `jvol restore`
// makes of what it keeps, in its pod and over the network, equal the
// volume's data image.
func TestInClusterReceiver(t *testing.T) {
	// On the host network, with no DNS here: 127.0.0.1, on ports of its
	// own, keeping the streams in a host directory.
	dir := filepath.Join(os.Getenv("JVOL_CLUSTER"), "receiver")
	const port, metricsPort = "17071", "19810"
	helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values",
		"--set", "sink.enabled=true", "--set", "sink.address=127.0.0.1", "--set", "sink.port="+port,
		"--set", "sink.metricsPort="+metricsPort, "--set", "sink.storage.hostPath="+dir, "--set", "sink.retain=1h",
		"--wait", "--timeout", "3m")
	t.Cleanup(func() {
		helm(t, "upgrade", release, chart, "--namespace", "kube-system", "--reuse-values", "--set", "sink.enabled=false", "--wait", "--timeout", "3m")
		os.RemoveAll(dir)
	})
	params := map[string]string{
		"sinkURL": "tls://127.0.0.1:" + port, "duplex": "full",
		"sinkSecretName": release + "-sink-client", "sinkSecretNamespace": "kube-system",
	}
	storageClass(t, "journal-received", params)
	pvc(t, "received", "journal-received", "64Mi", true)
	startPod(t, "received", "received", true, writeBlock)
	volume := volumeOf(t, "received")
	eventually(t, waitLong, "the volume streaming to the receiver", func(ctx context.Context) (bool, string) {
		j := journal(t, volume)
		c := meta.FindStatusCondition(j.Status.Conditions, jvolv1.ConditionSinkInSync)
		return c != nil && c.Reason == "Connected" && j.Status.AckedTransid > 0, fmt.Sprintf("%+v", j.Status)
	})
	acked := journal(t, volume).Status.AckedTransid
	synced := fmt.Sprintf(`jvol_receiver_synced_transid{volume=%q} `, volume)
	eventually(t, waitLong, "the receiver's metrics of the volume", func(ctx context.Context) (bool, string) {
		out, err := metricsAt("127.0.0.1:" + metricsPort)
		if err != nil {
			return false, err.Error()
		}
		for line := range strings.Lines(out) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), synced); ok {
				n, err := strconv.ParseFloat(v, 64)
				return err == nil && n >= float64(acked), line // ids pass 2^53: compare as the scrape has them
			}
		}
		return false, "no " + synced
	})

	// Detached, the data image is final; the receiver has every write
	// (full duplex: acknowledged only once it had them).
	deletePod(t, "received")
	unstaged(t, volume)
	data := stateDir + "/volumes/" + volume + "/data.img"
	kubectl(t, "exec", "--namespace", "kube-system", release+"-sink-0", "--",
		"jvol", "restore", "--sink-dir", "/data", "--volume", volume, "--latest", "--out", "/data/restored.img")
	if d := differ(filepath.Join(dir, "restored.img"), data); d != "" {
		t.Errorf("the image restored in the receiver's pod and the volume's: %s", d)
	}
	// And over the network, with the client Secret's CA and token.
	secret, err := kube.CoreV1().Secrets("kube-system").Get(t.Context(), release+"-sink-client", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		t.Fatalf("no CA in the client Secret: %v", secret.Data)
	}
	client := &sink.Client{URL: "tls://127.0.0.1:" + port, TLS: &tls.Config{RootCAs: roots}, Token: secret.Data["token"]}
	out := filepath.Join(t.TempDir(), "restored.img")
	if _, err := client.RestoreFrom(t.Context(), volume, sink.Point{Latest: true}, out); err != nil {
		t.Fatal(err)
	}
	if d := differ(out, data); d != "" {
		t.Errorf("the image restored over the network and the volume's: %s", d)
	}
	if _, err := client.RestoreFrom(t.Context(), volume, sink.AtTime(time.Now().Add(time.Hour)), out); !errors.Is(err, sink.ErrNotKept) {
		t.Errorf("a restore an hour from now: %v, want ErrNotKept", err)
	}
	restores := fmt.Sprintf(`jvol_receiver_restores_total{volume=%q} 1`, volume)
	if out, err := metricsAt("127.0.0.1:" + metricsPort); err != nil || !strings.Contains(out, restores) {
		t.Errorf("the receiver's metrics do not say %q (%v)", restores, err)
	}
	sinkSnapshotsOfFileSystems(t, params)
	sinkSnapshots(t, client, volume, dir)
}

// sinkSnapshotsOfFileSystems: an ext4 and an xfs volume streamed to the
// receiver, written again after a sink VolumeSnapshot, restore from it
// what was written before it, once they are gone.
func sinkSnapshotsOfFileSystems(t *testing.T, params map[string]string) {
	for _, c := range []struct{ fs, size string }{{"ext4", "64Mi"}, {"xfs", "320Mi"}} { // XFS wants 300 MB
		class := "journal-received-" + c.fs
		p := maps.Clone(params)
		p["csi.storage.k8s.io/fstype"] = c.fs
		storageClass(t, class, p)
		src, snap := "received-"+c.fs, "received-"+c.fs+"-snap"
		pvc(t, src, class, c.size, false)
		written := runPod(t, "write-"+src, src, false, writeFile)
		volumeSnapshot(t, snap, sinkClass, src)
		if again := runPod(t, "write-again-"+src, src, false, writeFile); again == written {
			t.Fatalf("%s: the second write wrote what the first did", c.fs)
		}
		deleteClaim(t, src, volumeOf(t, src))

		restored := "from-" + snap
		claimFrom(t, restored, class, c.size, "VolumeSnapshot", snap, false)
		if got := runPod(t, "read-"+restored, restored, false, readFile); got != written {
			t.Errorf("%s: the volume of the sink snapshot holds %q, want %q", c.fs, got, written)
		}
		deleteClaim(t, restored, volumeOf(t, restored))
		kubectl(t, "delete", "volumesnapshot", snap, "--wait", "--timeout="+waitLong.String())
	}
}

// md5Head is the md5 of the first n bytes of file, in hex.
func md5Head(file string, n int64) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.CopyN(h, f, n); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sinkSnapshots: a sink VolumeSnapshot of the claim "received" (streamed
// to the chart's receiver, detached, its first write whole there), and a
// point in time between that write and a second, both restore the first
// write; a point the receiver does not keep gives the claim an event
// naming what it keeps; the sink snapshot restores after its source and
// node volume are gone; deleting the snapshots releases their pins.
func sinkSnapshots(t *testing.T, client *sink.Client, volume, dir string) {
	first := strings.TrimSpace(runPod(t, "received-first", "received", true, readBlock))
	handle := volumeSnapshot(t, "received-snap", sinkClass, "received")
	between := time.Now()

	startPod(t, "received-second", "received", true, writeBlock)
	var second string
	eventually(t, waitLong, "the second write", func(ctx context.Context) (bool, string) {
		second = strings.TrimSpace(kubectl(t, "logs", "received-second"))
		return second != "", "no md5 printed yet"
	})
	deletePod(t, "received-second")
	eventually(t, waitLong, "the receiver holding the second write", func(ctx context.Context) (bool, string) {
		out := filepath.Join(t.TempDir(), "latest.img")
		if _, err := client.RestoreFrom(ctx, volume, sink.Point{Latest: true}, out); err != nil {
			return false, err.Error()
		}
		got, err := md5Head(out, 8<<20)
		return got == second, fmt.Sprintf("the receiver's latest image starts with md5 %s (%v)", got, err)
	})
	if first == second || first == "" {
		t.Fatalf("the writes were %q and %q", first, second)
	}

	pointSnapshot(t, "received-point", volume+"@"+between.UTC().Format(time.RFC3339Nano))
	claimFrom(t, "from-point", "journal", "64Mi", "VolumeSnapshot", "received-point", true)
	if got := strings.TrimSpace(runPod(t, "read-point", "from-point", true, readBlock)); got != first {
		t.Errorf("the volume of the point in time holds %q, want the first write %q (the second is %q)", got, first, second)
	}
	deleteClaim(t, "from-point", volumeOf(t, "from-point"))

	pointSnapshot(t, "received-early", volume+"@"+between.Add(-24*time.Hour).UTC().Format(time.RFC3339))
	claimFrom(t, "from-early", "journal", "64Mi", "VolumeSnapshot", "received-early", true)
	pod(t, "read-early", "from-early", true, true, "true")
	if msg := provisioningFailed(t, "from-early"); !strings.Contains(msg, "OutOfRange") || !strings.Contains(msg, "keeps") {
		t.Errorf("the event does not say what the receiver keeps: %s", msg)
	}
	deletePod(t, "read-early")
	kubectl(t, "delete", "pvc", "from-early", "--wait", "--timeout="+waitLong.String())

	// The source and its node volume go; the receiver restores the snapshot.
	deleteClaim(t, "received", volume)
	claimFrom(t, "from-sink", "journal", "64Mi", "VolumeSnapshot", "received-snap", true)
	if got := strings.TrimSpace(runPod(t, "read-sink", "from-sink", true, readBlock)); got != first {
		t.Errorf("the volume of the sink snapshot holds %q, want %q", got, first)
	}
	deleteClaim(t, "from-sink", volumeOf(t, "from-sink"))

	pins := filepath.Join(dir, volume, "pins.json")
	if b, err := os.ReadFile(pins); err != nil || !strings.Contains(string(b), handle) {
		t.Errorf("the receiver's pins do not hold the snapshot %s: %s %v", handle, b, err)
	}
	for _, s := range []string{"received-snap", "received-point", "received-early"} {
		kubectl(t, "delete", "volumesnapshot", s, "--wait", "--timeout="+waitLong.String())
	}
	eventually(t, waitLong, "every pin released", func(ctx context.Context) (bool, string) {
		var l jvolv1.JournalSnapshotList
		if err := ctrl.List(ctx, &l); err != nil || len(l.Items) > 0 {
			return false, fmt.Sprintf("%d JournalSnapshots left (%v)", len(l.Items), err)
		}
		b, err := os.ReadFile(pins)
		return err == nil && !strings.Contains(string(b), handle), fmt.Sprintf("pins.json: %s %v", b, err)
	})
}
