// Package succession hands a node's volumes from a node plugin to the one
// that replaces it (a new pod of the DaemonSet, started beside the old one:
// maxSurge), with no I/O error: the old plugin stops serving a volume
// cleanly and passes its FUSE connection over a unix socket in the state
// directory; the new one serves it from there on. Block devices and mounts
// stay as they are.
//
// The messages (fdpass), on a connection the successor opens:
//
//	successor -> plugin  'T' ""            take over every volume
//	plugin -> successor  'V' name + file   a volume, no longer served
//	successor -> plugin  'A' name          served from now on
//	                     'F' reason        could not serve it: serve it again
//	plugin -> successor  'E' ""            all given; or
//	                     'E' reason        stopped early (the reason): the
//	                                       rest stay with the plugin
//
// A volume is served by one of the two at every moment, never both: the
// plugin stops its server (every request answered, none read) before it
// sends the connection. If the successor does not answer within
// AcceptTimeout, or goes away, the plugin serves the volume again itself
// and stops handing over; the successor asks again later (TakeAll). Only
// one of them can open the volume (its directory's lock); one that went
// away with the connection had it as after a crash.
package succession

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/fdpass"
)

const (
	msgTake     = 'T'
	msgVolume   = 'V'
	msgAccepted = 'A'
	msgFailed   = 'F'
	msgEnd      = 'E'
)

// AcceptTimeout bounds how long the plugin waits for the successor to
// serve one volume.
var AcceptTimeout = 20 * time.Second

// Giver is the plugin's side: host.Volumes.
type Giver interface {
	// Retire refuses every later change and returns the volumes served.
	Retire() []string
	Unretire()
	// Give stops serving a volume and returns its connection.
	Give(name string) (*os.File, error)
	// Given: the successor serves it now.
	Given(name string, conn *os.File)
	// Adopt serves it again (the successor did not). Not clean: the
	// successor died with it, so the requests it read are to be queued
	// again and the volume opened as after a crash.
	Adopt(name string, conn *os.File, clean bool) error
}

// Serve answers successors on l until ctx ends or one took every volume;
// it returns true in that case.
func Serve(ctx context.Context, l *fdpass.Listener, g Giver) (bool, error) {
	return l.Serve(ctx, func(c *net.UnixConn) bool {
		defer c.Close()
		if err := give(c, g); err != nil {
			klog.ErrorS(err, "Handing the volumes to a successor failed; serving them on")
			return false
		}
		return true
	})
}

func give(c *net.UnixConn, g Giver) error {
	c.SetReadDeadline(time.Now().Add(AcceptTimeout))
	m, err := fdpass.Recv(c)
	if err != nil {
		return err
	}
	if m.File != nil {
		m.File.Close()
	}
	if m.Type != msgTake {
		return fmt.Errorf("succession: want a take, got %q", m.Type)
	}
	names := g.Retire()
	klog.InfoS("A successor takes the volumes over", "volumes", len(names))
	for _, name := range names {
		if err := giveOne(c, g, name); err != nil {
			g.Unretire()
			fdpass.Send(c, fdpass.Msg{Type: msgEnd, Name: err.Error()})
			return err
		}
	}
	return fdpass.Send(c, fdpass.Msg{Type: msgEnd})
}

func giveOne(c *net.UnixConn, g Giver, name string) error {
	start := time.Now()
	conn, err := g.Give(name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, err)
	}
	err = fdpass.Send(c, fdpass.Msg{Type: msgVolume, Name: name, File: conn})
	var m fdpass.Msg
	gone := false
	if err == nil {
		c.SetReadDeadline(time.Now().Add(AcceptTimeout))
		m, err = fdpass.Recv(c)
		// The successor's end closed with no answer: it died holding the
		// connection, and may have read requests it never answered and
		// written part of what they asked.
		gone = errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	}
	if err == nil && (m.Type != msgAccepted || m.Name != name) {
		err = fmt.Errorf("the successor did not serve it: %s", m.Name)
	}
	if err != nil {
		if aerr := g.Adopt(name, conn, !gone); aerr != nil {
			err = errors.Join(err, fmt.Errorf("serving it again: %w", aerr))
		}
		return fmt.Errorf("volume %s: %w", name, err)
	}
	g.Given(name, conn)
	klog.InfoS("Handed a volume to the successor", "volume", name, "took", time.Since(start))
	return nil
}

// Take asks the plugin at path (if one listens there) for its volumes and
// calls adopt for each; the connection is adopt's to keep if it returns
// nil. It returns the volumes taken; none, with no error, if no plugin
// listens.
func Take(path string, adopt func(name string, conn *os.File) error) ([]string, error) {
	c, err := fdpass.Dial(path)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unixRefused) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("succession: %w", err)
	}
	defer c.Close()
	if err := fdpass.Send(c, fdpass.Msg{Type: msgTake}); err != nil {
		return nil, fmt.Errorf("succession: %w", err)
	}
	var taken []string
	for {
		m, err := fdpass.Recv(c)
		if err != nil {
			return taken, fmt.Errorf("succession: %w", err)
		}
		switch {
		case m.Type == msgEnd && m.Name == "":
			return taken, nil
		case m.Type == msgEnd:
			return taken, fmt.Errorf("succession: the plugin stopped handing over: %s", m.Name)
		case m.Type == msgVolume && m.File != nil:
			if err := adopt(m.Name, m.File); err != nil {
				m.File.Close()
				klog.ErrorS(err, "Could not serve a volume handed over; the plugin before serves it again", "volume", m.Name)
				fdpass.Send(c, fdpass.Msg{Type: msgFailed, Name: err.Error()})
				continue
			}
			taken = append(taken, m.Name)
			if err := fdpass.Send(c, fdpass.Msg{Type: msgAccepted, Name: m.Name}); err != nil {
				return taken, fmt.Errorf("succession: %w", err)
			}
		default:
			if m.File != nil {
				m.File.Close()
			}
			return taken, fmt.Errorf("succession: unexpected message %q", m.Type)
		}
	}
}

// Retry is how long TakeAll waits before it asks the plugin before again;
// the wait doubles after each failed handover, up to maxRetry.
var Retry = time.Second

const maxRetry = 30 * time.Second

// TakeAll is Take until the plugin at path has handed over every volume
// it serves. A handover that fails part way (a volume this process could
// not serve, the plugin before timing out) leaves the rest with that
// plugin, which serves on: TakeAll asks it again, waiting longer each
// time, until it has no volume left, no plugin listens at path (it
// stopped: its volumes are served anew) or ctx ends. It returns every
// volume taken, and ctx's error if it ended first. The path is the plugin
// before's until TakeAll returns: the caller does not listen there (nor
// anywhere the plugin before does) sooner.
func TakeAll(ctx context.Context, path string, adopt func(name string, conn *os.File) error) ([]string, error) {
	var all []string
	wait := Retry
	for {
		taken, err := Take(path, adopt)
		all = append(all, taken...)
		if err == nil {
			return all, nil
		}
		if ctx.Err() != nil { // told to stop meanwhile: no later ask
			return all, ctx.Err()
		}
		klog.ErrorS(err, "Taking the volumes from the plugin before failed; it serves on, and will be asked again", "taken", len(taken), "in", wait)
		select {
		case <-ctx.Done():
			return all, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, maxRetry)
	}
}

// unixRefused: a socket file with no listener (the plugin that bound it
// is gone).
var unixRefused = syscall.ECONNREFUSED
