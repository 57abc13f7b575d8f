package test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/vfstest"
)

const mib = 1 << 20

// A thick volume its disk cannot hold is refused with a clear message,
// and nothing is left behind.
func TestAttachRefusesAThickVolumeTheDiskCannotHold(t *testing.T) {
	requireRoot(t)
	fs := vfstest.SmallFS(t, 100*mib)
	out, err := exec.Command(jvolBin, "attach", "--dir", filepath.Join(fs, "v"), "--size", "256Mi").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("attach of a 256 MiB thick volume on 100 MiB: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "no space left on device") || !strings.Contains(string(out), "thick") {
		t.Errorf("the message does not say why: %s", out)
	}
	if ents, _ := os.ReadDir(fs); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// A thin volume on a disk that fills: the write that needs space the disk
// does not have fails (EIO at the device), none acknowledged before is
// lost, `jvol status` says why; once space is freed the volume goes on.
func TestThinVolumeOnAFullDiskKeepsEveryAcknowledgedWrite(t *testing.T) {
	requireRoot(t)
	fs := vfstest.SmallFS(t, 160*mib)
	filler := filepath.Join(fs, "filler")
	if err := os.WriteFile(filler, make([]byte, 32*mib), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(fs, "v")
	const size = 256 * mib
	a := attach(t, "--dir", dir, "--size", fmt.Sprint(size), "--provisioning", "thin")
	dev, err := os.OpenFile(a.device, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	acked := 0 // 1 MiB blocks written and fsynced, from the start
	buf := vfs.AlignedBuffer(mib)
	block := func(i int) []byte {
		for k := range buf {
			buf[k] = byte(i*7 + k/4096)
		}
		return buf
	}
	fill := func() int {
		for ; acked < size/mib; acked++ {
			if _, err := dev.WriteAt(block(acked), int64(acked)*mib); err != nil {
				return acked
			}
			if err := dev.Sync(); err != nil {
				t.Fatalf("fsync after block %d: %v", acked, err)
			}
		}
		t.Fatal("the volume took more than its disk has")
		return 0
	}
	full := fill()
	t.Logf("the write of block %d failed", full)
	var s volumeStatus
	poll(t, func() string { return fmt.Sprintf("status saying the disk is full: %+v", s) }, func() bool {
		s = volStatus(t, dir)
		return s.SpaceErrors > 0 && s.SpaceLow
	})
	if s.Provisioning != "thin" || s.Allocated < int64(full)*mib {
		t.Errorf("status: %+v", s)
	}
	text, _ := exec.Command(jvolBin, "status", "--dir", dir).Output()
	if !bytes.Contains(text, []byte("LOW ON SPACE")) || !bytes.Contains(text, []byte("space errors")) {
		t.Errorf("jvol status does not say the disk is full:\n%s", text)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if again := fill(); again < full+16 {
		t.Errorf("with 32 MiB freed, block %d failed after %d", again, full)
	}
	check := func(when string) {
		got := vfs.AlignedBuffer(mib)
		for i := range acked {
			if _, err := dev.ReadAt(got, int64(i)*mib); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, block(i)) {
				t.Fatalf("%s: block %d lost its acknowledged write", when, i)
			}
		}
	}
	check("served")
	dev.Close()
	a.stop(t)
	a = attach(t, "--dir", dir)
	if dev, err = os.OpenFile(a.device, os.O_RDWR|unix.O_DIRECT, 0); err != nil {
		t.Fatal(err)
	}
	check("attached again")
	dev.Close()
	a.stop(t)
}
