package driver

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/fdpass"
	"github.com/jvol-io/jvol/internal/holder"
	"github.com/jvol-io/jvol/internal/host"
)

// heldRecorder records what keepHolder tells the volumes.
type heldRecorder struct {
	gone atomic.Int32
	set  chan host.Holder
}

func (r *heldRecorder) HolderGone()             { r.gone.Add(1) }
func (r *heldRecorder) SetHolder(h host.Holder) { r.set <- h }
func (r *heldRecorder) Served() int             { return 0 }

// A holder that dies is followed by one that refuses the plugin (as one
// still owned by another would) and then by one that takes it: the plugin
// keeps trying until a holder keeps its connections again.
func TestKeepHolderTriesAgainUntilAHolderTakesThePlugin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "holder.sock")
	l, err := fdpass.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// The holder's answers, by connection, as holder.go documents them:
	// 'E' ends the list of held connections, 'R' refuses.
	conns := make(chan *net.UnixConn, 3)
	n := 0
	go l.Serve(t.Context(), func(c *net.UnixConn) bool {
		n++
		answer := byte('E')
		if n == 2 {
			answer = 'R'
		}
		fdpass.Send(c, fdpass.Msg{Type: answer, Name: "the test's holder"})
		conns <- c
		return n == 3
	})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	first, err := holder.Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Pointer[holder.Client]
	now.Store(first)
	rec := &heldRecorder{set: make(chan host.Holder)}
	done := make(chan struct{})
	go func() { keepHolder(ctx, path, &now, rec); close(done) }()

	(<-conns).Close() // the first holder dies
	select {
	case h := <-rec.set:
		if h == host.Holder(first) {
			t.Error("the volumes were given the dead holder again")
		}
	case <-done:
		t.Fatal("keepHolder gave up after a refusal")
	case <-ctx.Done():
		t.Fatal("no holder was taken again")
	}
	if n := rec.gone.Load(); n != 1 {
		t.Errorf("HolderGone was told %d times, want 1", n)
	}
	cancel()
	<-done
}
