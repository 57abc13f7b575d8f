package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/jvol-io/jvol/internal/jtool"
	"github.com/jvol-io/jvol/internal/sizes"
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
		return jtool.Dump(os.Stdout, args[1])
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
		return jtool.Demo(ctx, os.Stdout, jtool.DemoOptions{Dir: *dir, JournalSize: int64(size), Writers: *writers, Records: *records})
	}
	return fmt.Errorf("unknown journal command %q: %w", args[0], errUsage)
}
