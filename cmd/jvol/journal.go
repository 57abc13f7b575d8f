package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/journal/demo"
	"github.com/jvol-io/jvol/internal/sizes"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

func journalCmd(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("journal needs dump or demo: %w", errUsage)
	}
	switch args[0] {
	case "dump":
		if len(args) != 2 {
			return fmt.Errorf("journal dump takes one DIR or FILE: %w", errUsage)
		}
		return dumpJournal(os.Stdout, args[1])
	case "demo":
		fs := flag.NewFlagSet("journal demo", flag.ContinueOnError)
		dir := fs.String("dir", "", "directory for the journal image (default: a new temporary one)")
		size := sizes.Flag(64 << 20)
		fs.Var(&size, "journal-size", "journal image size (default 64Mi)")
		writers := fs.Int("writers", 8, "concurrent writers")
		records := fs.Int("records", 2000, "records per writer")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *dir == "" {
			d, err := os.MkdirTemp("", "jvol-demo-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(d)
			*dir = d
		}
		return demo.Run(ctx, os.Stdout, demo.Options{Dir: *dir, JournalSize: int64(size), Writers: *writers, Records: *records})
	}
	return fmt.Errorf("unknown journal command %q: %w", args[0], errUsage)
}

// dumpJournal prints the live records of the journal image at path, or of
// the volume in the directory path, one per line, then its superblock and
// what the scan found.
func dumpJournal(w io.Writer, path string) error {
	if st, err := os.Stat(path); err != nil {
		return err
	} else if st.IsDir() {
		path = filepath.Join(path, volume.JournalFile)
	}
	f, err := vfs.OpenReadOnly(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sb, rec, err := journal.Dump(f, func(pos uint64, r journal.Record) error {
		_, err := fmt.Fprintln(w, journal.FormatRecord(pos, r, blockrec.FormatSub))
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(w, "# superblock: uuid=%x ring=%d sequence=%d checkpoint=%d checkpoint-transid=%d torn-window=%d\n",
		sb.UUID, sb.RingSize, sb.Sequence, sb.CkptPos, sb.CkptTransid, sb.TornWindow)
	fmt.Fprintf(w, "# %d records from %d to %d, last transid %d, tail: %s\n", rec.Records, rec.Start, rec.End, rec.LastTransid, rec.Tail)
	return nil
}
