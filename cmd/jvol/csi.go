package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"time"

	"os"
	"path/filepath"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/jvol-io/jvol/internal/driver"
	"github.com/jvol-io/jvol/internal/fdpass"
	"github.com/jvol-io/jvol/internal/holder"
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
		fs.StringVar(&cfg.HolderSocket, "holder-socket", "", "the FUSE connection holder's socket (jvol holder): volumes outlive this process")
		fs.StringVar(&cfg.SuccessionSocket, "succession-socket", "", "where volumes are handed from one node plugin to the next (in the state directory)")
		fs.DurationVar(&cfg.SuccessionWait, "succession-wait", time.Minute, "how long a plugin told to stop waits for a successor to take its volumes")
		fs.Int64Var(&cfg.MaxVolumes, "max-volumes", 0, "the most volumes this node takes, told to the scheduler (0: a quarter of the memory at 32 MiB a volume, at most 256)")
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

// holderCmd runs the FUSE connection holder until SIGTERM, and then until
// the plugin it holds connections for is gone: the plugin may still hand
// them to a successor.
func holderCmd(ctx context.Context, args []string) error {
	fs := newFlags("holder")
	path := fs.String("socket", "/run/jvol/holder.sock", "where to listen")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*path), 0o700); err != nil {
		return err
	}
	l, err := fdpass.Listen(*path)
	if err != nil {
		return err
	}
	h := holder.New()
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- h.Serve(sctx, l) }()
	klog.InfoS("Holding FUSE connections", "socket", *path)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	h.WaitUnowned()
	klog.InfoS("Stopping: no plugin owns the connections")
	return nil
}
