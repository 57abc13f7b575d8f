package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

func TestJournalDumpPrintsEveryRecord(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, volume.JournalFile)
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
	want := "pos=0 transid=100 stream=0x100 flags=BEGIN|END size=56 discard(off=4096,len=8192)\n" +
		"pos=64 transid=102 stream=0x3 flags=BEGIN|END size=48 annotate(\"hello\")\n"
	for _, arg := range []string{path, dir} {
		var out bytes.Buffer
		if err := dumpJournal(&out, arg); err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitAfter(out.String(), "\n")
		if !strings.HasPrefix(out.String(), want) || len(lines) != 5 ||
			!strings.HasPrefix(lines[2], "# superblock: uuid=") || lines[3] != "# 2 records from 0 to 112, last transid 102, tail: unwritten\n" {
			t.Fatalf("dump of %s:\n%s\nwant it to start with:\n%s", arg, out.String(), want)
		}
	}
}

func TestJournalDumpOfANonJournalFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "junk")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := dumpJournal(&bytes.Buffer{}, path); err == nil {
		t.Fatal("dumped a file that is not a journal")
	}
}
