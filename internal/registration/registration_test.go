package registration

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	reg "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletSeesThePlugin plays the kubelet's plugin watcher: it finds the
// socket where the kubelet looks, asks for the plugin's info and reports
// the registration.
func TestKubeletSeesThePlugin(t *testing.T) {
	kubelet := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() { done <- serve(ctx, kubelet, "jvol.io", "/var/lib/kubelet/plugins/jvol.io/csi.sock", ready) }()
	<-ready
	conn, err := grpc.NewClient("unix://"+Socket(kubelet, "jvol.io"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := reg.NewRegistrationClient(conn)
	info, err := c.GetInfo(ctx, &reg.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != reg.CSIPlugin || info.Name != "jvol.io" || info.Endpoint != "/var/lib/kubelet/plugins/jvol.io/csi.sock" || len(info.SupportedVersions) == 0 {
		t.Errorf("info %+v", info)
	}
	if _, err := c.NotifyRegistrationStatus(ctx, &reg.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Error(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}
