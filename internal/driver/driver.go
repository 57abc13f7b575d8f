// Package driver is jvol's CSI driver: the Identity, Controller and Node
// services (one file each), and Run, which builds them for a Mode and owns
// the order in which they start and stop. Controller volumes are Journal
// objects in a catalog.Store; the node's volumes are internal/host's,
// reconciled by internal/reconciler.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/catalog"
	"github.com/jvol-io/jvol/internal/fdpass"
	"github.com/jvol-io/jvol/internal/holder"
	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/metrics"
	"github.com/jvol-io/jvol/internal/reconciler"
	"github.com/jvol-io/jvol/internal/registration"
	"github.com/jvol-io/jvol/internal/succession"
	"github.com/jvol-io/jvol/internal/volume"
)

// Mode is the role a driver process plays.
type Mode string

const (
	// ModeController serves Identity and Controller; volumes are Journals
	// in the Kubernetes API.
	ModeController Mode = "controller"
	// ModeNode serves Identity and Node, and reconciles this node's
	// Journals.
	ModeNode Mode = "node"
	// ModeStandalone serves all three without Kubernetes: Journals are
	// kept in StateDir/journals.
	ModeStandalone Mode = "standalone"
)

// Config is what Run builds a driver from.
type Config struct {
	Mode     Mode
	Endpoint string // unix:///path or tcp://host:port
	// HealthAddr, if set, serves /healthz and /readyz (host:port).
	HealthAddr string
	// Kube is the API server's configuration (controller and node).
	Kube *rest.Config

	// Node and standalone.
	NodeID   string
	StateDir string
	// OS is the machine's side of the node's volumes (fakes in tests).
	OS host.OS
	// Register with the kubelet at KubeletDir, telling it the CSI socket
	// is at RegistrationPath (default KubeletDir/plugins/jvol.io/csi.sock).
	Register         bool
	KubeletDir       string
	RegistrationPath string

	// HolderSocket, if set, is where the FUSE connection holder listens
	// (internal/holder): the volumes' connections outlive this process.
	HolderSocket string
	// SuccessionSocket, if set, is where a plugin hands its volumes to the
	// next (internal/succession): this one takes them from the one before
	// at start, and listens there for its own successor.
	SuccessionSocket string
	// SuccessionWait bounds how long a plugin told to stop waits for a
	// successor to take its volumes.
	SuccessionWait time.Duration
	// MaxVolumes is the most volumes the node takes (NodeGetInfo); 0:
	// DefaultMaxVolumes of the machine's memory.
	MaxVolumes int64
}

// Run serves the driver cfg describes until ctx ends, then stops it: the
// CSI server drains its calls before the node's volumes are committed. A
// node's volumes stay staged across a stop (pods keep their mounts), and
// are served again by the next Run.
func Run(ctx context.Context, cfg Config) error {
	switch cfg.Mode {
	case ModeController, ModeNode, ModeStandalone:
	default:
		return fmt.Errorf("driver: mode %q: want controller, node or standalone", cfg.Mode)
	}
	if cfg.Mode != ModeController && cfg.NodeID == "" {
		return errors.New("driver: a node id is required")
	}
	// parent's end is the request to stop; what serves runs until stop(),
	// which may come later: a node plugin told to stop serves on while it
	// waits for a successor.
	parent := ctx
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		select {
		case <-parent.Done():
			if cfg.SuccessionSocket == "" {
				stop()
			}
		case <-ctx.Done():
		}
	}()
	defer stop()
	var (
		ready    atomic.Bool
		nodeVols atomic.Pointer[host.Volumes] // the node's, once made: their metrics
		nodeRec  atomic.Pointer[reconciler.Reconciler]
		metered  = metrics.NewVolumes(func() []attach.Status {
			if v := nodeVols.Load(); v != nil {
				return v.Statuses()
			}
			return nil
		}, func(volume string) (string, string) {
			if r := nodeRec.Load(); r != nil {
				return r.Claim(volume)
			}
			return "", ""
		})
	)
	serveHealth(ctx, cfg.HealthAddr, &ready, metrics.Handler(ctrlmetrics.Registry, metered))
	var (
		ids        = &Identity{Controller: cfg.Mode != ModeNode, Ready: &ready}
		cs         *Controller
		ns         *Node
		volumes    *host.Volumes
		err        error
		errc       = make(chan error, 4)
		background = func(f func() error) { go func() { errc <- f() }() }
	)
	var (
		hc        *holder.Client
		holderNow atomic.Pointer[holder.Client] // hc, or the one after it if it died
		retired   = make(chan struct{})
	)
	if cfg.Mode != ModeController {
		changes := reconciler.NewChanges()
		hcfg := host.Config{StateDir: cfg.StateDir, Changed: changes.Add, OS: cfg.OS}
		if cfg.HolderSocket != "" {
			if hc, err = dialHolder(ctx, cfg.HolderSocket); err != nil {
				return err
			}
			// Not closed here: the holder takes the end of this connection
			// for this process's death and gives the connections to the
			// next plugin, so it must end only when the process does, FUSE
			// servers and all.
			holderNow.Store(hc)
			if hc.Succeeded {
				klog.InfoS("This pod's node plugin handed its volumes to a successor; idle until stopped")
				<-parent.Done()
				return nil
			}
			hcfg.Holder = hc
		}
		if volumes, err = host.New(hcfg); err != nil {
			return err
		}
		nodeVols.Store(volumes)
		// Pods' volumes first: nothing else is ready until they are served.
		// Those whose connections outlived the plugin before, then those
		// a plugin still running hands over, then the rest anew.
		if hc != nil {
			if err := volumes.AdoptHeld(hc.Held); err != nil {
				klog.ErrorS(err, "Some held connections could not be served again")
			}
			go keepHolder(ctx, cfg.HolderSocket, &holderNow, volumes)
		}
		if cfg.SuccessionSocket != "" {
			took := time.Now()
			// Not ready, and no CSI socket, until the plugin before has
			// handed every volume over: its pods' I/O goes on through it.
			names, err := succession.TakeAll(parent, cfg.SuccessionSocket, func(name string, conn *os.File) error {
				return volumes.Adopt(name, conn, volume.ResumeClean)
			})
			if err != nil && volumes.Served() == 0 {
				// Told to stop while the plugin before kept everything: its
				// sockets stay its own.
				klog.InfoS("Told to stop before the plugin before handed anything over; stopping", "reason", err)
				return nil
			}
			if err != nil {
				klog.ErrorS(err, "Stopped taking the volumes from the plugin before", "taken", len(names))
			} else if len(names) > 0 {
				klog.InfoS("Took the volumes over from the plugin before", "volumes", len(names), "took", time.Since(took))
			}
		}
		if err := volumes.Restore(ctx); err != nil {
			klog.ErrorS(err, "Some staged volumes could not be served again")
			if errors.Is(err, host.ErrElsewhere) {
				go restoreWhenFree(ctx, volumes)
			}
		}
		if cfg.SuccessionSocket != "" {
			l, err := fdpass.Listen(cfg.SuccessionSocket)
			if err != nil {
				return err
			}
			go func() {
				ok, err := succession.Serve(ctx, l, giver{volumes})
				if err != nil {
					klog.ErrorS(err, "Listening for a successor")
				}
				if ok {
					if h := holderNow.Load(); h != nil {
						if err := h.MarkSucceeded(); err != nil {
							klog.ErrorS(err, "The holder did not hear of the handover: a restart of this container would serve the volumes again")
						}
					}
					close(retired)
				}
			}()
		}
		var r *reconciler.Reconciler
		if cfg.Mode == ModeNode {
			mgr, rr, err := reconciler.NewManager(cfg.Kube, reconciler.Options{NodeID: cfg.NodeID, Volumes: volumes, Changes: changes})
			if err != nil {
				return err
			}
			r = rr
			background(func() error { return mgr.Start(ctx) })
			go publishAvailable(ctx, mgr.GetClient(), cfg.NodeID, volumes)
		} else {
			files, err := catalog.OpenFiles(filepath.Join(cfg.StateDir, "journals"), changes.Add)
			if err != nil {
				return err
			}
			snaps, err := catalog.OpenSnapshotFiles(filepath.Join(cfg.StateDir, "journalsnapshots"), func(name string) {
				changes.Add(reconciler.SnapshotKey(name))
			})
			if err != nil {
				return err
			}
			r = &reconciler.Reconciler{Store: files, Snapshots: snaps, Volumes: volumes, NodeID: cfg.NodeID}
			background(func() error { return r.RunStandalone(ctx, changes) })
			cs = &Controller{Store: files, Snapshots: snaps, DefaultNode: cfg.NodeID, Capacity: func(context.Context, string) (int64, error) {
				return volumes.Available()
			}}
		}
		nodeRec.Store(r)
		ns = &Node{Volumes: volumes, NodeID: cfg.NodeID, Journals: r, MaxVolumes: cfg.MaxVolumes}
		if ns.MaxVolumes == 0 {
			mem, err := memTotal()
			if err != nil {
				return err
			}
			ns.MaxVolumes = DefaultMaxVolumes(mem)
		}
	}
	if cfg.Mode == ModeController {
		ctrl.SetLogger(klog.NewKlogr())
		c, err := client.New(cfg.Kube, client.Options{Scheme: catalog.Scheme()})
		if err != nil {
			return err
		}
		nodes := catalog.Nodes{Client: c}
		cs = &Controller{Store: catalog.NewKube(c, nil), Snapshots: catalog.NewKubeSnapshots(c, nil), Capacity: nodes.Available, NodeGone: nodes.NodeGone}
	}

	l, err := Listen(cfg.Endpoint)
	if err != nil {
		return err
	}
	s := NewServer(ids, cs, ns)
	served := make(chan struct{})
	go func() { errc <- Serve(ctx, l, s); close(served) }()
	// Only once the CSI socket listens does the kubelet hear of it.
	if cfg.Mode == ModeNode && cfg.Register {
		sock := cfg.RegistrationPath
		if sock == "" {
			sock = filepath.Join(cfg.KubeletDir, "plugins", DriverName, "csi.sock")
		}
		background(func() error { return registration.Serve(ctx, cfg.KubeletDir, DriverName, sock) })
	}
	ready.Store(true)
	select {
	case <-parent.Done():
		// Told to stop. A successor may be on its way (the DaemonSet starts
		// the next pod beside this one): it takes the volumes with no I/O
		// error, which a stop would give.
		if cfg.SuccessionSocket != "" && volumes.Served() > 0 {
			klog.InfoS("Waiting for a successor to take the volumes", "volumes", volumes.Served(), "for", cfg.SuccessionWait)
			select {
			case <-retired:
			case <-time.After(cfg.SuccessionWait):
				klog.InfoS("No successor came; stopping")
			}
		}
	case err = <-errc:
	case <-retired:
		klog.InfoS("The volumes are the successor's; stopping all but the process")
	}
	stop()
	<-served // no CSI call is in flight when the volumes are committed
	if volumes == nil {
		return err
	}
	// Volumes stay staged across a restart: commit them, leave them mounted.
	err = errors.Join(err, volumes.Sync(context.Background()))
	if volumes.Retired() && err == nil {
		// Idle until stopped: a plugin that exits is restarted, and one
		// that restarts would take the volumes back.
		<-parent.Done()
	}
	return err
}

// RestoreRetry is how long a node plugin waits before it serves again the
// staged volumes another process still served at its start; the wait
// doubles each time, up to 30 s.
var RestoreRetry = time.Second

// restoreWhenFree serves again the staged volumes that another process
// served when this one started (the plugin before, stopping with no
// successor while this one started: it lets go of them when it exits),
// once it has let go of them. It stops once none is served elsewhere, or
// when ctx ends.
func restoreWhenFree(ctx context.Context, volumes *host.Volumes) {
	for wait := RestoreRetry; ; wait = min(2*wait, 30*time.Second) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := volumes.Restore(ctx)
		if !errors.Is(err, host.ErrElsewhere) {
			if err == nil {
				klog.InfoS("Every staged volume is served again")
			}
			return
		}
	}
}

// dialHolder connects to the connection holder, which may start after the
// plugin, in the same pod.
func dialHolder(ctx context.Context, path string) (*holder.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return holder.Dial(ctx, path)
}

// keepHolder waits for the holder to die (the connections then live only
// as long as this process), then connects to the next one, again and again
// until ctx ends. A holder that refuses or fails is tried again: the
// volumes have no other way to outlive this process.
func keepHolder(ctx context.Context, path string, now *atomic.Pointer[holder.Client], volumes heldVolumes) {
	for {
		hc := now.Load()
		select {
		case <-ctx.Done():
			return
		case <-hc.Done():
		}
		hc.Close()
		volumes.HolderGone()
		klog.ErrorS(nil, "The FUSE connection holder is gone: the volumes would not outlive this process; connecting to the next", "socket", path)
		var next *holder.Client
		for {
			var err error
			if next, err = holder.Dial(ctx, path); err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			klog.ErrorS(err, "No FUSE connection holder yet; trying again")
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // a back-off between refusals
			}
		}
		for _, f := range next.Held {
			f.Close() // a new holder holds nothing: nothing to take over
		}
		volumes.SetHolder(next)
		now.Store(next)
		klog.InfoS("A FUSE connection holder keeps the volumes' connections again", "volumes", volumes.Served())
	}
}

// heldVolumes is what keepHolder tells of the holder: host.Volumes.
type heldVolumes interface {
	HolderGone()
	SetHolder(host.Holder)
	Served() int
}

// giver hands host volumes to a successor.
type giver struct{ *host.Volumes }

func (g giver) Adopt(name string, conn *os.File, clean bool) error {
	how := volume.ResumeCrash // the successor died with it (see attach.Options.Resume)
	if clean {
		how = volume.ResumeClean
	}
	return g.Volumes.Adopt(name, conn, how)
}

// serveHealth answers /healthz (the process is up) and /readyz (staged
// volumes are served again and the CSI socket is open) at addr, if set.
func serveHealth(ctx context.Context, addr string, ready *atomic.Bool, metrics http.Handler) {
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
	mux.Handle("/metrics", metrics)
	s := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	go func() {
		// The plugin before (same host network, during a succession) may
		// hold the port until it hands over: try again until it is free.
		for {
			l, err := net.Listen("tcp", addr)
			if err == nil {
				err = s.Serve(l)
			}
			if err == nil || errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
				return
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				klog.ErrorS(err, "Health endpoint failed", "addr", addr)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second): // a back-off, while the port is taken
			}
		}
	}()
}

// publishAvailable keeps the node's free bytes in an annotation of its
// Node, where the controller's GetCapacity reads them: it looks every 5 s
// and writes what changed, in whole MiB.
func publishAvailable(ctx context.Context, c client.Client, nodeName string, volumes *host.Volumes) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	published := int64(-1)
	for {
		n, err := volumes.Available()
		n &^= 1<<20 - 1 // whole MiB: a few bytes are no change
		if err == nil && n != published {
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, catalog.AvailableAnnotation, strconv.FormatInt(n, 10))
			obj := &corev1.Node{}
			obj.Name = nodeName
			if err := c.Patch(ctx, obj, client.RawPatch("application/merge-patch+json", []byte(patch))); err != nil {
				klog.ErrorS(err, "Could not publish free space", "node", nodeName)
			} else {
				published = n
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
