package test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/writecheck"
)

// serverStatus is what `jvol status --json` says of the server.
type serverStatus struct {
	ServerPID      int `json:"serverPid"`
	ServerRestarts int `json:"serverRestarts"`
}

func readServerStatus(t *testing.T, dir string) serverStatus {
	t.Helper()
	out, err := exec.Command(jvolBin, "status", "--dir", dir, "--json").Output()
	if err != nil {
		t.Fatalf("jvol status: %v", err)
	}
	var s serverStatus
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitRestarts waits until the server that restarts makes the n-th says
// it serves (it publishes its status before), and returns the status.
func waitRestarts(t *testing.T, a *attached, dir string, n int) serverStatus {
	t.Helper()
	if !a.stderr.waitFor(fmt.Sprintf("restarts=%d\n", n), 20*time.Second) {
		t.Fatalf("no server served after restart %d:\n%s", n, a.stderr)
	}
	return readServerStatus(t, dir)
}

// TestServerKillsAndHandoversFailNoWrite runs a verifying writer (direct
// I/O, random 4 KiB writes, fsync batches) on `jvol attach` while the
// server is killed with SIGKILL three times and handed over twice
// (SIGHUP): no write may fail, and afterwards every block holds its last
// completed write, fsynced or not, before and after a clean detach.
func TestServerKillsAndHandoversFailNoWrite(t *testing.T) {
	requireRoot(t)
	const size = 64 << 20
	dir := filepath.Join(t.TempDir(), "vol")
	a := attach(t, "--dir", dir, "--size", "64Mi", "--journal-size", "64Mi", "--commit-interval", "200ms")
	w, err := writecheck.Open(a.device, size)
	if err != nil {
		t.Fatal(err)
	}
	progress, stopWriter := w.Start(3)
	// wait lets the writer complete a random number of writes.
	rng := rand.New(rand.NewPCG(5, 6))
	wait := func() {
		var from uint64
		for seq := range progress {
			if from == 0 {
				from = seq + 50 + rng.Uint64N(500)
			}
			if seq >= from {
				return
			}
		}
	}
	events := []string{"kill", "hup", "kill", "kill", "hup"}
	for i, ev := range events {
		wait()
		s := readServerStatus(t, dir)
		if s.ServerRestarts != i {
			t.Fatalf("before event %d: %d restarts", i, s.ServerRestarts)
		}
		if ev == "kill" {
			syscall.Kill(s.ServerPID, syscall.SIGKILL)
		} else {
			a.cmd.Process.Signal(syscall.SIGHUP)
		}
		if n := waitRestarts(t, a, dir, i+1); n.ServerRestarts != i+1 || n.ServerPID == s.ServerPID {
			t.Fatalf("after a %s: server pid %d, %d restarts (before: pid %d)", ev, n.ServerPID, n.ServerRestarts, s.ServerPID)
		}
	}
	wait()
	if err := stopWriter(); err != nil {
		t.Fatalf("a write failed: %v\n%s", err, a.stderr)
	}
	t.Logf("%d blocks written; the longest write (or write and fsync) took %v", w.Blocks(), w.Longest())
	if err := w.Verify(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	a.stop(t)
	leftovers(t, dir)
	b := attach(t, "--dir", dir)
	g, err := os.OpenFile(b.device, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.VerifyFile(g); err != nil {
		t.Fatal(err)
	}
	g.Close()
	b.stop(t)
	leftovers(t, dir)
}
