// Package holder keeps copies of the node plugin's FUSE connections in a
// process of their own (the holder container of the node pod), so that
// when the plugin dies (kill -9, OOM, a panic) the kernel aborts none of
// them: requests wait, and the restarted plugin takes them back and serves
// them again (volume.ResumeCrash).
//
// The plugin talks to the holder over a unix socket (fdpass messages):
//
//	plugin -> holder  'P' name + file   keep this connection of volume name
//	                  'D' name          forget it (the volume is unstaged)
//	                  'S' ""            the volumes went to a successor
//	holder -> plugin  'H' name + file   one per connection kept, at connect
//	                  'E' ""            end of that list; or
//	                  'E' "succeeded"   ... and this pod's plugin handed its
//	                                    volumes to a successor: it must not
//	                                    serve again
//	                  'R' reason        refused (another plugin is connected)
//
// One plugin is the owner at a time. When its connection ends (the process
// exited: all its threads are gone, so none still reads a request), the
// next plugin may connect. That one has the requests the dead plugin had
// read and not answered queued again, volume by volume, once it holds the
// volume's lock (internal/attach): only then does it know that no other
// process serves the volume.
//
// The holder never opens a mount or a loop device: a process that holds
// the last copy of a connection and a file on it hangs in its own exit.
package holder

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/jvol-io/jvol/internal/fdpass"
)

// Message types.
const (
	msgPut       = 'P'
	msgDrop      = 'D'
	msgSucceeded = 'S'
	msgHeld      = 'H'
	msgEnd       = 'E'
	msgRefused   = 'R'
)

const succeeded = "succeeded"

// OwnerTimeout bounds how long a plugin that connects waits for the one
// before it to be gone.
const OwnerTimeout = 10 * time.Second

// Holder keeps connections for one plugin at a time.
type Holder struct {
	ownerTimeout time.Duration
	waiting      func() // if set, called each time a plugin starts waiting for the owner (tests)

	mu        sync.Mutex
	held      map[string]*os.File
	succeeded bool
	owner     chan struct{} // closed when the current owner is gone; nil: none
}

// New returns an empty holder.
func New() *Holder {
	return &Holder{ownerTimeout: OwnerTimeout, held: map[string]*os.File{}}
}

// Serve accepts plugins on l until ctx ends.
func (h *Holder) Serve(ctx context.Context, l *fdpass.Listener) error {
	_, err := l.Serve(ctx, func(c *net.UnixConn) bool {
		go h.serve(c)
		return false
	})
	return err
}

func (h *Holder) serve(c *net.UnixConn) {
	defer c.Close()
	gone, err := h.own()
	if err != nil {
		fdpass.Send(c, fdpass.Msg{Type: msgRefused, Name: err.Error()})
		klog.ErrorS(err, "Refused a plugin")
		return
	}
	defer h.disown(gone)
	if err := h.sendHeld(c); err != nil {
		klog.ErrorS(err, "Sending the connections held")
		return
	}
	klog.InfoS("A plugin owns the connections", "held", h.count())
	for {
		m, err := fdpass.Recv(c)
		if err != nil {
			if !errors.Is(err, fdpass.ErrBadMessage) {
				return // the plugin is gone
			}
			klog.ErrorS(err, "Ignored a message")
			continue
		}
		h.apply(m)
	}
}

// own makes the caller the owner once the one before is gone.
func (h *Holder) own() (chan struct{}, error) {
	deadline := time.NewTimer(h.ownerTimeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		prev := h.owner
		if prev == nil {
			h.owner = make(chan struct{})
			gone := h.owner
			h.mu.Unlock()
			return gone, nil
		}
		h.mu.Unlock()
		if h.waiting != nil {
			h.waiting()
		}
		select {
		case <-prev:
		case <-deadline.C:
			return nil, fmt.Errorf("holder: another plugin still owns the connections after %v", h.ownerTimeout)
		}
	}
}

// disown ends an ownership: what it held waits for the next owner.
func (h *Holder) disown(gone chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.held) > 0 {
		klog.InfoS("The plugin is gone; its requests wait for the next", "held", len(h.held))
	}
	h.owner = nil
	close(gone)
}

func (h *Holder) sendHeld(c *net.UnixConn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, f := range h.held {
		if err := fdpass.Send(c, fdpass.Msg{Type: msgHeld, Name: name, File: f}); err != nil {
			return err
		}
	}
	end := ""
	if h.succeeded {
		end = succeeded
	}
	return fdpass.Send(c, fdpass.Msg{Type: msgEnd, Name: end})
}

func (h *Holder) apply(m fdpass.Msg) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case m.Type == msgPut && m.File != nil:
		if old := h.held[m.Name]; old != nil {
			old.Close()
		}
		h.held[m.Name] = m.File
		klog.V(2).InfoS("Holding a connection", "volume", m.Name)
		return
	case m.Type == msgDrop:
		if f := h.held[m.Name]; f != nil {
			f.Close()
			delete(h.held, m.Name)
			klog.V(2).InfoS("Dropped a connection", "volume", m.Name)
		}
	case m.Type == msgSucceeded:
		h.succeeded = true
		klog.InfoS("The plugin handed its volumes to a successor")
	default:
		klog.ErrorS(fdpass.ErrBadMessage, "Ignored a message", "type", string(m.Type))
	}
	if m.File != nil {
		m.File.Close()
	}
}

// WaitUnowned returns once no plugin owns the connections.
func (h *Holder) WaitUnowned() {
	for {
		h.mu.Lock()
		owner := h.owner
		h.mu.Unlock()
		if owner == nil {
			return
		}
		<-owner
	}
}

func (h *Holder) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

// Client is a plugin's side.
type Client struct {
	c  *net.UnixConn
	mu sync.Mutex
	// Held are the connections the holder kept, by volume, when the
	// plugin connected: the volumes a plugin before served.
	Held map[string]*os.File
	// Succeeded says that this pod's plugin handed its volumes to a
	// successor: it must not serve any.
	Succeeded bool
}

// Dial connects to the holder at path, retrying until ctx ends (the holder
// may start after the plugin), and receives what it holds; a holder that
// does not answer is given up when ctx ends.
func Dial(ctx context.Context, path string) (*Client, error) {
	for {
		c, err := fdpass.Dial(path)
		if err == nil {
			fired := make(chan struct{})
			stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()); close(fired) })
			cl, err := receive(c)
			if !stop() {
				<-fired
				if err != nil {
					return nil, fmt.Errorf("holder at %s gave no answer: %w", path, context.Cause(ctx))
				}
				c.SetReadDeadline(time.Time{})
			}
			return cl, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("holder at %s: %w", path, err)
		case <-time.After(200 * time.Millisecond): // a back-off between tries
		}
	}
}

func receive(c *net.UnixConn) (*Client, error) {
	cl := &Client{c: c, Held: map[string]*os.File{}}
	for {
		m, err := fdpass.Recv(c)
		if err != nil {
			for _, f := range cl.Held {
				f.Close()
			}
			cl.Close()
			return nil, fmt.Errorf("holder: %w", err)
		}
		switch m.Type {
		case msgHeld:
			cl.Held[m.Name] = m.File
			continue
		case msgEnd:
			cl.Succeeded = m.Name == succeeded
			return cl, nil
		case msgRefused:
			cl.Close()
			return nil, fmt.Errorf("holder refused: %s", m.Name)
		}
		if m.File != nil {
			m.File.Close()
		}
	}
}

// Put has the holder keep a copy of conn, volume name's connection.
func (cl *Client) Put(name string, conn *os.File) error {
	return cl.send(fdpass.Msg{Type: msgPut, Name: name, File: conn})
}

// Drop has the holder close its copy of volume name's connection.
func (cl *Client) Drop(name string) error { return cl.send(fdpass.Msg{Type: msgDrop, Name: name}) }

// Succeeded records that the volumes went to a successor.
func (cl *Client) MarkSucceeded() error { return cl.send(fdpass.Msg{Type: msgSucceeded}) }

func (cl *Client) send(m fdpass.Msg) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if err := fdpass.Send(cl.c, m); err != nil {
		return fmt.Errorf("holder: %w", err)
	}
	return nil
}

// Done returns a channel closed when the holder is gone.
func (cl *Client) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var b [1]byte
		for {
			if _, err := cl.c.Read(b[:]); err != nil {
				return
			}
		}
	}()
	return done
}

// Close closes the connection to the holder; Held stays the caller's.
func (cl *Client) Close() error { return cl.c.Close() }
