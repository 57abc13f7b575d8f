package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/attach"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/keeper"
	"github.com/jvol-io/jvol/internal/metrics"
	"github.com/jvol-io/jvol/internal/sizes"
	"github.com/jvol-io/jvol/internal/volume"
)

// servingThreads is the least GOMAXPROCS the FUSE server gets: go-fuse
// serves with as many goroutines as GOMAXPROCS (up to 16), and direct I/O
// blocks them, so two cores' worth starves a queue depth of 32.
const servingThreads = 16

func attachCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("attach", flag.ContinueOnError)
	dir := fs.String("dir", "", "volume directory (required)")
	name := fs.String("name", "", "volume name (default: the directory's base name)")
	var size, journalSize, fifoSize sizes.Flag
	fs.Var(&size, "size", "volume size: required to create; larger than the volume's grows it")
	fs.Var(&journalSize, "journal-size", "journal size, when creating (default 10% of the size, at least 64Mi)")
	fs.Var(&fifoSize, "fifo-size", "memory FIFO size, a power of two from 1Mi to 1Gi (default 16Mi)")
	provisioning := fs.String("provisioning", "", "when creating: thick (default) allocates the whole data image now, so no write can meet a full disk; thin allocates it as written, 8Mi at a time")
	commit := fs.Duration("commit-interval", 0, "longest time between commits of the journal to the data image (default 5s)")
	fsType := fs.String("fs", "", "make (unless present) and mount this file system: ext4 or xfs")
	mnt := fs.String("mount", "", "where to mount the file system")
	var so attach.SinkOptions
	fs.StringVar(&so.URL, "sink", "", `stream the journal to this receiver: tcp://host:port or tls://host:port ("" removes the volume's sink)`)
	duplex := fs.String("duplex", "half", "half: the journal frees records once sent; full: once the receiver acknowledges them")
	fs.StringVar(&so.TokenFile, "sink-token-file", "", "token to present to the receiver")
	fs.StringVar(&so.CAFile, "sink-ca", "", "CA to check a tls:// receiver with (default: the system's)")
	fs.StringVar(&so.CertFile, "sink-cert", "", "client certificate for a tls:// receiver")
	fs.StringVar(&so.KeyFile, "sink-key", "", "its key")
	keep := fs.Bool("keeper", true, "keep the FUSE connection in this process and serve it from a child process, restarted if it dies (SIGHUP: hand over to a new one of the binary on disk)")
	server := fs.String("fuse", "jvol", "FUSE server: jvol, or go-fuse (for comparison; without a keeper)")
	metricsAddr := fs.String("metrics-address", "", "serve the volume's metrics at /metrics here (host:port; port 0 picks one, printed as metrics=HOST:PORT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("attach needs --dir: %w", errUsage)
	}
	if *server != "jvol" && *server != "go-fuse" {
		return fmt.Errorf("--fuse %q: want jvol or go-fuse: %w", *server, errUsage)
	}
	served, err := keeper.FromEnv()
	if err != nil {
		return err
	}
	if served == nil && *metricsAddr != "" {
		// The first process serves them, from the status each server
		// publishes: they outlive a server's restart.
		if err := serveMetrics(ctx, *metricsAddr, volumeMetrics(*dir)); err != nil {
			return err
		}
	}
	if served == nil && *keep && *server == "jvol" {
		// What is wrong with the command line fails here, not in the
		// child, with its reason and nothing made.
		check := attach.Options{Dir: *dir, FS: *fsType, Mount: *mnt, Volume: volume.Options{Size: int64(size)}}
		if err := check.Check(); err != nil {
			return err
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		return keeper.Run(exe, os.Args[1:])
	}
	o := attach.Options{Dir: *dir, FS: *fsType, Mount: *mnt, GoFuse: *server == "go-fuse"}
	if served != nil {
		o.Conn, o.Restarts, o.PID = served.Conn, served.Restarts, os.Getppid()
		switch served.Start {
		case keeper.Handover:
			o.Resume = volume.ResumeClean
		case keeper.Crash:
			o.Resume = volume.ResumeCrash
		}
	}
	sinkSet := false
	fs.Visit(func(f *flag.Flag) { sinkSet = sinkSet || f.Name == "sink" })
	if sinkSet {
		if so.Duplex, err = journal.ParseDuplex(*duplex); err != nil {
			return err
		}
		o.Sink = &so
	}
	if *provisioning != "" {
		if o.Volume.Provisioning, err = volume.ParseProvisioning(*provisioning); err != nil {
			return fmt.Errorf("--provisioning: %w: %w", err, errUsage)
		}
	}
	o.Volume.Name, o.Volume.CommitInterval = *name, *commit
	o.Volume.Size, o.Volume.JournalSize, o.Volume.FIFOSize = int64(size), int64(journalSize), int(fifoSize)
	runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), servingThreads))
	if addr := os.Getenv("JVOL_PPROF_ADDR"); addr != "" {
		// Profiling on demand, e.g. JVOL_PPROF_ADDR=127.0.0.1:6060.
		go func() { klog.ErrorS(http.ListenAndServe(addr, nil), "pprof server") }()
	}

	// Signals after the first arrive here: a detach that finds the file
	// system busy keeps the volume served until the next one.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	a, err := attach.Attach(o)
	if err != nil {
		return err
	}
	publish := func() {
		if err := a.PublishStatus(); err != nil {
			klog.ErrorS(err, "Publishing status", "dir", a.Dir())
		}
	}
	publish() // before saying it serves: the status names this server
	if o.Resume == volume.NoResume {
		fmt.Printf("device=%s\n", a.Device)
		if a.MountPath != "" {
			fmt.Printf("mount=%s\n", a.MountPath)
		}
	} else {
		klog.InfoS("Serving again", "dir", a.Dir(), "device", a.Device, "after", served.Start, "restarts", served.Restarts)
	}
	if served != nil {
		served.Ready()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			publish()
			continue
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				handover(a, served)
				continue
			}
		}
		klog.InfoS("Detaching", "dir", a.Dir(), "device", a.Device)
		err := a.Detach()
		if err == nil {
			return nil
		}
		if a.Attached() {
			klog.ErrorS(err, "Detach failed; still attached: send the signal again to retry", "dir", a.Dir())
			continue
		}
		return err
	}
}

func statusCmd(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	dir := fs.String("dir", "", "volume directory (required)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("status needs --dir: %w", errUsage)
	}
	s, err := attach.ReadStatus(*dir)
	if err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(os.Stdout)
		e.SetIndent("", "  ")
		return e.Encode(s)
	}
	s.WriteText(os.Stdout)
	return nil
}

// handover stops serving and exits for the keeper's next server; without
// a keeper, SIGHUP is ignored. A handover that fails exits too: the keeper
// then starts the next server as after a crash.
func handover(a *attach.Attachment, served *keeper.Served) {
	if served == nil {
		klog.InfoS("SIGHUP ignored: this attach has no keeper to hand over to", "dir", a.Dir())
		return
	}
	klog.InfoS("Handing over", "dir", a.Dir(), "device", a.Device)
	if err := a.Handover(); err != nil {
		klog.ErrorS(err, "Handover", "dir", a.Dir())
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
	os.Exit(keeper.ExitHandedOver)
}

// volumeMetrics collects the metrics of the volume in dir, from the
// status its server publishes.
func volumeMetrics(dir string) prometheus.Collector {
	return metrics.NewVolumes(func() []attach.Status {
		s, err := attach.ReadStatus(dir)
		if err != nil {
			return nil
		}
		return []attach.Status{s}
	}, nil)
}

// serveMetrics serves c's metrics at /metrics on addr until ctx ends, and
// prints the address it listens on (metrics=HOST:PORT).
func serveMetrics(ctx context.Context, addr string, c prometheus.Collector) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics-address: %w", err)
	}
	fmt.Printf("metrics=%s\n", l.Addr())
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(nil, c))
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		s.Close()
	}()
	go s.Serve(l)
	return nil
}
