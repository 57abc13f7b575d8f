package holder

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/fdpass"
)

// rig is a holder on a socket.
type rig struct {
	path string
	h    *Holder

	waiting chan struct{} // a plugin waits for the owner
}

func newRig(t *testing.T, ownerTimeout time.Duration) *rig {
	t.Helper()
	r := &rig{path: filepath.Join(t.TempDir(), "holder.sock"), waiting: make(chan struct{}, 1)}
	r.h = New()
	r.h.ownerTimeout = ownerTimeout
	r.h.waiting = func() {
		select {
		case r.waiting <- struct{}{}:
		default:
		}
	}
	l, err := fdpass.Listen(r.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.h.Serve(ctx, l); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

func (r *rig) dial(t *testing.T) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, r.path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAPluginGoneTheNextGetsTheConnections: the next plugin gets the
// connections only once the plugin that owned them is gone, and what was
// kept (not what was dropped); a plugin that handed over is told so after
// a restart.
func TestAPluginGoneTheNextGetsTheConnections(t *testing.T) {
	r := newRig(t, OwnerTimeout)
	a := r.dial(t)
	if len(a.Held) != 0 || a.Succeeded {
		t.Fatalf("a new holder holds %v, succeeded %v", a.Held, a.Succeeded)
	}
	for _, name := range []string{"pvc-a", "pvc-b"} {
		rd, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		rd.Close()
		if err := a.Put(name, w); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
	if err := a.Drop("pvc-b"); err != nil {
		t.Fatal(err)
	}
	// The next plugin waits for the owner to be gone: only then does it
	// get the connections.
	next := make(chan *Client, 1)
	dialErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, r.path)
		dialErr <- err
		next <- c
	}()
	<-r.waiting // the next plugin is connected and waits for the owner
	select {
	case err := <-dialErr:
		t.Fatalf("the next plugin got the connections while the owner lives (%v)", err)
	default:
	}
	a.Close()
	if err := <-dialErr; err != nil {
		t.Fatal(err)
	}
	b := <-next
	if len(b.Held) != 1 || b.Held["pvc-a"] == nil {
		t.Fatalf("the next plugin got %v, want pvc-a only", b.Held)
	}
	for _, f := range b.Held {
		f.Close()
	}
	if err := b.MarkSucceeded(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	c := r.dial(t)
	defer c.Close()
	if !c.Succeeded {
		t.Fatal("a restarted plugin of a pod that handed over is not told so")
	}
}

// TestASecondPluginIsRefusedWhileTheFirstLives: two plugins never own the
// connections at once.
func TestASecondPluginIsRefusedWhileTheFirstLives(t *testing.T) {
	r := newRig(t, 100*time.Millisecond)
	a := r.dial(t)
	defer a.Close()
	c, err := fdpass.Dial(r.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := receive(c); err == nil || !strings.Contains(err.Error(), "holder refused") {
		t.Fatalf("a second plugin: %v, want the holder's refusal", err)
	}
}

// A holder that takes the connection and never answers (stopped, say) is
// given up when the plugin's context ends, not waited for for ever.
func TestDialGivesUpOnAHolderThatDoesNotAnswer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "holder.sock")
	l, err := fdpass.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan *net.UnixConn, 1)
	go l.Serve(t.Context(), func(c *net.UnixConn) bool { accepted <- c; return true })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := Dial(ctx, path)
		done <- err
	}()
	c := <-accepted
	defer c.Close()
	cancel()
	if err := <-done; err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("Dial of a holder that does not answer: %v, want the context's end", err)
	}
}
