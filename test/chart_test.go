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
