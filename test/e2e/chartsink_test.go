//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
	storageClass(t, "journal-received", map[string]string{
		"sinkURL": "tls://127.0.0.1:" + port, "duplex": "full",
		"sinkSecretName": release + "-sink-client", "sinkSecretNamespace": "kube-system",
	})
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
	deleteClaim(t, "received", volume)
}
