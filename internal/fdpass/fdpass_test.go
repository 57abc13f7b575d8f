package fdpass

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func pair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestAFileCrossesWithItsMessage: the file received is the same open file
// (what is written through one copy is read through the other), and the
// peer's close is EOF.
func TestAFileCrossesWithItsMessage(t *testing.T) {
	a, b := pair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := Send(a, Msg{Type: 'P', Name: "pvc-1", File: w}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	m, err := Recv(b)
	if err != nil || m.Type != 'P' || m.Name != "pvc-1" || m.File == nil {
		t.Fatalf("received %+v, %v", m, err)
	}
	m.File.Write([]byte("through the copy"))
	m.File.Close()
	if got, _ := io.ReadAll(r); string(got) != "through the copy" {
		t.Fatalf("read %q", got)
	}
	if err := Send(a, Msg{Type: 'E'}); err != nil {
		t.Fatal(err)
	}
	if m, err := Recv(b); err != nil || m.Type != 'E' || m.Name != "" || m.File != nil {
		t.Fatalf("received %+v, %v", m, err)
	}
	a.Close()
	if _, err := Recv(b); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
}

// TestListenerLeavesASuccessorsSocket: a listener closed after another
// bound its path leaves the other's socket; closed while its own, it
// removes it.
func TestListenerLeavesASuccessorsSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	old, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	next, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	if _, err := Dial(path); err != nil {
		t.Fatalf("the successor's socket is gone: %v", err)
	}
	next.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the socket is left: %v", err)
	}
}

// FuzzDecode: what decode accepts is exactly a header that matches the
// bytes, and it encodes back to them.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("JVFD\x01P\x05\x00pvc-1"))
	f.Add([]byte("JVFD\x01E\x00\x00"))
	f.Add([]byte("JVFD\x02E\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		enc := append([]byte(magic), version, m.Type, byte(len(m.Name)), byte(len(m.Name)>>8))
		if !bytes.Equal(append(enc, m.Name...), b) {
			t.Fatalf("decoded %q as %+v", b, m)
		}
	})
}

// TestListenerClosesAsASuccessorBinds: a listener closed while another
// binds its path, at the same moment, never removes the other's socket
// (its check that the path is its own and its removal are one step to the
// other).
func TestListenerClosesAsASuccessorBinds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	for i := range 2000 {
		old, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			old.Close()
		}()
		next, err := Listen(path)
		wg.Wait()
		if err != nil {
			t.Fatal(err)
		}
		c, err := Dial(path)
		next.Close()
		if err != nil {
			t.Fatalf("round %d: the successor's socket is gone: %v", i, err)
		}
		c.Close()
	}
}
