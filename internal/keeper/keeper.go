// Package keeper keeps a volume's FUSE connection alive across the death of
// the process that serves it. The keeper opens /dev/fuse and runs the
// server as a child process (the same command, with the connection as fd
// 3): a copy of the open file stays with the keeper, so when the server is
// killed the kernel aborts nothing. Requests wait; the keeper starts a new
// server, which takes the connection over and, once it holds the volume's
// lock, has the requests the dead one had read resent (internal/attach).
//
// SIGHUP hands the connection over to a new process of the binary on disk
// (a live upgrade): the server stops answering, makes the volume clean and
// exits; the new one resumes. SIGINT and SIGTERM are passed on: the server
// detaches and exits, and so does the keeper.
//
// The keeper never opens the mount or the loop device: a process that holds
// the last copy of the connection and a file on it hangs in its own exit.
package keeper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/frontend/fuseconn"
)

// The environment of a server started by the keeper.
const (
	envConn     = "JVOL_KEEPER_CONN"     // the fd of the connection
	envReady    = "JVOL_KEEPER_READY"    // the fd to write one byte to once serving
	envStart    = "JVOL_KEEPER_START"    // how the server starts: Start
	envRestarts = "JVOL_KEEPER_RESTARTS" // handovers and restarts so far
)

// Start says how a server starts.
type Start string

const (
	// New: the connection is not mounted yet.
	New Start = "new"
	// Handover: the server before exited cleanly after a SIGHUP.
	Handover Start = "handover"
	// Crash: the server before died; requests it had read were resent,
	// and whatever it had not written to the journal is only in the data
	// image.
	Crash Start = "crash"
)

// ExitHandedOver is the exit code of a server that stopped for a handover.
const ExitHandedOver = 75

// Timeouts of the keeper.
var (
	// ReadyTimeout bounds how long a new server may take to serve.
	ReadyTimeout = 30 * time.Second
	// StopTimeout bounds how long a server may take to stop for a
	// handover; after it, it is killed (as in a crash).
	StopTimeout = 30 * time.Second
)

// Served is what a server started by a keeper gets from it.
type Served struct {
	Conn     *os.File
	Start    Start
	Restarts int
	ready    *os.File
}

// FromEnv returns what the keeper passed, or nil if this process was not
// started by a keeper.
func FromEnv() (*Served, error) {
	fdConn := os.Getenv(envConn)
	if fdConn == "" {
		return nil, nil
	}
	cfd, err1 := strconv.Atoi(fdConn)
	rfd, err2 := strconv.Atoi(os.Getenv(envReady))
	restarts, err3 := strconv.Atoi(os.Getenv(envRestarts))
	start := Start(os.Getenv(envStart))
	if err := errors.Join(err1, err2, err3); err != nil || (start != New && start != Handover && start != Crash) {
		return nil, fmt.Errorf("keeper: bad environment: %v", err)
	}
	for _, e := range []string{envConn, envReady, envStart, envRestarts} {
		os.Unsetenv(e) // not for processes this one starts
	}
	syscall.CloseOnExec(cfd)
	syscall.CloseOnExec(rfd)
	return &Served{
		Conn: os.NewFile(uintptr(cfd), "/dev/fuse"), Start: start, Restarts: restarts,
		ready: os.NewFile(uintptr(rfd), "ready"),
	}, nil
}

// Ready tells the keeper that the volume is served.
func (s *Served) Ready() {
	if s.ready != nil {
		s.ready.Write([]byte{1})
		s.ready.Close()
		s.ready = nil
	}
}

// Run runs args (a command of the binary exe) as the server of a new
// connection, and keeps the connection until the server exits after a
// SIGINT or SIGTERM. It returns the first server's error if that one
// never serves.
func Run(exe string, args []string) error {
	// Pdeathsig follows the thread that started the child: keep it alive.
	runtime.LockOSThread()
	conn, err := fuseconn.Open()
	if err != nil {
		return err
	}
	defer conn.Close()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	k := &keeper{exe: exe, args: args, conn: conn}
	return k.run(sigs)
}

type keeper struct {
	exe  string
	args []string
	conn *os.File

	restarts  int
	served    bool // a server has served: the connection is mounted
	detaching bool // a SIGINT or SIGTERM came: the server is to detach
}

// server is a running child.
type server struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd.Wait returned
	err    error
	ready  chan struct{} // closed once it serves
}

func (k *keeper) run(sigs <-chan os.Signal) error {
	srv, err := k.start(k.exe, New)
	if err != nil {
		return err
	}
	var (
		backoff  = 100 * time.Millisecond
		handing  bool             // a handover was asked of srv
		deadline <-chan time.Time // of a handover, or of a new server's readiness
		started  = time.Now()
	)
	deadline = time.After(ReadyTimeout)
	for {
		select {
		case sig := <-sigs:
			switch {
			case sig != syscall.SIGHUP:
				k.detaching = true
				srv.signal(syscall.SIGTERM)
			case handing || k.detaching:
			case !k.served:
				klog.InfoS("Handover refused: the volume is not served yet")
			default:
				if err := preflight(k.exe); err != nil {
					klog.ErrorS(err, "Handover refused: the binary on disk does not run; the server goes on", "exe", k.exe)
					continue
				}
				klog.InfoS("Handing the volume over to a new server", "exe", k.exe, "pid", srv.cmd.Process.Pid)
				handing = true
				deadline = time.After(StopTimeout)
				srv.signal(syscall.SIGHUP)
			}
			continue
		case <-srv.ready:
			srv.ready = nil
			k.served, deadline = true, nil
			if k.detaching { // asked while it was starting
				srv.signal(syscall.SIGTERM)
			}
			continue
		case <-deadline:
			if handing {
				klog.InfoS("The server did not stop for the handover in time: killing it", "pid", srv.cmd.Process.Pid)
			} else {
				klog.InfoS("The new server is not serving in time: killing it", "pid", srv.cmd.Process.Pid)
			}
			srv.cmd.Process.Kill()
			deadline = nil
			continue
		case <-srv.exited:
		}
		// The server is gone, and every thread of it: nothing reads the
		// connection now.
		code := srv.cmd.ProcessState.ExitCode()
		wasReady := srv.ready == nil
		if !wasReady {
			select {
			case <-srv.ready: // it served, and exited before we saw it
				wasReady, k.served = true, true
			default:
			}
		}
		switch {
		case !k.served:
			return fmt.Errorf("the server exited before serving: %v", srv.err)
		case code == 0 && k.detaching:
			return nil
		case code == 0:
			return errors.New("the server exited without a detach")
		}
		start := Crash
		if handing && code == ExitHandedOver {
			start = Handover
		} else {
			klog.InfoS("The server died; starting another", "pid", srv.cmd.Process.Pid, "state", srv.cmd.ProcessState.String())
		}
		exe := k.exe
		if !wasReady && !handing {
			// The new binary did not come up: go back to the one this
			// keeper runs (still there as /proc/self/exe if replaced).
			exe = "/proc/self/exe"
			time.Sleep(backoff) // a crash loop must not spin
			backoff = min(2*backoff, 5*time.Second)
		} else if time.Since(started) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		handing = false
		k.restarts++
		if srv, err = k.start(exe, start); err != nil {
			return err
		}
		started, deadline = time.Now(), time.After(ReadyTimeout)
	}
}

// start starts a server from exe.
func (k *keeper) start(exe string, start Start) (*server, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer w.Close()
	cmd := exec.Command(exe, k.args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{k.conn, w} // fds 3 and 4
	cmd.Env = append(os.Environ(),
		envConn+"=3", envReady+"=4", envStart+"="+string(start),
		envRestarts+"="+strconv.Itoa(k.restarts))
	// Its own process group, so a terminal's ^C reaches the keeper only;
	// if the keeper dies, the server detaches as for SIGTERM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		r.Close()
		return nil, fmt.Errorf("starting the server: %w", err)
	}
	s := &server{cmd: cmd, exited: make(chan struct{}), ready: make(chan struct{})}
	go func() {
		defer r.Close()
		var b [1]byte
		if n, _ := r.Read(b[:]); n == 1 {
			close(s.ready)
		}
	}()
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()
	klog.V(2).InfoS("Started a server", "pid", cmd.Process.Pid, "start", start, "exe", exe)
	return s, nil
}

func (s *server) signal(sig os.Signal) {
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		klog.ErrorS(err, "Signalling the server", "pid", s.cmd.Process.Pid)
	}
}

// preflight checks that exe runs at all before the server is stopped for
// it.
func preflight(exe string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "help")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s help: %w: %.200s", exe, err, out)
	}
	return nil
}
