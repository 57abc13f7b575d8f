package demo

import (
	"bytes"
	"context"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// TestRunRecoversOnARealFile runs the demonstration, small, on a real file
// with direct I/O: the engine end to end outside the fault-injecting layer.
func TestRunRecoversOnARealFile(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	err := Run(context.Background(), &out, Options{Dir: dir, JournalSize: 32 << 20, Writers: 4, Records: 200})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !regexp.MustCompile(`recovered \d+ records .* every checksum and payload intact`).Match(out.Bytes()) {
		t.Fatalf("no recovery line:\n%s", out.String())
	}
	f, err := vfs.OpenReadOnly(filepath.Join(dir, volume.JournalFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	if _, _, err := journal.Dump(f, func(pos uint64, r journal.Record) error {
		lines = append(lines, journal.FormatRecord(pos, r, blockrec.FormatSub))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(lines) == 0 || !regexp.MustCompile(`^pos=\d+ transid=\d+ stream=0x10\d flags=BEGIN\|END size=\d+ write\(off=\d+,len=\d+\)$`).MatchString(lines[0]) {
		t.Fatalf("records left after the last checkpoint: %q", lines)
	}
}
