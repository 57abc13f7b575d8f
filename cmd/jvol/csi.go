package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/jvol-io/jvol/internal/driver"
)

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs
}

// driverCmd parses the flags of a CSI role and runs the driver.
func driverCmd(ctx context.Context, mode driver.Mode, args []string) error {
	fs := newFlags(string(mode))
	cfg := driver.Config{Mode: mode}
	fs.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint")
	fs.StringVar(&cfg.HealthAddr, "health-addr", "", "serve /healthz and /readyz here (host:port)")
	if mode != driver.ModeController {
		fs.StringVar(&cfg.NodeID, "node-id", "", "this node's name (required)")
		fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/jvol", "where volumes and their state are kept")
	}
	if mode == driver.ModeNode {
		fs.StringVar(&cfg.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "the kubelet's root directory")
		fs.BoolVar(&cfg.Register, "register", true, "register with the kubelet")
		fs.StringVar(&cfg.RegistrationPath, "kubelet-registration-path", "", "the CSI socket's path as the kubelet sees it (default KUBELET-DIR/plugins/jvol.io/csi.sock)")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if mode != driver.ModeController {
		if cfg.NodeID == "" {
			return fmt.Errorf("--node-id is required: %w", errUsage)
		}
		runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), servingThreads)) // volumes are served through FUSE here
	}
	if mode != driver.ModeStandalone {
		var err error
		if cfg.Kube, err = ctrl.GetConfig(); err != nil {
			return err
		}
	}
	return driver.Run(ctx, cfg)
}
