package succession

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jvol-io/jvol/internal/fdpass"
)

// plugin is a Giver whose connections are pipes; what happens to them is
// sent on log.
type plugin struct {
	mu      sync.Mutex
	served  map[string]*os.File
	retired bool
	log     chan string
}

func newPlugin(t *testing.T, names ...string) *plugin {
	p := &plugin{served: map[string]*os.File{}, log: make(chan string, 16)}
	for _, n := range names {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.Close()
		p.served[n] = r
		t.Cleanup(func() { r.Close() })
	}
	return p
}

func (p *plugin) Retire() []string {
	p.mu.Lock()
	p.retired = true
	p.mu.Unlock()
	_, names := p.state()
	return names
}

func (p *plugin) Unretire() {
	p.mu.Lock()
	p.retired = false
	p.mu.Unlock()
	p.log <- "unretired"
}

// state returns whether p is retired and the volumes it serves.
func (p *plugin) state() (bool, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for n := range p.served {
		names = append(names, n)
	}
	slices.Sort(names)
	return p.retired, names
}

func (p *plugin) Give(name string) (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.served[name]
	delete(p.served, name)
	return f, nil
}

func (p *plugin) Given(name string, conn *os.File) { p.log <- "given " + name }

func (p *plugin) Adopt(name string, conn *os.File, clean bool) error {
	p.mu.Lock()
	p.served[name] = conn
	p.mu.Unlock()
	if !clean {
		name += " as after a crash"
	}
	p.log <- "served again " + name
	return nil
}

// serve runs Serve for p on a socket in a temporary directory and returns
// its path and what Serve returns, once it does.
func serve(t *testing.T, p *plugin) (string, <-chan bool) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "succession.sock")
	l, err := fdpass.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		ok, err := Serve(ctx, l, p)
		if err != nil {
			t.Error(err)
		}
		done <- ok
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return path, done
}

// takeFirst asks the plugin at path to hand over and returns the
// connection and the first volume it sends, whose file it closes.
func takeFirst(t *testing.T, path string) (*net.UnixConn, fdpass.Msg) {
	t.Helper()
	c, err := fdpass.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := fdpass.Send(c, fdpass.Msg{Type: msgTake}); err != nil {
		t.Fatal(err)
	}
	m, err := fdpass.Recv(c)
	if err != nil || m.Type != msgVolume || m.File == nil {
		t.Fatalf("received %+v, %v", m, err)
	}
	m.File.Close()
	return c, m
}

func next(t *testing.T, p *plugin, want string) {
	t.Helper()
	if got := <-p.log; got != want {
		t.Fatalf("the plugin: %q, want %q", got, want)
	}
}

func TestASuccessorTakesEveryVolume(t *testing.T) {
	p := newPlugin(t, "a", "b")
	path, done := serve(t, p)
	taken, err := Take(path, func(name string, conn *os.File) error { return conn.Close() })
	if err != nil || !slices.Equal(taken, []string{"a", "b"}) {
		t.Fatalf("took %v: %v", taken, err)
	}
	next(t, p, "given a")
	next(t, p, "given b")
	ok := <-done
	if retired, served := p.state(); !ok || !retired || len(served) != 0 {
		t.Errorf("the plugin after the handover: Serve %v, retired %v, serving %v", ok, retired, served)
	}
}

// A successor that cannot serve a volume leaves it, and those after it,
// with the plugin, which serves on and takes the next successor.
func TestAVolumeTheSuccessorCannotServeStaysWithThePlugin(t *testing.T) {
	p := newPlugin(t, "a", "b", "c")
	path, done := serve(t, p)
	taken, err := Take(path, func(name string, conn *os.File) error {
		if name == "b" {
			return errors.New("no room")
		}
		return conn.Close()
	})
	if err == nil || !slices.Equal(taken, []string{"a"}) {
		t.Fatalf("took %v: %v; want a, then an error", taken, err)
	}
	next(t, p, "given a")
	next(t, p, "served again b")
	next(t, p, "unretired")
	if retired, served := p.state(); retired || !slices.Equal(served, []string{"b", "c"}) {
		t.Errorf("the plugin after a failed handover: retired %v, serving %v", retired, served)
	}
	taken, err = Take(path, func(name string, conn *os.File) error { return conn.Close() })
	if err != nil || !slices.Equal(taken, []string{"b", "c"}) {
		t.Fatalf("the next successor took %v: %v", taken, err)
	}
	next(t, p, "given b")
	next(t, p, "given c")
	if !<-done {
		t.Error("Serve did not report the handover")
	}
}

// A successor that takes a volume and never answers: the plugin serves it
// again after AcceptTimeout.
func TestASilentSuccessorTimesOut(t *testing.T) {
	defer func(d time.Duration) { AcceptTimeout = d }(AcceptTimeout)
	AcceptTimeout = 100 * time.Millisecond
	p := newPlugin(t, "a")
	path, _ := serve(t, p)
	c, _ := takeFirst(t, path)
	defer c.Close()
	start := time.Now()
	next(t, p, "served again a")
	next(t, p, "unretired")
	if d := time.Since(start); d > 10*AcceptTimeout {
		t.Errorf("served again after %v", d)
	}
	if m, err := fdpass.Recv(c); err != nil || m.Type != msgEnd || m.Name == "" {
		t.Errorf("then received %+v, %v; want an end with the reason", m, err)
	}
}

// A successor that could not serve a volume asks again until the plugin
// has handed every volume over.
func TestTakeAllAsksAgainAfterAFailedHandover(t *testing.T) {
	defer func(d time.Duration) { Retry = d }(Retry)
	Retry = time.Millisecond
	p := newPlugin(t, "a", "b", "c")
	path, done := serve(t, p)
	refusals := 2
	taken, err := TakeAll(context.Background(), path, func(name string, conn *os.File) error {
		if name == "b" && refusals > 0 {
			refusals--
			return errors.New("no room yet")
		}
		return conn.Close()
	})
	if err != nil || !slices.Equal(taken, []string{"a", "b", "c"}) {
		t.Fatalf("took %v: %v; want a, b and c", taken, err)
	}
	for _, want := range []string{"given a", "served again b", "unretired", "served again b", "unretired", "given b", "given c"} {
		next(t, p, want)
	}
	if !<-done {
		t.Error("Serve did not report the handover")
	}
}

// With no plugin before, or once it has stopped, there is nothing to ask.
func TestTakeAllWithNoPluginBefore(t *testing.T) {
	taken, err := TakeAll(context.Background(), filepath.Join(t.TempDir(), "succession.sock"), func(string, *os.File) error {
		t.Error("adopt called with no plugin before")
		return nil
	})
	if err != nil || len(taken) != 0 {
		t.Errorf("took %v: %v", taken, err)
	}
}

// A successor told to stop while the plugin refuses stops asking.
func TestTakeAllEndsWithItsContext(t *testing.T) {
	defer func(d time.Duration) { Retry = d }(Retry)
	Retry = time.Millisecond
	p := newPlugin(t, "a")
	path, _ := serve(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	asked := 0
	taken, err := TakeAll(ctx, path, func(name string, conn *os.File) error {
		if asked++; asked == 3 {
			cancel()
		}
		return errors.New("never")
	})
	if !errors.Is(err, context.Canceled) || len(taken) != 0 || asked != 3 {
		t.Errorf("took %v after %d asks: %v; want nothing after 3, and the context's end", taken, asked, err)
	}
	if retired, served := p.state(); retired || !slices.Equal(served, []string{"a"}) {
		t.Errorf("the plugin: retired %v, serving %v; want it serving a", retired, served)
	}
}

// A successor that dies holding a volume's connection, unanswered: the
// plugin serves it again as after a crash (it may have read requests).
func TestASuccessorGoneWithAVolume(t *testing.T) {
	p := newPlugin(t, "a", "b")
	path, _ := serve(t, p)
	c, m := takeFirst(t, path)
	if m.Name != "a" {
		t.Fatalf("the first volume sent is %q, want a", m.Name)
	}
	c.Close()
	next(t, p, "served again a as after a crash")
	next(t, p, "unretired")
	if retired, served := p.state(); retired || !slices.Equal(served, []string{"a", "b"}) {
		t.Errorf("the plugin: retired %v, serving %v; want it serving a and b", retired, served)
	}
}

// A successor that answers with a message the plugin cannot read is alive
// (it may be serving the volume): not taken for dead.
func TestAGarbledAnswerIsNoDeath(t *testing.T) {
	p := newPlugin(t, "a")
	path, _ := serve(t, p)
	c, _ := takeFirst(t, path)
	defer c.Close()
	if _, err := c.Write([]byte("garbled")); err != nil {
		t.Fatal(err)
	}
	next(t, p, "served again a")
	next(t, p, "unretired")
}
