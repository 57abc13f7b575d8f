package fuseconn

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests run servers as child processes of the test binary, so that a
// server can be killed inside a request while the test keeps the
// connection, as a keeper does.
const (
	envServe   = "FUSECONN_TEST_SERVE"    // resume or new
	envBacking = "FUSECONN_TEST_BACKING"  // the file the device keeps its bytes in
	envLog     = "FUSECONN_TEST_LOG"      // where the device logs each write it starts
	envBlockAt = "FUSECONN_TEST_BLOCK_AT" // a write at this offset never finishes
)

const (
	fileName = "dev"
	devSize  = 1 << 20
	blk      = 4096
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envServe); mode != "" {
		os.Exit(serveForTest(mode))
	}
	os.Exit(m.Run())
}

// fileDev is a device whose bytes are in a file, shared by the servers.
type fileDev struct {
	f       *os.File
	log     *os.File
	blockAt int64
}

func (d *fileDev) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }
func (d *fileDev) WriteAt(p []byte, off int64) (int, error) {
	fmt.Fprintf(d.log, "%d %d\n", os.Getpid(), off)
	if off == d.blockAt {
		fmt.Println("stuck")
		select {} // killed in here
	}
	return d.f.WriteAt(p, off)
}
func (d *fileDev) Flush(context.Context) error { return d.f.Sync() }
func (d *fileDev) Discard(off, n int64) error {
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}
func (d *fileDev) Size() int64 { return devSize }

// serveForTest is the child: it serves the connection at fd 3 until the
// file system is unmounted, and says "ready" once it serves.
func serveForTest(mode string) int {
	f, err := os.OpenFile(os.Getenv(envBacking), os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log, err := os.OpenFile(os.Getenv(envLog), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	blockAt, _ := strconv.ParseInt(os.Getenv(envBlockAt), 10, 64)
	if os.Getenv(envBlockAt) == "" {
		blockAt = -1
	}
	dev := &fileDev{f: f, log: log, blockAt: blockAt}
	srv, err := Serve(os.NewFile(3, "/dev/fuse"), fileName, dev, Options{Resume: mode == "resume", Workers: 4})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	srv.Wait()
	return 0
}

type harness struct {
	t                 *testing.T
	conn              *os.File
	mnt, backing, log string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	dir := t.TempDir()
	h := &harness{t: t, mnt: filepath.Join(dir, "mnt"), backing: filepath.Join(dir, "backing"), log: filepath.Join(dir, "log")}
	if err := os.Mkdir(h.mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.backing, make([]byte, devSize), 0o600); err != nil {
		t.Fatal(err)
	}
	conn, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := Mount(h.mnt, conn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(h.mnt, unix.MNT_DETACH) })
	h.conn = conn
	return h
}

// abort aborts the connection (fusectl): every request waiting on it fails.
// It finds the connection in mountinfo: a stat of the mount would wait on
// the connection itself.
func (h *harness) abort() {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		h.t.Error(err)
		return
	}
	var minor string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == h.mnt {
			minor = f[2][strings.IndexByte(f[2], ':')+1:] // major:minor
		}
	}
	const ctl = "/sys/fs/fuse/connections"
	if _, err := os.Stat(ctl + "/" + minor); err != nil {
		unix.Mount("fusectl", ctl, "fusectl", 0, "")
	}
	if err := os.WriteFile(ctl+"/"+minor+"/abort", []byte("1"), 0); err != nil {
		h.t.Error(err)
	}
}

// start starts a server and waits until it serves; its output follows.
func (h *harness) start(mode string, blockAt int64) (*exec.Cmd, *bufio.Reader) {
	h.t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envServe+"="+mode, envBacking+"="+h.backing, envLog+"="+h.log)
	if blockAt >= 0 {
		cmd.Env = append(cmd.Env, envBlockAt+"="+strconv.FormatInt(blockAt, 10))
	}
	cmd.ExtraFiles = []*os.File{h.conn}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		h.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	if err != nil || line != "ready\n" {
		h.t.Fatalf("server: %q, %v", line, err)
	}
	return cmd, r
}

// logged returns the offsets of the writes each server started, by pid.
func (h *harness) logged() map[int][]int64 {
	b, err := os.ReadFile(h.log)
	if err != nil {
		h.t.Fatal(err)
	}
	m := map[int][]int64{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var pid int
		var off int64
		if _, err := fmt.Sscan(l, &pid, &off); err == nil {
			m[pid] = append(m[pid], off)
		}
	}
	return m
}

func block(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, blk) }

// writeCmd is dd writing block i of the file.
func (h *harness) writeCmd(i int) *exec.Cmd {
	src := filepath.Join(h.t.TempDir(), "block")
	if err := os.WriteFile(src, block(i), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return exec.Command("dd", "if="+src, "of="+filepath.Join(h.mnt, fileName), "bs=4096", "count=1",
		"seek="+strconv.Itoa(i), "conv=notrunc", "status=none")
}

func (h *harness) write(i int) {
	h.t.Helper()
	if out, err := h.writeCmd(i).CombinedOutput(); err != nil {
		h.t.Fatalf("writing block %d: %v: %s", i, err, out)
	}
}

// TestKilledInsideAWriteTheWriteIsResentAndAnswered kills a server inside a
// write while the test holds the connection, resends, resumes with a new
// server: the writer gets success, every block holds its data, and no
// write ran twice except the one the dead server never finished.
func TestKilledInsideAWriteTheWriteIsResentAndAnswered(t *testing.T) {
	h := newHarness(t)
	const stuck = 5
	first, out := h.start("new", stuck*blk)
	if err := NoPoll(filepath.Join(h.mnt, fileName)); err != nil {
		t.Fatal(err)
	}
	for i := range stuck {
		h.write(i)
	}
	// The writer is another process: this one starts the next server, and
	// a process that forks while it has a file of the mount open flushes
	// that file (in the child, at exec) and waits for a server.
	done := make(chan error, 1)
	writer := h.writeCmd(stuck)
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- writer.Wait() }()
	// Once the first server is inside the write, kill it.
	if line, err := out.ReadString('\n'); line != "stuck\n" {
		t.Fatalf("server: %q, %v", line, err)
	}
	first.Process.Kill()
	first.Wait()
	select {
	case err := <-done:
		t.Fatalf("the write returned (%v) after its server died, before a new one", err)
	default:
	}

	if err := Resend(h.conn); err != nil {
		t.Fatal(err)
	}
	second, _ := h.start("resume", -1)
	if err := <-done; err != nil {
		t.Fatalf("the write failed across the restart: %v", err)
	}
	// The resumed server answers whatever comes: more writes, reads.
	for i := stuck + 1; i < stuck+4; i++ {
		h.write(i)
	}
	fd, err := unix.Open(filepath.Join(h.mnt, fileName), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := make([]byte, blk)
	for i := range stuck + 4 {
		if _, err := unix.Pread(fd, got, int64(i)*blk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, block(i)) {
			t.Fatalf("block %d holds %d, want %d", i, got[0], i+1)
		}
	}
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}

	logs := h.logged()
	count := map[int64]int{}
	for _, offs := range logs {
		for _, off := range offs {
			count[off]++
		}
	}
	for i := range stuck + 4 {
		want := 1
		if i == stuck {
			want = 2 // started by the dead server, run again by the new one
		}
		if c := count[int64(i)*blk]; c != want {
			t.Errorf("block %d written %d times, want %d", i, c, want)
		}
	}
	if n := len(logs[second.Process.Pid]); n != 4 {
		t.Errorf("the second server ran %d writes, want 4", n)
	}
}

// TestResumedServerServesAnInitialisedConnection: a server killed between
// requests leaves nothing in flight; a resumed one (no INIT comes), after a
// resend with nothing to resend, serves on.
func TestResumedServerServesAnInitialisedConnection(t *testing.T) {
	h := newHarness(t)
	first, _ := h.start("new", -1)
	path := filepath.Join(h.mnt, fileName)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(block(0)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	first.Process.Kill()
	first.Wait()
	if err := Resend(h.conn); err != nil {
		t.Fatal(err)
	}
	h.start("resume", -1)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != devSize || !bytes.Equal(b[:blk], block(0)) {
		t.Fatalf("read %d bytes, first block %d", len(b), b[0])
	}
	if n := len(h.logged()[first.Process.Pid]); n != 1 {
		t.Fatalf("%d writes logged, want 1", n)
	}
	entries, err := os.ReadDir(h.mnt)
	if err != nil || len(entries) != 1 || entries[0].Name() != fileName {
		t.Fatalf("the directory lists %v, %v", entries, err)
	}
}

// TestStoppedServerLeavesEveryRequestToTheNext: a server that Stop
// returned for reads nothing more, so a second server in the same process
// (as the node plugin hands a volume over while it lives on) gets every
// later request with no resend. Were the first one's workers still waiting
// in read(2), they would take requests and never answer them: the writes
// below would hang.
func TestStoppedServerLeavesEveryRequestToTheNext(t *testing.T) {
	h := newHarness(t)
	serve := func(o Options) (*Server, *fileDev) {
		t.Helper()
		backing, err := os.OpenFile(h.backing, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		log, err := os.CreateTemp(t.TempDir(), "log")
		if err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Dup(int(h.conn.Fd())) // the same open file: reopening makes a new connection
		if err != nil {
			t.Fatal(err)
		}
		conn := os.NewFile(uintptr(fd), "/dev/fuse")
		t.Cleanup(func() { backing.Close(); log.Close(); conn.Close() })
		dev := &fileDev{f: backing, log: log, blockAt: -1}
		s, err := Serve(conn, fileName, dev, o)
		if err != nil {
			t.Fatal(err)
		}
		return s, dev
	}
	writes := func(d *fileDev) int {
		b, err := os.ReadFile(d.log.Name())
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Count(b, []byte("\n"))
	}
	first, firstDev := serve(Options{Workers: 4})
	h.write(0)
	first.Stop()
	second, secondDev := serve(Options{Resume: true, Workers: 4})
	defer second.Stop()
	// A write taken by a worker that never answers cannot be killed: if
	// the writes hang, abort the connection, and they fail.
	watchdog := time.AfterFunc(30*time.Second, func() { t.Error("writes hang"); h.abort() })
	for i := 1; i <= 8; i++ {
		if out, err := h.writeCmd(i).CombinedOutput(); err != nil {
			t.Fatalf("writing block %d after the stop: %v: %s", i, err, out)
		}
	}
	watchdog.Stop()
	if a, b := writes(firstDev), writes(secondDev); a != 1 || b != 8 {
		t.Fatalf("the stopped server wrote %d blocks, the next %d; want 1 and 8", a, b)
	}
	b, err := os.ReadFile(h.backing)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i <= 8; i++ {
		if !bytes.Equal(b[i*blk:(i+1)*blk], block(i)) {
			t.Fatalf("block %d does not hold its write", i)
		}
	}
}
