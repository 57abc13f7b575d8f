package test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs"
)

// receiver is a running `jvol sink`.
type receiver struct {
	cmd     *exec.Cmd
	addr    string // host:port it listens on
	metrics string // with --metrics-address: where its metrics are
	stderr  *syncBuffer
}

// startReceiver starts `jvol sink` on listen, retrying for a while if it
// fails to start (a port just freed by a killed receiver).
func startReceiver(t *testing.T, dir, listen string, args ...string) *receiver {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		r, err := tryReceiver(t, dir, listen, args...)
		if err == nil {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		t.Logf("retrying: %v", err)
	}
}

func tryReceiver(t *testing.T, dir, listen string, args ...string) (*receiver, error) {
	cmd := exec.Command(jvolBin, append([]string{"sink", "--listen", listen, "--dir", dir}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	r := &receiver{cmd: cmd, stderr: &syncBuffer{}}
	cmd.Stderr = r.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		cmd.Wait()
		return nil, fmt.Errorf("sink --listen %s exited before it was ready: %s", listen, r.stderr)
	}
	addr, ok := strings.CutPrefix(sc.Text(), "listen=")
	if !ok {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("sink printed %q, want listen=HOST:PORT", sc.Text())
	}
	r.addr = addr
	if slices.Contains(args, "--metrics-address") {
		if !sc.Scan() {
			t.Fatalf("sink printed no metrics= line: %s", r.stderr)
		}
		if r.metrics, ok = strings.CutPrefix(sc.Text(), "metrics="); !ok {
			t.Fatalf("sink printed %q, want metrics=HOST:PORT", sc.Text())
		}
	}
	go io.Copy(io.Discard, out)
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return r, nil
}

// stop sends SIGTERM and expects a clean exit.
func (r *receiver) stop(t *testing.T) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("sink did not exit cleanly: %v\n%s", err, r.stderr)
	}
}

func (r *receiver) kill() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

// poll calls cond every 20 ms until it holds, for at most a minute.
func poll(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what())
		}
	}
}

// volumeStatus is what the tests read of `jvol status --json`.
type volumeStatus struct {
	Transid      uint64 `json:"transid"`
	Updated      string `json:"updated"`
	Provisioning string `json:"provisioning"`
	Allocated    int64  `json:"allocated"`
	SpaceLow     bool   `json:"spaceLow"`
	SpaceErrors  uint64 `json:"spaceErrors"`
	Sink         *struct {
		State        string `json:"state"`
		AckedTransid uint64 `json:"ackedTransid"`
		LagBytes     uint64 `json:"lagBytes"`
		LastError    string `json:"lastError"`
	} `json:"sink"`
}

// volStatus runs `jvol status --json` on the volume in dir.
func volStatus(t *testing.T, dir string) volumeStatus {
	t.Helper()
	out, err := exec.Command(jvolBin, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("jvol status: %v: %s", err, out)
	}
	var s volumeStatus
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("jvol status: %v: %s", err, out)
	}
	return s
}

func updated(t *testing.T, s volumeStatus) time.Time {
	t.Helper()
	u, err := time.Parse(time.RFC3339Nano, s.Updated)
	if err != nil {
		t.Fatalf("status updated %q: %v", s.Updated, err)
	}
	return u
}

// statusAfter returns the first status published after since.
func statusAfter(t *testing.T, dir string, since time.Time) volumeStatus {
	t.Helper()
	var s volumeStatus
	poll(t, func() string { return fmt.Sprintf("a status of %s after %s, have %+v", dir, since, s) },
		func() bool { s = volStatus(t, dir); return updated(t, s).After(since) })
	return s
}

// lastTransid returns the last id handed out as of synced (after the
// writes): the status is published once a second with the figures read
// just before its time stamp, so the second status after synced is the
// first whose figures are surely read after it.
func lastTransid(t *testing.T, dir string, synced time.Time) volumeStatus {
	t.Helper()
	return statusAfter(t, dir, updated(t, statusAfter(t, dir, synced)))
}

// waitSinkAcked waits until the sink has every id up to id.
func waitSinkAcked(t *testing.T, dir string, id uint64) {
	t.Helper()
	var s volumeStatus
	poll(t, func() string { return fmt.Sprintf("sink acknowledging %d: %+v", id, s.Sink) }, func() bool {
		s = volStatus(t, dir)
		return s.Sink != nil && s.Sink.AckedTransid >= id
	})
}

// writeRound writes a few random chunks of 4K to 256K at random offsets,
// fsyncs the device and returns the last id handed out.
func writeRound(t *testing.T, rng *rand.Rand, f *os.File, size int64, dir string) uint64 {
	t.Helper()
	writeUnflushed(t, rng, f, size)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return lastTransid(t, dir, time.Now()).Transid
}

// writeUnflushed writes a few random extents of random data to f, with no
// fsync.
func writeUnflushed(t *testing.T, rng *rand.Rand, f *os.File, size int64) {
	t.Helper()
	buf := vfs.AlignedBuffer(256 << 10)
	for range 4 + rng.IntN(8) {
		n := (1 + rng.Int64N(64)) * 4096
		off := rng.Int64N((size-n)/4096+1) * 4096
		p := buf[:n]
		for k := 0; k < len(p); k += 8 {
			binary.LittleEndian.PutUint64(p[k:], rng.Uint64())
		}
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
}

// readDevice reads the whole device with direct I/O.
func readDevice(t *testing.T, f *os.File, size int64) []byte {
	t.Helper()
	out := make([]byte, size)
	buf := vfs.AlignedBuffer(1 << 20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err != nil && !(err == io.EOF && off+int64(n) == size) {
			t.Fatal(err)
		}
		copy(out[off:], buf[:n])
	}
	return out
}

// differ describes where got and want differ, or returns "".
func differ(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	for off := 0; off < len(got); off += 4096 {
		if !bytes.Equal(got[off:off+4096], want[off:off+4096]) {
			return fmt.Sprintf("the 4K block at %d differs", off)
		}
	}
	return ""
}

// restore runs `jvol restore` from src, a receiver's directory or its
// URL, into out and returns its output. A receiver is asked with the
// token in tokenFile.
func restore(src, vol, out string, point ...string) (string, error) {
	args := []string{"restore", "--sink-dir", src}
	if strings.Contains(src, "://") {
		args = []string{"restore", "--sink", src, "--sink-token-file", tokenFile}
	}
	args = append(append(args, "--volume", vol, "--out", out), point...)
	b, err := exec.Command(jvolBin, args...).CombinedOutput()
	return string(b), err
}

// checkRestore restores the point and compares the image with want.
func checkRestore(t *testing.T, sinkDir, vol string, want []byte, point ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "r.img")
	msg, err := restore(sinkDir, vol, out, point...)
	if err != nil {
		t.Errorf("restore %v: %v: %s", point, err, msg)
		return msg
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if d := differ(got, want); d != "" {
		t.Errorf("restore %v (%s): %s", point, strings.TrimSpace(msg), d)
	}
	return msg
}

type snapshot struct {
	transid uint64
	sum     [32]byte
	data    []byte
}

// streamedSize is the size of the volumes the sink tests stream.
const streamedSize = 64 << 20

// streamed is a volume attached with a sink, its device open for direct
// I/O, and the receiver it streams to.
type streamed struct {
	base, sinkDir, dir, mirror string
	rc                         *receiver
	a                          *attached
	f                          *os.File
}

// tokenFile holds the token the streamed volumes' receivers require.
var tokenFile string

// attachStreamed starts a receiver (with the token in tokenFile) and
// attaches volume vol streaming to it in duplex mode duplex.
func attachStreamed(t *testing.T, vol, duplex string) *streamed {
	t.Helper()
	base := t.TempDir()
	sd := &streamed{base: base, sinkDir: filepath.Join(base, "sink"), dir: filepath.Join(base, vol)}
	sd.mirror = filepath.Join(sd.sinkDir, vol, "mirror.img")
	tokenFile = filepath.Join(base, "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sd.rc = startReceiver(t, sd.sinkDir, "127.0.0.1:0", "--token-file", tokenFile)
	sd.a = attach(t, "--dir", sd.dir, "--size", "64Mi", "--journal-size", "64Mi", "--sink", "tcp://"+sd.rc.addr, "--duplex", duplex, "--sink-token-file", tokenFile)
	f, err := os.OpenFile(sd.a.device, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	sd.f = f
	return sd
}

// TestSinkFullDuplexThroughADevice writes rounds of random data to a
// volume streamed to a receiver in full duplex, and after each fsync waits
// for the receiver to acknowledge the round and checks its mirror against
// the device; the receiver is killed midway (a round is written while it
// is down) and restarted on the same address, for the sender to reconnect
// to. Then every round's image is restored from the stored stream, by id,
// and one by time.
func TestSinkFullDuplexThroughADevice(t *testing.T) {
	requireRoot(t)
	const vol = "vol-e2e"
	sd := attachStreamed(t, vol, "full")
	base, sinkDir, dir, mirror, rc, a, f := sd.base, sd.sinkDir, sd.dir, sd.mirror, sd.rc, sd.a, sd.f
	rng := rand.New(rand.NewPCG(31, 32))
	var (
		snaps   []snapshot
		between time.Time // after snaps[1], before the next round's writes
	)
	check := func(id uint64) {
		t.Helper()
		waitSinkAcked(t, dir, id)
		dev := readDevice(t, f, streamedSize)
		m, err := os.ReadFile(mirror)
		if err != nil {
			t.Fatal(err)
		}
		if d := differ(m, dev); d != "" {
			t.Fatalf("mirror after id %d: %s", id, d)
		}
		snaps = append(snaps, snapshot{id, sha256.Sum256(dev), dev})
	}
	for round := range 6 {
		start := time.Now()
		if round == 3 {
			rc.kill()
		}
		id := writeRound(t, rng, f, streamedSize, dir)
		if round == 3 {
			if s := volStatus(t, dir); s.Sink == nil || s.Sink.AckedTransid >= id {
				t.Fatalf("a dead receiver acknowledged id %d: %+v", id, s.Sink)
			}
			_, port, _ := net.SplitHostPort(rc.addr)
			rc = startReceiver(t, sinkDir, "127.0.0.1:"+port, "--token-file", tokenFile)
		}
		check(id)
		t.Logf("round %d: id %d (sha256 %x) acknowledged and mirrored in %v", round, id, snaps[round].sum[:8], time.Since(start).Round(time.Millisecond))
		if round == 1 {
			between = time.Now()
		}
		if round == 3 {
			_, conn, _ := strings.Cut(rc.stderr.String(), "Sender connected")
			conn, _, _ = strings.Cut(conn, "\n")
			t.Logf("the sender reconnected:%s", conn)
		}
	}

	for _, s := range snaps {
		msg := checkRestore(t, sinkDir, vol, s.data, "--until", fmt.Sprint(s.transid))
		if want := fmt.Sprintf("transid=%d ", s.transid); !strings.HasPrefix(msg, want) {
			t.Errorf("restore --until %d printed %q, want it to begin %q", s.transid, msg, want)
		}
	}
	checkRestore(t, sinkDir, vol, snaps[1].data, "--until", between.Format(time.RFC3339Nano))
	checkRestore(t, sinkDir, vol, snaps[len(snaps)-1].data, "--latest")
	// The same over the network, from the receiver itself.
	url := "tcp://" + rc.addr
	checkRestore(t, url, vol, snaps[1].data, "--until", fmt.Sprint(snaps[1].transid))
	checkRestore(t, url, vol, snaps[len(snaps)-1].data, "--latest")
	for _, src := range []string{sinkDir, url} {
		msg, err := restore(src, vol, filepath.Join(base, "early.img"), "--until", "2000-01-01T00:00:00Z")
		if err == nil || !strings.Contains(msg, "not kept") {
			t.Errorf("restore from %s --until 2000: %v: %q, want a failure saying the point is not kept", src, err, msg)
		}
	}

	// Writes never flushed, then a clean detach (a drained node): the
	// receiver has them when the detach returns.
	writeUnflushed(t, rng, f, streamedSize)
	last := readDevice(t, f, streamedSize)
	f.Close()
	a.stop(t)
	checkRestore(t, sinkDir, vol, last, "--latest")
	rc.stop(t)
}

// TestSinkHalfDuplexThroughADevice writes two rounds to a volume streamed
// in half duplex, waits for each to be sent, detaches, and checks the
// receiver's mirror and latest restore against the device.
func TestSinkHalfDuplexThroughADevice(t *testing.T) {
	requireRoot(t)
	const vol = "vol-half"
	sd := attachStreamed(t, vol, "half")
	sinkDir, dir, mirror, rc, a, f := sd.sinkDir, sd.dir, sd.mirror, sd.rc, sd.a, sd.f
	rng := rand.New(rand.NewPCG(41, 42))
	var snaps []snapshot
	for range 2 {
		id := writeRound(t, rng, f, streamedSize, dir)
		waitSinkAcked(t, dir, id) // sent
		dev := readDevice(t, f, streamedSize)
		snaps = append(snaps, snapshot{id, sha256.Sum256(dev), dev})
	}
	f.Close()
	a.stop(t)
	// Sent is not yet stored: wait for the mirror to have it all before
	// stopping the receiver.
	last := snaps[len(snaps)-1]
	var d string
	poll(t, func() string { return "the mirror to match the device: " + d }, func() bool {
		m, err := os.ReadFile(mirror)
		if d = fmt.Sprint(err); err == nil {
			d = differ(m, last.data)
		}
		return d == ""
	})
	rc.stop(t)

	m, err := os.ReadFile(mirror)
	if err != nil {
		t.Fatal(err)
	}
	if d := differ(m, last.data); d != "" {
		t.Fatalf("mirror after the receiver stopped: %s", d)
	}
	msg := checkRestore(t, sinkDir, vol, last.data, "--latest")
	if want := fmt.Sprintf("transid=%d ", last.transid); !strings.HasPrefix(msg, want) {
		t.Errorf("restore --latest printed %q, want it to begin %q", msg, want)
	}
	checkRestore(t, sinkDir, vol, snaps[0].data, "--until", fmt.Sprint(snaps[0].transid))
}
