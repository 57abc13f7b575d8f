// Package registration registers a CSI driver with the kubelet, as
// node-driver-registrar would: it serves the kubelet's plugin registration
// API on <kubelet dir>/plugins_registry/<driver>-reg.sock, where the
// kubelet's plugin watcher finds it.
package registration

import (
	"context"
	"fmt"
	"github.com/jvol-io/jvol/internal/fdpass"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	reg "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Socket is where the registration socket of driver goes.
func Socket(kubeletDir, driver string) string {
	return filepath.Join(kubeletDir, "plugins_registry", driver+"-reg.sock")
}

type server struct {
	reg.UnimplementedRegistrationServer
	driver, endpoint string
}

func (s *server) GetInfo(context.Context, *reg.InfoRequest) (*reg.PluginInfo, error) {
	return &reg.PluginInfo{Type: reg.CSIPlugin, Name: s.driver, Endpoint: s.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *reg.RegistrationStatus) (*reg.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		klog.InfoS("Registered with the kubelet", "driver", s.driver)
	} else {
		klog.ErrorS(nil, "The kubelet refused the plugin", "driver", s.driver, "error", st.Error)
	}
	return &reg.RegistrationStatusResponse{}, nil
}

// Serve tells the kubelet in kubeletDir that driver's CSI endpoint (a unix
// socket path, as the kubelet sees it) is endpoint, until ctx ends.
func Serve(ctx context.Context, kubeletDir, driver, endpoint string) error {
	return serve(ctx, kubeletDir, driver, endpoint, nil)
}

func serve(ctx context.Context, kubeletDir, driver, endpoint string, listening chan<- struct{}) error {
	path := Socket(kubeletDir, driver)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	// Closed, the socket is removed only while it is still this one's: a
	// successor's registration stays.
	l, err := fdpass.ListenUnix("unix", path)
	if err != nil {
		return fmt.Errorf("registration: %w", err)
	}
	if listening != nil {
		close(listening)
	}
	s := grpc.NewServer()
	reg.RegisterRegistrationServer(s, &server{driver: driver, endpoint: endpoint})
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		s.Stop()
		close(stopped)
	}()
	err = s.Serve(l)
	if ctx.Err() != nil {
		<-stopped
		return nil
	}
	return err
}
