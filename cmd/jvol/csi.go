package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/driver"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/reconciler"
	"github.com/jvol-io/jvol/internal/registration"
)

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs
}

func available(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// serveHealth answers /healthz (the process is up) and /readyz (staged
// volumes are served again and the CSI socket is open).
func serveHealth(ctx context.Context, addr string, ready *atomic.Bool) {
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	go func() {
		if err := s.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Health endpoint failed", "addr", addr)
		}
	}()
}

func controllerCmd(ctx context.Context, args []string) error {
	fs := newFlags("controller")
	endpoint := fs.String("endpoint", "unix:///csi/driver.sock", "CSI endpoint")
	healthAddr := fs.String("health-addr", "", "serve /healthz and /readyz here (host:port)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ready atomic.Bool
	serveHealth(ctx, *healthAddr, &ready)
	ctrl.SetLogger(klog.NewKlogr())
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: catalog.Scheme()})
	if err != nil {
		return err
	}
	kube := catalog.Kube{Client: c}
	cs := &driver.Controller{Store: kube, Capacity: kube.Available, NodeGone: kube.NodeGone}
	l, err := driver.Listen(*endpoint)
	if err != nil {
		return err
	}
	ready.Store(true)
	return driver.Serve(ctx, l, driver.NewServer(&driver.Identity{Controller: true, Ready: &ready}, cs, nil))
}

type nodeFlags struct {
	endpoint, nodeID, stateDir, healthAddr *string
}

func addNodeFlags(fs *flag.FlagSet) nodeFlags {
	return nodeFlags{
		endpoint:   fs.String("endpoint", "unix:///csi/driver.sock", "CSI endpoint"),
		nodeID:     fs.String("node-id", "", "this node's name (required)"),
		stateDir:   fs.String("state-dir", "/var/lib/jvol", "where volumes and their state are kept"),
		healthAddr: fs.String("health-addr", "", "serve /healthz and /readyz here (host:port)"),
	}
}

// start parses args, serves the health endpoint and opens the node's
// volumes; ready turns true once the caller serves CSI.
func (f nodeFlags) start(ctx context.Context, fs *flag.FlagSet, args []string) (volumes *host.Volumes, ready *atomic.Bool, err error) {
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if *f.nodeID == "" {
		return nil, nil, fmt.Errorf("--node-id is required: %w", errUsage)
	}
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), servingThreads)) // volumes are served through FUSE here
	ready = new(atomic.Bool)
	serveHealth(ctx, *f.healthAddr, ready)
	volumes, err = host.New(*f.stateDir)
	return volumes, ready, err
}

func nodeCmd(ctx context.Context, args []string) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	fs := newFlags("node")
	f := addNodeFlags(fs)
	kubeletDir := fs.String("kubelet-dir", "/var/lib/kubelet", "the kubelet's root directory")
	register := fs.Bool("register", true, "register with the kubelet")
	regPath := fs.String("kubelet-registration-path", "", "the CSI socket's path as the kubelet sees it (default KUBELET-DIR/plugins/jvol.io/driver.sock)")
	volumes, ready, err := f.start(ctx, fs, args)
	if err != nil {
		return err
	}
	// Pods' volumes first: nothing else is ready until they are served.
	if err := volumes.Restore(ctx); err != nil {
		klog.ErrorS(err, "Some staged volumes could not be served again")
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return err
	}
	r := &reconciler.Reconciler{Volumes: volumes, NodeID: *f.nodeID}
	mgr, err := reconciler.NewManager(cfg, r)
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	go func() { errc <- mgr.Start(ctx) }()
	go publishAvailable(ctx, mgr.GetClient(), *f.nodeID, *f.stateDir)
	l, err := driver.Listen(*f.endpoint)
	if err != nil {
		return err
	}
	s := driver.NewServer(&driver.Identity{Ready: ready}, nil, &driver.Node{Volumes: volumes, NodeID: *f.nodeID, Sync: r.Sync})
	served := make(chan struct{})
	go func() { errc <- driver.Serve(ctx, l, s); close(served) }()
	// Only once the CSI socket listens does the kubelet hear of it.
	if *register {
		sock := *regPath
		if sock == "" {
			sock = filepath.Join(*kubeletDir, "plugins", driver.DriverName, "driver.sock")
		}
		go func() { errc <- registration.Serve(ctx, *kubeletDir, driver.DriverName, sock) }()
	}
	ready.Store(true)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stop()
	<-served // no CSI call is in flight when the volumes are committed
	// Volumes stay staged across a restart: commit them, leave them mounted.
	return errors.Join(err, volumes.Sync(context.Background()))
}

// publishAvailable keeps the node's free bytes in an annotation of its Node.
func publishAvailable(ctx context.Context, c client.Client, nodeName, dir string) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		if n, err := available(dir); err == nil {
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, catalog.AvailableAnnotation, strconv.FormatInt(n, 10))
			obj := &corev1.Node{}
			obj.Name = nodeName
			if err := c.Patch(ctx, obj, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
				klog.ErrorS(err, "Could not publish free space", "node", nodeName)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func standaloneCmd(ctx context.Context, args []string) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	fs := newFlags("standalone")
	f := addNodeFlags(fs)
	volumes, ready, err := f.start(ctx, fs, args)
	if err != nil {
		return err
	}
	l, err := driver.Listen(*f.endpoint)
	if err != nil {
		return err
	}
	files, err := catalog.OpenFiles(filepath.Join(*f.stateDir, "journals"))
	if err != nil {
		return err
	}
	if err := volumes.Restore(ctx); err != nil {
		klog.ErrorS(err, "Some staged volumes could not be served again")
	}
	r := &reconciler.Reconciler{Store: files, Volumes: volumes, NodeID: *f.nodeID}
	loop := reconciler.NewLoop(r)
	files.Changed, volumes.Changed = loop.Changed, loop.Changed
	errc := make(chan error, 2)
	go func() { errc <- loop.Run(ctx) }()
	cs := &driver.Controller{Store: files, DefaultNode: *f.nodeID, Capacity: func(context.Context, string) (int64, error) {
		return available(*f.stateDir)
	}}
	s := driver.NewServer(&driver.Identity{Controller: true, Ready: ready}, cs, &driver.Node{Volumes: volumes, NodeID: *f.nodeID, Sync: r.Sync})
	served := make(chan struct{})
	go func() { errc <- driver.Serve(ctx, l, s); close(served) }()
	ready.Store(true)
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	stop()
	<-served
	return errors.Join(err, volumes.Sync(context.Background()))
}
