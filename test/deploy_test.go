package test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/jvol-io/jvol/internal/catalog"
)

// TestDeployManifestsAreAcceptedByAnAPIServer creates every object of
// deploy/jvol.yaml (the chart rendered with its defaults) in a real
// kube-apiserver (envtest): the Deployment, DaemonSet, RBAC, CSIDriver and
// StorageClass must pass the API's own validation.
func TestDeployManifestsAreAcceptedByAnAPIServer(t *testing.T) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Fatal("KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	c, err := client.New(cfg, client.Options{Scheme: catalog.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "jvol-system"}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("..", "deploy", "jvol.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, u := range objects(t, b) {
		if u.GetKind() == "CustomResourceDefinition" {
			// Installed with create, not through envtest: a bad CRD must
			// fail here too.
			defer c.Delete(ctx, &u)
		}
		if err := c.Create(ctx, &u); err != nil {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		kinds[u.GetKind()]++
	}
	for _, k := range []string{"CustomResourceDefinition", "CSIDriver", "StorageClass", "Deployment", "DaemonSet", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount", "Service"} {
		if kinds[k] == 0 {
			t.Errorf("deploy/jvol.yaml has no %s", k)
		}
	}
}
