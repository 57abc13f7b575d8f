package jtool

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// TestDemoRecoversOnARealFile runs the demonstration, small, on a real file
// with direct I/O: the engine end to end outside the fault-injecting layer.
func TestDemoRecoversOnARealFile(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	err := Demo(context.Background(), &out, DemoOptions{Dir: dir, JournalSize: 32 << 20, Writers: 4, Records: 200})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !regexp.MustCompile(`recovered \d+ records .* every checksum and payload intact`).Match(out.Bytes()) {
		t.Fatalf("no recovery line:\n%s", out.String())
	}
	var dump bytes.Buffer
	if err := Dump(&dump, dir); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(dump.String()), "\n")
	if len(lines) < 3 || !regexp.MustCompile(`^pos=\d+ transid=\d+ stream=0x10\d flags=BEGIN\|END size=\d+ write\(off=\d+,len=\d+\)$`).MatchString(lines[0]) {
		t.Fatalf("dump:\n%s", dump.String())
	}
}

func TestDumpShowsEverySubRecordType(t *testing.T) {
	path := filepath.Join(t.TempDir(), volume.JournalFile)
	if err := vfs.Preallocate(path, 2<<20+journal.RingOffset); err != nil {
		t.Fatal(err)
	}
	f, err := vfs.OpenDirect(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := journal.Format(f); err != nil {
		t.Fatal(err)
	}
	j, _, err := journal.Open(f, journal.Options{FIFOSize: 1 << 20, FirstTransid: 100}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p := make([]byte, blockrec.DiscardSize)
	blockrec.PutDiscard(p, 4096, 8192)
	j.Append(ctx, journal.StreamFirstTx, p)
	a := make([]byte, journal.SubSize(5))
	body, _ := journal.PutSub(a, journal.SubAnnotate|journal.SubLast, 5)
	copy(body, "hello")
	j.Append(ctx, journal.StreamAnnotate, a)
	if err := j.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	j.Close()
	var out bytes.Buffer
	if err := Dump(&out, path); err != nil {
		t.Fatal(err)
	}
	want := "pos=0 transid=100 stream=0x100 flags=BEGIN|END size=56 discard(off=4096,len=8192)\n" +
		"pos=64 transid=102 stream=0x3 flags=BEGIN|END size=48 annotate(\"hello\")\n"
	if !strings.HasPrefix(out.String(), want) {
		t.Fatalf("dump:\n%s\nwant it to start with:\n%s", out.String(), want)
	}
}

func TestDumpOfANonJournalFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(path, bytes.Repeat([]byte("x"), 3<<20), 0o600)
	if err := Dump(&bytes.Buffer{}, path); err == nil {
		t.Fatal("dumped a file that is not a journal")
	}
}
