// Package test holds end-to-end tests that drive the jvol binary as a user
// would: real loop devices, FUSE, file systems and kill -9. They need root
// (CI runs as root).
package test

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/host"
	"github.com/jvol-io/jvol/internal/loop"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
)

var jvolBin string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("skipping end-to-end tests: they need root")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "jvol-e2e-bin-")
	if err != nil {
		panic(err)
	}
	jvolBin = filepath.Join(dir, "jvol")
	build := exec.Command("go", "build", "-race", "-o", jvolBin, "../cmd/jvol")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// attached is a running `jvol attach`.
type attached struct {
	cmd     *exec.Cmd
	device  string
	mount   string
	metrics string // with --metrics-address: where
	stderr  *syncBuffer
	extra   chan string // what stdout said after the ready lines
}

// syncBuffer is a bytes.Buffer safe to read while a process writes to it;
// waitFor blocks until it contains a string.
type syncBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
	return s.b.Write(p)
}

// waitFor returns whether the buffer came to contain want within d.
func (s *syncBuffer) waitFor(want string, d time.Duration) bool {
	timeout := time.After(d)
	for {
		s.mu.Lock()
		if strings.Contains(s.b.String(), want) {
			s.mu.Unlock()
			return true
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timeout:
			return false
		}
	}
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// attach starts `jvol attach` with args and waits for its device line
// (and mount line, with --mount; and metrics line first, with
// --metrics-address).
func attach(t *testing.T, args ...string) *attached {
	t.Helper()
	return attachUnder(t, nil, args...)
}

// attachUnder is attach run by the command prefix (such as unshare).
func attachUnder(t *testing.T, prefix []string, args ...string) *attached {
	t.Helper()
	argv := append(append(slices.Clone(prefix), jvolBin, "attach"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	a := &attached{cmd: cmd, stderr: &syncBuffer{}}
	cmd.Stderr = a.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
	})
	want := 1
	for _, arg := range args {
		switch arg {
		case "--mount", "--metrics-address":
			want++
		}
	}
	sc := bufio.NewScanner(out)
	for i := 0; i < want; i++ {
		if !sc.Scan() {
			cmd.Wait()
			t.Fatalf("attach %v exited before it was ready: %s", args, a.stderr)
		}
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "device":
			a.device = v
		case "mount":
			a.mount = v
		case "metrics":
			a.metrics = v
		default:
			t.Fatalf("unexpected line %q", sc.Text())
		}
	}
	a.extra = make(chan string, 1)
	go func() {
		var more strings.Builder
		for sc.Scan() {
			more.WriteString(sc.Text() + "\n")
		}
		a.extra <- more.String()
	}()
	return a
}

// stop sends SIGTERM and expects a clean exit.
func (a *attached) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("attach did not exit cleanly: %v\n%s", err, a.stderr)
	}
	if more := <-a.extra; more != "" {
		t.Fatalf("attach printed more than its contract allows: %q", more)
	}
}

// kill kills the attach process with SIGKILL: with --keeper=false, the
// process that serves the device (with a keeper, its server detaches).
func (a *attached) kill(t *testing.T) {
	t.Helper()
	a.cmd.Process.Kill()
	a.cmd.Wait()
}

// verify checks the device against the model (every fsync-acknowledged
// write there).
func verify(t *testing.T, m *faultfs.SectorModel, dev string) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bad, err := m.Check(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%d sectors lost acknowledged data, the first %d", len(bad), bad[0])
	}
}

// TestKill9DuringWritesLosesNoAcknowledgedWrite kills the attach process
// with SIGKILL in the middle of random writes and fsyncs, attaches again,
// and checks that every write acknowledged by a completed fsync is there.
// The second attach also proves that the dead one's FUSE mount and loop
// device are cleaned up.
func TestKill9DuringWritesLosesNoAcknowledgedWrite(t *testing.T) {
	requireRoot(t)
	const size = 64 << 20
	dir := filepath.Join(t.TempDir(), "vol")
	model := faultfs.NewSectorModel(size)
	rng := rand.New(rand.NewPCG(21, 22))
	buf := vfs.AlignedBuffer(256 << 10)
	for round := range 4 {
		args := []string{"--dir", dir, "--commit-interval", "200ms", "--keeper=false"}
		if round == 0 {
			args = append(args, "--size", "64Mi", "--journal-size", "64Mi", "--fifo-size", "4Mi")
		}
		a := attach(t, args...)
		if round > 0 {
			verify(t, model, a.device)
		}
		f, err := os.OpenFile(a.device, os.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Kill from another goroutine after a random number of writes, so
		// that the kill lands while writes and fsyncs are in flight.
		killAfter := 200 + rng.IntN(800)
		killed := make(chan struct{})
		for i := 0; ; i++ {
			if i == killAfter {
				go func() { a.kill(t); close(killed) }()
			}
			off := rng.Int64N(size/4096) * 4096
			n := min((1+rng.Int64N(64))*4096, size-off)
			p := buf[:n]
			for k := range p {
				p[k] = byte(round*97 + i + k>>9)
			}
			model.Wrote(p, off) // before: a failed write may still have landed
			if _, err := f.WriteAt(p, off); err != nil {
				break // the device is gone
			}
			if rng.IntN(8) == 0 {
				if err := f.Sync(); err != nil {
					break
				}
				model.Synced()
			}
		}
		f.Close()
		<-killed
	}
	a := attach(t, "--dir", dir)
	verify(t, model, a.device)
	a.stop(t)
	leftovers(t, dir)
}

// leftovers fails if a loop device or mount of the volume in dir remains.
func leftovers(t *testing.T, dir string) {
	t.Helper()
	devs, err := loop.Backing(filepath.Join(dir, "fuse", filepath.Base(dir)))
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) > 0 {
		t.Errorf("loop devices left behind: %v", devs)
	}
	noMountsUnder(t, dir)
}

// noMountsUnder fails if anything is mounted at or below dir.
func noMountsUnder(t *testing.T, dir string) {
	t.Helper()
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		t.Errorf("left mounted: %s (%s)", m.Mountpoint, m.FSType)
	}
}

// TestAttachAfterKill9CleansUpItsMountedLeftovers leaves a dead attach with
// a mounted file system, a loop device and a FUSE mount, and checks that the
// next attach clears all three and works.
func TestAttachAfterKill9CleansUpItsMountedLeftovers(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "vol")
	mnt := filepath.Join(t.TempDir(), "mnt")
	a := attach(t, "--dir", dir, "--size", "128Mi", "--fs", "ext4", "--mount", mnt, "--keeper=false")
	if err := os.WriteFile(filepath.Join(mnt, "kept"), []byte("synced"), 0o644); err != nil {
		t.Fatal(err)
	}
	syncfs(t, mnt)
	old := a.device
	a.kill(t)
	if devs, _ := loop.Backing(filepath.Join(dir, "fuse", "vol")); len(devs) != 1 || devs[0] != old {
		t.Fatalf("expected the dead attach's loop device %s to remain, found %v", old, devs)
	}
	b := attach(t, "--dir", dir, "--fs", "ext4", "--mount", mnt)
	got, err := os.ReadFile(filepath.Join(mnt, "kept"))
	if err != nil || string(got) != "synced" {
		t.Fatalf("after the second attach: %q, %v\n%s", got, err, b.stderr)
	}
	if devs, _ := loop.Backing(filepath.Join(dir, "fuse", "vol")); len(devs) != 1 || devs[0] != b.device {
		t.Fatalf("loop devices on the volume: %v, want only %s", devs, b.device)
	}
	b.stop(t)
	leftovers(t, dir)
}

// TestAttachCleansUpWhatADeadMountNamespaceLeft: a node plugin runs in a
// container, its own mount namespace, and its mounts reach the host through
// a shared mount (Bidirectional propagation). When it is killed, its
// namespace goes, and the kernel names the loop device's file relative to a
// FUSE mount that is no longer anywhere ("/vol"), while the host keeps the
// dead FUSE mount and the file system on the loop device. The next attach
// must still find that device, clear it with its mounts, and serve the
// volume with its data.
func TestAttachCleansUpWhatADeadMountNamespaceLeft(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	base := t.TempDir()
	for _, args := range [][]string{{"--bind", base, base}, {"--make-shared", base}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			t.Fatalf("mount %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { unix.Unmount(base, unix.MNT_DETACH) })
	dir, mnt := filepath.Join(base, "vol"), filepath.Join(base, "mnt")
	a := attachUnder(t, []string{"unshare", "--mount", "--propagation", "unchanged"},
		"--dir", dir, "--size", "128Mi", "--fs", "ext4", "--mount", mnt, "--keeper=false")
	if err := os.WriteFile(filepath.Join(mnt, "kept"), []byte("synced"), 0o644); err != nil {
		t.Fatal(err)
	}
	syncfs(t, mnt)
	old := a.device
	a.kill(t)
	if b, err := os.ReadFile("/sys/block/" + filepath.Base(old) + "/loop/backing_file"); err != nil || strings.TrimSpace(string(b)) != "/vol" {
		t.Fatalf("the dead namespace's loop device %s names its file %q (%v), want /vol", old, b, err)
	}
	b := attach(t, "--dir", dir, "--fs", "ext4", "--mount", mnt)
	got, err := os.ReadFile(filepath.Join(mnt, "kept"))
	if err != nil || string(got) != "synced" {
		t.Fatalf("after the second attach: %q, %v\n%s", got, err, b.stderr)
	}
	// The dead namespace's device is detached (its number may be reused).
	if devs, _ := loop.Backing(filepath.Join(dir, "fuse", "vol")); len(devs) != 1 || devs[0] != b.device {
		t.Fatalf("loop devices on the volume: %v, want only %s (the dead one was %s)", devs, b.device, old)
	}
	b.stop(t)
	leftovers(t, dir)
}

func syncfs(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
}

// TestFileSystemsSurviveDetachAndFsck makes ext4 and xfs on a volume,
// writes a tree with fsync, detaches, attaches without mounting, checks the
// file system with its fsck, mounts again and compares the contents.
func TestFileSystemsSurviveDetachAndFsck(t *testing.T) {
	requireRoot(t)
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "vol")
			mnt := filepath.Join(t.TempDir(), "mnt")
			a := attach(t, "--dir", dir, "--size", "320Mi", "--fs", fs, "--mount", mnt)
			tree := writeTree(t, mnt)
			a.stop(t)
			leftovers(t, dir)

			b := attach(t, "--dir", dir)
			check := exec.Command("e2fsck", "-fn", b.device)
			if fs == "xfs" {
				check = exec.Command("xfs_repair", "-n", b.device)
			}
			if out, err := check.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", check, err, out)
			}
			b.stop(t)

			c := attach(t, "--dir", dir, "--fs", fs, "--mount", mnt)
			for name, want := range tree {
				got, err := os.ReadFile(filepath.Join(c.mount, name))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s after reattach: %d bytes, %v; want %d bytes", name, len(got), err, len(want))
				}
			}
			c.stop(t)
			leftovers(t, dir)
		})
	}
}

// writeTree writes directories of files of assorted sizes, each fsynced,
// and returns their contents by path.
func writeTree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(3, 4))
	tree := map[string][]byte{}
	for d := range 5 {
		for f := range 20 {
			name := fmt.Sprintf("d%d/f%d", d, f)
			data := make([]byte, rng.IntN(300<<10))
			for k := range data {
				data[k] = byte(rng.Uint32())
			}
			path := filepath.Join(root, name)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			fh, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fh.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := fh.Sync(); err != nil {
				t.Fatal(err)
			}
			fh.Close()
			tree[name] = data
		}
	}
	return tree
}

// TestDetachWithABusyFileSystemKeepsServing: SIGTERM while a file in the
// mount is open must not pull the device out from under the file system;
// the volume stays attached, and a second SIGTERM once the file is closed
// detaches cleanly.
func TestDetachWithABusyFileSystemKeepsServing(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "vol")
	mnt := filepath.Join(t.TempDir(), "mnt")
	a := attach(t, "--dir", dir, "--size", "128Mi", "--fs", "ext4", "--mount", mnt)
	busy, err := os.Create(filepath.Join(mnt, "busy"))
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if !a.stderr.waitFor("still attached", 30*time.Second) {
		t.Fatalf("no refusal to detach a busy file system:\n%s", a.stderr)
	}
	if _, err := busy.WriteString("still served"); err != nil {
		t.Fatal(err)
	}
	if err := busy.Sync(); err != nil {
		t.Fatalf("the busy file system lost its device: %v", err)
	}
	busy.Close()
	a.stop(t)
	leftovers(t, dir)
}

// TestAttachThroughASymlinkCleansUpAfterKill9: the kernel names loop
// backing files and mounts by their real path; a volume reached through a
// symlinked directory whose name has a space must still find its leftovers.
func TestAttachThroughASymlinkCleansUpAfterKill9(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	if err := os.Mkdir(filepath.Join(base, "real dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "real dir"), filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "link", "vol")
	a := attach(t, "--dir", dir, "--size", "16Mi", "--keeper=false")
	a.kill(t)
	b := attach(t, "--dir", dir)
	b.stop(t)
	leftovers(t, filepath.Join(base, "real dir", "vol"))
}

// TestRemoveClearsWhatADeadServerLeft: a volume's server died (the plugin
// before, which kept the volume when a handover failed) and left its FUSE
// mount and loop device; the plugin now deleting it never served it, so
// no attach of its own clears them. Regression: the directory's removal
// failed on the dead mount for good, and the claim stayed.
func TestRemoveClearsWhatADeadServerLeft(t *testing.T) {
	requireRoot(t)
	state := t.TempDir()
	dir := filepath.Join(state, "volumes", "pvc-dead")
	a := attach(t, "--dir", dir, "--size", "64Mi", "--keeper=false")
	a.kill(t)
	if devs, _ := loop.Backing(filepath.Join(dir, "fuse", "pvc-dead")); len(devs) != 1 {
		t.Fatalf("expected the dead server's loop device to remain, found %v", devs)
	}
	n, err := host.New(host.Config{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Remove("pvc-dead"); err != nil {
		t.Fatal(err)
	}
	if n.Exists("pvc-dead") {
		t.Error("the volume is still there")
	}
	leftovers(t, dir)
}
