package driver

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/fdpass"
)

// DriverName is the CSI driver's name.
const DriverName = "jvol.io"

// TopologyKey is the topology segment naming the node that holds a volume.
const TopologyKey = "topology.jvol.io/node"

// Version is set at build time.
var Version = "dev"

// Listen opens a CSI endpoint: unix:///path (an old socket file is
// removed) or tcp://host:port.
func Listen(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		// A successor binds the same path: closed, this one removes it
		// only while it is still its own.
		l, err := fdpass.ListenUnix("unix", path)
		if err != nil {
			return nil, err
		}
		return l, nil
	case "tcp":
		return net.Listen("tcp", u.Host)
	}
	return nil, fmt.Errorf("endpoint %q: want unix:///path or tcp://host:port", endpoint)
}

// NewServer returns a gRPC server with the given services registered (cs
// and ns only if not nil), every call logged with its secrets stripped.
// They are concrete pointers, not interfaces: a nil *Node in an interface
// is not nil, and would be served, and panic at its first call.
func NewServer(ids *Identity, cs *Controller, ns *Node) *grpc.Server {
	s := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(s, ids)
	if cs != nil {
		csi.RegisterControllerServer(s, cs)
	}
	if ns != nil {
		csi.RegisterNodeServer(s, ns)
	}
	return s
}

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	klog.V(4).InfoS("CSI call", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	resp, err := h(ctx, req)
	if err != nil {
		klog.ErrorS(err, "CSI call failed", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	} else {
		klog.V(4).InfoS("CSI call done", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp))
	}
	return resp, err
}

func errorf(c codes.Code, format string, a ...any) error { return status.Errorf(c, format, a...) }

// Serve serves s on l until ctx ends, then stops it gracefully.
func Serve(ctx context.Context, l net.Listener, s *grpc.Server) error {
	klog.InfoS("Serving CSI", "endpoint", l.Addr().String(), "driver", DriverName, "version", Version)
	go func() {
		<-ctx.Done()
		s.GracefulStop()
	}()
	return s.Serve(l)
}
