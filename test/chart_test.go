package test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// render renders the chart with args and returns its objects by kind.
func render(t *testing.T, args ...string) map[string][]unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command("../hack/helm.sh", append([]string{"template", "jvol", "../charts/jvol", "--namespace", "jvol-system", "--kube-version", "v1.34.4"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr.Bytes())
	}
	kinds := map[string][]unstructured.Unstructured{}
	for _, u := range objects(t, out) {
		kinds[u.GetKind()] = append(kinds[u.GetKind()], u)
	}
	return kinds
}

// objects decodes the objects of a multi-document YAML.
func objects(t *testing.T, b []byte) []unstructured.Unstructured {
	t.Helper()
	var all []unstructured.Unstructured
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return all
		} else if err != nil {
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			all = append(all, u)
		}
	}
}

// The metrics Services always; the ServiceMonitor only where its CRD is;
// the dashboard's ConfigMap, holding JSON, only when asked for.
func TestChartRendersMetricsObjectsWhereTheyBelong(t *testing.T) {
	without := render(t)
	if n := len(without["ServiceMonitor"]); n != 0 {
		t.Errorf("%d ServiceMonitors without the CRD", n)
	}
	var services []string
	for _, s := range without["Service"] {
		if s.GetLabels()["jvol.io/metrics"] == "true" {
			services = append(services, s.GetName())
		}
	}
	if strings.Join(services, " ") != "jvol-controller-metrics jvol-node-metrics" {
		t.Errorf("metrics Services %v", services)
	}
	with := render(t, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor", "--set", "metrics.dashboard.enabled=true")
	if n := len(with["ServiceMonitor"]); n != 1 {
		t.Errorf("%d ServiceMonitors with the CRD, want 1", n)
	}
	var dashboards int
	for _, c := range with["ConfigMap"] {
		if c.GetLabels()["grafana_dashboard"] != "1" {
			continue
		}
		dashboards++
		data, _, _ := unstructured.NestedString(c.Object, "data", "jvol.json")
		if !json.Valid([]byte(data)) || !strings.Contains(data, "jvol_volume_flush_duration_seconds_bucket") {
			t.Errorf("the dashboard is not the JSON of dashboards/jvol.json: %.200s", data)
		}
	}
	if dashboards != 1 {
		t.Errorf("%d dashboards, want 1", dashboards)
	}
	off := render(t, "--set", "metrics.services=false", "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
	if n := len(off["ServiceMonitor"]); n != 0 {
		t.Errorf("%d ServiceMonitors without the Services", n)
	}
}

// With sink.enabled the receiver comes with its Service, metrics Service
// and credentials, and storageClass.sink.inCluster points the class at it
// with the client Secret (which holds no server key).
func TestChartInstallsTheReceiverWhenAsked(t *testing.T) {
	if n := len(render(t)["StatefulSet"]); n != 0 {
		t.Errorf("%d StatefulSets without sink.enabled", n)
	}
	kinds := render(t, "--set", "sink.enabled=true", "--set", "storageClass.sink.inCluster=true", "--set", "sink.retain=24h")
	if n := len(kinds["StatefulSet"]); n != 1 {
		t.Fatalf("%d StatefulSets, want the receiver", n)
	}
	args, _, _ := unstructured.NestedSlice(kinds["StatefulSet"][0].Object, "spec", "template", "spec", "containers")
	if a := strings.Join(argsOf(args[0]), " "); !strings.Contains(a, "--tls-cert=/credentials/tls.crt") ||
		!strings.Contains(a, "--token-file=/credentials/token") || !strings.Contains(a, "--retain=24h") || !strings.Contains(a, "--metrics-address=:9810") {
		t.Errorf("receiver args: %s", a)
	}
	secrets := map[string]map[string]any{}
	for _, s := range kinds["Secret"] {
		data, _, _ := unstructured.NestedMap(s.Object, "data")
		secrets[s.GetName()] = data
	}
	if c := secrets["jvol-sink-client"]; c["token"] == nil || c["ca.crt"] == nil || c["tls.key"] != nil {
		t.Errorf("client Secret keys: %v", keys(c))
	}
	if s := secrets["jvol-sink-server"]; s["token"] != secrets["jvol-sink-client"]["token"] || s["tls.key"] == nil {
		t.Errorf("server Secret keys %v, or another token than the client's", keys(s))
	}
	params, _, _ := unstructured.NestedStringMap(kinds["StorageClass"][0].Object, "parameters")
	if params["sinkURL"] != "tls://jvol-sink.jvol-system.svc:7070" || params["sinkSecretName"] != "jvol-sink-client" {
		t.Errorf("StorageClass parameters %v", params)
	}
	var metrics bool
	for _, s := range kinds["Service"] {
		metrics = metrics || s.GetName() == "jvol-sink-metrics"
	}
	if !metrics {
		t.Error("no metrics Service of the receiver")
	}
	out, err := exec.Command("../hack/helm.sh", "template", "jvol", "../charts/jvol", "--kube-version", "v1.34.4",
		"--set", "storageClass.sink.inCluster=true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "needs sink.enabled") {
		t.Errorf("inCluster without the receiver: %v: %s", err, out)
	}
}

func argsOf(container any) []string {
	var args []string
	for _, a := range container.(map[string]any)["args"].([]any) {
		args = append(args, a.(string))
	}
	return args
}

func keys(m map[string]any) []string {
	var k []string
	for key := range m {
		k = append(k, key)
	}
	return k
}
